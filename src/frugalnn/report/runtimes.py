"""One method on several runtimes: the timings ``frugalnn export --time`` saved, side by side.

``frugalnn export RUN --time 1,32`` writes ``RUN/export/<format>/timing.json``: per
batch size and budget, the PyTorch model (``eager``) and its export (``onnxruntime``,
``torchscript``, ``compile`` or ``exported-program``) timed in the same interleaved
rounds, with peak memory. The report reads every such file of a run (a run without
exports has none: no rows) and shows, per run, batch size and budget, each platform's
latency and peak memory in one row, with the export's speed-up over the eager model
of its own rounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frugalnn.cost.count import format_bytes
from frugalnn.errors import UserError

__all__ = ["PLATFORMS", "TIMING_FILE", "load_runtimes", "runtime_table"]

TIMING_FILE = "timing.json"
#: Column order of the platforms (others follow, sorted).
PLATFORMS = ("eager", "compile", "exported-program", "torchscript", "onnxruntime")


def _platform(row: dict[str, Any], index: int, runtime: str) -> str:
    """A row's platform; files written before rows named it hold (eager, export) pairs."""
    if row.get("platform"):
        return str(row["platform"])
    if index % 2 == 0:
        return "eager"
    return "exported-program" if runtime == "eager" else runtime


def load_runtimes(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of every ``RUN/export/*/timing.json``, sorted: one per export, batch size and
    budget, with ``platforms``: ``{platform: {median_ms, p10_ms, p90_ms, peak_bytes,
    memory_method, speedup}}`` (``speedup``: the eager median of the same rounds over
    this one's)."""
    rows: list[dict[str, Any]] = []
    for file in sorted(Path(run_dir).glob(f"export/*/{TIMING_FILE}")):
        try:
            timing = json.loads(file.read_text())
            raw = list(timing["rows"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{file} is not a readable timing file; rewrite it with "
                            "`frugalnn export RUN --force --time SIZES`") from None
        runtime = str(timing.get("runtime", ""))
        groups: dict[tuple[int, Any], dict[str, Any]] = {}
        for i, row in enumerate(raw):
            key = (int(row.get("batch_size", 0)), row.get("budget"))
            group = groups.setdefault(key, {
                "export": file.parent.name, "format": timing.get("format", file.parent.name),
                "batch_size": key[0], "budget": key[1], "platforms": {},
                "loadavg": (timing.get("machine") or {}).get("loadavg")})
            lat = row.get("latency") or {}
            group["platforms"][_platform(row, i, runtime)] = {
                "median_ms": lat.get("median_ms"), "p10_ms": lat.get("p10_ms"),
                "p90_ms": lat.get("p90_ms"), "threads": lat.get("threads"),
                "peak_bytes": row.get("peak_bytes"), "memory_method": row.get("memory_method")}
        for group in groups.values():
            eager = (group["platforms"].get("eager") or {}).get("median_ms")
            for cell in group["platforms"].values():
                ms = cell["median_ms"]
                cell["speedup"] = eager / ms if eager and ms else None
            rows.append(group)
    rows.sort(key=lambda r: (r["export"], r["batch_size"],
                             -1.0 if r["budget"] is None else float(r["budget"])))
    return rows


def _order(platforms: set[str]) -> list[str]:
    return [p for p in PLATFORMS if p in platforms] + sorted(platforms - set(PLATFORMS))


def runtime_table(runs: list[tuple[str, list[dict[str, Any]]]]
                  ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table of ``(run label, load_runtimes rows)``."""
    platforms = _order({p for _, rows in runs for r in rows for p in r["platforms"]})
    header = ["run", "export", "batch", "budget"]
    for p in platforms:
        header += [f"{p} ms", f"{p} peak"]
    table = []
    for label, rows in runs:
        for r in rows:
            line = [label, str(r["export"]), str(r["batch_size"]),
                    "—" if r["budget"] is None else f"{r['budget']:g}"]
            for p in platforms:
                cell = r["platforms"].get(p)
                if cell is None or cell["median_ms"] is None:
                    line += ["—", "—"]
                    continue
                ms = f"{cell['median_ms']:.3f}"
                if p != "eager" and cell["speedup"]:
                    ms += f" ({cell['speedup']:.2f}×)"
                peak = cell["peak_bytes"]
                line += [ms, "—" if peak is None else format_bytes(peak)]
            table.append(line)
    return header, table
