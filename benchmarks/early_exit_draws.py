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
"""

from __future__ import annotations

import argparse
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


class DrawError(ValueError):
    """A results file that cannot be pooled (missing table, different command)."""


def model_flags(command: str) -> dict[str, tuple[str, ...]]:
    """The command's flags and their values, without :data:`IGNORED_FLAGS`."""
    flags: dict[str, tuple[str, ...]] = {}
    current = None
    for token in command.split():
        if token.startswith("--"):
            current = token
            flags[current] = ()
        elif current is not None:
            flags[current] += (token,)
    return {k: v for k, v in flags.items() if k not in IGNORED_FLAGS}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results files of early_exit_resnet56.py")
    p.add_argument("--out", type=Path, default=None, help="write the table here (atomically)")
    args = p.parse_args(argv)
    try:
        runs = []
        for path in args.results:
            if not path.is_file():
                raise DrawError(f"{path}: no such results file")
            runs.append(parse_run(path.read_text(), str(path)))
        text = pool(runs)
    except DrawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        print(text)
    else:
        write_results(args.out, results_header("Early exits: pooled augmentation draws") + "\n"
                      + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
