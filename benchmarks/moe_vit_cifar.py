"""ViT on CIFAR-10 (JPEG) converted to mixture-of-experts: accuracy vs FFN FLOPs, FLOPs, latency.

Pipeline (each stage cached under --work, so re-running skips what exists):

1. ``train``: a ViT (ReLU FFNs) trained in frugalnn on a random subset of the
   CIFAR-10 JPEG train split (scaled down for a shared 2-core CPU: see flags).
2. ``sparsify``: D2DMoE's sparsity enforcement (Hoyer penalty + distillation
   from the trained model), with the sparsity report before and after.
3. ``convert``: balanced k-means experts + routers (the recipe,
   :func:`frugalnn.methods.moe.recipe.moe`), then dynamic-k (tau) and top-k (k)
   sweeps on the test subset and on the validation split through
   ``frugalnn.evaluation`` (records, total FLOPs per example, end-to-end
   latency at batch 64), and the FFN layers alone timed against the dense FFN
   at batch 64 on real FFN inputs. The operating points (the cheapest tau
   within 1 point of dense; the tau closest to 50 % of the FFN FLOPs) are
   chosen on the validation split and scored on the test subset.

4. ``time`` (only when asked for): the layer timings of a finished run re-measured
   from its cached checkpoints, under the timing lock, and its results rewritten. Seeds
   trained side by side (more processes than cores) time their layers under each
   other's load; ``--stage time`` with the same flags, run afterwards on a quiet
   machine, replaces those figures and records both loads.

Splits come from :func:`frugalnn.data.splits.load_splits` (``--train-limit``,
``--val-limit``, ``--test-limit``, ``--seed``: the same examples as the CLI).

    .venv/bin/python benchmarks/moe_vit_cifar.py --data-dir /path/to/data

Writes ``runs/bench/results/moe_vit_cifar.md`` (+ ``.json``), gathered by ``moe_collect.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    add_split_flags,
    log,
    one_line_errors,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)
from torch.utils.data import DataLoader

from frugalnn.analysis.sparsity import activation_sparsity
from frugalnn.cost.latency import measure_latency
from frugalnn.cost.machine import describe_machine
from frugalnn.data.splits import random_subset
from frugalnn.errors import UserError
from frugalnn.evaluation import evaluate, evaluate_into, load_summary
from frugalnn.methods.moe import enforce_sparsity, finetune_routed
from frugalnn.methods.moe.recipe import MoEConfig, moe
from frugalnn.methods.moe.report import ffn_rows
from frugalnn.models import create_model
from frugalnn.train import fit, load_model, save_checkpoint
from frugalnn.utils.io import write_json_atomic

# Sections land here; benchmarks/moe_collect.py assembles them into results/moe.md.
RESULTS = Path("runs/bench/results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(train_limit=12000, val_limit=1000, test_limit=1000,
                   data_dir=os.environ.get("FRUGALNN_DATA"))
    p.add_argument("--work", default="runs/bench/moe_vit_cifar", help="cache of checkpoints/runs")
    p.add_argument("--stage", default="all",
                   choices=("train", "sparsify", "convert", "all", "time"),
                   help="time: re-measure a finished run's layer timings (same flags, quiet "
                        "machine) and rewrite its --out and JSON")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--augment", action="store_true",
                   help="random crop + flip while training the baseline ViT")
    p.add_argument("--sparsify-examples", type=int, default=4000)
    p.add_argument("--sparsify-epochs", type=int, default=1)
    p.add_argument("--sparsity-weight", type=float, default=0.2)
    p.add_argument("--router-examples", type=int, default=4000)
    p.add_argument("--router-epochs", type=int, default=1)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--router-hidden", type=int, default=32, help="128 in D2DMoE (ViT-B)")
    p.add_argument("--sparsify-lr", type=float, default=3e-4)
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="routed fine-tuning after conversion (0: none, the D2DMoE protocol)")
    p.add_argument("--finetune-examples", type=int, default=10000)
    p.add_argument("--finetune-taus", default="0.4,0.5,0.6,0.7,0.8",
                   help="taus drawn per step during routed fine-tuning")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--finetune-kd-weight", type=float, default=0.5)
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="operating point: cheapest tau within this many points (validation)")
    p.add_argument("--out", default=str(RESULTS / "moe_vit_cifar.md"))
    return p.parse_args(argv)


def loader(ds: Any, bs: int, shuffle: bool, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen)


def stage_train(a: argparse.Namespace, work: Path, train: Any) -> None:
    ckpt = work / "baseline" / "checkpoint"
    if (ckpt / "model.safetensors").exists():
        return
    if a.augment:
        train = splits_from_args(a, augment=True).train
    torch.manual_seed(a.seed)
    model = create_model("vit_tiny", dim=a.dim, depth=a.depth, heads=a.heads, activation="relu")
    log(f"training ViT dim={a.dim} depth={a.depth} on {len(train)} images, {a.epochs} ep")
    t0 = time.time()
    fit(model, loader(train, 128, True, a.seed),
        epochs=a.epochs, optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine",
        warmup_epochs=0.2, seed=a.seed, progress=False, run_dir=work / "baseline")
    log(f"trained in {time.time() - t0:.0f} s")


def stage_sparsify(a: argparse.Namespace, work: Path, train: Any, test_dl: DataLoader) -> None:
    out = work / "sparse" / "checkpoint"
    if (out / "model.safetensors").exists():
        return
    model = load_model(work / "baseline" / "checkpoint")
    before = activation_sparsity(model, test_dl, meta={"model": "ViT (trained, ReLU)"})
    before.save(work / "sparsity_before")
    t0 = time.time()
    enforce_sparsity(
        model, loader(random_subset(train, a.sparsify_examples, a.seed + 1), 128, True, a.seed),
        epochs=a.sparsify_epochs, lam=a.sparsity_weight, lr=a.sparsify_lr, relu=False,
        seed=a.seed,
    )
    log(f"sparsity enforcement in {time.time() - t0:.0f} s")
    after = activation_sparsity(model, test_dl, meta={"model": "ViT (after Hoyer fine-tuning)"})
    after.save(work / "sparsity_after")
    save_checkpoint(out, model, {"note": "Hoyer sparsity enforcement"})


def time_layers(moe: Any, dense: Any, x_batch: torch.Tensor, tau: float, repeats: int) -> dict:
    """FFN layers alone at one tau vs the dense FFNs, on the real FFN inputs of one batch."""
    inputs: dict[str, torch.Tensor] = {}
    layers = moe.moe_layers()
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod.name, args[0]))
             for m in layers]
    moe.set_budget(1.0)
    with torch.inference_mode():
        moe(x_batch)
    for h in hooks:
        h.remove()
    dense_ffn = {s.name: s for s in dense.ffn_sites()}
    rows = []
    for m in layers:
        x = inputs[m.name]
        site = dense_ffn[m.name]
        mlp = dense.get_submodule(m.name)
        m.set_tau(tau)
        x2 = x.reshape(-1, x.shape[-1])
        impls = {}
        with torch.inference_mode():
            # Interleaved rounds, fastest round kept: whichever is timed first otherwise
            # pays for warming up caches and kernels.
            d = e = float("inf")
            for _ in range(3):
                d = min(d, measure_latency(mlp, x, warmup=3, repeats=repeats).median_ms)
                e = min(e, measure_latency(m, x, warmup=3, repeats=repeats).median_ms)
            mask = m.select(m.scores(x2))
            for impl in ("gather", "bmm"):
                m.set_impl(impl)
                impls[impl] = measure_latency(
                    m.run_experts, x2, mask, warmup=2, repeats=repeats
                ).median_ms
        m.set_impl("auto")
        rows.append({"layer": m.name, "dense_ms": d, "moe_ms": e, "speedup": d / e,
                     "ffn_fraction": float(mask.float().mean()), "experts_only_ms": impls,
                     "tokens": x2.shape[0], "hidden": site.fc1.out_features})
    # The whole model, timed the same way (interleaved rounds, fastest kept).
    moe.set_budget(tau)
    md = mm = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            md = min(md, measure_latency(dense, x_batch, warmup=2, repeats=repeats).median_ms)
            mm = min(mm, measure_latency(moe, x_batch, warmup=2, repeats=repeats).median_ms)
    moe.set_budget(1.0)
    return {"tau": tau, "layers": rows, "dense_ms": sum(r["dense_ms"] for r in rows),
            "moe_ms": sum(r["moe_ms"] for r in rows), "model_dense_ms": md,
            "model_moe_ms": mm}


def stage_convert(a: argparse.Namespace, work: Path, train: Any, test: Any, val: Any) -> dict:
    src = work / "sparse" / "checkpoint"
    if not (src / "model.safetensors").exists():
        src = work / "baseline" / "checkpoint"
    dense = load_model(src)
    base_run = work / "dense"
    if not (base_run / "summary.json").exists():
        evaluate_into(dense, test, base_run, val_dataset=val, method="dense",
                      batch_size=a.batch_size, latency_batch_sizes=(a.batch_size,),
                      latency_repeats=a.latency_repeats, force=True, progress=False)
    base = load_summary(base_run)["budgets"][0]
    val_base = load_summary(base_run / "validation")["budgets"][0] if val is not None else base
    t0 = time.time()
    config = MoEConfig(experts=a.experts, router_epochs=a.router_epochs,
                       router_hidden=a.router_hidden, batch_size=128, seed=a.seed)
    router_data = random_subset(train, a.router_examples, a.seed + 2)
    moe_model = moe(copy.deepcopy(dense), config, train_data=router_data)
    log(f"converted + routers in {time.time() - t0:.0f} s")
    tag, control = "", None
    if a.finetune_epochs > 0:
        tag = "-ft"
        ft_train = (splits_from_args(a, augment=True).train if a.augment
                    else train)
        ft_loader = loader(random_subset(ft_train, a.finetune_examples, a.seed + 3), 128, True,
                           a.seed)
        router_loader = loader(router_data, 128, True, a.seed)
        taus = [float(t) for t in a.finetune_taus.split(",")]
        t0 = time.time()
        finetune_routed(moe_model, ft_loader, taus=taus, epochs=a.finetune_epochs, lr=a.finetune_lr,
                        kd_weight=a.finetune_kd_weight, router_loader=router_loader,
                        router_epochs=a.router_epochs, seed=a.seed)
        log(f"routed fine-tuning + router re-fit in {time.time() - t0:.0f} s")
        # Control: the same extra training for the dense model (every expert, tau 1), so
        # that the gain is not just "more training".
        ctrl = moe(copy.deepcopy(dense), MoEConfig(experts=a.experts, router_epochs=0,
                                                    router_hidden=a.router_hidden, seed=a.seed),
                   train_data=[])
        finetune_routed(ctrl, ft_loader, taus=[1.0], epochs=a.finetune_epochs,
                        lr=a.finetune_lr, kd_weight=a.finetune_kd_weight, router_epochs=0,
                        seed=a.seed)
        control = _accuracy(ctrl, test, a.batch_size)
        val_control = _accuracy(ctrl, val, a.batch_size) if val is not None else control
        log(f"dense control after the same fine-tuning: {100 * control:.2f} %")
    save_checkpoint(work / f"moe{tag}" / "checkpoint", moe_model, {})
    experts = {m.name: m.num_experts for m in moe_model.moe_layers()}
    runs, val_runs = {}, {}
    for mode in ("dynamic", "topk"):
        moe_model.set_mode(mode)
        run = work / f"moe{tag}-{mode}"
        evaluate_into(moe_model, test, run, val_dataset=val, method=f"moe-{mode}",
                      batch_size=a.batch_size, latency_batch_sizes=(a.batch_size,),
                      latency_repeats=a.latency_repeats, baseline_flops=base["flops"],
                      baseline_accuracy=base["accuracy"], force=True, progress=False)
        runs[mode] = ffn_rows(load_summary(run), experts)
        val_runs[mode] = (ffn_rows(load_summary(run / "validation"), experts)
                          if val is not None else runs[mode])
        log(f"evaluated {mode}")
    moe_model.set_mode("dynamic")
    # The operating point, chosen on validation: the cheapest tau within --tolerance points
    # of dense (or of the fine-tuned dense control, when better) on the validation split.
    val_ref = max(val_base["accuracy"], val_control) if control is not None \
        else val_base["accuracy"]
    ref = max(base["accuracy"], control) if control is not None else base["accuracy"]
    ok = [r for r in val_runs["dynamic"] if r["accuracy"] >= val_ref - a.tolerance / 100]
    chosen = (min(ok, key=lambda r: r["ffn_fraction"]) if ok else val_runs["dynamic"][-1])
    by_label = {r["budget"]: r for r in runs["dynamic"]}
    point = {**by_label[chosen["budget"]], "chosen_on": "validation" if val else "test",
             "validation_accuracy": chosen["accuracy"], "validation_reference": val_ref}
    x_batch = next(iter(loader(test, a.batch_size, False, a.seed)))[0]
    layer_timing = time_layers(moe_model, dense, x_batch, float(point["budget"]),
                               a.latency_repeats)
    # ... and where the routers run about half of the FFN FLOPs (the 50 % point),
    # again read off the validation records.
    half_val = min(val_runs["dynamic"], key=lambda r: abs(r["ffn_fraction"] - 0.5))
    half = {**by_label[half_val["budget"]], "chosen_on": point["chosen_on"]}
    half_timing = None
    if half["budget"] != point["budget"]:
        half_timing = time_layers(moe_model, dense, x_batch, float(half["budget"]),
                                  a.latency_repeats)
    return {"dense": base, "runs": runs, "point": point, "layer_timing": layer_timing,
            "half": half, "half_timing": half_timing, "control": control, "reference": ref}


# Flags that must match between a run and its --stage time: they decide which
# checkpoints, images and operating points the timings belong to.
SAME_RUN_FLAGS = ("work", "seed", "data", "train_limit", "val_limit", "test_limit", "epochs",
                  "experts", "finetune_epochs", "batch_size", "threads", "latency_repeats")


def stage_time(a: argparse.Namespace, work: Path, test: Any) -> dict:
    """``--stage time``: the FFN-layer timings of the finished run behind ``--out`` measured
    again from its checkpoints (same tau, same test batch), under the timing lock."""
    path = Path(a.out).with_suffix(".json")
    try:
        res = json.loads(path.read_text())
        ran, machine = res.pop("args"), res.pop("machine")
        float(res["point"]["budget"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--stage time: {path} is not the JSON of a finished moe_vit_cifar.py "
                        f"run ({exc.__class__.__name__}: {exc})") from None
    differ = [f"--{k.replace('_', '-')} {ran.get(k)} (now {getattr(a, k)})"
              for k in SAME_RUN_FLAGS if ran.get(k) != getattr(a, k)]
    if differ:
        raise UserError(f"--stage time: {path} was run with other flags: {', '.join(differ)}")
    src = work / "sparse" / "checkpoint"
    if not (src / "model.safetensors").exists():
        src = work / "baseline" / "checkpoint"
    moe_ckpt = work / ("moe-ft" if a.finetune_epochs > 0 else "moe") / "checkpoint"
    for ckpt in (src, moe_ckpt):
        if not (ckpt / "model.safetensors").exists():
            raise UserError(f"--stage time: {ckpt} is missing; run the other stages first")
    dense, moe_model = load_model(src).eval(), load_model(moe_ckpt).eval()
    x_batch = next(iter(loader(test, a.batch_size, False, a.seed)))[0]
    before = res.get("retimed", {"load_while_training": res.get("load"), "trained_on": machine})
    with timing_lock():
        res["layer_timing"] = time_layers(moe_model, dense, x_batch,
                                          float(res["point"]["budget"]), a.latency_repeats)
        if res.get("half_timing"):
            res["half_timing"] = time_layers(moe_model, dense, x_batch,
                                             float(res["half"]["budget"]), a.latency_repeats)
    res["retimed"] = {"date": describe_machine()["date"],
                      "load_while_training": before["load_while_training"],
                      "trained_on": before["trained_on"]}
    return res


def _accuracy(model: Any, data: Any, batch_size: int) -> float:
    """Top-1 accuracy of a model at its current budget."""
    records = evaluate(model, DataLoader(data, batch_size=batch_size), budgets=[1.0],
                       progress=False)
    return float(records.per_budget_summary()[0]["accuracy"])


def markdown(a: argparse.Namespace, res: dict, work: Path, sizes: dict[str, int]) -> str:
    base = res["dense"]
    lat64 = {r["batch_size"]: r["median_ms"] for r in load_summary(work / "dense")["latency"]}
    # A section of results/moe.md (moe_collect.py): one level below the file's title.
    head = results_header("Mixture-of-experts: ViT on CIFAR-10 (JPEG)").replace("# ", "## ", 1)
    lines = [
        head,
        f"Scaled down for a shared 2-core CPU: ViT dim {a.dim}, depth {a.depth}, ReLU FFNs "
        f"(hidden {4 * a.dim}), trained {a.epochs} epochs on a random {sizes['train']}-image "
        f"subset of the JPEG train split{' with random crop + flip' if a.augment else ''}; "
        f"sparsity fine-tuning {a.sparsify_epochs} epoch(s) on "
        f"{a.sparsify_examples} images (lambda {a.sparsity_weight}, lr {a.sparsify_lr}); routers "
        f"{a.router_epochs} epoch(s) on {a.router_examples} images (hidden {a.router_hidden}); "
        f"evaluation on a random {sizes['test']} JPEG test images, operating points chosen "
        f"on {sizes['val']} validation images (carved from train, seed {a.seed}); "
        f"{a.experts} experts per FFN "
        f"({4 * a.dim // a.experts} neurons each); {a.threads} thread(s).",
        "",
        f"Dense model: accuracy {100 * base['accuracy']:.2f} %, {base['flops'] / 1e6:.2f} "
        f"MFLOPs/example, {lat64.get(a.batch_size, float('nan')):.1f} ms per batch of "
        f"{a.batch_size} (median).",
        "",
    ]
    if res.get("control") is not None:
        lines += [
            f"Routed fine-tuning (new in frugalnn, not part of D2DMoE): after conversion the "
            f"MoE model was trained {a.finetune_epochs} epoch(s) on {a.finetune_examples} "
            f"{'augmented ' if a.augment else ''}train images with dynamic-k routing at a tau "
            f"drawn per step from {{{a.finetune_taus}}} (AdamW lr {a.finetune_lr}, "
            f"{1 - a.finetune_kd_weight:g} x CE + {a.finetune_kd_weight:g} x KD from the dense "
            "model, routers frozen), then the routers were re-fitted. Control: the dense model "
            f"given the same training (every expert) reaches {100 * res['control']:.2f} %; the "
            f"operating point below is measured against the better of the two "
            f"({100 * res['reference']:.2f} %).",
            "",
        ]
    for mode, rows in res["runs"].items():
        name = "dynamic-k (tau)" if mode == "dynamic" else "top-k (k)"
        lines += [f"### {name}", "",
                  "| knob | accuracy % | FFN FLOPs run % | total MFLOPs/example | total FLOPs % "
                  f"of dense | latency ms (batch {a.batch_size}) | vs dense run (other process) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            ms = r["latency_ms"].get(a.batch_size, r["latency_ms"].get(str(a.batch_size)))
            d = lat64.get(a.batch_size)
            lines.append(
                f"| {r['budget']} | {100 * r['accuracy']:.2f} | {100 * r['ffn_fraction']:.1f} | "
                f"{r['flops'] / 1e6:.2f} | {100 * r['flops'] / base['flops']:.1f} | "
                f"{ms:.1f} | {d / ms:.2f}x |" if ms else "| - |"
            )
        lines.append("")
    sections = [(res["point"], res["layer_timing"], f"the cheapest tau within {a.tolerance:g} "
                 "accuracy point(s) of dense on the validation split")]
    if res.get("half_timing"):
        sections.append((res["half"], res["half_timing"], "the tau running closest to 50 % of "
                         "the FFN FLOPs on the validation split"))
    ref = res.get("reference", base["accuracy"])
    for p, lt, why in sections:
        lines += [
            f"### FFN layers alone at tau = {p['budget']} (batch {a.batch_size}, real inputs)",
            "",
            f"Operating point (chosen_on: {p['chosen_on']}): {why}; test accuracy "
            f"{100 * p['accuracy']:.2f} % (reference {100 * ref:.2f} %), "
            f"{100 * (1 - p['ffn_fraction']):.1f} % of FFN FLOPs removed.",
            "",
            "| layer | tokens | FFN FLOPs run % | dense ms | MoE ms (router included) | "
            "speed-up | experts only: gather ms / bmm ms |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in lt["layers"]:
            lines.append(
                f"| {r['layer']} | {r['tokens']} | {100 * r['ffn_fraction']:.1f} | "
                f"{r['dense_ms']:.2f} | {r['moe_ms']:.2f} | {r['speedup']:.2f}x | "
                f"{r['experts_only_ms']['gather']:.2f} / {r['experts_only_ms']['bmm']:.2f} |"
            )
        lines += [
            f"| all FFNs | | | {lt['dense_ms']:.2f} | {lt['moe_ms']:.2f} | "
            f"{lt['dense_ms'] / lt['moe_ms']:.2f}x | |",
            f"| whole model (end to end) | | | {lt['model_dense_ms']:.2f} | "
            f"{lt['model_moe_ms']:.2f} | {lt['model_dense_ms'] / lt['model_moe_ms']:.2f}x | |",
            "",
        ]
    timed = (f"Layer timings re-measured by `--stage time` on {res['retimed']['date']} at "
             f"load {res.get('load', '?')} (the training run's own timings, at load "
             f"{res['retimed']['load_while_training']}, are replaced)" if res.get("retimed")
             else f"Load average during the run: {res.get('load', '?')}. Layer timings")
    lines += [
        f"{timed}: the fastest of 3 interleaved rounds, each the median of "
        f"{a.latency_repeats} repeats. End-to-end latencies in the sweep tables are the "
        "training run's.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return one_line_errors(lambda: run(parse_args(argv)))


def run(a: argparse.Namespace) -> int:
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    work = Path(a.work)
    if a.stage == "time" and not work.is_dir():
        raise UserError(f"--stage time: no work directory {work}; run the other stages first")
    work.mkdir(parents=True, exist_ok=True)
    log("loading CIFAR-10 JPEG")
    splits = splits_from_args(a)
    train, val, test = splits.train, splits.val, splits.test
    test_dl = loader(test, a.batch_size, False, a.seed)
    if a.stage == "time":
        res = stage_time(a, work, test)
    else:
        stage_train(a, work, train)
        if a.stage == "train":
            return 0
        stage_sparsify(a, work, train, test_dl)
        if a.stage == "sparsify":
            return 0
        res = stage_convert(a, work, train, test, val)
    res["load"] = [round(v, 2) for v in os.getloadavg()]
    sizes = {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)}
    md = markdown(a, res, work, sizes)
    for name in ("sparsity_before", "sparsity_after"):
        f = work / name / "sparsity.md"
        if f.exists():
            md += f"\n### Activation sparsity ({name.replace('_', ' ')})\n\n"
            md += f.read_text().split("\n", 2)[2] + "\n"
    write_results(a.out, md)
    plain = json.loads(json.dumps(res, default=str))
    summary = {"args": vars(a), "machine": describe_machine(), **plain}
    write_json_atomic(Path(a.out).with_suffix(".json"), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
