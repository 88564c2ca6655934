"""Operating points chosen on validation records, scored on test; oracle labels; example sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from frugalnn.analysis.frontier import frontier_summary
from frugalnn.errors import UserError
from frugalnn.evaluation import evaluate_into, load_summary
from frugalnn.report import write_report

# budget -> (FLOPs per example, test accuracy, validation accuracy). On test the best
# budget under 75 % of the cost is 0.4; on validation it is 0.6, whose test accuracy is lower.
POINTS = {0.2: (20.0, 0.70, 0.75), 0.4: (40.0, 0.89, 0.85), 0.6: (60.0, 0.86, 0.915),
          1.0: (100.0, 0.90, 0.92)}


def _rows(split: int) -> list[dict]:
    return [{"budget": b, "label": f"{b:g}", "flops": f, "macs": f / 2,
             "accuracy": accs[split - 1], "loss": 0.1}
            for b, (f, *accs) in POINTS.items()]


def _summaries(val_baseline_accuracy: float | None = 0.92) -> tuple[dict, dict]:
    test = {"method": "toy", "baseline_flops": 100.0, "baseline_accuracy": 0.90,
            "baseline_source": "self", "examples": 50, "budgets": _rows(1)}
    val = {"method": "toy", "baseline_flops": 100.0, "split": "validation",
           "baseline_accuracy": val_baseline_accuracy, "examples": 30, "budgets": _rows(2)}
    return test, val


def _by(rows: list[dict], key: str) -> dict:
    return {r[key]: r for r in rows}


def test_points_are_chosen_on_validation_and_scored_on_test() -> None:
    test, val = _summaries()
    res = frontier_summary(test, validation=val)
    assert res["chosen_on"] == "validation"
    assert res["validation_baseline"]["accuracy"] == 0.92
    at = _by(res["at_fraction"], "fraction")[0.75]
    # Validation picks budget 0.6 (91.5 % there); the report gives its *test* numbers.
    assert at["chosen_on"] == "validation" and at["oracle"] is False
    assert at["point"]["budget"] == 0.6 and at["point"]["accuracy"] == 0.86
    assert at["validation_point"]["accuracy"] == 0.915
    # The test-chosen (oracle) answer, kept for comparison, is the flattering 0.4.
    oracle = _by(res["oracle"]["at_fraction"], "fraction")[0.75]
    assert oracle["point"]["budget"] == 0.4 and oracle["chosen_on"] == "test" and oracle["oracle"]
    # Within 1 pt of the validation baseline (92 %): cheapest is 0.6 on validation.
    within = _by(res["within"], "tolerance_points")
    assert within[1.0]["point"]["budget"] == 0.6 and within[1.0]["point"]["cost"] == 60.0
    assert within[1.0]["saving"] == pytest.approx(0.4)  # measured against the test baseline
    assert within[0.5]["point"]["budget"] == 0.6
    oracle_within = _by(res["oracle"]["within"], "tolerance_points")
    assert oracle_within[1.0]["point"]["budget"] == 0.4
    assert oracle_within[1.0]["saving"] == pytest.approx(0.6)
    assert oracle_within[0.5]["point"]["budget"] == 1.0


def test_without_validation_the_points_are_labelled_oracle() -> None:
    test, _ = _summaries()
    res = frontier_summary(test)
    assert res["chosen_on"] == "test" and res["validation_baseline"] is None
    for row in res["at_fraction"] + res["within"]:
        assert row["chosen_on"] == "test" and row["oracle"] is True
        assert row["validation_point"] is None
    assert _by(res["at_fraction"], "fraction")[0.75]["point"]["budget"] == 0.4


def test_unknown_validation_baseline_accuracy_keeps_tolerance_rows_oracle() -> None:
    # Fractions of a cost can be chosen on validation; "within X pt of the baseline"
    # cannot without the baseline's validation accuracy, so those rows stay oracle.
    test, val = _summaries(val_baseline_accuracy=None)
    res = frontier_summary(test, validation=val)
    assert {r["chosen_on"] for r in res["at_fraction"]} == {"validation"}
    assert {r["chosen_on"] for r in res["within"]} == {"test"}


def _run(path: Path, method: str, test_rows: list[dict], *, val_rows: list[dict] | None = None,
         fingerprint: str | None = "a" * 64, examples: int = 50, **meta) -> Path:
    path.mkdir(parents=True)
    summary = {"method": method, "model": "toy", "budget_name": "threshold",
               "examples": examples, "batch_size": 10, "threads": 1, "device": "cpu",
               "machine": {}, "budgets": test_rows, "latency": [], "split": "test", **meta}
    if fingerprint:
        summary["fingerprint"] = {"count": examples, "sha256": fingerprint}
    if val_rows is not None:
        (path / "validation").mkdir()
        val = {**summary, "split": "validation", "examples": 30, "budgets": val_rows,
               "fingerprint": {"count": 30, "sha256": "b" * 64}}
        (path / "validation" / "summary.json").write_text(json.dumps(val))
        summary["validation"] = {"dir": "validation", "examples": 30}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def _static(acc_test: float, acc_val: float) -> tuple[list[dict], list[dict]]:
    row = {"budget": "static", "label": "static", "flops": 100.0, "macs": 50.0, "loss": 0.1}
    return [{**row, "accuracy": acc_test}], [{**row, "accuracy": acc_val}]


def test_report_chooses_on_validation_and_says_so(tmp_path: Path) -> None:
    base_test, base_val = _static(0.90, 0.92)
    base = _run(tmp_path / "baseline", "baseline", base_test, val_rows=base_val,
                baseline_source="none")
    ee = _run(tmp_path / "ee", "early_exit", _rows(1), val_rows=_rows(2),
              baseline_flops=100.0, baseline_accuracy=0.90, baseline_source="self")
    old = _run(tmp_path / "old", "early_exit", _rows(1), fingerprint=None,
               baseline_flops=100.0, baseline_accuracy=0.90, baseline_source="self")
    out = tmp_path / "rep"
    write_report([base, ee, old], out)
    frontier = json.loads((out / "frontier.json").read_text())
    # The validation baseline comes from the baseline run's own validation records.
    assert frontier["ee"]["validation_baseline"]["accuracy"] == 0.92
    at = _by(frontier["ee"]["at_fraction"], "fraction")[0.75]
    assert at["chosen_on"] == "validation" and at["point"]["budget"] == 0.6
    assert _by(frontier["old"]["at_fraction"], "fraction")[0.75]["oracle"] is True
    assert frontier["baseline"]["chosen_on"] == "validation"
    md = (out / "report.md").read_text()
    assert "| early_exit (toy) [ee] | baseline | 90.00 | validation | " in md
    assert "| early_exit (toy) [old] | baseline | 90.00 | test (oracle) | " in md
    assert "operating points chosen on: the validation records, 30 (validation" in md
    assert "the test records (no validation records: oracle)" in md
    # The run without a fingerprint was compared by example count, and the report says so.
    assert "Run(s) old record no example fingerprint" in md


def test_report_refuses_runs_on_different_examples(tmp_path: Path) -> None:
    rows, _ = _static(0.9, 0.9)
    a = _run(tmp_path / "a", "baseline", rows)
    b = _run(tmp_path / "b", "other", rows, fingerprint="c" * 64)
    with pytest.raises(UserError, match="different examples: a .*b ") as err:
        write_report([a, b], tmp_path / "r")
    assert "\n" not in str(err.value) and not (tmp_path / "r").exists()
    write_report([a, b], tmp_path / "r", allow_mixed_examples=True)
    assert "**Mixed examples**" in (tmp_path / "r" / "report.md").read_text()
    # Without fingerprints, different example counts are refused as well.
    c = _run(tmp_path / "c", "other", rows, fingerprint=None, examples=49)
    with pytest.raises(UserError, match="different numbers of examples"):
        write_report([a, c], tmp_path / "r2")
    d = _run(tmp_path / "d", "other", rows, fingerprint=None)
    write_report([a, d], tmp_path / "r3")  # same count, one without fingerprint: allowed


class _Half(nn.Module):
    """A static classifier half as expensive as ``nn.Linear(4, 6) + nn.Linear(6, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_evaluate_into_saves_validation_and_takes_a_baseline_run(tmp_path: Path) -> None:
    test, val = _data(20, 1), _data(12, 2)
    big = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))  # 2*(24+18)=84 FLOPs
    base = tmp_path / "base"
    rec = evaluate_into(big, test, base, val_dataset=val, method="baseline",
                        latency_batch_sizes=(), progress=False)
    assert rec.meta["validation"]["examples"] == 12 and rec.meta["baseline_flops"] is None
    assert load_summary(base / "validation")["split"] == "validation"
    # A cheaper static model without a baseline: no baseline, saving unknown.
    alone = evaluate_into(_Half(), test, tmp_path / "alone", val_dataset=val,
                          latency_batch_sizes=(), progress=False)
    assert alone.meta["baseline_source"] == "none"
    assert alone.per_budget_summary()[0]["flops_saving"] is None
    # With the baseline run: test and validation baselines come from its two record sets.
    cmp = evaluate_into(_Half(), test, tmp_path / "cmp", val_dataset=val, baseline_run=base,
                        method="half", latency_batch_sizes=(), progress=False)
    assert cmp.meta["baseline_flops"] == 84.0 and cmp.meta["baseline_run"] == str(base)
    assert cmp.per_budget_summary()[0]["flops_saving"] == pytest.approx(1 - 24 / 84)
    val_base = load_summary(base / "validation")["budgets"][0]["accuracy"]
    assert load_summary(tmp_path / "cmp" / "validation")["baseline_accuracy"] == val_base
    # A baseline evaluated on other test examples is refused.
    with pytest.raises(UserError, match="other examples"):
        evaluate_into(_Half(), _data(20, 5), tmp_path / "x", baseline_run=base,
                      latency_batch_sizes=(), progress=False)
