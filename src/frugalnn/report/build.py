"""``write_report``: plots and tables for one or more evaluated runs, from saved files only.

A report is regenerated from each run directory's ``summary.json`` (written by
:func:`frugalnn.evaluation.evaluate`), so ``frugalnn report`` never runs a model.
All runs share one cost–accuracy plane; a run whose method is ``baseline`` (a
static model) is drawn as a star and serves as the reference for the other
runs on the same model, unless a run recorded its own reference when it was
evaluated (``baseline_source == "given"``).

Operating points (accuracy at a fraction of the baseline's cost, lowest cost
within a tolerance) are chosen on each run's validation records and scored on
its test records (:func:`frugalnn.analysis.frontier.frontier_summary`); a run
without validation records gets test-chosen numbers, labelled as an oracle.
Runs evaluated on different examples (their fingerprints differ, or, for runs
without one, their example counts) are refused unless ``allow_mixed_examples``.

Exports timed with ``frugalnn export --time`` (``RUN/export/<format>/timing.json``)
add a "Runtimes" table: per run, eager PyTorch and each runtime side by side
(:mod:`frugalnn.report.runtimes`); their rows are the summary's ``runtimes`` and
each run's ``runtimes`` entry in ``frontier.json``.

Method-specific material goes in a run's ``extras/`` folder: every
``*.png`` there is copied next to the report and shown, every ``*.md`` is
included as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frugalnn.analysis.frontier import (
    DEFAULT_FRACTIONS,
    DEFAULT_TOLERANCES,
    VALIDATION,
    frontier_summary,
    latency_points,
    points_from_summary,
    size_points,
)
from frugalnn.cost.count import format_bytes
from frugalnn.errors import UserError
from frugalnn.evaluation import (
    RECORDS_FILE,
    SUMMARY_FILE,
    VALIDATION_DIR,
    atomic_writer,
    jsonable,
    load_records,
    load_summary,
)
from frugalnn.report.document import Document
from frugalnn.report.plots import flops_scale, plot_plane
from frugalnn.report.runtimes import load_runtimes, runtime_table

__all__ = ["RunView", "check_same_examples", "load_runs", "write_report", "write_run_report"]

EXTRAS_DIR = "extras"


@dataclass
class RunView:
    """One run directory as the report sees it."""

    path: Path
    name: str
    summary: dict[str, Any]
    baseline_flops: float | None = None
    baseline_accuracy: float | None = None
    baseline_from: str = ""
    reference: RunView | None = None  # a baseline run of the same model in the report
    #: Summary of the run's validation records (where operating points are chosen), if any.
    validation: dict[str, Any] | None = None
    val_baseline_flops: float | None = None
    val_baseline_accuracy: float | None = None

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or "?")

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or "?")

    @property
    def is_baseline(self) -> bool:
        return self.method == "baseline"

    @property
    def label(self) -> str:
        base = f"{self.method} ({self.model})"
        return base if self.name in (self.method, "") else f"{base} [{self.name}]"


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunView]:
    """Read each run's summary and decide which baseline each run is compared with."""
    if not run_dirs:
        raise UserError("no run directories given; pass one or more RUN_DIRs")
    runs: list[RunView] = []
    used: set[str] = set()
    for d in run_dirs:
        path = Path(d)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; pass run directories written by "
                            "`frugalnn evaluate` (or `frugalnn demo`)")
        summary = _summary_from_records(path)
        name = path.resolve().name
        if name in used:
            name = f"{path.resolve().parent.name}/{name}"
        k = 2
        while name in used:
            name = f"{path.resolve().name}-{k}"
            k += 1
        used.add(name)
        runtimes = load_runtimes(path)
        if runtimes:  # the exports' timings (frugalnn export --time), beside the records'
            summary = {**summary, "runtimes": runtimes}
        runs.append(RunView(path, name, summary, validation=_validation_of(path, summary)))
    references = {r.model: r for r in runs if r.is_baseline}
    for r in runs:
        ref = references.get(r.model)
        r.reference = ref if ref is not r else None
        source = r.summary.get("baseline_source")
        if r.is_baseline:
            # A baseline run is its own reference, on test and on validation.
            r.baseline_flops, r.baseline_accuracy = _reference_row(r.summary)
            r.val_baseline_flops, r.val_baseline_accuracy = _reference_row(r.validation)
            r.baseline_from = "itself"
        elif ref is not None and source != "given":
            r.baseline_flops, r.baseline_accuracy = _reference_row(ref.summary)
            r.val_baseline_flops, r.val_baseline_accuracy = _reference_row(ref.validation)
            if r.val_baseline_flops is None:
                r.val_baseline_flops = r.baseline_flops  # a cost: nearly the same on any examples
            r.baseline_from = ref.name
        else:
            r.baseline_flops = r.summary.get("baseline_flops")
            r.baseline_accuracy = r.summary.get("baseline_accuracy")
            val = r.validation or {}
            r.val_baseline_flops = val.get("baseline_flops")
            r.val_baseline_accuracy = val.get("baseline_accuracy")
            r.baseline_from = {"given": "recorded at evaluation",
                               "self": "itself at full budget"}.get(
                str(source), "none recorded (savings unknown)")
    return runs


