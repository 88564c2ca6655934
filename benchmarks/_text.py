"""What the two text benchmarks share: mean ± sd cells and keeping earlier results.

A new results section goes on top of the file; what the file held before stays below
under "History (superseded)", its title marked superseded, so earlier figures remain
readable but are never mistaken for the current ones.
"""

from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["HISTORY", "mean_sd", "with_superseded"]

HISTORY = "## History (superseded)"


def mean_sd(xs: list[float], digits: int = 2) -> str:
    """``mean ± sd`` (sample sd) of ``xs``, or the single value."""
    if len(xs) > 1:
        return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"
    return f"{xs[0]:.{digits}f}"


def with_superseded(path: str | Path, new: str) -> str:
    """``new`` followed by the earlier content of ``path`` (if any) under ``## History
    (superseded)``, its title demoted to ``## <title> (superseded)``."""
    path = Path(path)
    if not path.is_file():
        return new
    old = path.read_text(encoding="utf-8")
    current, _, older = old.partition(f"\n{HISTORY}\n")
    demoted = "\n".join(f"#{line} (superseded)" if line.startswith("# ") else line
                        for line in current.strip().splitlines())
    return (new.rstrip() + f"\n\n{HISTORY}\n\n" + demoted + "\n"
            + ("\n" + older.strip() + "\n" if older.strip() else ""))
