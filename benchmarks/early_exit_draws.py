"""Pool several runs of ``early_exit_resnet56.py`` that differ only in their augmentation draw.

One run's SDN-vs-ZTW gaps (a few tenths of a point) are the size of the noise
between augmentation draws (``--head-augment-seed``), so a single run cannot
say which method is better at a budget. This script reads the results files
of runs that share every flag except that seed, and reports each draw, the
mean over draws, and the paired ZTW - SDN difference (mean, standard
deviation and how many draws it is >= 0) at 25 / 50 / 75 % of the FLOPs and
for the savings within 0.5 / 1 point.

    python benchmarks/early_exit_draws.py RUN1.md RUN2.md ... --out draws.md

Only files whose commands agree on every flag except the augmentation seed,
the timing sample and the output path (:data:`IGNORED_FLAGS`) are pooled;
anything else is a clear error. The pooled table is printed; with ``--out`` it
is written (atomically) under a results header of its own (this command, the
machine, the date).

``--across-seeds`` pools runs that differ in ``--seed`` (validation carving,
train and test subsets, fine-tuning, head initialisation) and in the flags
that follow from it (:data:`SEED_FLAGS`: the augmentation seed and the
per-seed weight caches) instead. It reads each file's machine-readable line
(``<!-- early-exit numbers: {...} -->``) and reports, per seed and as mean ±
sd: accuracy at 25 / 50 / 75 % of the FLOPs, the savings within 0.5 / 1 point
with their test accuracy drop against the reference, the paired ZTW - SDN
gaps, the speed-ups at each timed batch size and, when the runs made it, the
test-half check (thresholds chosen on validation vs on half of the test
subset, scored on the other half).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

from _common import results_header, write_results

COLUMNS = ["acc @25 %", "acc @50 %", "acc @75 %", "saving within 0.5 pt", "saving within 1 pt"]
METHODS = ("SDN", "ZTW")
_ROW = re.compile(r"^\| (SDN|ZTW) \|(.*)\|\s*$")
_PERCENT = re.compile(r"(-?\d+(?:\.\d+)?) %")
_COMMAND = re.compile(r"^Command: `(.*)`\s*$")
_SEED = re.compile(r"augmentation seed (\d+)")
# Flags that change only the augmentation draw, the timing sample or where the file goes;
# every other flag must agree for two runs to be pooled.
IGNORED_FLAGS = frozenset({"--head-augment-seed", "--out", "--latency-passes",
                           "--latency-examples", "--check-examples", "--batch-sizes"})

# Flags that follow from ``--seed`` when whole runs are repeated over seeds (--across-seeds).
SEED_FLAGS = frozenset({"--seed", "--head-augment-seed", "--backbone-cache", "--joint-cache",
                        "--control-cache"})
_NUMBERS = re.compile(r"^<!-- early-exit numbers: (\{.*\}) -->\s*$")
_FRACTIONS = ("0.25", "0.5", "0.75")
_DROPS = ("0.005", "0.01")


class DrawError(ValueError):
    """A results file that cannot be pooled (missing table, different command)."""


def model_flags(command: str, ignored: frozenset[str] = IGNORED_FLAGS
                ) -> dict[str, tuple[str, ...]]:
    """The command's flags and their values, without the ``ignored`` ones."""
    flags: dict[str, tuple[str, ...]] = {}
    current = None
    for token in command.split():
        if token.startswith("--"):
            current = token
            flags[current] = ()
        elif current is not None:
            flags[current] += (token,)
    return {k: v for k, v in flags.items() if k not in ignored}


def parse_run(text: str, name: str) -> dict:
    """Command, augmentation seed and the SDN/ZTW headline numbers of one results file.

    Reads the first method table only (the file's newest section when several
    runs were appended to one file).
    """
    command = next((m.group(1) for line in text.splitlines()
                    if (m := _COMMAND.match(line))), None)
    if command is None:
        raise DrawError(f"{name}: no 'Command: `...`' line; is it an early_exit_resnet56 result?")
    seed = _SEED.search(text)
    if seed is None:
        raise DrawError(f"{name}: no 'augmentation seed N' in the file; only runs with "
                        "--head-augment-passes >= 1 differ between draws")
    rows: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m.group(1) not in rows:
            cells = [c.strip() for c in m.group(2).split("|")]
            values = []
            for cell in cells[: len(COLUMNS)]:
                pct = _PERCENT.match(cell)
                if pct is None:
                    raise DrawError(f"{name}: cannot read {cell!r} in the {m.group(1)} row")
                values.append(float(pct.group(1)))
            rows[m.group(1)] = values
        if len(rows) == len(METHODS):
            break
    missing = [k for k in METHODS if k not in rows]
    if missing:
        raise DrawError(f"{name}: no {' / '.join(missing)} row in the method table")
    return {"name": name, "command": command, "seed": int(seed.group(1)),
            "rows": rows}


