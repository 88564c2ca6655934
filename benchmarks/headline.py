"""Rerun every headline result in sequence: one entry point, one results file per method.

The headline results are the ones BENCHMARKS.md quotes against a target: early
exits (SDN and ZTW) on ResNet-56, MoE (top-k and dynamic-k) and ACM on the ViT,
low-rank ResNet-56 (accuracy and the timing of its plan), the NAS network
against the MobileNetV2-style baseline, NMF token mixing against attention and
MiniLM SVD. :data:`ENTRIES` is the one table of them: the script, its
full-protocol arguments (the scale of the current results sections, with
validation-chosen operating points), its ``--quick`` arguments (a few hundred
images, one epoch: a smoke test of the whole chain, no figure worth quoting)
and the results file its full run feeds.

Seeds: a script without a seed loop runs once per seed with ``--seed N`` (its
own output file per seed); ``nmf`` loops over ``--seeds`` itself; the timing
entry (``lowrank-speed``) has no randomness and repeats its measurement in
separate processes instead (``--processes 3``), under the shared timing lock (full runs
only: a quick run's times are not figures).

Each entry writes ``OUT_DIR/<name>.md``: the command, machine, date and load
(``_common.results_header``), every run with its command, exit status, minutes
and load, the per-seed output files and, where the script writes JSON, every
figure per seed with its mean ± sd over the seeds. Everything a run wrote
(per-seed results, logs, work directories) stays under ``OUT_DIR``.

    python benchmarks/headline.py --dry-run                       # the commands
    python benchmarks/headline.py --quick --only lowrank-speed,minilm-svd
    python benchmarks/headline.py --data-dir /work/shared/data    # everything, hours

``--quick`` never writes into ``benchmarks/results/`` (default: a fresh
temporary directory); the full run defaults to ``runs/headline``, from which
figures are copied into the results files by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, results_header, timing_lock, write_results  # noqa: E402

from frugalnn.errors import UserError  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
#: The figures an early-exit results file carries as one JSON comment line.
EE_MARKER = re.compile(r"<!-- early-exit numbers: (\{.*\}) -->")
MAX_POOLED = 120  # rows of the pooled table per entry


@dataclass(frozen=True)
class Entry:
    """One headline result.

    ``full`` / ``quick``: the script's arguments; placeholders ``{seed}``, ``{seeds}``
    (comma list), ``{out}`` (the output directory), ``{stem}`` (this run's file stem),
    ``{work}`` (this run's work directory), ``{shared}`` (one directory for all seeds of the
    entry) and ``{moe_work}`` (the ``moe`` entry's work directory for the same seed).
    ``seeds``: ``"each"`` (one run per seed), ``"list"`` (one run, the seeds in
    ``{seeds}``) or ``"none"`` (one run, nothing random). ``output``: the
    machine-readable file (a template), read as JSON, or, for a ``.md`` file, from its
    early-exit JSON comment line. ``pool``: a regular expression that picks the pooled
    figures (dotted JSON keys; all numbers when empty).
    """

    name: str
    script: str
    title: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    results: str
    seeds: str = "each"
    output: str | None = None
    pool: str = ""
    data_dir: bool = True
    timing: bool = False
    uses_moe: bool = False


_PLAN_B = "flops=2;blocks.[0-8].*:flops=3;blocks.9.*:flops=3;blocks.1[0-7].*:flops=3"
_TINY = ("--train-limit", "300", "--val-limit", "100", "--test-limit", "200")
_PLAN_B_FLAGS = ("--exclude", "conv1", "--rank-multiple", "8", "--target", "flops=2",
                 "--layer-target", "blocks.[0-8].*:flops=3", "blocks.9.*:flops=3",
                 "blocks.1[0-7].*:flops=3")

ENTRIES: tuple[Entry, ...] = (
    Entry(
        "early-exit", "early_exit_resnet56.py", "Early exits (SDN, ZTW) on ResNet-56",
        full=("--finetune-epochs", "1", "--finetune-limit", "45000", "--positions", "every:2",
              "--train-limit", "45000", "--test-limit", "10000", "--head-epochs", "20",
              "--head-augment-passes", "1", "--threads", "1", "--vit-data", "none",
              "--backbone-cache", "{work}/backbone.safetensors",
              "--ztw-ensemble-fit", "crossfit", "--ensemble-folds", "5", "--final-ensemble",
              "--test-half-check", "--time-at-drop", "0.005", "--latency-passes", "3",
              "--latency-examples", "640", "--check-examples", "640",
              "--batch-sizes", "1", "64", "--fold-bn", "--channels-last",
              "--retain-freed-memory", "--seed", "{seed}", "--head-augment-seed", "10{seed}",
              "--out", "{out}/{stem}.md"),
        quick=("--finetune-limit", "500", "--positions", "every:2", "--train-limit", "500",
               "--val-limit", "400", "--test-limit", "200", "--head-epochs", "1",
               "--ensemble-epochs", "1", "--head-augment-passes", "1", "--vit-data", "none",
               "--ztw-ensemble-fit", "crossfit", "--ensemble-folds", "2", "--final-ensemble",
               "--test-half-check", "--time-at-drop", "0.005", "--latency-passes", "1",
               "--latency-examples", "64", "--check-examples", "64", "--fold-bn",
               "--channels-last", "--no-timing-lock", "--threads", "1",
               "--seed", "{seed}", "--out", "{out}/{stem}.md"),
        results="benchmarks/results/early_exit.md", output="{out}/{stem}.md"),
    Entry(
        "moe", "moe_vit_cifar.py", "MoE (top-k, dynamic-k) on the ViT",
        full=("--work", "{work}", "--stage", "all", "--train-limit", "50000", "--epochs", "10",
              "--augment", "--sparsify-examples", "10000", "--sparsify-epochs", "2",
              "--sparsity-weight", "2.0", "--router-examples", "10000", "--router-epochs", "2",
              "--finetune-epochs", "5", "--finetune-examples", "20000",
              # chosen over 0.4,0.5,0.6 on validation (benchmarks/results/moe.md)
              "--finetune-taus", "0.6,0.7,0.8", "--test-limit", "5000", "--experts", "8",
              "--threads", "1", "--seed", "{seed}", "--out", "{out}/{stem}.md"),
        quick=("--work", "{work}", *_TINY, "--epochs", "1", "--sparsify-examples", "200",
               "--router-examples", "200", "--dim", "32", "--depth", "2", "--heads", "2",
               "--experts", "4", "--router-hidden", "8", "--latency-repeats", "2",
               "--threads", "1", "--seed", "{seed}", "--out", "{out}/{stem}.md"),
        results="benchmarks/results/moe.md", output="{out}/{stem}.json",
        pool=r"^(dense|point|half)\.(accuracy|flops|ffn_fraction|validation_accuracy)$"
             r"|^(layer|half)_timing\.[^.]+$|^control|^reference"),
    Entry(
        "acm", "acm_vit_cifar.py", "ACM on the ViT (the moe entry's trained ViT)",
        full=("--work", "{work}", "--baseline", "{moe_work}/baseline/checkpoint",
              "--dim", "96", "--depth", "4", "--heads", "3", "--acm-examples", "20000",
              "--distill-epochs", "2", "--gate-epochs", "1", "--finetune-epochs", "2",
              "--train-limit", "50000", "--test-limit", "5000",
              "--compare", "{moe_work}/moe-ft-dynamic", "{moe_work}/moe-ft-topk",
              "--moe-checkpoint", "{moe_work}/moe-ft/checkpoint", "--latency-repeats", "20",
              "--threads", "1", "--seed", "{seed}", "--out", "{out}/{stem}.md",
              "--json", "{out}/{stem}.json"),
        quick=("--work", "{work}", "--baseline", "{moe_work}/baseline/checkpoint",
               "--dim", "32", "--depth", "2", "--heads", "2", *_TINY, "--acm-examples", "200",
               "--distill-epochs", "1", "--gate-epochs", "1", "--finetune-epochs", "1",
               "--exit-epochs", "1", "--qs", "0,0.5,1", "--latency-repeats", "2",
               "--moe-checkpoint", "{moe_work}/moe/checkpoint", "--threads", "1",
               "--seed", "{seed}", "--out", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        results="benchmarks/results/acm.md", output="{out}/{stem}.json", uses_moe=True),
    Entry(
        "lowrank", "quant_stack_resnet56.py",
        "Low-rank ResNet-56, plan B (per-stage TT), and + int8, against a same-training control",
        full=("--method", "tt", *_PLAN_B_FLAGS, "--epochs", "2", "--lr", "0.01", "--augment",
              "--train-limit", "45000", "--val-limit", "5000", "--test-limit", "10000",
              "--threads", "1", "--train-threads", "1", "--seeds", "{seed}",
              "--json", "{out}/{stem}.json", "--markdown", "{out}/{stem}.md"),
        quick=("--method", "tt", *_PLAN_B_FLAGS, "--epochs", "1", *_TINY,
               "--calibration-size", "64", "--repeats", "2", "--passes", "1",
               "--threads", "1", "--seeds", "{seed}",
               "--json", "{out}/{stem}.json", "--markdown", "{out}/{stem}.md"),
        results="benchmarks/results/lowrank.md", output="{out}/{stem}.json",
        pool=r"^accuracy\.|^gap_vs_control_pt\.|^latency_ms\."),
    Entry(
        "lowrank-speed", "lowrank_layout.py",
        "Low-rank ResNet-56, plan B: speed against dense (eager, TorchScript, ONNX Runtime)",
        full=("--methods", "tt", "--target", _PLAN_B, "--labels", "plan B",
              "--rank-multiple", "8", "--exclude", "conv1", "--fold-bn", "--jit", "--onnx",
              "--allocator", "default", "retain", "--rounds", "5", "--processes", "3",
              "--out", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        quick=("--methods", "tt", "--target", _PLAN_B, "--labels", "plan B",
               "--rank-multiple", "8", "--exclude", "conv1", "--fold-bn", "--jit", "--onnx",
               "--rounds", "1", "--repeats", "2", "--batch-sizes", "1", "8",
               "--out", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        results="benchmarks/results/lowrank_layout.md", seeds="none", data_dir=False,
        timing=True),
    # One latency table for the three seeds: the first measures it (the runs are
    # sequential, so nothing else loads the machine), the others load it and search
    # against the same millisecond targets.
    Entry(
        "nas", "nas_search.py", "NAS network vs the MobileNetV2-style baseline",
        full=("--space", "small", "--train-limit", "10000", "--test-limit", "5000",
              "--epochs", "8", "--warmup-epochs", "5", "--retrain-epochs", "10",
              "--loss", "hinge", "--lam", "2.0", "--targets", "0.8,0.9", "--validate", "0",
              "--threads", "1", "--table", "{shared}/latency-table.json", "--seed", "{seed}",
              "--out", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        quick=("--space", "small", *_TINY, "--epochs", "1", "--warmup-epochs", "0",
               "--retrain-epochs", "1", "--targets", "0.75", "--validate", "0",
               "--calibrate", "2", "--repeats", "3", "--rounds", "1", "--batch-size", "32",
               "--threads", "1", "--table", "{work}/latency-table.json", "--seed", "{seed}",
               "--out", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        results="benchmarks/results/nas.md", output="{out}/{stem}.json",
        pool=r"^by_target_fraction\.|^nets\.baseline[^.]*\.(accuracy|measured_ms|params|flops)$"),
    Entry(
        "nmf", "nmf_vit.py", "NMF / NTF token mixing vs softmax attention",
        full=("--tokens", "64,256,1024", "--train-tokens", "64", "--seeds", "{seeds}",
              "--train-limit", "5000", "--val-limit", "500", "--test-limit", "1000",
              "--epochs", "3", "--repeats", "10", "--rounds", "2", "--threads", "1",
              "--work", "{work}", "--out", "{out}/{stem}.json", "--markdown", "{out}/{stem}.md"),
        quick=("--tokens", "64", "--train-tokens", "64", "--variants", "attention,nmf",
               "--train-variants", "attention,nmf", "--seeds", "{seeds}", *_TINY,
               "--epochs", "1", "--dim", "32", "--depth", "1", "--heads", "2",
               "--repeats", "2", "--rounds", "1", "--threads", "1", "--work", "{work}",
               "--out", "{out}/{stem}.json", "--markdown", "{out}/{stem}.md"),
        results="benchmarks/results/lowrank.md", seeds="list"),
    Entry(
        "minilm-svd", "lowrank_minilm.py", "MiniLM-L6 truncated SVD + output distillation",
        full=("--targets", "params=1.5,params=2", "--sentences", "1000",
              "--distill-epochs", "4", "--distill-sentences", "3000", "--distill-lr", "2e-4",
              "--repeats", "20", "--rounds", "5", "--threads", "1", "--seed", "{seed}",
              "--markdown", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        quick=("--targets", "params=2", "--sentences", "32", "--max-len", "32",
               "--distill-epochs", "1", "--distill-sentences", "32", "--repeats", "2",
               "--threads", "1", "--seed", "{seed}",
               "--markdown", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        results="benchmarks/results/lowrank.md", output="{out}/{stem}.json",
        pool=r"cos_mean|nn_agree|_ratio$|speedup"),
    Entry(
        "minilm-svd-data-aware", "lowrank_minilm.py",
        "MiniLM-L6 data-aware SVD (512 validation lines) + output distillation",
        full=("--targets", "params=1.5,params=2", "--sentences", "1000", "--data-aware",
              "--calibration-sentences", "512",
              "--distill-epochs", "4", "--distill-sentences", "3000", "--distill-lr", "2e-4",
              "--repeats", "20", "--rounds", "5", "--threads", "1", "--seed", "{seed}",
              "--markdown", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        quick=("--targets", "params=2", "--sentences", "32", "--max-len", "32", "--data-aware",
               "--calibration-sentences", "16",
               "--distill-epochs", "1", "--distill-sentences", "32", "--repeats", "2",
               "--threads", "1", "--seed", "{seed}",
               "--markdown", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        results="benchmarks/results/lowrank.md", output="{out}/{stem}.json",
        pool=r"cos_mean|nn_agree|_ratio$|speedup"),
    Entry(
        "minilm-svd-gains", "lowrank_minilm.py",
        "MiniLM-L6 data-aware SVD, whole-model targets weighed by measured output gains, "
        "+ output distillation",
        full=("--targets", "model-flops=1.47,model-flops=1.91", "--sentences", "1000",
              "--data-aware", "--calibration-sentences", "512", "--gain-examples", "32",
              "--distill-epochs", "4", "--distill-sentences", "3000", "--distill-lr", "2e-4",
              "--repeats", "20", "--rounds", "5", "--threads", "1", "--seed", "{seed}",
              "--markdown", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        quick=("--targets", "model-flops=1.5", "--sentences", "32", "--max-len", "32",
               "--data-aware", "--calibration-sentences", "16", "--gain-examples", "4",
               "--distill-epochs", "1", "--distill-sentences", "32", "--repeats", "2",
               "--threads", "1", "--seed", "{seed}",
               "--markdown", "{out}/{stem}.md", "--json", "{out}/{stem}.json"),
        results="benchmarks/results/lowrank.md", output="{out}/{stem}.json",
        pool=r"cos_mean|nn_agree|_ratio$|speedup"),
)


@dataclass(frozen=True)
class Run:
    """One command of an entry: the seed it runs (``None`` for a whole-list or no-seed run),
    its argument list and the file stem of its outputs."""

    entry: Entry
    seed: int | None
    argv: tuple[str, ...]
    stem: str


def work_dir(out: Path, name: str, seed: int | None) -> Path:
    return out / "work" / name / ("all" if seed is None else f"seed{seed}")


def plan_runs(entry: Entry, seeds: list[int], out: Path, *, quick: bool,
              data_dir: str | None) -> list[Run]:
    """The commands of ``entry``: one per seed, or one."""
    per_seed: list[int | None] = list(seeds) if entry.seeds == "each" else [None]
    runs = []
    for seed in per_seed:
        stem = f"{entry.name}_run" if seed is None else f"{entry.name}_seed{seed}"
        values = {"seed": seed, "seeds": ",".join(map(str, seeds)), "out": out, "stem": stem,
                  "work": work_dir(out, entry.name, seed),
                  "shared": out / "work" / entry.name,
                  "moe_work": work_dir(out, "moe", seed)}
        args = [a.format(**values) for a in (entry.quick if quick else entry.full)]
        if entry.data_dir and data_dir:
            args += ["--data-dir", data_dir]
        runs.append(Run(entry, seed, (sys.executable, str(BENCH / entry.script), *args), stem))
    return runs


def shell_line(argv: tuple[str, ...]) -> str:
    """``argv`` as a pasteable line, the interpreter written ``python`` and paths relative."""
    root = str(BENCH.parent) + os.sep
    return "python " + " ".join(shlex.quote(a.replace(root, "")) for a in argv[1:])


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON document under its dotted key (lists, ``args`` and ``machine``
    left out: they are settings and descriptions, not results)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not prefix and k in ("args", "machine"):
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def read_output(path: Path) -> dict[str, Any] | None:
    """A run's machine-readable figures: a JSON file, or the JSON comment line of an
    early-exit results file; ``None`` when the file is missing or has none."""
    if not path.is_file():
        return None
    text = path.read_text()
    if path.suffix == ".md":
        found = EE_MARKER.search(text)
        return json.loads(found.group(1)) if found else None
    data = json.loads(text)
    return data if isinstance(data, dict) else {"runs": data}


def pool(per_seed: dict[int, dict[str, Any]], pattern: str = "") -> list[tuple[str, list[float]]]:
    """``[(figure, values in seed order)]`` for every number present in every seed's output
    whose key matches ``pattern`` (and is not NaN)."""
    flat = {s: flatten(d) for s, d in per_seed.items()}
    keys = [k for k in next(iter(flat.values()), {})
            if all(k in f for f in flat.values()) and re.search(pattern, k)]
    rows = []
    for k in keys:
        values = [flat[s][k] for s in sorted(flat)]
        if not any(math.isnan(v) for v in values):
            rows.append((k, values))
    return rows


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {sd:.2g}"


def entry_markdown(entry: Entry, records: list[dict[str, Any]], *, quick: bool,
                   argv: list[str]) -> str:
    """The results file of one entry: header, the runs, per-seed files, pooled figures."""
    mode = "quick smoke run, not a result" if quick else "full protocol"
    notes = (f"Script: `benchmarks/{entry.script}`; the full protocol feeds "
             f"`{entry.results}`. Mode: {mode}.")
    lines = [results_header(f"Headline: {entry.title}", argv=argv, notes=notes), "## Runs", "",
             "| seed | command | exit | minutes | load at start | output |",
             "|---|---|---:|---:|---|---|"]
    for r in records:
        seed = "-" if r["seed"] is None else str(r["seed"])
        load = " / ".join(f"{v:.2f}" for v in r["load"])
        lines.append(f"| {seed} | `{r['command']}` | {r['rc']} | {r['minutes']:.1f} | {load} "
                     f"| {', '.join(f'`{p}`' for p in r['files']) or '-'} |")
    outputs = {r["seed"]: r["output"] for r in records
               if r["seed"] is not None and r["output"] is not None}
    if len(outputs) >= 2 and len(outputs) == len(records):
        rows = pool(outputs, entry.pool)
        seeds = sorted(outputs)
        lines += ["", f"## Figures per seed and mean ± sd over {len(seeds)} seeds", "",
                  "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
                  "|---|" + "---:|" * (len(seeds) + 1)]
        for k, values in rows[:MAX_POOLED]:
            lines.append(f"| {k} | " + " | ".join(f"{v:.4g}" for v in values)
                         + f" | {mean_sd(values)} |")
        if len(rows) > MAX_POOLED:
            lines.append(f"\n({len(rows) - MAX_POOLED} more figures in the per-seed files.)")
    elif entry.seeds == "each" and len(outputs) == len(records) == 1:
        lines += ["", "One seed: nothing to pool; its figures are in the output file above."]
    elif entry.seeds == "each":
        lines += ["", "Not pooled: a run failed or wrote no machine-readable output; the "
                  "per-seed files are listed above."]
    else:
        lines += ["", "The script pools its own repeats (seeds or processes) in its output "
                  "file listed above."]
    return "\n".join(lines) + "\n"


def run_entry(entry: Entry, runs: list[Run], out: Path, *, quick: bool,
              argv: list[str]) -> bool:
    """Run an entry's commands one after another; write its results file. Whether all ran."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    records = []
    for run in runs:
        if entry.uses_moe and not work_dir(out, "moe", run.seed).is_dir():
            raise UserError(f"{entry.name} uses the moe entry's trained ViT "
                            f"({work_dir(out, 'moe', run.seed)}); run the moe entry first "
                            f"(--only moe,{entry.name}) with the same --out-dir")
        work_dir(out, entry.name, run.seed).mkdir(parents=True, exist_ok=True)
        log(f"{entry.name}: {shell_line(run.argv)}")
        load, t0 = os.getloadavg(), time.time()
        with open(logs / f"{run.stem}.log", "w") as fh:
            if entry.timing and not quick:  # a smoke test's times are not figures
                with timing_lock():
                    rc = subprocess.run(run.argv, stdout=fh, stderr=subprocess.STDOUT,
                                        env=env, cwd=BENCH.parent).returncode
            else:
                rc = subprocess.run(run.argv, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=BENCH.parent).returncode
        minutes = (time.time() - t0) / 60
        log(f"{entry.name}: exit {rc} after {minutes:.1f} min (log: {logs / run.stem}.log)")
        files = sorted(str(p.relative_to(out)) for p in out.glob(f"{run.stem}.*"))
        output = None
        if entry.output and rc == 0:
            output = read_output(Path(entry.output.format(out=out, stem=run.stem)))
        records.append({"seed": run.seed, "command": shell_line(run.argv), "rc": rc,
                        "minutes": minutes, "load": load, "files": files, "output": output})
    write_results(out / f"{entry.name}.md",
                  entry_markdown(entry, records, quick=quick, argv=argv), echo=False)
    return all(r["rc"] == 0 for r in records)


def choose(only: str | None) -> list[Entry]:
    if not only:
        return list(ENTRIES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {e.name for e in ENTRIES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown entry {', '.join(unknown)}; choose from {', '.join(known)}")
    return [e for e in ENTRIES if e.name in names]  # always in table order


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds takes integers separated by commas, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def out_dir(requested: str | None, quick: bool) -> Path:
    """The output directory; a quick run is refused anywhere under ``benchmarks/results``."""
    if requested is None:
        return (Path(tempfile.mkdtemp(prefix="frugalnn-headline-quick-")) if quick
                else BENCH.parent / "runs" / "headline")
    path = Path(requested).resolve()
    if quick and (path == RESULTS or RESULTS in path.parents):
        raise UserError(f"--quick writes smoke-test figures; not into {RESULTS} "
                        "(leave --out-dir out for a temporary directory)")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny arguments (a few hundred images, 1 epoch): a smoke test")
    p.add_argument("--only", help="comma-separated entry names: " + ", ".join(
        e.name for e in ENTRIES))
    p.add_argument("--seeds", default="0,1,2", help="seeds of every random entry (0,1,2)")
    p.add_argument("--data-dir", default=os.environ.get("FRUGALNN_DATA"),
                   help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--out-dir", help="where results, logs and work go (default: runs/headline; "
                                     "with --quick a fresh temporary directory)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    try:
        entries, seeds = choose(a.only), parse_seeds(a.seeds)
        out = out_dir(a.out_dir, a.quick)
        plans = [(e, plan_runs(e, seeds, out, quick=a.quick, data_dir=a.data_dir))
                 for e in entries]
        if a.dry_run:
            for e, runs in plans:
                print(f"# {e.name}: {e.title} -> {out / (e.name + '.md')} "
                      f"(full protocol feeds {e.results})")
                for run in runs:
                    print(shell_line(run.argv))
            return 0
        if not a.data_dir and any(e.data_dir for e in entries):
            raise UserError("set --data-dir or FRUGALNN_DATA (the entries read CIFAR-10, "
                            "WikiText-2 and the pretrained checkpoints)")
        log(f"writing to {out}")
        failed = [e.name for e, runs in plans
                  if not run_entry(e, runs, out, quick=a.quick,
                                   argv=["benchmarks/headline.py", *argv])]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log(f"results in {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
