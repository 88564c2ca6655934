"""Input-dependent models on eager PyTorch and on ONNX Runtime: MoE and ACM on a ViT.

Does an exported input-dependent model keep its eager wall-clock saving on
ONNX Runtime (target: >= 0.8 of it, same operating point, same images)? A
ViT-tiny (ReLU FFNs, 32x32 CIFAR-10 images) is converted to
mixture-of-experts (8 experts per FFN, routers trained one epoch on
training images) and to ACM (4 learners, untrained gate); each, and the dense
ViT, is exported to ONNX with :func:`frugalnn.export` (checked against
PyTorch on test images at every budget), MoE and ACM in each of ``--layouts``
(``in-graph``: one graph that routes rows itself; ``segments``: dense parts,
routers and experts as separate graphs driven by the runtime loop;
``one-graph``: the gather formulation), and timed on both runtimes at batch 1
and 32, one thread, interleaved rounds. A control, the dense ViT with its FFNs
run on flattened ``(tokens, dim)`` rows as the exported experts are, shows how
much of an ONNX Runtime saving a 2-D FFN alone would give. ``--runs N`` repeats
the whole measurement in N fresh processes and reports mean ± sd of each
figure. The ViT's weights are random: timing does not depend on them,
accuracy is not reported. Operating points: the MoE tau whose FFN FLOPs on
validation images are closest to half the dense FFN's; ACM q = 0.5.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    time_on_runtimes,
    write_results,
)

#: The dense control's row name.
CONTROL = "dense 2-D FFN"


def _tokens_flat(ffn: Any) -> Any:
    """``ffn`` run on ``(tokens, dim)`` rows: a block's FFN in the dense control."""
    from torch import nn

    class TokensFlat(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    return TokensFlat(ffn)


def _noop(_x: Any) -> None:
    return None


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """One run: build, export (checked), time. Raw medians and checks, JSON-ready."""
    import torch

    import frugalnn
    from frugalnn.methods.acm.convert import convert_to_acm
    from frugalnn.methods.moe.convert import convert_to_moe
    from frugalnn.runtime.package import load_exported

    load_before = list(os.getloadavg())
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    splits = splits_from_args(a)
    vit = frugalnn.create_model("vit_tiny", activation="relu").eval()
    flat = copy.deepcopy(vit)
    for block in flat.blocks:
        block.mlp = _tokens_flat(block.mlp)
    train = [torch.stack([splits.train[i][0] for i in range(j, j + 32)]) for j in range(0, 96, 32)]
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in train]
    log("converting to MoE and ACM")
    moe = convert_to_moe(copy.deepcopy(vit), num_experts=8, loader=loader,
                         router_epochs=1).eval()
    acm = convert_to_acm(copy.deepcopy(vit), num_learners=4).eval()
    val_x = torch.stack([splits.val[i][0] for i in range(min(128, len(splits.val)))])
    fractions = {}
    with torch.no_grad():
        for tau in moe.budget_values():
            moe.set_budget(tau)
            moe.reset_stats()
            moe(val_x)
            fractions[tau] = moe.ffn_flops_fraction()
    tau = min(fractions, key=lambda t: abs(fractions[t] - 0.5))
    log(f"MoE tau {tau} ({fractions[tau]:.0%} of the dense FFN FLOPs on validation images)")
    # name: (eager model, layout, operating point); rows of one method share its eager model,
    # timed once (under the method's first row).
    rows: dict[str, tuple[Any, str, float | None]] = {
        "dense": (vit, "auto", None), CONTROL: (flat, "auto", None)}
    for method, model, point in (("MoE", moe, tau), ("ACM", acm, a.acm_q)):
        for layout in a.layouts.split(","):
            rows[f"{method} {layout}"] = (model, layout, point)
    tmp = Path(tempfile.mkdtemp(prefix="runtime-dyn-"))
    runners, checks, models = {}, {}, {}
    timed: set[int] = set()
    for name, (model, layout, point) in rows.items():
        log(f"exporting {name} ({layout})")
        folder = tmp / name.replace(" ", "_")
        res = frugalnn.export(model, folder,
                              frugalnn.ExportConfig(format="onnx", threads=1, layout=layout),
                              check_data=splits.test)
        checks[name] = {k: res.check[k] for k in ("examples", "match", "max_abs_diff")}
        checks[name]["budgets"] = len(res.check["points"])
        runners[name] = load_exported(folder, threads=1)
        if point is not None:
            model.set_budget(point)
            runners[name].set_budget(point)
        models[name] = model if id(model) not in timed and name != CONTROL else _noop
        timed.add(id(model))
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    n_img = max(sizes)
    images = torch.stack([splits.test[i % len(splits.test)][0] for i in range(n_img)])
    med = time_on_runtimes(models, runners, images, sizes, rounds=a.rounds,
                           repeats=a.repeats)
    eager_of = {name: next(n for n, r in rows.items() if r[0] is rows[name][0])
                for name in rows}
    return {"tau": tau, "fraction": fractions[tau], "n_img": n_img, "sizes": sizes,
            "ms": {f"{name}|{rt}|{bs}": med[(eager_of[name] if rt == "eager" else name, rt, bs)]
                   for name in rows for rt in ("eager", "onnxruntime") for bs in sizes},
            "rows": list(rows), "checks": checks,
            "load": [load_before[0], os.getloadavg()[0]]}