def _reference_row(summary: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """FLOPs and accuracy of a baseline run: its most expensive (full) budget."""
    rows = (summary or {}).get("budgets") or []
    if not rows:
        return None, None
    row = max(rows, key=lambda r: r.get("flops") or 0.0)
    return row.get("flops"), row.get("accuracy")


def _validation_of(path: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The run's validation summary (rows from its records), if the run recorded one."""
    val_dir = path / str((summary.get("validation") or {}).get("dir") or VALIDATION_DIR)
    if not summary.get("validation") or not (val_dir / SUMMARY_FILE).is_file():
        return None
    return _summary_from_records(val_dir)


def check_same_examples(runs: Sequence[RunView], allow_mixed: bool = False) -> list[str]:
    """Refuse runs evaluated on different examples; return notes for the report.

    Runs are compared by their example fingerprints; a run without one (an
    older evaluation) only by its example count, and the notes say so. With
    ``allow_mixed`` a difference is noted instead of refused.
    """
    notes: list[str] = []
    if len(runs) < 2:
        return notes
    prints = {r.name: r.summary.get("fingerprint") or {} for r in runs}
    hashes = {fp.get("sha256") for fp in prints.values() if fp.get("sha256")}
    counts = {r.name: r.summary.get("examples") for r in runs}
    listing = ", ".join(f"{name} ({counts[name]} examples"
                        + (f", {prints[name]['sha256'][:12]})" if prints[name].get("sha256")
                           else ")") for name in counts)
    problem = ""
    if len(hashes) > 1:
        problem = f"the runs were evaluated on different examples: {listing}"
    elif len({c for c in counts.values()}) > 1:
        problem = f"the runs were evaluated on different numbers of examples: {listing}"
    if problem and not allow_mixed:
        raise UserError(f"{problem}; evaluate them on the same split, limit and seed, or "
                        "pass --allow-mixed-examples (allow_mixed_examples=True)")
    if problem:
        notes.append(f"**Mixed examples** (allowed on request): {problem}. Their accuracies "
                     "are not measured on the same examples.")
    unknown = [name for name, fp in prints.items() if not fp.get("sha256")]
    if unknown and not problem:
        notes.append(f"Run(s) {', '.join(unknown)} record no example fingerprint (evaluated "
                     "before frugalnn recorded one); they were checked against the others by "
                     "example count only.")
    return notes


def _summary_from_records(path: Path) -> dict[str, Any]:
    """The run's summary, with per-budget rows recomputed from ``records.csv`` if present.

    Tables and plots are thus derived from the per-example rows themselves
    (the summary's copy is only used when the records are absent).
    """
    summary = load_summary(path)
    if (path / RECORDS_FILE).is_file():
        records = load_records(path)
        summary = {**summary, "budgets": jsonable(records.per_budget_summary())}
    return summary


# -- formatting -------------------------------------------------------------------------


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, div: float = 1.0, digits: int = 4) -> str:
    return "—" if x is None else f"{x / div:.{digits}g}"


def _point_cell(p: dict[str, Any] | None, div: float, unit: str) -> str:
    if not p:
        return "—"
    return f"{_pct(p['accuracy'])} % ({_num(p['cost'], div)} {unit}, budget {p['label']})"


# -- sections ---------------------------------------------------------------------------


def _plane_section(doc: Document, runs: list[RunView], out_dir: Path) -> None:
    doc.heading("Cost–accuracy plane")
    all_flops = [p.cost for r in runs for p in points_from_summary(r.summary)]
    div, unit = flops_scale(max(all_flops, default=0.0))
    series = [(r.label, points_from_summary(r.summary), r.is_baseline) for r in runs]
    plot_plane(series, out_dir / "accuracy_vs_flops.png", xdiv=div,
               xlabel=f"{unit} per example (counted; 1 MAC = 2 FLOPs)",
               title="Accuracy vs compute per example")
    doc.image("accuracy_vs_flops.png", "accuracy vs FLOPs per example")
    doc.paragraph("Lines join each run's Pareto frontier over its budgets; faint dots are "
                  "budgets that another budget of the same run beats; stars are baselines.")
    _size_plot(doc, runs, out_dir)

    sizes = sorted({int(row["batch_size"]) for r in runs
                    for row in r.summary.get("latency") or [] if "batch_size" in row})
    for bs in sizes:
        name = f"accuracy_vs_latency_bs{bs}.png"
        plot_plane([(r.label, latency_points(r.summary, bs), r.is_baseline) for r in runs],
                   out_dir / name, xlabel=f"measured latency per example (ms), batch size {bs}",
                   title=f"Accuracy vs measured latency (batch size {bs}, median)")
        doc.image(name, f"accuracy vs measured latency at batch size {bs}")
    if not sizes:
        series_t = [(r.label, points_from_summary(r.summary, "time_per_example_ms"),
                     r.is_baseline) for r in runs]
        plot_plane(series_t, out_dir / "accuracy_vs_eval_time.png",
                   xlabel="wall-clock per example during evaluation (ms)",
                   title="Accuracy vs evaluation wall-clock")
        doc.image("accuracy_vs_eval_time.png", "accuracy vs evaluation wall-clock")
        doc.paragraph("No latency was timed for these runs; the second plot uses the "
                      "wall-clock of the evaluation pass itself (batched, and including "
                      "the cost ledger's bookkeeping).")
    else:
        doc.paragraph("Latency: median over repeated forward passes, each on a different "
                      "batch of real test examples, without the cost ledger; per-example "
                      "time = batch latency / batch size.")


NO_SIZE = "size not recorded"


def _bytes_scale(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit for a byte axis (B, KiB, MiB, GiB)."""
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if max_bytes >= div:
            return float(div), unit
    return 1.0, "B"


def _size_plot(doc: Document, runs: list[RunView], out_dir: Path) -> None:
    """Accuracy against the bytes each model stores, for the runs that recorded them."""
    series = [(r.label, size_points(r.summary), r.is_baseline) for r in runs]
    sizes = [p.cost for _, pts, _ in series for p in pts]
    if not sizes:
        return
    div, unit = _bytes_scale(max(sizes))
    plot_plane(series, out_dir / "accuracy_vs_model_size.png", xdiv=div,
               xlabel=f"model size ({unit}: bytes of the stored weights)",
               title="Accuracy vs model size")
    doc.image("accuracy_vs_model_size.png", "accuracy vs model size")
    missing = [r.name for r in runs if r.summary.get("model_bytes") is None]
    doc.paragraph("Model size is what the model stores (every tensor of its state dict at "
                  "its storage width: int8 weights one byte each plus their scales); a "
                  "model with a budget knob has one size for all its budgets."
                  + (f" Not drawn ({NO_SIZE}): {', '.join(missing)}." if missing else ""))


def _size_section(doc: Document, runs: list[RunView]) -> dict[str, Any]:
    """The size table: bytes stored, parameters by precision, size against the baseline."""
    doc.heading("Model size")
    doc.paragraph("Bytes of the weights each model stores, beside its accuracy at full "
                  "budget. 'vs baseline': the baseline run's size divided by this one's "
                  f"(> 1 is smaller). '{NO_SIZE}': the run was evaluated before frugalnn "
                  "recorded model sizes; re-run `frugalnn evaluate` to get it.")
    header = ["run", "model size", "bytes", "parameters by precision", "vs baseline",
              "accuracy % (full budget)"]
    rows, out = [], {}
    for r in runs:
        size = r.summary.get("model_bytes")
        ref = r.reference or (r if r.is_baseline else None)
        ref_size = ref.summary.get("model_bytes") if ref is not None else None
        by_prec = r.summary.get("params_by_precision") or {}
        _, acc = _reference_row(r.summary)
        prec = ", ".join(f"{k} {int(v):,}" for k, v in sorted(by_prec.items())) or "—"
        if size is None:
            rows.append([r.label, NO_SIZE, "—", prec, "—", _pct(acc)])
        else:
            rows.append([r.label, format_bytes(size), f"{int(size):,}", prec,
                         _ratio(ref_size, size), _pct(acc)])
        out[r.name] = {"model_bytes": size, "params_by_precision": by_prec or None,
                       "baseline_model_bytes": ref_size}
    doc.table(header, rows)
    return out


def _runtimes_section(doc: Document, runs: list[RunView]) -> None:
    """Each run's exports timed beside its PyTorch model (``RUN/export/*/timing.json``)."""
    timed = [(r.label, r.summary["runtimes"]) for r in runs if r.summary.get("runtimes")]
    if not timed:
        return
    doc.heading("Runtimes")
    doc.paragraph("Latency (median ms per batch) and peak memory of each run's model on "
                  "eager PyTorch and on the runtimes it was exported to (`frugalnn export "
                  "--time`), at the same batch and budget. Each export was timed in "
                  "interleaved rounds with the eager model, on one thread; the ratio in "
                  "brackets is the eager median of those rounds over the export's (> 1 is "
                  "faster). Peak memory is measured differently per runtime (live tensor "
                  "storage for torch, resident-set growth with a fresh session for ONNX "
                  "Runtime): compare it across runtimes with that in mind.")
    header, rows = runtime_table(timed)
    doc.table(header, rows)
    loads = sorted({str(row.get("loadavg")) for _, rs in timed for row in rs})
    doc.paragraph("Load average when timed: " + "; ".join(loads) + ".")


def _frontier_of(r: RunView) -> dict[str, Any]:
    """:func:`frontier_summary` of a run against the baseline the report chose for it."""
    val = None
    if r.validation:
        val = {**r.validation, "baseline_flops": r.val_baseline_flops,
               "baseline_accuracy": r.val_baseline_accuracy}
    return frontier_summary(r.summary, validation=val, baseline_flops=r.baseline_flops,
                            baseline_accuracy=r.baseline_accuracy)


def _chosen_on(rows: Sequence[dict[str, Any]]) -> str:
    """Which split chose a table row's points: ``validation``, ``test (oracle)``, or ``—``."""
    kinds = {row.get("chosen_on") for row in rows}
    if not kinds:
        return "—"
    return "validation" if kinds == {VALIDATION} else "test (oracle)"


def _frontier_section(doc: Document, runs: list[RunView]) -> dict[str, Any]:
    doc.heading("Frontier")
    results = {r.name: _frontier_of(r) for r in runs}
    all_flops = [r.baseline_flops or 0.0 for r in runs]
    div, unit = flops_scale(max(all_flops, default=0.0))
    doc.paragraph(
        "Operating points are chosen on each run's **validation** records (carved from the "
        "training data) and scored on its test records: the tables give the chosen budget's "
        "*test* accuracy and cost. 'chosen on: test (oracle)' marks points chosen on the "
        "same test records that score them (the run has no validation records, or its "
        "baseline has no validation accuracy); such numbers are optimistic."
    )
    doc.paragraph(
        "Accuracy at a fraction of the baseline's FLOPs per example: the best budget whose "
        "cost is **at most** that fraction (an operating point you can set; no interpolation "
        "between budgets). '—': no budget is that cheap."
    )
    header = ["run", "baseline", "baseline acc. %", "chosen on"] + [
        f"acc. % at {int(100 * f)} %" for f in DEFAULT_FRACTIONS
    ]
    rows = []
    for r in runs:
        res = results[r.name]
        cells = {row["fraction"]: row["point"] for row in res["at_fraction"]}
        rows.append([r.label, r.baseline_from, _pct(r.baseline_accuracy),
                     _chosen_on(res["at_fraction"])] + [
            _point_cell(cells.get(f), div, unit) for f in DEFAULT_FRACTIONS
        ])
    doc.table(header, rows)
    doc.paragraph("Lowest cost at which accuracy stays within a tolerance of the baseline "
                  "(percentage points), and the share of the baseline's FLOPs it saves.")
    header = ["run", "chosen on", f"baseline {unit}/ex."]
    for tol in DEFAULT_TOLERANCES:
        header += [f"{unit}/ex. within {tol:g} pt", f"saving within {tol:g} pt"]
    rows = []
    for r in runs:
        res = results[r.name]
        cells = {row["tolerance_points"]: row for row in res["within"]}
        row = [r.label, _chosen_on(res["within"]), _num(r.baseline_flops, div)]
        for tol in DEFAULT_TOLERANCES:
            c = cells.get(tol)
            p = c["point"] if c else None
            row += [_point_cell(p, div, unit), f"{_pct(c['saving'], 1)} %"
                    if p and c["saving"] is not None else "—"]
        rows.append(row)
    doc.table(header, rows)
    _speedup_table(doc, runs, results)
    return results


def _speedup_table(doc: Document, runs: list[RunView], results: dict[str, Any]) -> None:
    """Counted vs measured savings at the same operating points (within 0.5 / 1 pt)."""
    sizes = sorted({int(row["batch_size"]) for r in runs
                    for row in r.summary.get("latency") or [] if "batch_size" in row})
    if not sizes:
        return
    header = ["run", "tolerance", "budget", "FLOPs speed-up"] + [
        f"measured speed-up (bs {bs})" for bs in sizes
    ] + ["baseline timed in"]
    rows = []
    for r in runs:
        if r.is_baseline:
            continue
        ref = r.reference or r
        ref_lat = _latency_lookup(ref.summary)
        ref_label = _full_label(ref.summary)
        lat = _latency_lookup(r.summary)
        for row in results[r.name]["within"]:
            p = row["point"]
            if not p:
                continue
            cells = [r.label, f"{row['tolerance_points']:g} pt", p["label"],
                     _ratio(r.baseline_flops, p["cost"])]
            for bs in sizes:
                cells.append(_ratio(ref_lat.get((ref_label, bs)), lat.get((p["label"], bs))))
            cells.append(f"run {ref.name}" if ref is not r else "this run")
            rows.append(cells)
    if rows:
        doc.paragraph("Counted against measured: at the cheapest budget within each tolerance, "
                      "the baseline's FLOPs and measured latency divided by this budget's "
                      "(> 1 is faster). The baseline latency is the baseline run's, or this "
                      "run's own full budget. A baseline timed in another run was measured "
                      "at another time: compare the load averages listed with each run "
                      "before trusting a measured ratio.")
        doc.table(header, rows)


def _full_label(summary: dict[str, Any]) -> str:
    """Label of the most expensive budget (the full model for a budgeted run)."""
    rows = summary.get("budgets") or []
    if not rows:
        return ""
    return str(max(rows, key=lambda r: r.get("flops") or 0.0).get("label"))


def _ratio(num: float | None, den: float | None) -> str:
    if not num or not den:
        return "—"
    return f"{num / den:.2f}×"


def _interleaved_lookup(summary: dict[str, Any]) -> dict[tuple[str, int], float]:
    """``(budget label, batch size) -> speed-up`` measured against the baseline in
    interleaved rounds (rows timed with a reference model), where the run has them."""
    out = {}
    for row in summary.get("latency") or []:
        speed = (row.get("interleaved") or {}).get("speedup")
        if speed:
            out[(str(row.get("label")), int(row.get("batch_size", 0)))] = float(speed)
    return out


def _latency_lookup(summary: dict[str, Any]) -> dict[tuple[str, int], float]:
    out = {}
    for row in summary.get("latency") or []:
        out[(str(row.get("label")), int(row.get("batch_size", 0)))] = row.get("per_example_ms")
    return out


def _examples(summary: dict[str, Any]) -> str:
    """``"N (split, fingerprint abc123…)"`` of a summary."""
    fp = (summary.get("fingerprint") or {}).get("sha256")
    extra = [str(summary["split"])] if summary.get("split") else []
    extra += [f"fingerprint {fp[:12]}"] if fp else ["no fingerprint"]
    return f"{summary.get('examples')} ({', '.join(extra)})"


def _run_section(doc: Document, r: RunView, out_dir: Path) -> None:
    s = r.summary
    doc.heading(f"Run: {r.label}")
    machine = s.get("machine") or {}
    doc.bullets([
        f"directory: `{r.path}`",
        f"method: {r.method}; model: {r.model}; budget knob: {s.get('budget_name', 'static')}",
        f"examples: {_examples(s)}; batch size: {s.get('batch_size')}; "
        f"threads: {s.get('threads')}; device: {s.get('device')}",
        "operating points chosen on: " + (
            f"the validation records, {_examples(r.validation)}" if r.validation
            else "the test records (no validation records: oracle)"),
        f"compared with: {r.baseline_from}",
        f"load average when evaluated: {machine.get('loadavg')}",
        "machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()
                                if not isinstance(v, (dict, list))),
    ])
    rows = s.get("budgets") or []
    div, unit = flops_scale(max((row.get("flops") or 0.0 for row in rows), default=0.0))
    lat = _latency_lookup(s)
    sizes = sorted({bs for _, bs in lat})
    decisions = sorted({k for row in rows for k in (row.get("decisions") or {})})
    header = ["budget", "accuracy %", "loss", f"{unit}/ex.", f"M{'MACs'}/ex.",
              "FLOPs vs baseline", "eval ms/ex."]
    header += [f"latency ms/ex. (bs {bs})" for bs in sizes] + [f"mean {d}" for d in decisions]
    table = []
    for row in rows:
        ratio = (row["flops"] / r.baseline_flops) if (r.baseline_flops and
                                                       row.get("flops") is not None) else None
        line = [row.get("label"), _pct(row.get("accuracy")), _num(row.get("loss")),
                _num(row.get("flops"), div), _num(row.get("macs"), 1e6),
                f"{_pct(ratio, 1)} %" if ratio is not None else "—",
                _num(row.get("time_per_example_ms"), digits=3)]
        line += [_num(lat.get((str(row.get("label")), bs)), digits=3) for bs in sizes]
        line += [_num((row.get("decisions") or {}).get(d), digits=3) for d in decisions]
        table.append(line)
    doc.table(header, table)
    extras = r.path / EXTRAS_DIR
    if extras.is_dir():
        files = sorted(p for p in extras.iterdir() if p.suffix in (".png", ".md"))
        target = out_dir / EXTRAS_DIR / r.name.replace("/", "_")
        if any(f.suffix == ".png" for f in files):
            target.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f.suffix == ".png":
                shutil.copyfile(f, target / f.name)
                doc.image(f"{EXTRAS_DIR}/{target.name}/{f.name}", f.stem)
            else:
                doc.markdown(f.read_text(encoding="utf-8"))


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    title: str = "frugalnn report",
    force: bool = False,
    command: str | None = None,
    intro: str | None = None,
    allow_mixed_examples: bool = False,
) -> Path:
    """Write ``report.md``, ``report.html``, PNG plots and ``frontier.json`` into ``out_dir``.

    Only saved files are read. ``out_dir`` must not exist unless ``force``
    (then files are replaced, nothing else is deleted). Returns the path of
    ``report.md``; ``report.html`` lies beside it and embeds the same plots
    by relative path. ``intro`` is Markdown placed before the plots (the
    demo lists its methods there); ``command`` replaces the default
    regeneration command shown at the top. Runs evaluated on different
    examples are refused (``UserError``) unless ``allow_mixed_examples``.
    """
    runs = load_runs(run_dirs)
    notes = check_same_examples(runs, allow_mixed_examples)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} already exists; pass --force to overwrite the report "
                        "or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(title)
    regen = command or "frugalnn report " + " ".join(str(r.path) for r in runs) + \
        f" --out {out_dir} --force" + (" --allow-mixed-examples" if allow_mixed_examples else "")
    doc.paragraph(
        f"{len(runs)} run(s), written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"from saved evaluation records. Regenerate with `{regen}`."
    )
    doc.paragraph("FLOPs are counted floating-point operations per example (one multiply-add "
                  "= 2 FLOPs; MACs = FLOPs / 2), averaged over the evaluated examples; dynamic "
                  "methods are charged per example for what they actually ran. Times are "
                  "measured on the machine listed with each run.")
    for note in notes:
        doc.paragraph(note)
    if intro:
        doc.markdown(intro)
    _plane_section(doc, runs, out_dir)
    frontier = _frontier_section(doc, runs)
    sizes = _size_section(doc, runs)
    for name, size in sizes.items():
        frontier[name] = {**frontier[name], "model_size": size}
    _runtimes_section(doc, runs)
    for r in runs:
        if r.summary.get("runtimes"):
            frontier[r.name] = {**frontier.get(r.name, {}), "runtimes": r.summary["runtimes"]}
    for r in runs:
        _run_section(doc, r, out_dir)
    with atomic_writer(out_dir / "frontier.json") as fh:
        json.dump(jsonable(frontier), fh, indent=2)
        fh.write("\n")
    with atomic_writer(out_dir / "report.html") as fh:
        fh.write(doc.to_html())
    md = out_dir / "report.md"
    with atomic_writer(md) as fh:
        fh.write(doc.to_markdown())
    return md


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report/`` for one run alone, titled from its summary (method and model).

    Call it last, once the run's extras exist, so that the report includes them.
    """
    from frugalnn.evaluation.records import load_summary

    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    title = f"{summary.get('method') or 'run'} ({summary.get('model') or '?'})"
    return write_report([run_dir], run_dir / "report", title=title, force=True)


def method_verdict(
    summary: dict[str, Any],
    baseline_summary: dict[str, Any],
    *,
    validation: dict[str, Any] | None = None,
    baseline_validation: dict[str, Any] | None = None,
    tolerance_points: float = 1.0,
    load_gap: float = 1.0,
) -> str:
    """One sentence: what a run gained or lost against its baseline, from saved summaries.

    The operating point is the cheapest budget within ``tolerance_points`` of
    the baseline's accuracy (:func:`frugalnn.analysis.frontier.frontier_summary`),
    chosen on the validation summaries when given, else on the test records;
    when no budget is that close, the most accurate budget. The sentence gives
    that budget's share of FLOPs saved, its measured speed-up at each batch size
    both runs were timed at, and its change in test accuracy, e.g. ``"early-exit
    SDN: 41 % fewer FLOPs, 1.31x faster at batch 64, 1.12x faster at batch 1, for
    -0.4 pt accuracy (budget 0.6, chosen on validation)."`` The two runs were
    timed at different moments: when their 1-minute load averages differ by
    ``load_gap`` or more, the sentence gives both, since the ratio is then unsure.
    """
    name = str(summary.get("method") or "?")
    base_flops, base_acc = _reference_row(baseline_summary)
    val_flops, val_acc = _reference_row(baseline_validation)
    if not base_flops or base_acc is None:
        return f"{name}: no baseline numbers to compare with."
    res = frontier_summary(summary, validation=validation, baseline_flops=base_flops,
                           baseline_accuracy=base_acc, val_baseline_flops=val_flops,
                           val_baseline_accuracy=val_acc, fractions=(),
                           tolerances=(tolerance_points,))
    row = (res["within"] or [{}])[0]
    point, chosen_on = row.get("point"), row.get("chosen_on", res["chosen_on"])
    close = point is not None
    test_points = {p.label: p for p in points_from_summary(summary)}
    if point is None:  # nothing that close: the most accurate budget, chosen the same way
        source = validation if res["chosen_on"] == VALIDATION and validation else summary
        best = max(points_from_summary(source), key=lambda p: (p.accuracy, -p.cost))
        chosen_on = res["chosen_on"]
        point = test_points[best.label].to_dict() if best.label in test_points else None
    if point is None:
        return f"{name}: no budget of this run could be scored against the baseline."
    saving = 1.0 - point["cost"] / base_flops
    parts = [f"{abs(100 * saving):.0f} % {'fewer' if saving >= 0 else 'more'} FLOPs"]
    base_lat, lat = _latency_lookup(baseline_summary), _latency_lookup(summary)
    same_run = _interleaved_lookup(summary)
    full = _full_label(baseline_summary)
    interleaved = False
    for bs in sorted({bs for _, bs in lat}, reverse=True):
        speed = same_run.get((str(point["label"]), bs))
        if speed is not None:
            interleaved = True
        else:
            before, after = base_lat.get((full, bs)), lat.get((str(point["label"]), bs))
            speed = before / after if before and after else None
        if speed:
            parts.append(f"{speed:.2f}x faster at batch {bs}" if speed >= 1
                         else f"{1 / speed:.2f}x slower at batch {bs}")
    delta = 100 * (point["accuracy"] - base_acc)
    static = len(test_points) == 1
    where = "static model" if static else f"budget {point['label']}, chosen on {chosen_on}"
    if not close:
        where += f"; no budget within {tolerance_points:g} pt of the baseline"
    loads = [((s.get("machine") or {}).get("loadavg") or [None])[0]
             for s in (summary, baseline_summary)]
    if interleaved:
        where += "; times measured against the baseline in interleaved rounds"
    elif len(parts) > 1 and None not in loads and abs(loads[0] - loads[1]) >= load_gap:
        where += f"; timed at load {loads[0]:.1f}, the baseline at {loads[1]:.1f}"
    return f"{name}: {', '.join(parts)}, for {delta:+.1f} pt accuracy ({where})."
