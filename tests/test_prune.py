"""Structured pruning through torch-pruning: budget, replayable structure, recipe, CLI."""

from __future__ import annotations

import copy

import pytest
import torch

from frugalnn.errors import UserError
from frugalnn.models import create_model

tp = pytest.importorskip("torch_pruning")

from frugalnn.methods.prune.recipe import PruneConfig, parse_target  # noqa: E402
from frugalnn.methods.prune.structure import macs, prune_channels  # noqa: E402


def test_flops_target_is_reached_on_a_resnet_and_the_structure_replays() -> None:
    from frugalnn.transforms import apply_transforms

    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    pruned = copy.deepcopy(model)
    plan = prune_channels(pruned, x[:1], flops=2)
    assert plan["macs_before"] / plan["macs_after"] >= 2
    assert plan["macs_before"] / plan["macs_after"] < 2.3  # small steps: not far past it
    assert macs(model, x[:1]) == plan["macs_before"]  # the original is untouched
    fresh = apply_transforms(create_model("resnet20"), pruned.frugalnn_transforms)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))
    head = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert head.out_features == 10  # the classifier keeps its classes


@pytest.mark.parametrize("target", ["flops=1", "ratio=1.5", "size=2", "flops=x"])
def test_bad_targets_are_one_line(target: str) -> None:
    with pytest.raises(UserError, match="flops=X"):
        parse_target(target)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    from frugalnn.data.splits import load_splits
    from frugalnn.methods.prune.recipe import run_prune

    splits = load_splits("digits", train_limit=256, val_limit=64, test_limit=96, seed=0)
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, image_size=8)
    config = PruneConfig(target="flops=2", epochs=1, latency_batch_sizes=(1,),
                         latency_repeats=2)
    out = tmp_path_factory.mktemp("prune") / "run"
    return run_prune(model, config, splits, out, progress=False), splits


def test_run_prune_writes_a_run_directory(digits_run) -> None:
    run, _ = digits_run
    for part in ("config.json", "records.csv", "validation/records.csv",
                 "extras/prune_model.md", "report", "checkpoint/model.safetensors"):
        assert (run.out / part).exists(), part
    assert "channels after" in (run.out / "extras" / "prune_model.md").read_text()
    assert run.plan["macs_before"] / run.plan["macs_after"] >= 2


def test_pruned_checkpoint_reloads_and_reproduces_outputs_exactly(digits_run) -> None:
    from frugalnn.train.checkpoint import load_model

    run, splits = digits_run
    x = torch.stack([splits.test[i][0] for i in range(32)])
    loaded = load_model(run.out / "checkpoint")
    assert loaded.blocks[0].conv.out_channels == run.model.blocks[0].conv.out_channels < 16
    with torch.no_grad():
        assert torch.equal(run.model(x), loaded(x))


def test_include_keeps_the_residual_stream() -> None:
    model = create_model("resnet20").eval()
    plan = prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5,
                          include=["blocks.*.conv1"])
    after = plan["channels_after"]
    assert after["conv1"] == 16 and after["blocks.0.conv2"] == 16
    assert after["blocks.0.conv1"] == 8 and after["blocks.8.conv1"] == 32


def test_public_api_prune() -> None:
    import frugalnn

    model = create_model("cnn_small", in_channels=1, image_size=8).eval()
    small = frugalnn.prune(model, frugalnn.PruneConfig(target="ratio=0.5", epochs=0),
                           example_input=torch.randn(1, 1, 8, 8))
    assert small.blocks[1].conv.out_channels == 16 and model.blocks[1].conv.out_channels == 32


def test_cli_bad_target_exits_2(tmp_path, capsys) -> None:
    from frugalnn.cli import main

    code = main(["prune", "cnn_small", "--data", "digits", "--target", "flops=0.5",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "flops=X" in err[0]


def test_transformer_mlp_channels_prune_and_replay() -> None:
    from frugalnn.transforms import apply_transforms

    model = create_model("vit_tiny", depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = prune_channels(model, x[:1], ratio=0.5, include=["*.mlp.fc1"])
    changed = {k for k, v in plan["channels_after"].items() if plan["channels_before"][k] != v}
    assert changed == {"blocks.0.mlp.fc1", "blocks.1.mlp.fc1"}
    fresh = apply_transforms(create_model("vit_tiny", depth=2), model.frugalnn_transforms)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
