"""MoE-specific report pieces, derived from evaluation records (never recomputed).

For each evaluated budget: accuracy, total FLOPs per example, the fraction of
the dense FFN FLOPs that ran (mean experts per token / experts, per layer and
over layers) and the measured latency; a table (``extras/moe.md``) and a plot
of accuracy against FFN FLOPs for dynamic-k and top-k (``extras/moe_ffn.png``);
and, per run with validation records, the operating point: the cheapest budget
within the tolerance of the full budget's accuracy *on validation*, scored on
the test split (see :func:`frugalnn.analysis.operating_point.operating_point`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frugalnn.methods.moe.convert import MoEModel

PREFIX = "mean_experts_per_token/"


def ffn_rows(summary: dict[str, Any], experts: dict[str, int]) -> list[dict[str, Any]]:
    """Per budget: accuracy, FLOPs, FFN fraction (mean over layers) and per-layer fractions."""
    lat = {
        (str(r.get("label", r.get("budget"))), r.get("batch_size")): r.get("median_ms")
        for r in summary.get("latency", [])
    }
    rows = []
    for r in summary.get("budgets", []):
        # Decision means: under "decisions" (current summary format) or as mean_<name>.
        means = {f"mean_{k}": v for k, v in (r.get("decisions") or {}).items()}
        means.update({k: v for k, v in r.items() if k.startswith(PREFIX)})
        per_layer = {
            k[len(PREFIX):]: v / experts[k[len(PREFIX):]]
            for k, v in means.items()
            if k.startswith(PREFIX) and v is not None and k[len(PREFIX):] in experts
        }
        frac = sum(per_layer.values()) / len(per_layer) if per_layer else float("nan")
        rows.append(
            {
                "budget": r["label"],
                "accuracy": r["accuracy"],
                "flops": r["flops"],
                "ffn_fraction": frac,
                "per_layer": per_layer,
                "latency_ms": {bs: ms for (label, bs), ms in lat.items() if label == r["label"]},
            }
        )
    return rows


def point_lines(point: dict[str, Any] | None, ffn_fraction: float | None) -> list[str]:
    """Markdown lines describing one operating point (nothing without one)."""
    if not point:
        return []
    val, test = point["validation"], point["test"]
    ffn = (f", {100 * (1 - ffn_fraction):.1f} % of FFN FLOPs removed on test"
           if ffn_fraction is not None and ffn_fraction == ffn_fraction else "")
    return [
        "",
        f"Operating point (chosen on validation, scored on test): budget {point['label']}, "
        f"the cheapest within {point['tolerance_points']:g} pt of the full budget on "
        f"validation ({100 * val['accuracy']:.2f} % vs {100 * val['reference_accuracy']:.2f} "
        f"%). Test: {100 * test['accuracy']:.2f} % vs {100 * test['reference_accuracy']:.2f} % "
        f"at full budget, {test['flops'] / 1e6:.3f} MFLOPs/example "
        f"({100 * test['flops'] / test['reference_flops']:.1f} % of full budget){ffn}.",
    ]


def write_extras(model: MoEModel, run_dirs: list[Path], out_dir: Path,
                 points: list[dict[str, Any] | None] | None = None) -> list[Path]:
    """Write ``moe.md`` and ``moe_ffn.png`` for the evaluated runs into ``out_dir``;
    ``points`` (one per run, or ``None``) adds each run's operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from frugalnn.evaluation import load_summary
    from frugalnn.utils.figures import save_figure
    from frugalnn.utils.io import write_text_atomic

    experts = {m.name: m.num_experts for m in model.moe_layers()}
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Mixture-of-experts conversion", ""]
    lines.append(
        "Layers: " + ", ".join(f"{m.name} ({m.num_experts} x {m.expert_size})"
                               for m in model.moe_layers())
    )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, run in enumerate(run_dirs):
        point = points[i] if points and i < len(points) else None
        summary = load_summary(run)
        rows = ffn_rows(summary, experts)
        method = summary.get("method", run.name)
        lines += [
            "",
            f"## {method}",
            "",
            f"| {summary.get('budget_name') or 'budget'} | accuracy % | MFLOPs/example | "
            "FFN FLOPs run % | latency ms (batch) |",
            "|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            lat = ", ".join(f"{ms:.2f} ({bs})" for bs, ms in sorted(r["latency_ms"].items())
                            if ms is not None)
            lines.append(
                f"| {r['budget']} | {100 * r['accuracy']:.2f} | {r['flops'] / 1e6:.3f} | "
                f"{100 * r['ffn_fraction']:.1f} | {lat or '-'} |"
            )
        chosen = [r["ffn_fraction"] for r in rows if point and r["budget"] == point["label"]]
        lines += point_lines(point, chosen[0] if chosen else None)
        pts = sorted((r["ffn_fraction"], r["accuracy"]) for r in rows)
        ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=method)
    ax.set_xlabel("FFN FLOPs run (% of dense)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = save_figure(fig, out_dir / "moe_ffn.png")
    md = write_text_atomic(out_dir / "moe.md", "\n".join(lines) + "\n")
    return [md, png]
