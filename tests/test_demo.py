"""``frugalnn demo``: baseline, method hooks (missing, broken, working) and one report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from frugalnn.analysis.frontier import Point
from frugalnn.cli import main
from frugalnn.demo import DEMO_HOOKS, DEMO_SIZES, run_demo
from frugalnn.evaluation import load_records, load_summary
from frugalnn.report.build import method_verdict
from frugalnn.report.plots import accuracy_limits, plot_plane

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

GOOD = '''
from pathlib import Path

def run_demo(ctx):
    model, run = ctx.train_baseline()          # cached: the demo's own baseline
    again, run2 = ctx.train_baseline()
    assert run == run2 == ctx.baseline_run and model is not again
    out = ctx.evaluate_run(model, "copy", method="copy")
    (out / "extras").mkdir()
    (out / "extras" / "note.md").write_text("### Note from the copy hook\\n")
    return [out]
'''


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    pkg = tmp_path / "fakehooks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(textwrap.dedent(GOOD))
    (pkg / "broken.py").write_text("def run_demo(ctx):\n    raise RuntimeError('kaputt')\n")
    (pkg / "badimport.py").write_text("import no_such_package_xyz  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["fakehooks.good", "fakehooks.broken", "fakehooks.missing", "fakehooks.badimport"]


def test_demo_runs_hooks_and_reports(hooks: list[str], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    report = run_demo(out, quick=True, hooks=hooks, progress=False)
    assert report == out / "report" / "report.md"
    info = json.loads((out / "demo.json").read_text())
    status = {h["hook"]: h["status"] for h in info["hooks"]}
    assert status == {"fakehooks.good": "ran", "fakehooks.broken": "failed",
                      "fakehooks.missing": "not available", "fakehooks.badimport": "failed"}
    assert "kaputt" in (out / "logs" / "fakehooks.broken.txt").read_text()
    # The baseline's copy, evaluated by the hook, reproduces the baseline's records exactly.
    base, copy = load_records(out / "baseline"), load_records(out / "copy")
    for col in ("pred", "correct", "flops", "label"):
        np.testing.assert_array_equal(base.columns[col], copy.columns[col])
    assert load_summary(out / "copy")["baseline_source"] == "given"
    md = report.read_text()
    assert "### Note from the copy hook" in md and "Profile of the baseline" in md
    assert "| broken | failed |" in md and "| missing | not available |" in md
    assert (out / "report" / "accuracy_vs_flops.png").read_bytes().startswith(PNG_MAGIC)
    assert load_summary(out / "baseline")["budgets"][0]["accuracy"] > 0.8
    # The demo's splits: a validation split carved from training, both timed batch sizes.
    assert (out / "copy" / "validation" / "summary.json").is_file()
    assert {r["batch_size"] for r in load_summary(out / "copy")["latency"]} == {1, 64}
    assert "1293 training, 144 validation, 360 test examples" in md
    # One sentence per method run, against its baseline: the copy gains and loses nothing.
    line = next(x for x in md.splitlines() if x.startswith("- **copy**"))
    assert "copy: 0 % fewer FLOPs" in line
    assert line.endswith("for +0.0 pt accuracy (static model; times measured against the "
                         "baseline in interleaved rounds).")
    assert "faster at batch 64" in line or "slower at batch 64" in line


def test_strict_demo_fails_on_a_broken_hook(hooks: list[str], tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="kaputt"):
        run_demo(tmp_path / "d", quick=True, hooks=["fakehooks.broken"], strict=True,
                 progress=False)


def test_cli_demo_writes_report_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--quick", "--no-methods", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    for name in ("report.md", "report.html", "accuracy_vs_flops.png",
                 "accuracy_vs_latency_bs1.png"):
        assert (out / "report" / name).is_file()
    assert "report.md" in capsys.readouterr().out
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    other = tmp_path / "not_a_demo"
    other.mkdir()
    assert main(["demo", "--quick", "--no-methods", "--out", str(other), "--force"]) == 2
    assert "not written by" in capsys.readouterr().err
    assert other.is_dir()
    assert main(["demo", "--only", "nonsense", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_full_quick_demo_with_every_method(tmp_path: Path) -> None:
    """What `make demo` runs, with every hook that exists, failing on any broken one."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--strict", "--no-progress", "--out", str(out)]) == 0
    info = json.loads((out / "demo.json").read_text())
    assert [h["hook"] for h in info["hooks"]] == list(DEMO_HOOKS)
    assert all(h["status"] in ("ran", "not available") for h in info["hooks"])
    assert (out / "report" / "report.html").is_file()


