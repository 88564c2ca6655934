"""Pool the ViT MoE, ACM and difficulty-ranking runs of several seeds: a per-seed table and
mean ± sd for every headline figure, with the targets' met / not met.

Reads the JSON that ``moe_vit_cifar.py`` writes beside its ``--out`` and the ``--json`` of
``acm_vit_cifar.py`` (its rankings study: ``<stem>.rankings.json`` beside it, else
``rankings/rankings.json`` under the run's ``--work``), one file per seed:

    python benchmarks/vit_seeds.py --moe runs/headline/moe_seed{0,1,2}.json \\
        --acm runs/headline/acm_seed{0,1,2}.json --out /tmp/vit_seeds.md

Nothing is chosen here: MoE's tau and ACM's q were chosen on each seed's validation split
by the scripts; top-k is reported at every k (its compute is fixed by k). "Net of the
router" is the share of the dense FFN FLOPs that the MoE model saves overall, router
included, from the counted FLOPs of the model: the dense FFN FLOPs are the slope of total
FLOPs against the fraction of experts run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from _common import mean_sd, one_line_errors, results_header, write_results

from frugalnn.errors import UserError

#: The targets (BENCHMARKS.md): MoE removes >= 50 % of the FFN FLOPs within 1 point, its
#: FFN layers >= 1.5x faster at batch 64; ACM within 1 point at ~50 % of the converted
#: layers' compute.
MOE_REMOVED, MOE_POINTS, MOE_SPEEDUP, ACM_POINTS = 0.5, 1.0, 1.5, 1.0


def read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or "args" not in data:
        raise UserError(f"{path}: not the JSON of a moe_vit_cifar.py / acm_vit_cifar.py run")
    return data


def dense_ffn_flops(runs: list[dict[str, Any]]) -> float:
    """FLOPs per example of the dense FFNs: the slope of total FLOPs against the fraction
    of experts run, between the routed budgets running the most and the fewest experts
    (a budget running every expert takes the dense path without its router: left out)."""
    routed = [r for r in runs if r["ffn_fraction"] < 1 - 1e-6]
    if len(routed) < 2:
        raise UserError("the MoE sweep has fewer than two routed budgets; cannot separate "
                        "the FFN FLOPs")
    lo = min(routed, key=lambda r: r["ffn_fraction"])
    hi = max(routed, key=lambda r: r["ffn_fraction"])
    if hi["ffn_fraction"] - lo["ffn_fraction"] < 1e-6:
        raise UserError("the MoE sweep has a single FFN fraction; cannot separate the FFN FLOPs")
    return (hi["flops"] - lo["flops"]) / (hi["ffn_fraction"] - lo["ffn_fraction"])


def moe_point(res: dict[str, Any], key: str, timing: str) -> dict[str, float]:
    """The figures of one MoE operating point (``point`` or ``half``) of one seed."""
    p, lt = res[key], res[timing] or res["layer_timing"]
    ffn = dense_ffn_flops([*res["runs"]["topk"], *res["runs"]["dynamic"]])
    ref = res.get("reference", res["dense"]["accuracy"])
    return {
        "tau": float(p["budget"]),
        "dense": 100 * res["dense"]["accuracy"],
        "control": 100 * res["control"] if res.get("control") is not None else float("nan"),
        "accuracy": 100 * p["accuracy"],
        "delta": 100 * (p["accuracy"] - ref),
        "removed": 100 * (1 - p["ffn_fraction"]),
        "removed_net": 100 * (res["dense"]["flops"] - p["flops"]) / ffn,
        "ffn_speedup": lt["dense_ms"] / lt["moe_ms"],
        "model_speedup": lt["model_dense_ms"] / lt["model_moe_ms"],
    }


def table(rows: list[tuple[str, dict[str, float]]], columns: list[tuple[str, str, str]]
          ) -> list[str]:
    """Per-seed rows and a mean ± sd row; ``columns``: (key, header, format)."""
    out = ["| seed | " + " | ".join(h for _, h, _ in columns) + " |",
           "|---|" + "---:|" * len(columns)]
    for seed, r in rows:
        out.append(f"| {seed} | " + " | ".join("-" if math.isnan(r[k]) else fmt.format(r[k])
                                               for k, _, fmt in columns) + " |")
    cells = []
    for k, _, fmt in columns:
        values = [r[k] for _, r in rows]
        digits = re.search(r"\.(\d)f", fmt)
        cells.append("-" if any(math.isnan(v) for v in values)
                     else mean_sd(values, int(digits.group(1)) if digits else 2,
                                  signed="+" in fmt))
    out.append("| **mean ± sd** | " + " | ".join(cells) + " |")
    return out


def within(value: float, bound: float) -> bool:
    """``value >= bound`` up to float noise (a 0.81 - 0.80 accuracy gap is 1 point)."""
    return round(value, 9) >= bound


def verdict(ok: list[bool]) -> str:
    return f"{sum(ok)} of {len(ok)} seeds"


MOE_COLUMNS = [("tau", "tau (validation)", "{:g}"), ("dense", "dense %", "{:.2f}"),
               ("control", "control %", "{:.2f}"), ("accuracy", "MoE %", "{:.2f}"),
               ("delta", "Δ vs better reference (pt)", "{:+.2f}"),
               ("removed", "FFN FLOPs removed %", "{:.1f}"),
               ("removed_net", "net of the router %", "{:.1f}"),
               ("ffn_speedup", "FFN layers b64", "{:.2f}"),
               ("model_speedup", "whole model b64", "{:.2f}")]


def moe_section(moe: dict[str, dict[str, Any]]) -> list[str]:
    mixes = sorted({str(r["args"].get("finetune_taus")) for r in moe.values()})
    lines = ["## MoE (dynamic-k) on the ViT", "",
             f"Routed fine-tuning at tau drawn from {{{' / '.join(mixes)}}}; the reference is the "
             "better (on test) of the dense model and the dense model given the same training.",
             ""]
    for key, timing, title in (("point", "layer_timing", "the cheapest tau within 1 point of "
                                "the better of dense and its same-training control"),
                               ("half", "half_timing", "the tau closest to 50 % of the FFN "
                                "FLOPs")):
        rows = [(s, moe_point(r, key, timing)) for s, r in moe.items()]
        lines += [f"### At {title} (chosen on each seed's validation split, scored on test)", "",
                  *table(rows, MOE_COLUMNS), ""]
        ok = [within(r["removed_net"], 100 * MOE_REMOVED) and within(r["delta"], -MOE_POINTS)
              for _, r in rows]
        fast = [within(r["ffn_speedup"], MOE_SPEEDUP) for _, r in rows]
        lines += [f"Target (≥ {100 * MOE_REMOVED:.0f} % of the FFN FLOPs removed net of the "
                  f"router, within {MOE_POINTS:g} point): {verdict(ok)}; FFN layers ≥ "
                  f"{MOE_SPEEDUP:g}x at batch 64: {verdict(fast)}.", ""]
    ks = sorted({r["budget"] for res in moe.values() for r in res["runs"]["topk"]},
                key=lambda b: float(b))
    lines += ["### Top-k at every k (compute fixed by k; accuracy on test)", "",
              "| k | FFN FLOPs run % | accuracy % | Δ vs better reference (pt) |",
              "|---:|---:|---:|---:|"]
    for k in ks:
        got = [(r, res.get("reference", res["dense"]["accuracy"])) for res in moe.values()
               for r in res["runs"]["topk"] if r["budget"] == k]
        if len(got) != len(moe):
            continue
        lines.append(f"| {k} | {mean_sd([100 * r['ffn_fraction'] for r, _ in got], 1)} | "
                     f"{mean_sd([100 * r['accuracy'] for r, _ in got])} | "
                     f"{mean_sd([100 * (r['accuracy'] - ref) for r, ref in got], signed=True)} |")
    return [*lines, ""]


ACM_COLUMNS = [("q", "q (validation)", "{:g}"), ("compute", "converted compute %", "{:.0f}"),
               ("dense", "dense %", "{:.2f}"), ("control", "control %", "{:.2f}"),
               ("accuracy", "ACM %", "{:.2f}"), ("delta_dense", "Δ vs dense (pt)", "{:+.2f}"),
               ("delta", "Δ vs better reference (pt)", "{:+.2f}"),
               ("speedup", "converted layers b64", "{:.2f}")]


def acm_row(res: dict[str, Any]) -> dict[str, float]:
    h = res["half_compute"]
    speed = res["ffn_speedup_b64"].get(f"q={h['q']:g}", float("nan"))
    ctrl = res.get("control") or {}
    return {"q": h["q"], "compute": 100 * h["compute"], "dense": 100 * res["baseline"]["accuracy"],
            "control": 100 * ctrl.get("accuracy", float("nan")), "accuracy": 100 * h["accuracy"],
            "delta_dense": h["delta_pt"], "delta": h.get("delta_vs_reference_pt", h["delta_pt"]),
            "speedup": speed}


def acm_section(acm: dict[str, dict[str, Any]]) -> list[str]:
    rows = [(s, acm_row(r)) for s, r in acm.items()]
    ok = [within(r["delta"], -ACM_POINTS) for _, r in rows]
    return ["## ACM on the ViT, at about half of the converted layers' compute", "",
            "q chosen on each seed's validation split as the budget running closest to 50 % "
            "of the converted layers' learners; scored on test.", "",
            *table(rows, ACM_COLUMNS), "",
            f"Target (≤ {ACM_POINTS:g} point below the better of dense and its same-training "
            f"control): {verdict(ok)}.", ""]


def signal_key(sig: dict[str, Any]) -> str:
    """A name for a ranking signal that does not depend on the seed's chosen budget."""
    name = re.sub(r"\s*\((q|tau|k|threshold)=[^)]*\)\s*$", "", sig["name"])
    return f"{Path(sig['run']).name}: {name.split(': ', 1)[-1]}" if ": " in name else name


