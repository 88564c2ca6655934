"""Input-dependent models on eager PyTorch and on ONNX Runtime: MoE and ACM on a ViT.

Does an exported input-dependent model keep its eager wall-clock saving on
ONNX Runtime (target: >= 0.8 of it, same operating point, same images)? A
ViT-tiny (ReLU FFNs, 32x32 CIFAR-10 images) is converted to
mixture-of-experts (8 experts per FFN, routers trained one epoch on
training images) and to ACM (4 learners, untrained gate); each, and the dense
ViT, is exported to ONNX with :func:`frugalnn.export` (checked against
PyTorch on test images at every budget), MoE and ACM in both layouts
(``segments``: dense parts, routers and experts as separate graphs driven by
the runtime loop; ``one-graph``: the gather formulation), and timed on both
runtimes at batch 1 and 32, one thread, interleaved rounds. The ViT's weights are random:
timing does not depend on them, accuracy is not reported. Operating points:
the MoE tau whose FFN FLOPs on validation images are closest to half the
dense FFN's; ACM q = 0.5.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    time_on_runtimes,
    write_results,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--acm-q", type=float, default=0.5)
    p.add_argument("--out", default="benchmarks/results/runtime_dynamic.md")
    a = p.parse_args()

    import torch

    import frugalnn
    from frugalnn.methods.acm.convert import convert_to_acm
    from frugalnn.methods.moe.convert import convert_to_moe
    from frugalnn.runtime.package import load_exported

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    splits = splits_from_args(a)
    vit = frugalnn.create_model("vit_tiny", activation="relu").eval()
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
    # name: (eager model, layout, operating point); the eager model of a one-graph row is
    # the same model as its segments row (its eager time is measured again, not reported).
    rows = {"dense": (vit, "auto", None), "MoE": (moe, "segments", tau),
            "MoE one-graph": (moe, "one-graph", tau), "ACM": (acm, "segments", a.acm_q),
            "ACM one-graph": (acm, "one-graph", a.acm_q)}
    models = {name: model for name, (model, _, _) in rows.items()}
    tmp = Path(tempfile.mkdtemp(prefix="runtime-dyn-"))
    runners, checks = {}, {}
    for name, (model, layout, point) in rows.items():
        log(f"exporting {name} ({layout})")
        folder = tmp / name.replace(" ", "_")
        res = frugalnn.export(model, folder,
                              frugalnn.ExportConfig(format="onnx", threads=1, layout=layout),
                              check_data=splits.test)
        checks[name] = res.check
        runners[name] = load_exported(folder, threads=1)
        if point is not None:
            model.set_budget(point)
            runners[name].set_budget(point)
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    n_img = max(sizes)
    images = torch.stack([splits.test[i % len(splits.test)][0] for i in range(n_img)])
    med = time_on_runtimes(models, runners, images, sizes, rounds=a.rounds,
                           repeats=a.repeats)
    lines = ["| model | batch | eager ms | ORT ms | eager saving | ORT saving | kept |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for bs in sizes:
        for name in models:
            eager_name = name.replace(" one-graph", "")
            e, o = med[(eager_name, "eager", bs)], med[(name, "onnxruntime", bs)]
            se = 1 - e / med[("dense", "eager", bs)]
            so = 1 - o / med[("dense", "onnxruntime", bs)]
            # A ratio of savings means nothing where eager PyTorch saves next to nothing.
            kept = f"{so / se:.2f}" if name != "dense" and se >= 0.05 else "-"
            lines.append(f"| {name} | {bs} | {e:.2f} | {o:.2f} | {100 * se:.1f} % | "
                         f"{100 * so:.1f} % | {kept} |")
    check_lines = ["| model | examples | budgets | rows within tolerance | max abs diff |",
                   "|---|---:|---:|---:|---:|"]
    for name, c in checks.items():
        check_lines.append(f"| {name} | {c['examples']} | {len(c['points'])} | "
                           f"{100 * c['match']:.1f} % | {c['max_abs_diff']:.2g} |")
    text = results_header("MoE and ACM on eager PyTorch and ONNX Runtime", notes=(
        f"ViT-tiny (random weights, ReLU), MoE at tau {tau} ({fractions[tau]:.0%} of the dense "
        f"FFN FLOPs on validation images), ACM at q {a.acm_q} (untrained gate). MoE / ACM: "
        "the `segments` layout (the default for ONNX); `one-graph`: the gather formulation "
        "in one graph (its eager figure is the same model's). One thread, "
        f"medians of {a.rounds} interleaved rounds of {a.repeats} passes over the same "
        f"{n_img} test images at every batch size (ms per batch). ONNX Runtime "
        f"{__import__('onnxruntime').__version__}, opset 17. Saving: 1 - time / the dense "
        "ViT's time on the same runtime; kept: ORT saving / eager saving (target >= 0.8), "
        "given where the eager saving is at least 5 %."))
    text += "\n## Latency\n\n" + "\n".join(lines) + "\n"
    text += ("\n## Export check (ONNX Runtime vs PyTorch, CIFAR-10 test images)\n\n"
             + "\n".join(check_lines) + "\n")
    write_results(a.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
