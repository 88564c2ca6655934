"""benchmarks/prune_resnet56.py: the per-seed table beside the same-training control."""

from __future__ import annotations

import argparse
import json

import pytest
from bench_scripts import load_benchmark

from frugalnn.errors import UserError

PROTOCOL = {"train_limit": 45000, "val_limit": 5000, "test_limit": 10000, "epochs": 2,
            "lr": 0.01, "augment": True}


def _stack(tmp_path, seeds, **changed) -> str:
    rows = [{"seed": s, "control": {"test": 90.0 + s}, "low-rank": {"test": 89.0 + s}}
            for s in seeds]
    path = tmp_path / f"stack{'-'.join(map(str, seeds))}.json"
    path.write_text(json.dumps({"args": {**PROTOCOL, "seed": 0, "val_fraction": 0.1,
                                         **changed}, "rows": rows}))
    return str(path)


def _tuned(seeds) -> list[dict]:
    return [{"seed": s, "epochs": 2, "pruned_accuracy": (88.0 + s + 0.5 * s) / 100}
            for s in seeds]


def test_compare_pairs_each_seed_with_its_control(tmp_path) -> None:
    bench = load_benchmark("prune_resnet56")
    a = argparse.Namespace(**PROTOCOL, compare=[_stack(tmp_path, [0, 1]),
                                                _stack(tmp_path, [2])])
    text = "\n".join(bench.compare_lines(a, _tuned([2, 0, 1])))
    # low-rank - control: -1 every seed; pruned - control: -2, -1.5, -1
    assert "| 0 | 90.00 | 89.00 | 88.00 | -1.00 | -2.00 |" in text
    assert "| 2 | 92.00 | 91.00 | 91.00 | -1.00 | -1.00 |" in text
    assert "| mean ± sd | | | | -1.00 ± 0.00 | -1.50 ± 0.50 |" in text


@pytest.mark.parametrize("changed, message", [
    ({"epochs": 4}, "epochs=4"),
    ({"augment": False}, "augment=False"),
    ({"seed": 1}, "other splits"),
])
def test_compare_refuses_another_protocol(tmp_path, changed, message) -> None:
    bench = load_benchmark("prune_resnet56")
    a = argparse.Namespace(**PROTOCOL, compare=[_stack(tmp_path, [0], **changed)])
    with pytest.raises(UserError, match=message):
        bench.compare_lines(a, _tuned([0]))


def test_compare_refuses_a_seed_without_control(tmp_path) -> None:
    bench = load_benchmark("prune_resnet56")
    a = argparse.Namespace(**PROTOCOL, compare=[_stack(tmp_path, [0])])
    with pytest.raises(UserError, match=r"no control for seed\(s\) \[1\]"):
        bench.compare_lines(a, _tuned([0, 1]))


@pytest.mark.parametrize("content", [None, "not json", "[]"])
def test_compare_refuses_a_file_that_is_not_a_stack_run(tmp_path, content) -> None:
    bench = load_benchmark("prune_resnet56")
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    a = argparse.Namespace(**PROTOCOL, compare=[str(path)])
    with pytest.raises(UserError, match="not the --json of a quant_stack"):
        bench.compare_lines(a, _tuned([0]))
