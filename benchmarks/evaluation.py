"""What evaluation at budgets, reports and the demo cost in wall-clock time.

Measures, in one run on one machine:

1. for each model, one pass over the test set as a plain inference loop
   (``inference_mode``, forward only) versus ``frugalnn.evaluation.evaluate``
   (cost ledger, per-example loss and records, static FLOPs counting), median
   over repeats, and the ratio; also the forward time *inside* ``evaluate``
   (sum of its per-batch times), i.e. the forward plus ledger overhead alone;
2. the time to write a report for those runs from saved records;
3. with ``--demo``, ``frugalnn demo`` end to end as ``make demo`` runs it
   (``--quick-demo``: the ``--quick`` variant the tests run): wall-clock and
   CPU seconds, the seconds each method hook took, and the report's sentence
   per method (what it gained or lost against its baseline, in FLOPs and in
   measured time).

Writes a Markdown section (command, machine, load average, numbers) to
``--out`` (default ``benchmarks/results/evaluation.md``) and prints it:
replacing the file, appended to it (``--append``), or inserted before its
first section (``--prepend``: the newest measurement first, older ones kept).

    python benchmarks/evaluation.py                      # ~1 min on 2 cores
    python benchmarks/evaluation.py --demo --prepend     # + the full demo, ~3-4 min
    python benchmarks/evaluation.py --models resnet20 --data cifar10-exact --data-dir DATA \
        --append
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import write_results
from torch.utils.data import DataLoader

from frugalnn.cost.machine import describe_machine, machine_markdown
from frugalnn.data import get_dataset
from frugalnn.evaluation import evaluate
from frugalnn.models import create_model
from frugalnn.models.registry import model_kwargs_for
from frugalnn.report import write_report


def _plain_pass(model: torch.nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(whole pass incl. data loading, sum of the timed forwards alone) in seconds."""
    forward = 0.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            t1 = time.perf_counter()
            model(x)
            forward += time.perf_counter() - t1
    return time.perf_counter() - t0, forward


