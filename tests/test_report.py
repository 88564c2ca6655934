"""Reports are written from saved summaries only and show every run on one plane."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from frugalnn.errors import UserError
from frugalnn.report import load_runs, write_report
from frugalnn.report.document import Document, markdown_to_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(path: Path, method: str, points: list[tuple[float, float, float]], *,
         budget_name: str = "threshold", latency: bool = True, **meta) -> Path:
    """A run directory with a hand-made summary: points are (budget, flops, accuracy)."""
    path.mkdir(parents=True)
    rows = [{"budget": b, "label": "static" if b == "static" else f"{b:g}", "flops": f,
             "macs": f / 2, "accuracy": a, "loss": 1 - a, "time_per_example_ms": f / 1e6,
             "decisions": {"exit": 1.0}} for b, f, a in points]
    lat = [{"budget": b, "label": r["label"], "batch_size": bs, "median_ms": f * bs / 1e6,
            "per_example_ms": f / 1e6} for (b, f, _), r in zip(points, rows) for bs in (1, 8)]
    summary = {"method": method, "model": "toy", "budget_name": budget_name, "examples": 100,
               "batch_size": 10, "threads": 1, "device": "cpu",
               "machine": {"cores": 2, "torch": "x"}, "budgets": rows,
               "latency": lat if latency else [], **meta}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    base = _run(tmp_path / "baseline", "baseline", [("static", 4e6, 0.90)],
                budget_name="static", baseline_flops=4e6, baseline_accuracy=0.90)
    ee = _run(tmp_path / "early_exit", "early_exit",
              [(0.5, 1e6, 0.70), (0.8, 2e6, 0.896), (0.9, 3e6, 0.88), (1.0, 5e6, 0.905)],
              baseline_flops=5e6, baseline_accuracy=0.905)
    (ee / "extras").mkdir()
    (ee / "extras" / "exits.md").write_text(
        "### Exit histogram\n\n| exit | n |\n|---|---|\n| 0 | 7 |\n"
    )
    (ee / "extras" / "map.png").write_bytes(PNG_MAGIC + b"fake")
    return [base, ee]


def test_report_has_plots_tables_and_extras(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    md_path = write_report(runs, out, title="Toy report")
    assert md_path == out / "report.md"
    for name in ("accuracy_vs_flops.png", "accuracy_vs_latency_bs1.png",
                 "accuracy_vs_latency_bs8.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    md = md_path.read_text()
    html = (out / "report.html").read_text()
    # Images are referenced by relative paths that exist.
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert not src.startswith("/") and (out / src).is_file()
    assert "extras/early_exit/map.png" in html
    assert "### Exit histogram" in md and "<h3>Exit histogram</h3>" in html
    # The early-exit run is compared with the baseline run (4 MFLOPs, 90 %), not itself.
    frontier = json.loads((out / "frontier.json").read_text())
    ee = frontier["early_exit"]
    assert ee["baseline"]["cost"] == 4e6 and ee["baseline"]["accuracy"] == 0.90
    at = {r["fraction"]: r["point"] for r in ee["at_fraction"]}
    assert at[0.25]["accuracy"] == 0.70  # 1 MFLOPs <= 25 % of 4
    assert at[0.5]["accuracy"] == 0.896
    assert at[0.75]["accuracy"] == 0.896  # 3 MFLOPs point is dominated
    assert at[1.0]["accuracy"] == 0.896  # 5 MFLOPs > 4 MFLOPs
    within = {r["tolerance_points"]: r for r in ee["within"]}
    assert within[0.5]["point"]["cost"] == 2e6 and within[0.5]["saving"] == pytest.approx(0.5)
    # The tables show those numbers.
    assert "89.60 % (2 MFLOPs, budget 0.8)" in md
    assert "50.0 %" in md
    assert "<table>" in html and "early_exit (toy)" in html
    assert "mean exit" in md
    # Counted vs measured speed-up at the same operating point (latency here = FLOPs / 1e6).
    assert "| early_exit (toy) | 0.5 pt | 0.8 | 2.00× | 2.00× | 2.00× | run baseline |" in md


def test_report_without_latency_uses_eval_time(tmp_path: Path) -> None:
    run = _run(tmp_path / "r", "baseline", [("static", 1e9, 0.5)], budget_name="static",
               latency=False)
    write_report([run], tmp_path / "out")
    assert (tmp_path / "out" / "accuracy_vs_eval_time.png").is_file()
    assert "GFLOPs" in (tmp_path / "out" / "report.md").read_text()


def test_existing_out_dir_needs_force(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(runs, out)
    with pytest.raises(UserError, match="--force"):
        write_report(runs, out)
    write_report(runs[:1], out, force=True)
    assert "early_exit" not in (out / "report.md").read_text()


def test_bad_run_dirs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run directories"):
        load_runs([])
    with pytest.raises(UserError, match="not a directory"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="summary.json"):
        load_runs([tmp_path / "empty"])
    (tmp_path / "empty" / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_runs([tmp_path / "empty"])


def test_same_dir_names_get_unique_labels(tmp_path: Path) -> None:
    a = _run(tmp_path / "a" / "run", "baseline", [("static", 1.0, 0.5)], budget_name="static")
    b = _run(tmp_path / "b" / "run", "baseline", [("static", 2.0, 0.6)], budget_name="static")
    names = [r.name for r in load_runs([a, b])]
    assert len(set(names)) == 2


def test_document_renders_both_formats_and_escapes() -> None:
    doc = Document("T <1>")
    doc.heading("H")
    doc.table(["a|b", "c"], [["<x>", None]])
    doc.paragraph("use `x<y`")
    md, html = doc.to_markdown(), doc.to_html()
    assert "| a\\|b | c |" in md and "| <x> |  |" in md
    assert "&lt;x&gt;" in html and "<code>x&lt;y</code>" in html and "T &lt;1&gt;" in html


def test_markdown_subset_to_html() -> None:
    html = markdown_to_html("# A\n\ntext here\nmore\n\n- one\n- two\n\n| h | i |\n|:-|-:|\n"
                            "| 1 | 2 |\n\n```\ncode <b>\n```\n")
    assert "<h1>A</h1>" in html and "<p>text here more</p>" in html
    assert "<li>one</li><li>two</li>" in html
    assert "<th>h</th><th>i</th>" in html and "<td>1</td><td>2</td>" in html
    assert "<pre>code &lt;b&gt;</pre>" in html


def test_html_renders_markdown_emphasis(runs: list[Path], tmp_path: Path) -> None:
    doc = Document("T")
    doc.paragraph("cost **at most** that, an *estimate* and `x**2*y*`; 2 * 3 * 4 and a*b*c")
    doc.table(["**h**"], [["*em* <b>"], ["`**k**`"]])
    doc.bullets(["**b**"])
    html = doc.to_html()
    assert "<strong>at most</strong>" in html and "<em>estimate</em>" in html
    assert "<code>x**2*y*</code>" in html  # code spans are left as they are
    assert "2 * 3 * 4 and a*b*c" in html  # no emphasis around spaces or inside words
    assert "<th><strong>h</strong></th>" in html and "<td><em>em</em> &lt;b&gt;</td>" in html
    assert "<td><code>**k**</code></td>" in html and "<li><strong>b</strong></li>" in html
    assert "**at most**" in doc.to_markdown()  # the Markdown keeps its own syntax
    assert markdown_to_html("a **b** c") == "<p>a <strong>b</strong> c</p>"
    # The report itself: no literal emphasis markers left in the HTML.
    write_report(runs, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<strong>at most</strong>" in page and "**" not in page


# -- model size as a cost axis ------------------------------------------------------------


def _size_table(md: str) -> dict[str, list[str]]:
    """Rows of the report's "Model size" table, by the run's label."""
    section = md.split("## Model size", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines()
            if line.startswith("|")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[2:]}


def test_report_size_axis_lists_the_bytes_each_model_stores(tmp_path: Path) -> None:
    """A float MLP and its dynamic int8 copy on digits: the size table gives each one's
    state-dict bytes, the int8 one several times smaller, and the size plot exists."""
    import torch

    from frugalnn.data.splits import load_splits
    from frugalnn.evaluation import evaluate_into
    from frugalnn.methods.quant.recipe import QuantConfig, quantize
    from frugalnn.models import create_model

    torch.manual_seed(0)
    splits = load_splits("digits", train_limit=32, val_limit=32, test_limit=64, seed=0)
    dense = create_model("mlp", input_shape=(1, 8, 8), hidden=32, depth=2).eval()
    int8 = quantize(dense, QuantConfig(mode="dynamic"))
    models = {"float": (dense, "baseline"), "int8": (int8, "int8")}
    for name, (model, method) in models.items():
        evaluate_into(model, splits.test, tmp_path / name, method=method,
                      latency_batch_sizes=(), progress=False)

    def stored(model: torch.nn.Module) -> int:  # what a checkpoint writes
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())

    linears = [m for m in dense.modules() if isinstance(m, torch.nn.Linear)]
    # By hand: fp32 weights and biases; int8 weights with per-channel fp64 scale and int64
    # zero point, fp32 biases, and a few bookkeeping scalars per layer.
    assert stored(dense) == sum(4 * (m.in_features + 1) * m.out_features for m in linears)
    int8_core = sum((m.in_features + 16 + 4) * m.out_features for m in linears)
    assert int8_core <= stored(int8) <= int8_core + 64 * len(linears)

    out = tmp_path / "report"
    md = write_report([tmp_path / "float", tmp_path / "int8"], out).read_text()
    table = _size_table(md)
    (float_row,) = [row for label, row in table.items() if label.startswith("baseline")]
    (int8_row,) = [row for label, row in table.items() if label.startswith("int8")]
    assert int(float_row[2].replace(",", "")) == stored(dense)
    assert int(int8_row[2].replace(",", "")) == stored(int8)
    assert "int8" in int8_row[3] and "int8" not in float_row[3]
    assert float(int8_row[4].rstrip("×")) == pytest.approx(stored(dense) / stored(int8),
                                                           abs=0.01)
    assert (out / "accuracy_vs_model_size.png").read_bytes().startswith(PNG_MAGIC)
    sizes = json.loads((out / "frontier.json").read_text())
    assert sizes["int8"]["model_size"]["model_bytes"] == stored(int8)


def test_report_run_without_recorded_size(runs: list[Path], tmp_path: Path) -> None:
    """Runs evaluated before sizes were recorded: 'size not recorded', no size plot; one
    run with a size beside them is drawn alone."""
    out = tmp_path / "old"
    md = write_report(runs, out).read_text()
    assert all(row[1] == "size not recorded" for row in _size_table(md).values())
    assert not (out / "accuracy_vs_model_size.png").exists()
    summary = json.loads((runs[1] / "summary.json").read_text())
    (runs[1] / "summary.json").write_text(json.dumps({**summary, "model_bytes": 2048}))
    md = write_report(runs, tmp_path / "mixed").read_text()
    table = _size_table(md)
    assert sorted(row[1] for row in table.values()) == ["2.00 KiB", "size not recorded"]
    assert (tmp_path / "mixed" / "accuracy_vs_model_size.png").is_file()
    assert "Not drawn (size not recorded): baseline" in md