def _series(base: float, points: list[float]) -> list[tuple[str, list[Point], bool]]:
    method = [Point(cost=float(i + 1), accuracy=a / 100, budget=i) for i, a in enumerate(points)]
    return [("baseline", [Point(10.0, base / 100, "static")], True), ("method", method, False)]


def test_accuracy_axis_is_set_from_the_data_near_the_baseline() -> None:
    # A frontier from 10 % to 99.5 % against a 99.7 % baseline: the 10 % point is clipped,
    # the axis spans 97.8 .. 99.7 with a margin, not 10 .. 100.
    low, high = accuracy_limits(_series(99.7, [10.0, 97.8, 98.6, 99.5]))
    assert 96.0 < low < 97.8 and 99.7 < high <= 100.0
    # Within the window (15 pt) below the baseline a point sets the range ...
    low, _ = accuracy_limits(_series(92.0, [77.0, 90.0, 93.0]))
    assert 70.0 < low < 77.0
    # ... and a wider window takes in lower points.
    low, _ = accuracy_limits(_series(92.0, [60.0, 90.0, 93.0]), window=40.0)
    assert low < 60.0
    # Data at 100 %: the axis ends just above, so the marker is not cut.
    low, high = accuracy_limits(_series(100.0, [98.0, 100.0]))
    assert low < 98.0 and 100.0 <= high < 100.5
    # A narrow band is widened to a readable minimum span; no data: the full range.
    low, high = accuracy_limits(_series(95.0, [95.0]))
    assert high - low >= 2.0 and low < 95.0 < high
    assert accuracy_limits([]) == (0.0, 100.0)
    # Without a baseline the best point anchors the window.
    low, _ = accuracy_limits([("a", [Point(1.0, 0.9, 0), Point(2.0, 0.2, 1)], False)])
    assert 80.0 < low < 90.0


def test_plot_with_clipped_points(tmp_path: Path) -> None:
    path = plot_plane(_series(99.7, [10.0, 97.8, 99.5]), tmp_path / "p.png",
                      xlabel="MFLOPs per example", title="t")
    assert path.read_bytes().startswith(PNG_MAGIC)


def _summary(method: str, rows: list[tuple[str, float, float]],
             latency: dict[tuple[str, int], float] | None = None) -> dict:
    return {"method": method,
            "budgets": [{"label": lab, "budget": lab if lab == "static" else float(lab),
                         "flops": f, "accuracy": a} for lab, f, a in rows],
            "latency": [{"label": lab, "batch_size": bs, "per_example_ms": ms}
                        for (lab, bs), ms in (latency or {}).items()]}


