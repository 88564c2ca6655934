"""What the two text benchmarks share: mean ± sd cells and keeping earlier results.

A new results section goes on top of the file; what the file held before stays below,
its headings demoted under "Superseded", so earlier figures remain readable but are
never mistaken for the current ones.
"""

from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["mean_sd", "with_superseded"]


def mean_sd(xs: list[float], digits: int = 2) -> str:
    """``mean ± sd`` (sample sd) of ``xs``, or the single value."""
    if len(xs) > 1:
        return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"
    return f"{xs[0]:.{digits}f}"


def with_superseded(path: str | Path, new: str) -> str:
    """``new`` followed by the earlier content of ``path`` (if any) marked superseded."""
    path = Path(path)
    if not path.is_file():
        return new
    old = path.read_text(encoding="utf-8")
    if "\n## Superseded\n" in old:  # keep one "Superseded" heading
        head, _, tail = old.partition("\n## Superseded\n")
        old_current, older = head, tail
    else:
        old_current, older = old, ""
    demoted = "\n".join(("##" + line) if line.startswith("# ") else line
                        for line in old_current.strip().splitlines())
    demoted = demoted.replace("## ", "### Superseded: ", 1)
    return new.rstrip() + "\n\n## Superseded\n\n" + demoted + "\n" + (
        "\n" + older.strip() + "\n" if older.strip() else "")