def _stat(values: list[float], fmt: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(statistics.mean(v), fmt)} ± {format(statistics.stdev(v), fmt)}"


def report(a: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    """The results file of ``runs`` (one dict of :func:`measure` each)."""
    first = runs[0]
    sizes, names = first["sizes"], first["rows"]
    lines = ["| model | batch | eager ms | ORT ms | eager saving | ORT saving | kept | "
             f"ORT saving vs {CONTROL} | kept vs it |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    per_run: dict[str, list[str]] = {}
    for bs in sizes:
        for name in names:
            e, o, se, so, kept, so2, kept2 = ([] for _ in range(7))
            for r in runs:
                ms = r["ms"]
                e.append(ms[f"{name}|eager|{bs}"])
                o.append(ms[f"{name}|onnxruntime|{bs}"])
                se.append(1 - e[-1] / ms[f"dense|eager|{bs}"])
                so.append(1 - o[-1] / ms[f"dense|onnxruntime|{bs}"])
                so2.append(1 - o[-1] / ms[f"{CONTROL}|onnxruntime|{bs}"])
                kept.append(so[-1] / se[-1] if se[-1] else float("nan"))
                kept2.append(so2[-1] / se[-1] if se[-1] else float("nan"))
            # A ratio of savings means nothing where eager PyTorch saves next to nothing.
            dense = name in ("dense", CONTROL)
            ratio = not dense and statistics.mean(se) >= 0.05
            eager = "-" if name == CONTROL else _stat(e, ".2f")
            lines.append(
                f"| {name} | {bs} | {eager} | {_stat(o, '.2f')} | "
                f"{'-' if name == CONTROL else _stat(se, '.1f', 100) + ' %'} | "
                f"{_stat(so, '.1f', 100)} % | {_stat(kept, '.2f') if ratio else '-'} | "
                f"{'-' if dense else _stat(so2, '.1f', 100) + ' %'} | "
                f"{_stat(kept2, '.2f') if ratio else '-'} |")
            if ratio:
                per_run[f"{name} | {bs}"] = [f"{k:.2f}" for k in kept]
    run_lines = ["| model | batch | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
                 + " |", "|---|---:|" + "---:|" * len(runs)]
    run_lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in per_run.items()]
    run_lines.append("| load (1-min average, start / end) | | " + " | ".join(
        f"{r['load'][0]:.1f} / {r['load'][1]:.1f}" for r in runs) + " |")
    check_lines = ["| model | examples | budgets | rows within tolerance | max abs diff |",
                   "|---|---:|---:|---:|---:|"]
    for name, c in first["checks"].items():
        check_lines.append(f"| {name} | {c['examples']} | {c['budgets']} | "
                           f"{100 * c['match']:.1f} % | {c['max_abs_diff']:.2g} |")
    n = len(runs)
    text = results_header("MoE and ACM on eager PyTorch and ONNX Runtime", notes=(
        f"ViT-tiny (random weights, ReLU), MoE at tau {first['tau']} ({first['fraction']:.0%} "
        f"of the dense FFN FLOPs on validation images), ACM at q {a.acm_q} (untrained gate), "
        f"exported in the layouts {', '.join(f'`{x}`' for x in a.layouts.split(','))} "
        "(the eager figure of every layout is its model's). "
        f"`{CONTROL}`: the dense ViT with each FFN run on flattened (tokens, dim) rows. "
        f"One thread, medians of {a.rounds} interleaved rounds of {a.repeats} passes over "
        f"the same {first['n_img']} test images at every batch size (ms per batch); "
        f"{n} run{'s' if n > 1 else ''} in separate processes"
        f"{', mean ± sd over runs' if n > 1 else ''}. ONNX Runtime "
        f"{__import__('onnxruntime').__version__}, opset 17. Saving: 1 - time / the dense "
        "ViT's time on the same runtime; kept: ORT saving / eager saving (target >= 0.8), "
        "given where the eager saving is at least 5 %."))
    text += "\n## Latency\n\n" + "\n".join(lines) + "\n"
    text += "\n## Kept fraction per run\n\n" + "\n".join(run_lines) + "\n"
    text += ("\n## Export check (ONNX Runtime vs PyTorch, CIFAR-10 test images, run 1)\n\n"
             + "\n".join(check_lines) + "\n")
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--acm-q", type=float, default=0.5)
    p.add_argument("--layouts", default="in-graph,segments,one-graph",
                   help="MoE/ACM export layouts to time (in-graph,segments,one-graph)")
    p.add_argument("--runs", type=int, default=3,
                   help="whole measurements, each in a fresh process (3)")
    p.add_argument("--json", help=argparse.SUPPRESS)  # one run's raw figures (a child run)
    p.add_argument("--out", default="benchmarks/results/runtime_dynamic.md")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)  # as in every run (recorded in the header)
    if a.json:
        Path(a.json).write_text(json.dumps(measure(a)))
        return 0
    if a.runs <= 1:
        runs = [measure(a)]
    else:
        runs = []
        with tempfile.TemporaryDirectory(prefix="runtime-dyn-runs-") as tmp:
            for i in range(a.runs):
                log(f"run {i + 1}/{a.runs} (a fresh process)")
                out = Path(tmp) / f"run{i}.json"
                subprocess.run([sys.executable, __file__, *sys.argv[1:], "--json", str(out)],
                               check=True)
                runs.append(json.loads(out.read_text()))
    write_results(a.out, report(a, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
