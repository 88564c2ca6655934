"""Cost–accuracy plots of several runs on one plane (matplotlib, Agg backend).

Each run contributes all its budget points (faint) and its Pareto frontier
(a line); a baseline (a static run) is a single star. The same runs appear on
two planes: accuracy against FLOPs per example (counted) and accuracy against
latency per example (measured), so the gap between the two is visible.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from frugalnn.analysis.frontier import Point, pareto_frontier  # noqa: E402
from frugalnn.evaluation import atomic_writer  # noqa: E402

__all__ = ["flops_scale", "plot_plane", "save_figure"]


def flops_scale(max_flops: float) -> tuple[float, str]:
    """Divisor and prefix so FLOPs per example read as small numbers (G, M or k)."""
    for div, unit in ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if max_flops >= div:
            return div, unit
    return 1.0, "FLOPs"


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    with atomic_writer(path, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(path)


def _draw(ax, series: Sequence[tuple[str, list[Point], bool]], xdiv: float) -> None:
    # tab20 keeps up to 20 runs distinguishable (the demo alone puts ~12 on one plane).
    cmap = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    colors = [cmap(i) for i in range(cmap.N)]
    for i, (label, points, is_baseline) in enumerate(series):
        if not points:
            continue
        color = colors[i % len(colors)]
        xs = [p.cost / xdiv for p in points]
        ys = [100 * p.accuracy for p in points]
        if is_baseline:
            ax.plot(xs, ys, linestyle="none", marker="*", markersize=16, color=color,
                    markeredgecolor="black", label=label, zorder=5)
            continue
        front = pareto_frontier(points)
        if len(points) > len(front):
            ax.plot(xs, ys, linestyle="none", marker="o", markersize=4, alpha=0.35, color=color)
        ax.plot([p.cost / xdiv for p in front], [100 * p.accuracy for p in front],
                marker="o", markersize=5, color=color, label=label)


def plot_plane(
    series: Sequence[tuple[str, list[Point], bool]],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    title: str,
    xdiv: float = 1.0,
    log_x: bool | None = None,
) -> Path:
    """One figure: accuracy (%) against a cost, one line per run, baselines as stars.

    ``series`` holds ``(label, points, is_baseline)``; costs are divided by
    ``xdiv`` for display. ``log_x=None`` uses a log axis when costs span more
    than 20x. The legend sits right of the axes so it never hides a point.
    """
    costs = [p.cost for _, pts, _ in series for p in pts if p.cost > 0]
    if log_x is None:
        log_x = bool(costs) and max(costs) > 20 * min(costs)
    fig, ax = plt.subplots(figsize=(9, 5))
    _draw(ax, series, xdiv)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    if log_x:
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    if any(points for _, points, _ in series):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, path)
