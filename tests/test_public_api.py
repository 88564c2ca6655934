"""``import frugalnn``: the version, every public name, and what the main ones compute."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch

import frugalnn


def test_version_is_the_installed_package_version() -> None:
    assert frugalnn.__version__ == importlib.metadata.version("frugalnn")


def test_all_lists_the_public_table() -> None:
    assert set(frugalnn.__all__) == {"__version__", *frugalnn._PUBLIC}
    assert set(frugalnn.__all__) <= set(dir(frugalnn))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        frugalnn.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", sorted(frugalnn._PUBLIC))
def test_every_public_name_resolves(name: str) -> None:
    module, attr = frugalnn._PUBLIC[name]
    if module.startswith("frugalnn.methods.") and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    value = getattr(frugalnn, name)
    assert value is getattr(importlib.import_module(module), attr)
    assert getattr(frugalnn, name) is value  # cached after the first lookup


def test_each_method_has_one_entry_point_and_one_config() -> None:
    methods = {m.rsplit(".", 2)[-2] for m, _ in frugalnn._PUBLIC.values()
               if m.startswith("frugalnn.methods.")}
    for method in methods:
        names = [n for n, (m, _) in frugalnn._PUBLIC.items()
                 if m == f"frugalnn.methods.{method}.recipe"]
        configs = [n for n in names if n.endswith("Config")]
        assert len(configs) == 1 and len(names) == 2, (method, names)


def test_measure_counts_the_macs_of_a_registry_mlp() -> None:
    model = frugalnn.create_model("mlp", input_shape=[1, 8, 8], hidden=16, depth=1,
                                  num_classes=10).eval()
    report = frugalnn.measure(model, torch.randn(1, 1, 8, 8))
    macs = 64 * 16 + 16 * 10  # Linear(64 -> 16), Linear(16 -> 10)
    assert report.macs == macs and report.flops == 2 * macs
    assert report.params == (64 * 16 + 16) + (16 * 10 + 10)
    batch = frugalnn.measure(model, torch.randn(3, 1, 8, 8))
    assert batch.flops == 3 * report.flops and batch.flops_per_example == report.flops


def test_save_then_load_gives_identical_outputs(tmp_path) -> None:
    torch.manual_seed(0)
    model = frugalnn.create_model("mlp", input_shape=[1, 8, 8], hidden=12, depth=2).eval()
    frugalnn.save(tmp_path / "ckpt", model)
    loaded = frugalnn.load(tmp_path / "ckpt")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert type(loaded) is type(model) and not loaded.training


def test_splits_through_the_public_api() -> None:
    splits = frugalnn.load_splits("digits", val_fraction=0.1, seed=0)
    assert isinstance(splits, frugalnn.Splits)
    assert len(splits.train) + len(splits.val) == 1437 and len(splits.test) == 360
    assert splits.val_spec == {"source": "train", "fraction": 0.1, "seed": 0, "examples": 144}