def rankings_section(acm: dict[str, dict[str, Any]]) -> list[str]:
    studies = {}
    for seed, res in acm.items():
        # kept beside the ACM JSON (<stem>.rankings.json), or in the run's work directory
        paths = [Path(res["source"]).with_suffix(".rankings.json"),
                 Path(res["args"]["work"]) / "rankings" / "rankings.json"]
        path = next((q for q in paths if q.is_file()), None)
        if path is None:
            raise UserError(f"{paths[1]}: missing (the rankings study of seed {seed})")
        studies[seed] = json.loads(path.read_text())
    keys = None
    per_seed: dict[tuple[str, str], list[float]] = {}
    for study in studies.values():
        names = [signal_key(s) for s in study["signals"]]
        keys = names if keys is None else [k for k in keys if k in names]
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i < j:
                    per_seed.setdefault((a, b), []).append(study["spearman"][i][j])
    lines = ["## Difficulty rankings: Spearman correlation between signals", "",
             f"Each seed ranks its own {next(iter(studies.values()))['examples']} test images; "
             "the budget of each method is the seed's (ACM at its ~50 % q, the others near "
             "the script's relative cost).", "",
             "| signal A | signal B | " + " | ".join(f"seed {s}" for s in studies)
             + " | mean ± sd |", "|---|---|" + "---:|" * (len(studies) + 1)]
    # A signal the same for every image (top-k's compute) correlates with nothing (null,
    # also on its own diagonal).
    constant = sorted({signal_key(sig) for study in studies.values()
                       for i, sig in enumerate(study["signals"])
                       if study["spearman"][i][i] is None})
    for (a, b), vals in per_seed.items():
        if a in constant or b in constant:
            continue
        if len(vals) == len(studies) and a in keys and b in keys:
            pooled = "-" if None in vals else mean_sd(vals, signed=True)
            lines.append(f"| {a} | {b} | " + " | ".join("-" if v is None else f"{v:+.2f}"
                                                         for v in vals) + f" | {pooled} |")
    if constant:
        lines += ["", f"No correlation with {', '.join(constant)}: the same for every image."]
    return [*lines, ""]


