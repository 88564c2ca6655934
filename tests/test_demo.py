"""``frugalnn demo``: baseline, method hooks (missing, broken, working) and one report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from frugalnn.cli import main
from frugalnn.demo import DEMO_HOOKS, run_demo
from frugalnn.evaluation import load_records, load_summary

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
