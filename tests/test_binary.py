"""Binary / XNOR layers: packed kernel, layers, bad widths, the recipe and its checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.binary.convert import (
    binarize_layers,
    calibrate_thresholds,
    eligible_layers,
    pack_model,
)
from frugalnn.methods.binary.kernel import (
    c_kernel_available,
    pack_signs,
    unpack_signs,
    xnor_matmul,
)
from frugalnn.methods.binary.layers import BinaryConv2d, BinaryLinear
from frugalnn.models import create_model


def _signs(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


@pytest.mark.parametrize("word_bits", [8, 16, 32, 64])
def test_xnor_matmul_numpy_is_the_sign_dot_product(word_bits: int) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 128, generator=g), torch.randn(5, 128, generator=g)
    want = (_signs(a) @ _signs(b).T).numpy().astype(np.int32)
    got = xnor_matmul(pack_signs(a, word_bits), pack_signs(b, word_bits), 128, "numpy")
    assert np.array_equal(got, want)
    assert np.array_equal(unpack_signs(pack_signs(a, word_bits), 128), _signs(a).numpy())


@pytest.mark.skipif(not c_kernel_available(), reason="no C compiler")
def test_xnor_matmul_c_kernel_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(33, 576, generator=g), torch.randn(19, 576, generator=g)
    pa, pb = pack_signs(a), pack_signs(b)
    assert np.array_equal(xnor_matmul(pa, pb, 576, "c"), xnor_matmul(pa, pb, 576, "numpy"))


def test_width_not_a_multiple_of_the_word_is_one_clear_line() -> None:
    with pytest.raises(UserError) as err:
        BinaryLinear(nn.Linear(100, 10), word_bits=64, name="fc")
    msg = str(err.value)
    assert "\n" not in msg and "100" in msg and "64-bit packing word" in msg
    model = create_model("cnn_small", widths=(16, 32, 64))
    with pytest.raises(UserError, match="blocks.0.conv: binary width 144"):
        binarize_layers(model, eligible_layers(model))


@pytest.mark.parametrize("activations", [True, False])
def test_packed_layers_reproduce_the_unpacked_outputs(activations: bool) -> None:
    torch.manual_seed(0)
    conv = BinaryConv2d(nn.Conv2d(64, 32, 3, stride=2, padding=1), activations=activations)
    lin = BinaryLinear(nn.Linear(128, 10), activations=activations)
    x, v = torch.randn(3, 64, 9, 9).relu(), torch.randn(4, 128)
    if activations:
        conv.threshold.data = x.mean(dim=(0, 2, 3))
    with torch.no_grad():
        before = conv(x), lin(v)
        conv.pack(), lin.pack()
        after = conv(x), lin(v)
    assert all(torch.equal(p, q) for p, q in zip(before, after))
    assert conv.packed_weight.dtype == torch.int64 and conv.packed_weight.shape == (32, 9)
    assert conv.weight_bytes(packed=False) / (32 * 9 * 8) == 32  # the signs: 32x fewer bytes


@pytest.mark.parametrize("kernel", ["auto", "numpy"])
@pytest.mark.parametrize("cin,size,word_bits", [(32, (2, 1), 64), (24, (3, 3), 8)])
def test_packed_conv_paths_match(kernel: str, cin: int, size: tuple[int, int],
                                 word_bits: int) -> None:
    """im2col on floats (in_channels not a multiple of the word) and on packed bytes."""
    torch.manual_seed(0)
    dense = nn.Conv2d(cin, 16, size, stride=(1, 2), padding=(1, 0), dilation=(2, 1))
    conv = BinaryConv2d(dense, word_bits=word_bits, kernel=kernel if word_bits == 64 else
                        "numpy")
    assert conv.channel_packed == (cin % word_bits == 0)
    x = torch.randn(2, cin, 7, 9)
    with torch.no_grad():
        before = conv(x)
        conv.pack()
        assert torch.equal(conv(x), before)


def test_straight_through_gradients_reach_weights_and_thresholds() -> None:
    torch.manual_seed(0)
    layer = BinaryConv2d(nn.Conv2d(64, 8, 3, padding=1))
    layer(torch.randn(2, 64, 5, 5) * 0.5).square().mean().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.threshold.grad.abs().sum() > 0


def test_first_and_last_layers_stay_float_and_thresholds_calibrate() -> None:
    model = create_model("cnn_small", widths=(64, 64, 128)).eval()
    names = eligible_layers(model)
    assert names == ["blocks.0.conv", "blocks.1.conv", "blocks.2.conv"]
    binarize_layers(model, names)
    calibrate_thresholds(model, (torch.randn(4, 1, 28, 28), torch.zeros(4)))
    assert model.blocks[1].conv.threshold.abs().sum() > 0  # post-ReLU means are > 0
    assert isinstance(model.stem[0], nn.Conv2d) and isinstance(model.head, nn.Linear)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    from frugalnn.data.splits import load_splits
    from frugalnn.methods.binary.recipe import BinaryConfig, run_binarize

    splits = load_splits("digits", train_limit=256, val_limit=64, test_limit=96, seed=0)
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, image_size=8, widths=(64, 64, 64))
    config = BinaryConfig(epochs=1, batch_size=64, latency_batch_sizes=(1,),
                          latency_repeats=2, layer_repeats=2, layer_batch=16)
    out = tmp_path_factory.mktemp("binary") / "run"
    return run_binarize(model, config, splits, out, progress=False), splits


def test_run_binarize_writes_a_run_directory(digits_run) -> None:
    run, _ = digits_run
    for part in ("config.json", "records.csv", "validation/records.csv",
                 "extras/binary_model.md", "report", "checkpoint/model.safetensors"):
        assert (run.out / part).exists(), part
    table = (run.out / "extras" / "binary_model.md").read_text()
    assert "blocks.1.conv" in table and "speed-up" in table
    assert run.totals["binary_bytes"] < run.totals["float_bytes"]
    meta = json.loads((run.out / "checkpoint" / "meta.json").read_text())
    assert meta["transforms"][-1]["name"] == "binary"
    assert meta["transforms"][-1]["args"]["packed"] is True


def test_binary_checkpoint_reloads_and_reproduces_outputs_exactly(digits_run) -> None:
    from frugalnn.train.checkpoint import load_model

    run, splits = digits_run
    x = torch.stack([splits.test[i][0] for i in range(32)])
    loaded = load_model(run.out / "checkpoint")
    assert isinstance(loaded.blocks[1].conv, BinaryConv2d) and loaded.blocks[1].conv.packed
    with torch.no_grad():
        assert torch.equal(run.model(x), loaded(x))


def test_public_api_binarize_leaves_the_original_alone() -> None:
    import frugalnn

    model = create_model("cnn_small", in_channels=1, image_size=8, widths=(64, 64, 64)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = frugalnn.binarize(model, frugalnn.BinaryConfig(epochs=0))
    assert isinstance(small.blocks[0].conv, BinaryConv2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pack_model(small)  # idempotent


def test_cli_bad_width_exits_2_with_one_line(tmp_path, capsys) -> None:
    from frugalnn.cli import main

    code = main(["binary", "cnn_small", "--data", "digits", "--model-arg",
                 "widths=[16,32,64]", "--train-limit", "32", "--eval-limit", "16",
                 "--epochs", "0", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a multiple of the 64-bit packing word" in err[0]


def test_cli_binary_writes_a_run(tmp_path, capsys) -> None:
    from frugalnn.cli import main

    out = tmp_path / "r"
    code = main(["binary", "cnn_small", "--data", "digits", "--model-arg", "widths=[64,64,64]",
                 "--train-limit", "64", "--val-limit", "32", "--eval-limit", "32",
                 "--epochs", "1", "--layer-repeats", "1", "--latency-batch-sizes", "1",
                 "--latency-repeats", "1", "--out", str(out), "--no-progress"])
    assert code == 0 and "packed bytes" in capsys.readouterr().out
    assert (out / "checkpoint" / "meta.json").is_file() and (out / "report").is_dir()
