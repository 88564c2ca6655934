"""``frugalnn evaluate`` and ``frugalnn report`` end to end on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from frugalnn.cli import main
from frugalnn.cli.evaluate import parse_floats, parse_ints
from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.evaluation import load_records, load_summary
from frugalnn.models import create_model
from frugalnn.train.checkpoint import save_checkpoint


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=[1, 8, 8], hidden=16, depth=1)
    return save_checkpoint(tmp_path / "train" / "checkpoint", model, {"epoch": 0})


def _eval_args(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(ckpt), "--data", "digits", "--limit", "40", "--batch-size", "16",
            "--latency-batch-sizes", "1,8", "--latency-repeats", "2", "--no-progress",
            "--threads", "1", "--out", str(out), *extra]


def test_evaluate_cli_writes_run_dir(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    # A run directory holding checkpoint/ is accepted as well as the checkpoint itself.
    assert main(_eval_args(checkpoint.parent, out)) == 0
    for name in ("records.csv", "batches.csv", "summary.json", "config.json",
                 "report/report.md", "report/report.html", "report/accuracy_vs_flops.png"):
        assert (out / name).is_file(), name
    summary = load_summary(out)
    assert summary["method"] == "baseline" and summary["model"] == "mlp"
    (row,) = summary["budgets"]
    # mlp: Linear(64, 16) + Linear(16, 10) = 2 * (64*16 + 16*10) FLOPs per example.
    assert row["flops"] == 2 * (64 * 16 + 16 * 10) and row["examples"] == 40
    assert {(r["batch_size"]) for r in summary["latency"]} == {1, 8}
    # Accuracy equals a direct evaluation of the same checkpoint.
    from frugalnn.train.checkpoint import load_model

    model = load_model(checkpoint)
    ds = load_splits("digits", test_limit=40).test  # the same seeded subset as --limit 40
    x = torch.stack([ds[i][0] for i in range(40)])
    y = torch.tensor([int(ds[i][1]) for i in range(40)])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert row["accuracy"] == pytest.approx(acc)
    assert len(load_records(out)) == 40
    # The validation split (10 % of train, seeded) is evaluated too, where points are chosen.
    val = load_summary(out / "validation")
    assert val["split"] == "validation" and val["examples"] == 144 == summary["validation"][
        "examples"]
    assert summary["validation"]["fingerprint"] == val["fingerprint"]
    assert summary["split"] == "test" and summary["fingerprint"]["count"] == 40
    assert "MFLOPs/example" in capsys.readouterr().out

    # Existing output needs --force; then it is replaced.
    assert main(_eval_args(checkpoint, out)) == 2
    assert "--force" in capsys.readouterr().err
    assert main(_eval_args(checkpoint, out, "--force", "--method", "again")) == 0
    assert load_summary(out)["method"] == "again"


def test_evaluate_cli_bad_input(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    assert main(_eval_args(checkpoint, tmp_path / "o", "--budgets", "0.5")) == 2
    assert "no budget knob" in capsys.readouterr().err
    assert main(_eval_args(tmp_path / "nowhere", tmp_path / "o")) == 2
    assert main(["evaluate", str(checkpoint), "--data", "nodata", "--out", out]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["evaluate", str(checkpoint), "--data", "digits", "--batch-size", "0",
                 "--out", out]) == 2
    assert main(_eval_args(checkpoint, tmp_path / "o", "--baseline", str(tmp_path))) == 2


def test_report_cli_puts_runs_on_one_plane(checkpoint: Path, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_eval_args(checkpoint, a)) == 0
    assert main(_eval_args(checkpoint, b, "--method", "other", "--baseline", str(a))) == 0
    assert load_summary(b)["baseline_source"] == "given"
    rep = tmp_path / "rep"
    assert main(["report", str(a), str(b), "--out", str(rep), "--title", "Two"]) == 0
    md = (rep / "report.md").read_text()
    assert md.startswith("# Two") and "other (mlp)" in md and "baseline (mlp)" in md
    assert json.loads((rep / "frontier.json").read_text()).keys() == {"a", "b"}
    assert main(["report", str(a), "--out", str(rep)]) == 2
    assert main(["report", str(a), "--out", str(rep), "--force"]) == 0
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2


def test_parsers() -> None:
    assert parse_floats(["0.5,0.8", "0.9"]) == [0.5, 0.8, 0.9]
    assert parse_floats(None) is None
    assert parse_ints("1,64", "x") == [1, 64] and parse_ints("none", "x") == []
    with pytest.raises(UserError):
        parse_floats(["a"])
    with pytest.raises(UserError):
        parse_ints("1,-2", "x")


def test_report_is_derived_from_the_records(checkpoint: Path, tmp_path: Path) -> None:
    import csv

    run = tmp_path / "run"
    assert main(_eval_args(checkpoint, run)) == 0
    rows = list(csv.reader((run / "records.csv").open()))
    col = rows[0].index("correct")
    for row in rows[1:]:
        row[col] = "1"
    with (run / "records.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    frontier = json.loads((tmp_path / "rep" / "frontier.json").read_text())
    assert frontier["run"]["frontier"][0]["accuracy"] == 1.0


def _mlp_checkpoint(path: Path, hidden: int) -> Path:
    torch.manual_seed(0)
    model = create_model("mlp", input_shape=[1, 8, 8], hidden=hidden, depth=1)
    return save_checkpoint(path / "checkpoint", model, {"epoch": 0})


def test_static_model_without_baseline_is_not_compared_with_itself(
        checkpoint: Path, tmp_path: Path) -> None:
    # A model with half the FLOPs of the baseline: 2 * (64*8 + 8*10) vs 2 * (64*16 + 16*10).
    small = _mlp_checkpoint(tmp_path / "small", 8)
    alone, base, compared = tmp_path / "alone", tmp_path / "base", tmp_path / "cmp"
    assert main(_eval_args(small, alone, "--method", "smaller", "--val-fraction", "0")) == 0
    s = load_summary(alone)
    assert s["baseline_flops"] is None and s["baseline_source"] == "none"
    assert s["budgets"][0]["flops_saving"] is None  # unknown, not 0 %
    assert "none recorded (savings unknown)" in (alone / "report" / "report.md").read_text()
    # --baseline RUN: its summary gives the reference FLOPs and accuracy.
    assert main(_eval_args(checkpoint, base, "--val-fraction", "0")) == 0
    assert main(_eval_args(small, compared, "--method", "smaller", "--val-fraction", "0",
                           "--baseline", str(base))) == 0
    s, b = load_summary(compared), load_summary(base)
    assert s["baseline_source"] == "given" and s["baseline_run"] == str(base)
    assert s["baseline_flops"] == b["budgets"][0]["flops"] == 2 * s["budgets"][0]["flops"]
    assert s["baseline_accuracy"] == b["budgets"][0]["accuracy"]
    assert s["budgets"][0]["flops_saving"] == pytest.approx(0.5)


def test_evaluate_cli_validation_flags(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(_eval_args(checkpoint, out, "--val-limit", "30")) == 0
    assert load_summary(out)["validation"]["examples"] == 30
    assert len(load_records(out / "validation")) == 30
    # --val-fraction 0: no validation; records a previous evaluation left there go.
    assert main(_eval_args(checkpoint, out, "--val-fraction", "0", "--force")) == 0
    assert "validation" not in load_summary(out)
    assert not (out / "validation" / "records.csv").exists()
    assert "oracle" in (out / "report" / "report.md").read_text()
    assert main(_eval_args(checkpoint, tmp_path / "x", "--val-fraction", "1.5")) == 2
    assert "--val-fraction" in capsys.readouterr().err
    assert main(_eval_args(checkpoint, tmp_path / "b2", "--baseline",
                           str(tmp_path / "nothing"))) == 2
    # A baseline run whose validation records hold other examples is refused.
    base = tmp_path / "base"
    assert main(_eval_args(checkpoint, base, "--val-limit", "20")) == 0
    assert main(_eval_args(checkpoint, tmp_path / "c", "--val-limit", "25",
                           "--baseline", str(base))) == 2
    assert "other examples" in capsys.readouterr().err


def test_report_cli_refuses_runs_on_different_examples(
        checkpoint: Path, tmp_path: Path, capsys) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(_eval_args(checkpoint, a, "--val-fraction", "0")) == 0
    assert main(_eval_args(checkpoint, b, "--val-fraction", "0", "--seed", "1")) == 0
    assert main(_eval_args(checkpoint, c, "--val-fraction", "0", "--limit", "30")) == 0
    rep = tmp_path / "rep"
    capsys.readouterr()
    # Same count, other examples (another seed draws another subset): refused.
    assert main(["report", str(a), str(b), "--out", str(rep)]) == 2
    err = capsys.readouterr().err
    assert "different examples" in err and "--allow-mixed-examples" in err
    assert len(err.strip().splitlines()) == 1 and not rep.exists()
    assert main(["report", str(a), str(c), "--out", str(rep)]) == 2
    assert main(["report", str(a), str(c), "--out", str(rep), "--allow-mixed-examples"]) == 0
    md = (rep / "report.md").read_text()
    assert "**Mixed examples**" in md and "--allow-mixed-examples" in md


def test_evaluate_cli_without_a_train_split(checkpoint: Path, tmp_path: Path, capsys,
                                            monkeypatch) -> None:
    import frugalnn.cli.common as common

    def no_train(*args, **kwargs):
        raise UserError("this dataset has no train split")

    monkeypatch.setattr(common, "load_splits_from_args", no_train)
    out = tmp_path / "eval"
    assert main(_eval_args(checkpoint, out)) == 0
    assert "evaluating without validation" in capsys.readouterr().err
    summary = load_summary(out)
    assert "validation" not in summary and summary["examples"] == 40
    # The same seeded subset as with a train split.
    assert summary["fingerprint"]["sha256"] == _fingerprint_with_splits(checkpoint, tmp_path)


def _fingerprint_with_splits(checkpoint: Path, tmp_path: Path) -> str:
    from frugalnn.evaluation import evaluate_into
    from frugalnn.train.checkpoint import load_model

    rec = evaluate_into(load_model(checkpoint), load_splits("digits", test_limit=40).test,
                        tmp_path / "ref", batch_size=16, latency_batch_sizes=(),
                        progress=False)
    return rec.meta["fingerprint"]["sha256"]