def _cells(values: list[float], bold: bool = False) -> str:
    """Table cells as the results files print them: accuracies to 0.01, savings to 0.1."""
    mark = "**" if bold else ""
    return " | ".join(f"{mark}{v:.{2 if col.startswith('acc') else 1}f} %{mark}"
                      for col, v in zip(COLUMNS, values, strict=True))


def pool(runs: list[dict]) -> str:
    """Markdown: one row per draw and method, the means, and the paired ZTW - SDN gaps."""
    if len(runs) < 2:
        raise DrawError("pooling needs at least two results files")
    base = model_flags(runs[0]["command"])
    for run in runs[1:]:
        flags = model_flags(run["command"])
        if flags != base:
            differ = sorted(k for k in base.keys() | flags.keys() if base.get(k) != flags.get(k))
            raise DrawError(f"{run['name']} was run with other flags than {runs[0]['name']} "
                            f"({', '.join(differ)}); only {', '.join(sorted(IGNORED_FLAGS))} "
                            "may differ")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise DrawError(f"two files have the same augmentation seed ({seeds}); "
                        "pool distinct draws only")
    lines = [
        "| draw (augmentation seed) | method | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for run in runs:
        for method in METHODS:
            lines.append(f"| {run['seed']} | {method} | {_cells(run['rows'][method])} |")
    for method in METHODS:
        means = [statistics.fmean(r["rows"][method][i] for r in runs) for i in range(len(COLUMNS))]
        lines.append(f"| mean of {len(runs)} | {method} | {_cells(means, bold=True)} |")
    gap_cells = []
    for i in range(len(COLUMNS)):
        # Rounded to the files' precision so that a tie reads 0.00, not -0.00 or 1e-15.
        gaps = [round(r["rows"]["ZTW"][i] - r["rows"]["SDN"][i], 2) + 0.0 for r in runs]
        sd = statistics.stdev(gaps)
        wins = sum(g >= 0 for g in gaps)
        mean = round(statistics.fmean(gaps), 2) + 0.0
        gap_cells.append(f"{mean:+.2f} ± {sd:.2f} pt ({wins}/{len(runs)} >= 0)")
    lines.append(f"| ZTW - SDN (paired) | mean ± sd | {' | '.join(gap_cells)} |")
    tokens = runs[0]["command"].split()
    program = tokens[: next(i for i, t in enumerate(tokens) if t.startswith("--"))]
    command = " ".join([*program, *(" ".join((k, *v)) for k, v in base.items())])
    return (
        f"Pooled {len(runs)} augmentation draws (seeds {', '.join(map(str, seeds))}) of\n"
        f"`{command}` (each with its own `--head-augment-seed`; timing flags may differ).\n\n"
        + "\n".join(lines) + "\n"
    )


def parse_seed_run(text: str, name: str) -> dict:
    """Command and the machine-readable figures (first numbers line) of one results file."""
    command = next((m.group(1) for line in text.splitlines()
                    if (m := _COMMAND.match(line))), None)
    if command is None:
        raise DrawError(f"{name}: no 'Command: `...`' line; is it an early_exit_resnet56 result?")
    numbers = next((m.group(1) for line in text.splitlines()
                    if (m := _NUMBERS.match(line))), None)
    if numbers is None:
        raise DrawError(f"{name}: no '<!-- early-exit numbers: ... -->' line; it was written "
                        "before the script recorded its figures")
    return {"name": name, "command": command, "numbers": json.loads(numbers)}


def _mean_sd(values: list[float], scale: float, digits: int, signed: bool = False) -> str:
    """``mean ± sd`` of the finite values (scaled), with how many are missing."""
    ok = [scale * v for v in values if v == v]
    if not ok:
        return "–"
    sd = statistics.stdev(ok) if len(ok) > 1 else float("nan")
    miss = f" ({len(values) - len(ok)} not reached)" if len(ok) < len(values) else ""
    sign = "+" if signed else ""
    return f"{statistics.fmean(ok):{sign}.{digits}f} ± {sd:.{digits}f}{miss}"


def _pct(v: float, digits: int) -> str:
    return "–" if v != v else f"{100 * v:.{digits}f} %"


def _drop(v: float) -> str:
    return "–" if v != v else f"{100 * v:+.2f} pt"


def _seed_columns(m: dict) -> list[float]:
    """accuracy at 25 / 50 / 75 %, saving and test drop within 0.5 / 1 pt of one method."""
    cols = [m["accuracy_at_flops"][f]["accuracy"] for f in _FRACTIONS]
    for d in _DROPS:
        row = m["saving_within"][d]
        cols += [row["flops_saving"], row["drop"]]
    return cols


_SEED_HEAD = ["acc @25 %", "acc @50 %", "acc @75 %", "saving within 0.5 pt", "test drop",
              "saving within 1 pt", "test drop"]


def _seed_cells(cols: list[float]) -> list[str]:
    kinds = ["acc", "acc", "acc", "save", "drop", "save", "drop"]
    return [_pct(v, 2) if k == "acc" else _pct(v, 1) if k == "save" else _drop(v)
            for k, v in zip(kinds, cols, strict=True)]


def _mean_cells(rows: list[list[float]]) -> list[str]:
    kinds = ["acc", "acc", "acc", "save", "drop", "save", "drop"]
    out = []
    for i, k in enumerate(kinds):
        vals = [r[i] for r in rows]
        unit = " pt" if k == "drop" else " %"
        out.append(_mean_sd(vals, 100, 2 if k != "save" else 1, signed=k == "drop") + unit)
    return out


def pool_seeds(runs: list[dict]) -> str:
    """Markdown: per-seed rows, mean ± sd, paired gaps, speed-ups and the test-half check."""
    if len(runs) < 2:
        raise DrawError("pooling needs at least two results files")
    ignored = IGNORED_FLAGS | SEED_FLAGS
    base = model_flags(runs[0]["command"], ignored)
    for run in runs[1:]:
        flags = model_flags(run["command"], ignored)
        if flags != base:
            differ = sorted(k for k in base.keys() | flags.keys() if base.get(k) != flags.get(k))
            raise DrawError(f"{run['name']} was run with other flags than {runs[0]['name']} "
                            f"({', '.join(differ)}); only {', '.join(sorted(ignored))} may "
                            "differ")
    seeds = [r["numbers"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise DrawError(f"two files have the same --seed ({seeds}); pool distinct seeds only")
    nums = [r["numbers"] for r in runs]
    methods = list(nums[0]["methods"])
    lines = ["| seed | method | reference (test) | " + " | ".join(_SEED_HEAD) + " |",
             "|---|---|---|" + "---|" * len(_SEED_HEAD)]
    cols = {m: [_seed_columns(n["methods"][m]) for n in nums] for m in methods}
    for n, seed in zip(nums, seeds, strict=True):
        for m in methods:
            lines.append(f"| {seed} | {m} | {_pct(n['reference_test'], 2)} | "
                         + " | ".join(_seed_cells(_seed_columns(n["methods"][m]))) + " |")
    for m in methods:
        lines.append(f"| mean ± sd of {len(runs)} | {m} | "
                     f"{_mean_sd([n['reference_test'] for n in nums], 100, 2)} % | "
                     + " | ".join(_mean_cells(cols[m])) + " |")
    if {"SDN", "ZTW"} <= set(methods):
        gaps = []
        for i in (0, 1, 2, 3, 5):
            g = [z[i] - d[i] for z, d in zip(cols["ZTW"], cols["SDN"], strict=True)]
            ok = [v for v in g if v == v]
            mean = statistics.fmean(ok) if ok else float("nan")
            sd = statistics.stdev(ok) if len(ok) > 1 else float("nan")
            gaps.append(f"{100 * mean:+.2f} ± {100 * sd:.2f} pt ({sum(v >= 0 for v in ok)}/"
                        f"{len(ok)} >= 0)")
        lines.append(f"| ZTW - SDN (paired) | mean ± sd | | {gaps[0]} | {gaps[1]} | {gaps[2]} | "
                     f"{gaps[3]} | | {gaps[4]} | |")
    parts = [f"Pooled {len(runs)} seeds ({', '.join(map(str, seeds))}); thresholds chosen on "
             "each seed's validation split, scored on its test subset; test drop = reference "
             "accuracy - method accuracy on the test subset.", "", *lines, ""]
    parts += _timing_lines(nums, seeds, methods)
    parts += _half_check_lines(nums, seeds, methods)
    tokens = runs[0]["command"].split()
    program = tokens[: next(i for i, t in enumerate(tokens) if t.startswith("--"))]
    command = " ".join([*program, *(" ".join((k, *v)) for k, v in base.items())])
    return (f"Runs of `{command}` with their own {', '.join(sorted(SEED_FLAGS))} "
            "(timing flags may differ).\n\n" + "\n".join(parts) + "\n")


def _timing_lines(nums: list[dict], seeds: list[int], methods: list[str]) -> list[str]:
    timed = [n.get("timing") for n in nums]
    if not all(timed):
        return []
    keys = [k for k in timed[0]["speedup"] if all(k in t["speedup"] for t in timed)]
    if not keys:
        return []
    t0 = timed[0]
    lines = [f"Speed-up against the backbone ({t0['prepared'] or 'as trained'}), at the "
             f"operating point within {100 * t0['drop']:.1f} pt, mean time per batch over "
             f"{t0['examples']} test images, median of {t0['passes']} interleaved passes:", "",
             "| seed | " + " | ".join(keys) + " | " + " | ".join(
                 f"{m} FLOPs ratio" for m in methods) + " |",
             "|---|" + "---|" * (len(keys) + len(methods))]
    for t, seed in zip(timed, seeds, strict=True):
        lines.append(f"| {seed} | " + " | ".join(f"{t['speedup'][k]:.2f}x" for k in keys)
                     + " | " + " | ".join(f"{t['flops_ratio'].get(m, math.nan):.3f}"
                                          for m in methods) + " |")
    lines.append("| mean ± sd | " + " | ".join(
        _mean_sd([t["speedup"][k] for t in timed], 1, 2) + "x" for k in keys) + " | "
        + " | ".join(_mean_sd([t["flops_ratio"].get(m, math.nan) for t in timed], 1, 3)
                     for m in methods) + " |")
    return [*lines, ""]


def _half_check_lines(nums: list[dict], seeds: list[int], methods: list[str]) -> list[str]:
    if not all("half_check" in n for n in nums):
        return []
    sizes = nums[0]["half_check_sizes"]
    lines = [f"Test-half check: thresholds chosen on validation or on test half A "
             f"({sizes['choose']} images), both scored on the other half ({sizes['scored']}); "
             "drop against the backbone on the scored half.", "",
             "| seed | method | chosen on | " + " | ".join(_SEED_HEAD) + " |",
             "|---|---|---|" + "---|" * len(_SEED_HEAD)]
    pooled: dict[tuple[str, str], list[list[float]]] = {}
    for n, seed in zip(nums, seeds, strict=True):
        for m in methods:
            for label, pts in n["half_check"][m].items():
                row = _seed_columns(pts)
                pooled.setdefault((m, label), []).append(row)
                lines.append(f"| {seed} | {m} | {label} | " + " | ".join(_seed_cells(row)) + " |")
    for (m, label), rows in pooled.items():
        lines.append(f"| mean ± sd | {m} | {label} | " + " | ".join(_mean_cells(rows)) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results files of early_exit_resnet56.py")
    p.add_argument("--out", type=Path, default=None, help="write the table here (atomically)")
    p.add_argument("--across-seeds", action="store_true",
                   help="pool runs that differ in --seed (and the flags that follow from it) "
                        "from their machine-readable figures")
    args = p.parse_args(argv)
    parse, pooled = (parse_seed_run, pool_seeds) if args.across_seeds else (parse_run, pool)
    try:
        runs = []
        for path in args.results:
            if not path.is_file():
                raise DrawError(f"{path}: no such results file")
            runs.append(parse(path.read_text(), str(path)))
        text = pooled(runs)
    except DrawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        print(text)
    else:
        title = "Early exits: pooled seeds" if args.across_seeds else \
            "Early exits: pooled augmentation draws"
        write_results(args.out, results_header(title) + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