def by_seed(paths: list[str]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for p in paths:
        data = read_json(p) | {"source": p}
        seed = int(data["args"]["seed"])
        if seed in out:
            raise UserError(f"{p}: seed {seed} given twice")
        out[seed] = data
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moe", nargs="*", default=[], help="moe_vit_cifar.py JSON, one per seed")
    p.add_argument("--acm", nargs="*", default=[], help="acm_vit_cifar.py --json, one per seed")
    p.add_argument("--out", required=True, help="the markdown to write")
    a = p.parse_args(argv)
    if not a.moe and not a.acm:
        raise UserError("give --moe and/or --acm files")
    moe, acm = by_seed(a.moe), by_seed(a.acm)
    # 1-minute load average each run recorded with its figures (MoE: when it wrote them,
    # after any --stage time; ACM: when its last run, the re-timing one, started)
    loads = [(r.get("load") or r["machine"]["loadavg"])[0] for r in [*moe.values(), *acm.values()]]
    parts = [results_header(
        "ViT on CIFAR-10 (JPEG): MoE, ACM and difficulty rankings over seeds",
        argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        notes=f"Seeds: MoE {sorted(moe)}, ACM {sorted(acm)}; 1-minute load average recorded "
              f"with the runs' figures {min(loads):.1f}-{max(loads):.1f}; each run's machine "
              "and command are in its JSON.")]
    if moe:
        parts.append("\n".join(moe_section(moe)))
    if acm:
        parts += ["\n".join(acm_section(acm)), "\n".join(rankings_section(acm))]
    write_results(a.out, "\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(one_line_errors(main))