def test_method_verdict_says_what_a_method_gained_or_lost() -> None:
    base = _summary("baseline", [("static", 1e6, 0.95)],
                    {("static", 1): 1.0, ("static", 64): 0.5})
    rows = [("0.3", 0.4e6, 0.90), ("0.5", 0.6e6, 0.946), ("1", 1e6, 0.95)]
    lat = {("0.3", 1): 0.8, ("0.5", 1): 1.25, ("1", 1): 1.3,
           ("0.3", 64): 0.2, ("0.5", 64): 0.25, ("1", 64): 0.55}
    run = _summary("early-exit SDN", rows, lat)
    # Chosen on test (no validation records): the cheapest budget within 1 pt is 0.5.
    assert method_verdict(run, base) == (
        "early-exit SDN: 40 % fewer FLOPs, 2.00x faster at batch 64, 1.25x slower at batch 1, "
        "for -0.4 pt accuracy (budget 0.5, chosen on test).")
    # Validation says 0.3 is within 1 pt: it is chosen there, and scored on test.
    val = _summary("early-exit SDN", [("0.3", 0.4e6, 0.945), ("0.5", 0.6e6, 0.95),
                                      ("1", 1e6, 0.95)])
    val_base = _summary("baseline", [("static", 1e6, 0.95)])
    assert method_verdict(run, base, validation=val, baseline_validation=val_base) == (
        "early-exit SDN: 60 % fewer FLOPs, 2.50x faster at batch 64, 1.25x faster at batch 1, "
        "for -5.0 pt accuracy (budget 0.3, chosen on validation).")
    # Timed at very different loads: the sentence gives both.
    loaded = {**run, "machine": {"loadavg": [5.2, 4.0, 3.0]}}
    assert method_verdict(loaded, {**base, "machine": {"loadavg": [1.0, 1.0, 1.0]}}).endswith(
        "(budget 0.5, chosen on test; timed at load 5.2, the baseline at 1.0).")
    # Timed against the baseline in interleaved rounds: that same-run ratio is used,
    # whatever the separately timed rows say.
    inter = {**loaded, "latency": [
        {**row, "interleaved": {"speedup": 1.6}} if row["label"] == "0.5" else row
        for row in run["latency"]]}
    assert method_verdict(inter, {**base, "machine": {"loadavg": [1.0, 1.0, 1.0]}}) == (
        "early-exit SDN: 40 % fewer FLOPs, 1.60x faster at batch 64, 1.60x faster at batch 1, "
        "for -0.4 pt accuracy (budget 0.5, chosen on test; times measured against the "
        "baseline in interleaved rounds).")
    # Nothing within 1 pt: the most accurate budget, and the sentence says so.
    worse = _summary("nas", [("static", 0.1e6, 0.80)], {("static", 64): 0.1})
    assert method_verdict(worse, base) == (
        "nas: 90 % fewer FLOPs, 5.00x faster at batch 64, for -15.0 pt accuracy "
        "(static model; no budget within 1 pt of the baseline).")


def test_demo_sizes_its_models_except_in_quick_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import frugalnn.train
    from frugalnn.data import get_dataset
    from frugalnn.demo import DEMO_FIT, DemoContext
    from frugalnn.models import create_model

    test = get_dataset("digits", "test", limit=8)
    ctx = DemoContext(out_dir=tmp_path, data="digits", data_dir=None, train_set=test,
                      test_set=test)
    assert ctx.model_kwargs("cnn_small")["widths"] == DEMO_SIZES[("digits", "cnn_small")][
        "widths"] == (64, 128, 256)
    assert ctx.model_kwargs("cnn_small")["image_size"] == 8
    assert ctx.latency_batch_sizes == (1, 64)
    # Training settings per registry model: the demo ViT at its own learning rate.
    seen: list[dict] = []
    monkeypatch.setattr(frugalnn.train, "fit", lambda model, loader, **kw: seen.append(kw))
    vit = create_model("vit_tiny", **{**ctx.model_kwargs("vit_tiny"), "patch_size": 2,
                                      "dim": 16, "depth": 1, "heads": 2})
    ctx.fit(vit, epochs=1)
    ctx.fit(vit, epochs=1, lr=0.5)
    ctx.fit(create_model("cnn_small", **ctx.model_kwargs("cnn_small")), epochs=1)
    assert [kw["lr"] for kw in seen] == [DEMO_FIT["vit_tiny"]["lr"], 0.5, 3e-3]
    ctx.quick = True
    assert "widths" not in ctx.model_kwargs("cnn_small")