def _bench_model(name: str, ds, batch: int, repeats: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = create_model(name, **model_kwargs_for(name, ds.info, {})).eval()
    loader = DataLoader(ds, batch_size=batch, shuffle=False)
    _plain_pass(model, loader)  # warm-up
    plain, plain_fwd, full, inside = [], [], [], []
    rec = None
    for _ in range(repeats):
        total, fwd = _plain_pass(model, loader)
        plain.append(total)
        plain_fwd.append(fwd)
        t0 = time.perf_counter()
        rec = evaluate(model, loader, method="baseline", progress=False)
        full.append(time.perf_counter() - t0)
        inside.append(sum(s for _, _, s in rec.batch_times))
    rec.save(tmp / name)
    p, pf, f, i = (statistics.median(v) for v in (plain, plain_fwd, full, inside))
    return {"model": name, "examples": len(ds), "plain_s": p, "plain_forward_s": pf,
            "evaluate_s": f, "forward_in_evaluate_s": i, "ratio": f / p, "ledger_ratio": i / pf,
            "flops": rec.per_budget_summary()[0]["flops"]}


def _bench_demo(full: bool, keep: str | None) -> dict:
    """Run ``frugalnn demo`` (full or ``--quick``) once; its times, hooks and verdicts."""
    from frugalnn.demo import run_demo

    with tempfile.TemporaryDirectory() as d:
        out = Path(keep) if keep else Path(d) / "demo"
        cpu0, t0 = time.process_time(), time.perf_counter()
        report = run_demo(out, quick=not full, progress=False, force=bool(keep))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        info = json.loads((out / "demo.json").read_text())
        text = report.read_text(encoding="utf-8")
        baseline = json.loads((Path(info["baseline"]) / "summary.json").read_text())
    verdicts = [line for line in text.splitlines() if line.startswith("- **")]
    return {"seconds": seconds, "cpu_seconds": cpu, "hooks": info["hooks"], "quick": not full,
            "verdicts": verdicts, "baseline_flops": baseline["budgets"][0]["flops"],
            "baseline_accuracy": baseline["budgets"][0]["accuracy"]}


def _demo_lines(demo: dict) -> list[str]:
    mode = "`--quick`" if demo["quick"] else "full (as `make demo` runs it)"
    lines = ["", f"`frugalnn demo`, {mode}, digits, 1 thread, end to end: "
             f"**{demo['seconds']:.1f} s** wall-clock, {demo['cpu_seconds']:.1f} s CPU "
             "(the wall-clock grows with the load average above; the CPU time much less). "
             f"Baseline: {demo['baseline_flops'] / 1e6:.2f} MFLOPs per example, "
             f"{100 * demo['baseline_accuracy']:.2f} % test accuracy. Method hooks:", "",
             "| hook | status | seconds |", "|---|---|---:|"]
    lines += [f"| {h['hook']} | {h['status']} | {h['seconds']:.1f} |" for h in demo["hooks"]]
    if demo["verdicts"]:
        lines += ["", "The report's sentence per run (cheapest budget within 1 pt of the "
                  "baseline's accuracy, chosen on validation, scored on test; speed-ups are "
                  "measured latencies per example against the baseline run):", ""]
        lines += demo["verdicts"]
    return lines


def _prepend(old: str, section: str) -> str:
    """``section`` inserted before the first ``## `` section of ``old`` (its preamble kept)."""
    at = old.find("\n## ")
    if old.startswith("## "):
        at = 0
    if at < 0:
        return old.rstrip("\n") + "\n\n" + section
    at = at + 1 if at else 0
    return old[:at] + section + "\n" + old[at:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn_small,mlp", help="comma-separated model names")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-dir")
    ap.add_argument("--limit", type=int, help="test examples (default: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--demo", action="store_true",
                    help="also time the full `frugalnn demo` (what `make demo` runs)")
    ap.add_argument("--quick-demo", action="store_true",
                    help="time `frugalnn demo --quick` instead (what the tests run)")
    ap.add_argument("--demo-out", help="keep the demo's directory here (replaced if an "
                    "earlier demo wrote it; default: a temporary directory)")
    ap.add_argument("--out", default="benchmarks/results/evaluation.md")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--append", action="store_true", help="append to --out instead of "
                       "replacing it (to add a second model set)")
    where.add_argument("--prepend", action="store_true", help="insert before the first "
                       "section of --out (the newest measurement first, older ones kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    ds = get_dataset(args.data, "test", args.data_dir, limit=args.limit)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models.split(","):
            rows.append(_bench_model(name.strip(), ds, args.batch_size, args.repeats, tmp))
        t0 = time.perf_counter()
        write_report([tmp / r["model"] for r in rows], tmp / "report")
        report_s = time.perf_counter() - t0
    demo = (_bench_demo(not args.quick_demo, args.demo_out)
            if (args.demo or args.quick_demo) else None)
    load_after = os.getloadavg()

    machine = describe_machine()
    what = ", ".join(r["model"] for r in rows)
    if demo:
        what += " and " + ("`--quick` demo" if demo["quick"] else "full demo")
    lines = [
        f"## Evaluation, reports and the demo: wall-clock cost ({what}; "
        f"{machine.get('cpu', '?')}, {str(machine.get('date', '?'))[:10]})",
        "",
        "Command: `python " + " ".join(sys.argv) + "`",
        "",
        machine_markdown(machine),
        "",
        f"Load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, "
        f"after: {'/'.join(f'{v:.2f}' for v in load_after)}. The CPU was shared with other "
        "jobs; times are indicative.",
        "",
        f"One pass over `{args.data}` test ({len(ds)} examples, batch {args.batch_size}, "
        f"{args.threads} thread(s)), untrained weights (timing does not depend on them); "
        f"median of {args.repeats} repeats. *plain pass*: a loop over the DataLoader calling "
        "the model under `inference_mode`; *plain forwards*: the sum of its timed forward "
        "calls alone. *evaluate*: the whole `frugalnn.evaluation.evaluate` call (static FLOPs "
        "counted once, cost ledger, per-example loss and records); *evaluate forwards*: the "
        "sum of its timed per-batch forwards (forward inside the ledger), so the last ratio "
        "is the ledger's overhead on the forward.",
        "",
        "| model | FLOPs/example | plain pass s | evaluate s | ratio | plain forwards s "
        "| evaluate forwards s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['flops'] / 1e6:.3f} M | {r['plain_s']:.4f} | "
            f"{r['evaluate_s']:.4f} | {r['ratio']:.2f} | {r['plain_forward_s']:.4f} | "
            f"{r['forward_in_evaluate_s']:.4f} | {r['ledger_ratio']:.2f} |"
        )
    lines += ["", f"Writing the report for these {len(rows)} runs from saved records "
              f"(plots, Markdown, HTML): {report_s:.2f} s."]
    if demo:
        lines += _demo_lines(demo)
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    if args.append and out.exists():
        text = out.read_text() + "\n" + text
    elif args.prepend and out.exists():
        text = _prepend(out.read_text(), text)
    write_results(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
