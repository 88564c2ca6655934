"""Cost–accuracy plots of several runs on one plane (matplotlib, Agg backend).

Each run contributes all its budget points (faint) and its Pareto frontier
(a line); a baseline (a static run) is a single star with a dotted line at
its accuracy. The same runs appear on two planes: accuracy against FLOPs per
example (counted) and accuracy against latency per example (measured), so the
gap between the two is visible.

The accuracy axis spans the data near the baselines (:func:`accuracy_limits`),
not 0-100 %: the differences that matter are a point or two, and one run far
below would otherwise squash them flat. Points below the axis are drawn on its
bottom edge as triangles, and a note says how many there are and how low.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frugalnn.analysis.frontier import Point, pareto_frontier
from frugalnn.utils.figures import pyplot, save_figure

__all__ = ["accuracy_limits", "flops_scale", "plot_plane"]

Series = tuple[str, list[Point], bool]  # (label, points, is_baseline)


def flops_scale(max_flops: float) -> tuple[float, str]:
    """Divisor and prefix so FLOPs per example read as small numbers (G, M or k)."""
    for div, unit in ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if max_flops >= div:
            return div, unit
    return 1.0, "FLOPs"


def accuracy_limits(
    series: Sequence[Series], *, window: float = 15.0, pad: float = 0.08,
    min_span: float = 2.0,
) -> tuple[float, float]:
    """The accuracy axis ``(low, high)`` in % for ``series``, set from the data.

    It spans the baselines and every frontier point within ``window`` points
    below the lowest baseline (all points when no run is a baseline: within
    ``window`` of the best one), up to the best point, padded by ``pad`` of
    that span (the span at least ``min_span`` points). Frontier points further
    below are left out of the range: the plot clips them to the bottom edge.
    The range never goes below 0 % and ends at 100 % when the data reach it.
    """
    base = [100 * p.accuracy for _, pts, is_base in series if is_base for p in pts]
    shown = [100 * p.accuracy for label, pts, is_base in series
             for p in (pts if is_base else pareto_frontier(pts))]
    shown = [a for a in shown if math.isfinite(a)]
    if not shown:
        return 0.0, 100.0
    best = max(shown)
    floor = (min(base) if base else best) - window
    low = min(a for a in shown if a >= floor)
    span = max(best - low, min_span)
    lo, hi = low - pad * span, best + pad * span
    if best - low < min_span:  # centre a narrow band on the data
        mid = (best + low) / 2
        lo, hi = mid - (0.5 + pad) * span, mid + (0.5 + pad) * span
    if hi > 100.0:
        lo, hi = lo - (hi - 100.0), 100.0 + 0.5 * pad * span  # room for a marker at 100 %
    return max(lo, 0.0), hi


def _draw(ax: Any, series: Sequence[Series], xdiv: float, low: float) -> list[float]:
    """Draw every run; points below ``low`` go on the bottom edge. Returns their accuracies."""
    plt = pyplot()
    # tab20 keeps up to 20 runs distinguishable (the demo alone puts ~12 on one plane);
    # its dark shades first, so that neighbouring runs differ in hue, not only in shade.
    if len(series) > 10:
        cmap = plt.get_cmap("tab20")
        colors = [cmap(i) for i in range(0, 20, 2)] + [cmap(i) for i in range(1, 20, 2)]
    else:
        colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    clipped: list[float] = []

    def ys_of(points: Sequence[Point]) -> list[float]:
        return [max(100 * p.accuracy, low) for p in points]

    for i, (label, points, is_baseline) in enumerate(series):
        if not points:
            continue
        color = colors[i % len(colors)]
        below = [p for p in points if 100 * p.accuracy < low]
        clipped += [100 * p.accuracy for p in below]
        if below:
            ax.plot([p.cost / xdiv for p in below], [low] * len(below), linestyle="none",
                    marker="v", markersize=7, color=color, clip_on=False, zorder=6)
        xs = [p.cost / xdiv for p in points]
        if is_baseline:
            ax.plot(xs, ys_of(points), linestyle="none", marker="*", markersize=16,
                    color=color, markeredgecolor="black", label=label, zorder=5)
            for p in points:
                if 100 * p.accuracy >= low:
                    ax.axhline(100 * p.accuracy, color=color, linestyle=":", linewidth=1,
                               zorder=1)
            continue
        front = pareto_frontier(points)
        if len(points) > len(front):
            ax.plot(xs, ys_of(points), linestyle="none", marker="o", markersize=4, alpha=0.35,
                    color=color)
        ax.plot([p.cost / xdiv for p in front], ys_of(front), marker="o", markersize=5,
                color=color, label=label)
    return clipped


def plot_plane(
    series: Sequence[Series],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    title: str,
    xdiv: float = 1.0,
    log_x: bool | None = None,
    window: float = 15.0,
) -> Path:
    """One figure: accuracy (%) against a cost, one line per run, baselines as stars.

    ``series`` holds ``(label, points, is_baseline)``; costs are divided by
    ``xdiv`` for display. ``log_x=None`` uses a log axis when costs span more
    than 20x. The accuracy axis comes from :func:`accuracy_limits` (``window``:
    how far below the lowest baseline a frontier point may lie and still set
    the range). The legend sits right of the axes so it never hides a point.
    """
    plt = pyplot()
    costs = [p.cost for _, pts, _ in series for p in pts if p.cost > 0]
    if log_x is None:
        log_x = bool(costs) and max(costs) > 20 * min(costs)
    low, high = accuracy_limits(series, window=window)
    fig, ax = plt.subplots(figsize=(9, 5))
    clipped = _draw(ax, series, xdiv, low)
    ax.set_ylim(low, high)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_title(title)
    if log_x:
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    if clipped:
        ax.text(1.01, 0.0, f"▼ {len(clipped)} point(s) below {low:.1f} %,\ndrawn on the "
                f"bottom edge (lowest {min(clipped):.1f} %)", transform=ax.transAxes,
                fontsize=8, va="bottom", ha="left", color="0.3")
    if any(points for _, points, _ in series):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, path)
