"""Early exits on ResNet-56 / CIFAR-10 (JPEG): SDN heads vs Zero-Time-Waste, FLOPs and wall clock.

Pipeline (one command, fixed seeds):

1. ResNet-56 from the pretrained checkpoint, fine-tuned on (a random subset of)
   the JPEG train split so that the baseline is fair on the JPEG test split;
2. SDN: pooling+linear heads trained on the frozen backbone; ZTW: cascaded
   heads plus the geometric ensemble, trained on the same frozen backbone.
   Both use the heads' parameter-free pooled features of the train subset,
   computed once (exact for a frozen backbone without augmentation);
3. the thresholds are swept offline (all heads evaluated once) and chosen on
   the validation split (``--val-fraction`` of the train split, carved with
   ``--seed``, never trained on here): accuracy at 25/50/75 % of the
   backbone's FLOPs and the largest FLOPs saving within 0.5 / 1 point of the
   backbone; the test subset only scores the chosen thresholds. (The
   pretrained ResNet-56 checkpoint saw every CIFAR-10 train image, so its
   validation confidences are optimistic; the results file says so.)
   With ``--test-half-check`` the thresholds are also chosen on a seeded half
   of the test subset, and both choices are scored on the other half: a
   measure of how optimistic the train-carved validation split is;
4. the real batched path is checked against the offline sweep (predictions,
   exits and per-example FLOPs) and timed at batch 1 and 64 against the
   backbone in the same process (interleaved passes, under the shared timing
   lock), at the operating point within ``--time-at-drop`` (1 point unless
   told); the results file ends with the figures as one JSON comment line,
   which ``early_exit_draws.py --across-seeds`` pools;
   With ``--final-ensemble`` both variants' last exit becomes a weighted
   geometric mean of every exit and the backbone, fitted on half of the
   validation split (the other half chooses the thresholds), never on test images;
5. a transformer case: a small ViT (``--vit-data digits`` by default: 8x8
   digits, trained from scratch here; ``cifar10`` for the 32x32 ViT).

Full scale: ``--finetune-epochs 10 --finetune-limit 50000 --train-limit 50000
--head-epochs 50 --test-limit 10000``. The defaults are a scaled-down run for a
shared 2-core CPU; the results file states the scale used. The training
pieces are the early-exit recipe's (``frugalnn.methods.early_exit.recipe``);
this script keeps the experiment grid, the timing and the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)
from torch.utils.data import DataLoader

from frugalnn.cost.allocator import retain_freed_memory
from frugalnn.data.base import resolve_data_dir
from frugalnn.data.splits import load_splits, random_subset
from frugalnn.methods.early_exit import attach_heads
from frugalnn.methods.early_exit.offline import (
    DROPS,
    FRACTIONS,
    ExitTrace,
    operating_points,
    simulate,
    trace_from_features,
)
from frugalnn.methods.early_exit.recipe import (
    EarlyExitConfig,
    augmented_view,
    train_from_caches,
    validation_parts,
)
from frugalnn.methods.early_exit.training import (
    cache_augmented_passes,
    cache_features,
    train_ensemble,
    train_final_ensemble,
    train_joint,
)
from frugalnn.models import create_model
from frugalnn.models.fold import fold_batchnorm
from frugalnn.train import load_model
from frugalnn.train.loop import fit


@torch.inference_mode()
def accuracy(model, loader) -> float:
    """Top-1 accuracy of ``model`` over ``loader``."""
    model.eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(1) == y).sum())
        total += int(y.shape[0])
    return right / max(total, 1)


def stack(ds, n: int) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])




def variants(backbone, args, train_cache, example, aug_caches=(), ens_cache=None):
    """SDN and ZTW exit models on one frozen backbone, trained from one feature cache.

    The training is the recipe's (:func:`train_from_caches`, heads mode).
    ``aug_caches``: features of augmented passes over the same images (same
    order); the heads train on the plain rows and these. ZTW's held-out images
    are the same in every pass (one split seed), so neither heads nor ensemble
    see an augmented copy of the other's images. ``ens_cache``: fit the ZTW
    ensemble on these features instead (part of the validation split), so
    ZTW's heads train on every train image, as SDN's do.
    """
    out = {}
    crossfit = args.ztw_ensemble_fit == "crossfit"
    for name, cascade in (("SDN", False), ("ZTW", True)):
        config = EarlyExitConfig(
            positions=args.positions, pool_size=args.pool_size, cascade=cascade,
            ensemble=cascade, epochs=args.head_epochs, lr=args.head_lr,
            ensemble_epochs=args.ensemble_epochs,
            ensemble_holdout=0.0 if ens_cache is not None else args.ensemble_holdout,
            ensemble_folds=args.ensemble_folds if cascade and crossfit else 0,
            seed=args.seed).validate()
        torch.manual_seed(args.seed)
        ee = attach_heads(backbone, config.positions, cascade=cascade,
                          pool_size=config.pool_size)
        t0 = time.perf_counter()
        history, ens_data = train_from_caches(ee, config, [train_cache, *aug_caches])
        if cascade and "ensemble" not in history:
            train_ensemble(ee, ens_cache if ens_cache is not None else ens_data,
                           epochs=config.ensemble_epochs, seed=config.seed)
        del ens_data  # the features are large (1.5 GB per pass for ResNet-56 at fp16)
        how = f"cross-fitted ({args.ensemble_folds} folds)" if cascade and crossfit else "trained"
        log(f"{name}: heads {how} in {time.perf_counter() - t0:.0f} s")
        out[name] = ee.eval()
    return out


def frontier_rows(traces, val_traces, ref_val_acc):
    """Accuracy at fixed FLOPs and savings within 0.5 / 1 pt: thresholds chosen on the
    validation traces (against ``ref_val_acc``), scored on the test traces."""
    lines = ["| method | acc @25 % FLOPs | acc @50 % | acc @75 % | saving within 0.5 pt | "
             "saving within 1 pt |", "|---|---|---|---|---|---|"]
    numbers = {}
    for name, tr in traces.items():
        pts = operating_points(tr, "maxprob", val_trace=val_traces[name],
                               reference_accuracy=ref_val_acc)
        at, sv = pts["accuracy_at_flops"], pts["saving_within"]
        numbers[name] = (at, sv)
        cells = [
            f"{100 * at[f]['accuracy']:.2f} % ({100 * at[f]['flops_ratio']:.0f} % FLOPs)"
            if at[f]["accuracy"] == at[f]["accuracy"] else "– (below the first exit)"
            for f in FRACTIONS
        ]
        cells += [
            f"{100 * sv[d]['flops_saving']:.1f} % (acc {100 * sv[d]['accuracy']:.2f} %, "
            f"t={sv[d]['threshold']:.4f})" if sv[d]["threshold"] == sv[d]["threshold"]
            else "not reached"
            for d in DROPS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| backbone | 100 % FLOPs | | | | |")
    return lines, numbers


def trace_rows(trace: ExitTrace, rows: torch.Tensor) -> ExitTrace:
    """The examples ``rows`` of a trace (every exit's outputs and costs)."""
    plain = None if trace.backbone_logits is None else trace.backbone_logits[rows]
    return ExitTrace(trace.logits[:, rows], trace.labels[rows], trace.exit_flops[:, rows],
                     trace.backbone_flops[rows], plain)


def test_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint seeded halves of ``n`` test rows: ``(choose, score)``, each sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def plain_accuracy(trace: ExitTrace) -> float:
    """Accuracy of the backbone's own output (the full budget) on a trace."""
    return float((trace.plain_logits.argmax(1) == trace.labels).double().mean())


def half_check(traces, val_traces, ref_val, seed):
    """Thresholds chosen on validation vs on a seeded half of the test subset, both scored
    on the other half: how optimistic the train-carved validation split is.

    Returns the table lines and ``{method: {chosen_on: operating points}}``.
    """
    choose, scored = test_halves(len(next(iter(traces.values())).labels), seed)
    lines = ["| method | thresholds chosen on | acc @25 % FLOPs | acc @50 % | acc @75 % | "
             "saving within 0.5 pt (drop on the scored half) | saving within 1 pt (drop) |",
             "|---|---|---|---|---|---|---|"]
    out: dict[str, dict[str, dict]] = {}
    base_b = base_a = float("nan")
    for name, tr in traces.items():
        half_a, half_b = trace_rows(tr, choose), trace_rows(tr, scored)
        base_a, base_b = plain_accuracy(half_a), plain_accuracy(half_b)
        out[name] = {}
        for label, chooser, ref in (("validation", val_traces[name], ref_val),
                                    ("test half A", half_a, base_a)):
            pts = operating_points(half_b, "maxprob", val_trace=chooser, reference_accuracy=ref)
            at, sv = pts["accuracy_at_flops"], pts["saving_within"]
            out[name][label] = {"accuracy_at_flops": {str(f): at[f] for f in FRACTIONS},
                                "saving_within": {str(d): {**sv[d],
                                                           "drop": base_b - sv[d]["accuracy"]}
                                                  for d in DROPS}}
            cells = [_at_cell(at[f]) for f in FRACTIONS]
            cells += [_saving_cell(sv[d], base_b) for d in DROPS]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    lines.append(f"| backbone | | {100 * base_b:.2f} % on the scored half "
                 f"({100 * base_a:.2f} % on half A) | | | | |")
    return lines, out, {"choose": len(choose), "scored": len(scored), "backbone_a": base_a,
                        "backbone_b": base_b}


def _at_cell(row: dict) -> str:
    if row["accuracy"] != row["accuracy"]:
        return "– (below the first exit)"
    return f"{100 * row['accuracy']:.2f} % ({100 * row['flops_ratio']:.0f} % FLOPs)"


def _saving_cell(row: dict, reference: float) -> str:
    if row["threshold"] != row["threshold"]:
        return "not reached"
    return (f"{100 * row['flops_saving']:.1f} % (acc {100 * row['accuracy']:.2f} %, drop "
            f"{100 * (reference - row['accuracy']):+.2f} pt, t={row['threshold']:.4f})")


def head_table(traces):
    names = list(traces)
    n = traces[names[0]].num_exits
    lines = ["| exit | FLOPs to reach (M) | " + " | ".join(f"{k} accuracy" for k in names) + " |",
             "|---|---|" + "---|" * len(names)]
    accs = {k: tr.head_accuracy() for k, tr in traces.items()}
    flops = traces[names[0]].exit_flops[:, 0]
    for i in range(n):
        label = "final" if i == n - 1 else str(i)
        lines.append(f"| {label} | {flops[i] / 1e6:.2f} | "
                     + " | ".join(f"{100 * accs[k][i]:.2f} %" for k in names) + " |")
    return lines


def check_real_path(model, trace, test_x, threshold, batch) -> str:
    """Real batched inference vs the offline simulation on the first examples."""
    from frugalnn.cost.ledger import CostLedger

    model.set_budget(threshold)
    sim = simulate(trace, "maxprob", threshold)
    n = len(test_x)
    preds, exits, flops = [], [], []
    with torch.inference_mode():
        for s in range(0, n, batch):
            xb = test_x[s : s + batch]
            with CostLedger(len(xb)) as led:
                preds.append(model(xb).argmax(1))
            exits.append(led.decisions["exit_index"].long())
            flops.append(led.flops)
    model.set_budget(model.full_budget())
    p, e, f = torch.cat(preds), torch.cat(exits), torch.cat(flops)
    return (f"{int((p == sim.pred[:n]).sum())}/{n} predictions, "
            f"{int((e == sim.exit_index[:n]).sum())}/{n} exits, "
            f"{int((f == sim.flops[:n]).sum())}/{n} per-example FLOPs identical")


def time_models(models, test_x, sizes, passes, warmup):
    """Mean wall clock per batch of each (name, model, threshold), same process.

    An early-exit model's time depends on the input, so every model runs over
    *all* the timed examples (every batch, not a few) and the figure is the
    mean time per batch; ``passes`` such sweeps are interleaved across the
    models (so drift in machine load hits them alike) and the median pass is
    reported, with the fastest and slowest pass.
    """
    rows = []
    for bs in sizes:
        batches = [test_x[i : i + bs] for i in range(0, len(test_x) - bs + 1, bs)]
        per_pass: dict[str, list[float]] = {name: [] for name, *_ in models}
        with torch.inference_mode():
            for _ in range(max(passes, 1)):
                for name, model, thr in models:
                    if thr is not None:
                        model.set_budget(thr)
                    for b in batches[:warmup]:
                        model(b)
                    t0 = time.perf_counter()
                    for b in batches:
                        model(b)
                    per_pass[name].append(1e3 * (time.perf_counter() - t0) / len(batches))
                    if thr is not None:
                        model.set_budget(model.full_budget())
        for name, *_ in models:
            t = sorted(per_pass[name])
            rows.append((bs, name, t[len(t) // 2], t[0], t[-1], os.getloadavg()[0]))
    return rows


def latency_table(rows, flops_ratio):
    lines = ["| batch | model | mean ms per batch | fastest-slowest pass | speed-up vs backbone | "
             "FLOPs ratio | target speed-up (1 + 0.7 x FLOPs saved) | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|"]
    base = {bs: med for bs, name, med, *_ in rows if name == "backbone"}
    for bs, name, med, p10, p90, load in rows:
        ratio = flops_ratio.get(name, 1.0)
        speed = base[bs] / med
        # The rule: 40 % fewer FLOPs -> at least 1.28x faster, i.e. the time
        # saved must be at least 0.7 of the FLOPs saved, counted as 1 + 0.7 * saving.
        target = 1.0 + 0.7 * (1.0 - ratio) if name != "backbone" else 1.0
        lines.append(f"| {bs} | {name} | {med:.2f} | {p10:.2f}-{p90:.2f} | {speed:.2f}x | "
                     f"{ratio:.3f} | {target:.2f}x | {load:.2f} |")
    return lines


def run_case(title, backbone, train_plain, val_ds, test_ds, args, out_lines, pretrained_acc=None,
             reference=None, fit_ds=None, make_augmented=None):
    """One backbone: train SDN / ZTW, choose thresholds on ``val_ds``, score on ``test_ds``.

    ``reference``: ``(name, test accuracy, validation accuracy)`` of an outside
    backbone the savings are measured against when it is the better one.
    """
    test_loader = DataLoader(test_ds, batch_size=256)
    example = stack(test_ds, 2)
    log(f"{title}: caching head features of {len(train_plain)} train examples")
    probe = attach_heads(backbone, args.positions, pool_size=args.pool_size)
    t0 = time.perf_counter()
    train_cache = cache_features(probe, DataLoader(train_plain, batch_size=256),
                                 dtype=torch.float16)
    log(f"  cached in {time.perf_counter() - t0:.0f} s; test features ({len(test_ds)})")
    test_cache = cache_features(probe, test_loader)
    val_cache = cache_features(probe, DataLoader(val_ds, batch_size=256))
    aug_caches = []
    if make_augmented is not None and args.head_augment_passes > 0:
        t0 = time.perf_counter()
        aug_caches = cache_augmented_passes(probe, make_augmented, args.head_augment_passes,
                                            dtype=torch.float16)
        log(f"  {args.head_augment_passes} augmented pass(es) cached in "
            f"{time.perf_counter() - t0:.0f} s")
    fit_cache = (cache_features(probe, DataLoader(fit_ds, batch_size=256))
                 if fit_ds is not None else None)
    ztw_on_val = args.ztw_ensemble_fit == "heldout-val"
    models = variants(backbone, args, train_cache, example, aug_caches,
                      ens_cache=fit_cache if ztw_on_val else None)
    if fit_ds is not None and args.final_ensemble:
        for name, m in models.items():
            train_final_ensemble(m, fit_cache, seed=args.seed)
            w = m.final_ensemble.weight.detach()
            log(f"{name}: final ensemble fitted on {len(fit_ds)} validation images; "
                f"weight on the backbone {float(w[-1]):.2f}, on the heads "
                f"{float(w[:-1].abs().sum()):.2f} (sum of |w|)")
    traces = {k: trace_from_features(m, test_cache, example) for k, m in models.items()}
    val_traces = {k: trace_from_features(m, val_cache, example) for k, m in models.items()}
    base_acc = float((test_cache.final_logits.argmax(1) == test_cache.labels).double().mean())
    base_val = float((val_cache.final_logits.argmax(1) == val_cache.labels).double().mean())
    base_flops = float(traces["SDN"].backbone_flops[0])
    # The savings are measured against the better (on validation) of this backbone and an
    # outside reference (after joint training: the backbone fine-tuned without heads).
    ref_name, ref_acc, ref_val = "this backbone's own final output", base_acc, base_val
    if reference is not None and reference[2] > base_val:
        ref_name, ref_acc, ref_val = reference
    lines, numbers = frontier_rows(traces, val_traces, ref_val)
    out_lines += [f"### {title}", ""]
    if pretrained_acc is not None:
        out_lines.append(f"- pretrained backbone (before fine-tuning) on this test subset: "
                         f"{100 * pretrained_acc:.2f} %")
    if reference is not None:
        out_lines.append(f"- {reference[0]}: {100 * reference[1]:.2f} % (validation "
                         f"{100 * reference[2]:.2f} %)")
        out_lines.append(f"- savings below are measured against {ref_name} "
                         f"({100 * ref_acc:.2f} % test, {100 * ref_val:.2f} % validation), the "
                         "better of the two on validation")
    out_lines += [
        f"- backbone: {100 * base_acc:.2f} % accuracy ({100 * base_val:.2f} % on validation), "
        f"{base_flops / 1e6:.2f} MFLOPs/example (FLOPs = 2 x MACs, FlopCounterMode)",
        f"- heads after blocks {probe.positions} of {len(backbone.blocks)}, policy maxprob, "
        f"thresholds swept offline (all heads once), chosen on the {len(val_ds)} validation "
        f"images (chosen_on: validation) and scored on the {len(test_ds)} test images",
        *([f"- ZTW: heads trained on every train image (as SDN's); its ensemble fitted on "
           f"{len(fit_ds)} validation images kept out of the threshold choice"]
          if fit_ds is not None and ztw_on_val else []),
        *([f"- final ensemble (SDN and ZTW): rows that reach the end get a weighted geometric "
           f"mean of every exit and the backbone, fitted on {len(fit_ds)} validation images "
           "kept out of the threshold choice (no test image is used to fit it); at the "
           "full budget the backbone's own output"]
          if fit_ds is not None and args.final_ensemble else []), "",
        *lines, "", "Accuracy of each exit alone (every example stopping there):", "",
        *head_table(traces), "",
    ]
    record = {"seed": args.seed, "reference": ref_name, "reference_test": ref_acc,
              "reference_val": ref_val, "backbone_test": base_acc, "backbone_val": base_val,
              "backbone_mflops": base_flops / 1e6, "val_examples": len(val_ds),
              "test_examples": len(test_ds), "methods": {}}
    for name, (at, sv) in numbers.items():
        record["methods"][name] = {
            "accuracy_at_flops": {str(f): at[f] for f in FRACTIONS},
            "saving_within": {str(d): {**sv[d], "drop": ref_acc - sv[d]["accuracy"]}
                              for d in DROPS},
            "head_accuracy": traces[name].head_accuracy()}
    drop_lines = [f"- {name} within {100 * d:.1f} pt (chosen on validation): test accuracy "
                  f"{100 * sv[d]['accuracy']:.2f} %, {100 * (ref_acc - sv[d]['accuracy']):+.2f} "
                  f"pt below the reference's {100 * ref_acc:.2f} % (validation: "
                  f"{100 * (ref_val - sv[d]['val_accuracy']):+.2f} pt)"
                  for name, (_, sv) in numbers.items() for d in DROPS
                  if sv[d]["threshold"] == sv[d]["threshold"]]
    out_lines += ["Test accuracy drop at the validation-chosen operating points:", "",
                  *drop_lines, ""]
    if args.test_half_check:
        if ref_name != "this backbone's own final output":
            out_lines += ["- test-half check skipped: the reference is an outside backbone "
                          "whose per-image outputs are not kept", ""]
        else:
            check_lines, record["half_check"], sizes = half_check(traces, val_traces, ref_val,
                                                                   args.seed)
            record["half_check_sizes"] = sizes
            out_lines += [
                f"Check of the validation split's optimism: the {len(test_ds)} test images split "
                f"into two seeded halves (seed {args.seed}); thresholds chosen on the "
                f"{len(val_ds)} validation images (the headline protocol) or on test half A "
                f"({sizes['choose']} images, against the backbone's accuracy there), both "
                f"scored on the same other half ({sizes['scored']} images). Drops are against "
                "the backbone on the scored half.", "", *check_lines, ""]
    # Real path: verify and time at the operating points within --time-at-drop.
    test_x = stack(test_ds, args.latency_examples)
    flops_ratio = {"backbone": 1.0}
    timed = [("backbone", backbone.eval(), None)]
    for name, m in models.items():
        thr = numbers[name][1][args.time_at_drop]["threshold"]
        if thr != thr:  # no operating point within the drop of the reference
            out_lines.append(f"- {name}: no threshold within {100 * args.time_at_drop:.1f} "
                             "point of the reference; not timed")
            continue
        sim = simulate(traces[name], "maxprob", thr)
        timed_flops = sim.flops[: len(test_x)]
        flops_ratio[f"{name} t={thr:.4f}"] = float(timed_flops.mean()) / base_flops
        check = check_real_path(m, traces[name], test_x[: args.check_examples], thr, 64)
        out_lines.append(f"- real batched path vs offline sweep, {name} at t={thr:.4f} on "
                         f"{min(args.check_examples, len(test_x))} examples: {check}")
        timed.append((f"{name} t={thr:.4f}", m, thr))
    staged = hasattr(backbone, "blocks_per_stage")  # a ResNet: report time by stage
    shares = {"as trained": stage_time_shares(backbone, test_x[:64])} if staged else {}
    intro = ("every model runs over all of the first "
             f"{len(test_x)} test examples at each batch size, {args.latency_passes} "
             "passes interleaved across the models; the figure is the mean time per "
             "batch of the median pass. The FLOPs ratio is the mean over the same examples."
             + (" Timed holding the shared timing lock (/tmp/frugalnn-timing.lock)."
                if args.timing_lock else " Timed without the shared timing lock."))
    threads = torch.get_num_threads()
    if args.fold_bn or args.channels_last:  # the same operating points, as trained first
        log(f"{title}: timing as trained at batch sizes {args.batch_sizes}")
        with timing_lock() if args.timing_lock else nullcontext():
            rows = time_models(timed, test_x, args.batch_sizes, args.latency_passes, args.warmup)
        out_lines += ["", f"Wall clock as trained (real batched inference, no ledger, torch "
                      f"threads {threads}): {intro}", "", *latency_table(rows, flops_ratio), ""]
    prepared = prepare_for_timing(backbone, args)
    if args.channels_last:
        test_x = test_x.contiguous(memory_format=torch.channels_last)
    log(f"{title}: timing at batch sizes {args.batch_sizes}")
    with timing_lock() if args.timing_lock else nullcontext():
        if prepared and staged:
            shares[f"as timed ({prepared})"] = stage_time_shares(backbone, test_x[:64])
        rows = time_models(timed, test_x, args.batch_sizes, args.latency_passes, args.warmup)
    base_ms = {bs: med for bs, name, med, *_ in rows if name == "backbone"}
    record["timing"] = {
        "prepared": prepared, "drop": args.time_at_drop, "examples": len(test_x),
        "passes": args.latency_passes,
        "speedup": {f"{name.split()[0]} b{bs}": base_ms[bs] / med
                    for bs, name, med, *_ in rows if name != "backbone"},
        "flops_ratio": {k.split()[0]: v for k, v in flops_ratio.items() if k != "backbone"}}
    how = f"; {prepared} for every timed model" if prepared else ""
    out_lines += ["", f"Wall clock (real batched inference, no ledger, torch threads "
                  f"{threads}{how}): {intro}", "", *latency_table(rows, flops_ratio), ""]
    if staged:
        out_lines += ["Backbone wall clock by stage at batch 64 (each stage has a third of the "
                      "FLOPs; early exits save the late stages):", ""]
        out_lines += [f"- {k}: " + " / ".join(f"{100 * v:.0f} %" for v in vals)
                      for k, vals in shares.items()]
        out_lines.append("")
    # One machine-readable line for benchmarks/early_exit_draws.py (pooling seeds).
    out_lines += [f"<!-- early-exit numbers: {json.dumps(record, allow_nan=True)} -->", ""]
    return numbers


def stage_time_shares(backbone, x, repeats: int = 5) -> list[float]:
    """Share of the backbone's wall clock spent in each ResNet stage (stem counted in the first).

    Early exits save the *late* blocks; when the early, high-resolution stage
    takes more time per FLOP, the time saved falls short of the FLOPs saved.
    """
    per_stage = backbone.blocks_per_stage
    spent = [0.0] * (len(backbone.blocks) // per_stage)
    with torch.inference_mode():
        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            h = backbone.embed(x)
            t_stem = time.perf_counter() - t0
            for b, block in enumerate(backbone.blocks):
                t0 = time.perf_counter()
                h = block(h)
                if rep:  # the first pass is a warm-up
                    spent[b // per_stage] += time.perf_counter() - t0 + (t_stem if b == 0 else 0)
    total = sum(spent)
    return [t / total for t in spent]


def prepare_for_timing(backbone, args) -> str:
    """Fold BatchNorm / switch to channels-last on the shared backbone, as flagged.

    Done after the real-path check (folding changes float rounding) and in place
    on the one backbone that the plain model and every exit model share, so both
    sides of each speed-up run the same prepared blocks. Returns what was done.
    """
    notes = []
    if args.fold_bn:
        notes.append(f"BatchNorm folded into {fold_batchnorm(backbone.eval())} convolutions")
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
        notes.append("channels-last")
    return ", ".join(notes)


def load_cache(model, path: str | None, what: str) -> bool:
    """Load ``model``'s weights from a safetensors cache file if it exists (same flags assumed)."""
    from safetensors.torch import load_file

    if not path or not Path(path).is_file():
        return False
    model.load_state_dict(load_file(path))
    log(f"{what} loaded from {path} (same flags assumed)")
    return True


def require_cache(model, path: str, what: str) -> None:
    """Load a weights file that must exist (a starting point, not an optional cache)."""
    if not Path(path).is_file():
        sys.exit(f"error: {what} weights {path} not found; give an existing safetensors file")
    load_cache(model, path, what)


def save_cache(model, path: str | None) -> None:
    """Save ``model``'s weights to the cache file, if one was asked for."""
    from safetensors.torch import save_file

    if path:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def joint_backbone(backbone, train_aug, args):
    """SDN training: backbone and heads together; returns the backbone (heads dropped)."""
    if load_cache(backbone, args.joint_cache, "jointly trained backbone"):
        return backbone.eval()
    from frugalnn.train.distill import frozen_copy

    teacher = frozen_copy(backbone) if args.joint_kd_weight > 0 else None  # the fine-tuned one
    if args.joint_init:
        require_cache(backbone, args.joint_init, "joint-training start")
    torch.manual_seed(args.seed)
    ee = attach_heads(backbone, args.positions, pool_size=args.pool_size)
    t0 = time.perf_counter()
    train_joint(ee, DataLoader(random_subset(train_aug, args.finetune_limit, args.seed + 3),
                                batch_size=128, shuffle=True), epochs=args.joint_epochs,
                lr=args.joint_lr, seed=args.seed, progress=False,
                kd_weight=args.joint_kd_weight, kd_temperature=args.joint_kd_temperature,
                final_weight=args.joint_final_weight, teacher=teacher)
    log(f"joint training in {time.perf_counter() - t0:.0f} s")
    save_cache(backbone, args.joint_cache)
    return backbone.eval()


def control_backbone(backbone, train_aug, args):
    """The same-training control: the fine-tuned backbone trained on, without heads.

    It gets the joint run's data, epochs, optimiser and distillation (the final
    exit's loss alone), so that a saving measured against it is not credit for
    the extra epochs joint training gave the backbone. Returns a new model.
    """
    from frugalnn.train.distill import DistillConfig, frozen_copy

    control = copy.deepcopy(backbone)
    if load_cache(control, args.control_cache, "same-training control"):
        return control.eval()
    if args.control_init:
        require_cache(control, args.control_init, "control start")
    torch.manual_seed(args.seed)
    for prm in control.parameters():
        prm.requires_grad_(True)
    kd = args.joint_kd_weight > 0
    t0 = time.perf_counter()
    fit(control, DataLoader(random_subset(train_aug, args.finetune_limit, args.seed + 3),
                            batch_size=128, shuffle=True),
        epochs=args.joint_epochs, optimizer="sgd", lr=args.joint_lr, weight_decay=5e-4,
        schedule="cosine", seed=args.seed, progress=False,
        teacher=frozen_copy(backbone) if kd else None,
        distill=DistillConfig(alpha=args.joint_kd_weight, temperature=args.joint_kd_temperature)
        if kd else None)
    log(f"same-training control in {time.perf_counter() - t0:.0f} s")
    save_cache(control, args.control_cache)
    return control.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(p, data="cifar10")
    p.set_defaults(train_limit=5000, test_limit=2000)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-limit", type=int, default=5000)
    p.add_argument("--head-epochs", type=int, default=30)
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--ensemble-epochs", type=int, default=30)
    p.add_argument("--ensemble-holdout", type=float, default=0.2,
                   help="fraction of the head-training examples kept out of head training "
                        "and used to fit the ZTW ensemble (0: fit it on the same examples)")
    p.add_argument("--ztw-ensemble-fit", default="train-holdout",
                   choices=("train-holdout", "heldout-val", "crossfit"),
                   help="where ZTW's ensemble is fitted: on --ensemble-holdout of the "
                        "head-training images (kept from its heads), on half of the "
                        "validation split (the other half chooses thresholds), or (crossfit) "
                        "on out-of-fold "
                        "predictions of --ensemble-folds fold models; the last two let its "
                        "heads see every train image, as SDN's do")
    p.add_argument("--ensemble-folds", type=int, default=5,
                   help="folds for --ztw-ensemble-fit crossfit (default 5)")
    p.add_argument("--backbone-cache", help="safetensors file: load the fine-tuned backbone "
                   "from it if it exists, else save it there after fine-tuning")
    p.add_argument("--joint-epochs", type=int, default=0,
                   help="after fine-tuning, train backbone and SDN heads jointly (SDN "
                        "training) for this many epochs on the augmented train set; the "
                        "SDN/ZTW heads are then retrained on the jointly trained, frozen "
                        "backbone")
    p.add_argument("--joint-lr", type=float, default=0.01)
    p.add_argument("--joint-kd-weight", type=float, default=0.0,
                   help="joint training: distil every exit from the fine-tuned backbone with "
                        "this weight (0: plain SDN cross-entropy)")
    p.add_argument("--joint-kd-temperature", type=float, default=2.0)
    p.add_argument("--joint-final-weight", type=float, default=1.0,
                   help="joint training: loss weight of the final exit (1: SDN weights)")
    p.add_argument("--joint-cache", help="safetensors file for the jointly trained backbone")
    p.add_argument("--joint-control", action="store_true",
                   help="also train the fine-tuned backbone without heads for the joint run's "
                        "epochs, data and distillation, and measure savings against the better "
                        "of it and the fine-tuned backbone (a same-training control)")
    p.add_argument("--control-cache", help="safetensors file for the same-training control")
    p.add_argument("--joint-init", help="start joint training from these backbone weights (e.g. "
                   "an earlier joint run's --joint-cache) instead of the fine-tuned backbone; "
                   "distillation still uses the fine-tuned backbone")
    p.add_argument("--control-init", help="start the control from these weights (the earlier "
                   "run's --control-cache), so that it gets as many epochs as the joint run")
    p.add_argument("--test-half-check", action="store_true",
                   help="also choose the thresholds on a seeded half of the test subset and "
                        "score them, and the validation-chosen ones, on the other half (how "
                        "optimistic the train-carved validation split is)")
    p.add_argument("--time-at-drop", type=float, default=0.01, choices=DROPS,
                   help="verify and time at the operating point within this accuracy drop "
                        "(fraction: 0.01 = 1 point, the default; 0.005 = half a point)")
    p.add_argument("--no-timing-lock", dest="timing_lock", action="store_false",
                   help="time without waiting for the shared timing lock (smoke tests only: "
                        "the figures are not a measurement)")
    p.add_argument("--positions", default="every:3")
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--latency-passes", type=int, default=3,
                   help="timed sweeps over all the latency examples, per model and batch size")
    p.add_argument("--latency-examples", type=int, default=640)
    p.add_argument("--check-examples", type=int, default=640)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--head-augment-passes", type=int, default=0,
                   help="heads also train on this many augmented (crop + flip) passes over "
                        "their train images (features cached once per pass)")
    p.add_argument("--head-augment-seed", type=int, default=100,
                   help="seed of the first augmented pass's crops and flips (pass k: seed + k)")
    p.add_argument("--final-ensemble", action="store_true",
                   help="fit a final-exit ensemble (every exit + the backbone) on a seeded "
                        "half of the validation split (the other half chooses the thresholds)")
    p.add_argument("--fold-bn", action="store_true",
                   help="time backbone and exit models with BatchNorm folded into the convolutions")
    p.add_argument("--channels-last", action="store_true",
                   help="time backbone and exit models in channels-last memory format")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--vit-data", default="digits", choices=("digits", "cifar10", "none"))
    p.add_argument("--vit-epochs", type=int, default=40)
    p.add_argument("--vit-checkpoint", help="a trained vit_tiny checkpoint (with --vit-data "
                   "cifar10) instead of training one here")
    p.add_argument("--retain-freed-memory", action="store_true",
                   help="call frugalnn.cost.allocator.retain_freed_memory() first: glibc keeps "
                        "freed blocks, so timings (backbone and exit models alike) carry no "
                        "page faults for re-allocated activations")
    p.add_argument("--out", default="benchmarks/results/early_exit.md")
    args = p.parse_args(argv)
    retained = args.retain_freed_memory and retain_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    lines = [f"Scale: fine-tune {args.finetune_epochs} epoch(s) on {args.finetune_limit} JPEG "
             f"train images; heads trained {args.head_epochs} epochs on {args.train_limit} "
             f"train images"
             + (f" plus {args.head_augment_passes} augmented (random crop + flip) pass(es) "
                f"over them (augmentation seed {args.head_augment_seed})"
                if args.head_augment_passes else "")
             + (f" (ZTW: heads on all of them, ensemble {args.ensemble_epochs} epochs on "
                "half of the validation split)"
                if args.ztw_ensemble_fit == "heldout-val" else
                f" (ZTW: heads on all of them, ensemble {args.ensemble_epochs} epochs on the "
                f"out-of-fold predictions of {args.ensemble_folds} fold models, each trained "
                f"on the other folds' images; an image's augmented copies share its fold)"
                if args.ztw_ensemble_fit == "crossfit" else
                f" (ZTW: heads on {100 * (1 - args.ensemble_holdout):.0f} % of them, "
                f"ensemble {args.ensemble_epochs} epochs on the other "
                f"{100 * args.ensemble_holdout:.0f} %)") + "; thresholds chosen on the "
             f"validation split ({args.val_fraction} of the train split, seed {args.seed}"
             + (f", {args.val_limit} images" if args.val_limit else "") + "), scored on a "
             f"random {args.test_limit}-image subset of the JPEG test split (seed {args.seed}).",
             ""]
    if retained:
        lines += ["Freed memory retained (frugalnn.cost.allocator.retain_freed_memory).", ""]
    if not args.skip_resnet:
        data_dir = resolve_data_dir(args.data_dir)
        ckpt = data_dir / "pretrained" / "resnet-cifar10" / "resnet56-4bfd9763.th"
        log("loading CIFAR-10 JPEG")
        splits = splits_from_args(args)  # heads' train subset, validation, test subset
        # Fine-tuning and joint training draw from the whole train split minus validation.
        pool = load_splits(args.data, args.data_dir, val_fraction=args.val_fraction,
                           seed=args.seed).train
        train_aug = augmented_view(pool, args.seed)
        test_ds = splits.test
        lines += ["The pretrained checkpoint was trained on every CIFAR-10 train image, the "
                  "validation images included: its confidence there is optimistic, so the "
                  "thresholds chosen on validation are too.", ""]
        backbone = create_model("resnet56", checkpoint=str(ckpt)).eval()
        pre_acc = accuracy(backbone, DataLoader(test_ds, batch_size=256))
        log(f"pretrained ResNet-56 on the JPEG test subset: {100 * pre_acc:.2f} %")
        cached = load_cache(backbone, args.backbone_cache, "fine-tuned backbone")
        if not cached and args.finetune_epochs > 0:
            t0 = time.perf_counter()
            ft = random_subset(train_aug, args.finetune_limit, args.seed + 1)
            fit(backbone, DataLoader(ft, batch_size=128, shuffle=True), epochs=args.finetune_epochs,
                optimizer="sgd", lr=0.01, weight_decay=5e-4, schedule="cosine", seed=args.seed,
                progress=False)
            log(f"fine-tuned in {time.perf_counter() - t0:.0f} s")
            save_cache(backbone, args.backbone_cache)
        backbone.eval()
        reference = None
        if args.joint_epochs > 0:
            ft_acc = accuracy(backbone, DataLoader(test_ds, batch_size=256))
            ft_val = accuracy(backbone, DataLoader(splits.val, batch_size=256))
            reference = ("backbone fine-tuned without heads", ft_acc, ft_val)
            log(f"fine-tuned backbone: {100 * ft_acc:.2f} %")
            control_line = None
            if args.joint_control:
                control = control_backbone(backbone, train_aug, args)
                ctrl_acc = accuracy(control, DataLoader(test_ds, batch_size=256))
                ctrl_val = accuracy(control, DataLoader(splits.val, batch_size=256))
                del control
                log(f"same-training control: {100 * ctrl_acc:.2f} %")
                ctrl_name = (f"backbone trained {args.joint_epochs} more epoch(s) without heads "
                             + (f"from {args.control_init} " if args.control_init else "")
                             + "(same-training control)")
                start = (f"the earlier control {args.control_init}" if args.control_init
                         else "the fine-tuned backbone")
                control_line = (f"Same-training control: {start} trained on "
                                f"without heads with the joint run's data, epochs, optimiser "
                                f"and distillation reaches {100 * ctrl_acc:.2f} % "
                                f"(fine-tuned backbone: {100 * ft_acc:.2f} %).")
                if ctrl_val > ft_val:
                    reference = (ctrl_name, ctrl_acc, ctrl_val)
            backbone = joint_backbone(backbone, train_aug, args)
            lines += [f"Joint (SDN) training: {args.joint_epochs} epoch(s) of backbone + heads "
                      f"{args.positions} on {args.finetune_limit} augmented train images "
                      f"(SGD lr {args.joint_lr}, "
                      "cosine, SDN loss weights = each exit's share of the FLOPs"
                      + (f", final exit weight {args.joint_final_weight}"
                         if args.joint_final_weight != 1.0 else "")
                      + (f"; every exit distilled from the fine-tuned backbone, weight "
                         f"{args.joint_kd_weight}, temperature {args.joint_kd_temperature}"
                         if args.joint_kd_weight > 0 else "")
                      + "), starting from "
                      + (f"the earlier joint run's weights {args.joint_init}"
                         if args.joint_init else "the fine-tuned backbone")
                      + "; then the backbone is frozen and the SDN "
                      "and ZTW heads are trained on it as in the frozen-backbone protocol.", ""]
            if control_line:
                lines += [control_line, ""]
        for prm in backbone.parameters():
            prm.requires_grad_(False)
        def make_augmented(k):  # the same images as the heads' plain set, new crops/flips
            return augmented_view(splits.train, args.head_augment_seed + k)

        fit_ds, val_ds = splits.val, splits.val
        if args.final_ensemble or args.ztw_ensemble_fit == "heldout-val":
            fit_ds, val_ds = validation_parts(splits.val, EarlyExitConfig(
                final_ensemble=True, final_ensemble_holdout=0.5, seed=args.seed))
        else:
            fit_ds = None
        run_case("ResNet-56, CIFAR-10 JPEG", backbone, splits.train, val_ds, test_ds, args,
                 lines, pretrained_acc=pre_acc, reference=reference, fit_ds=fit_ds,
                 make_augmented=make_augmented)
    if args.vit_data != "none":
        vit_args = copy.copy(args)
        if args.vit_data == "digits":
            vit_splits = load_splits("digits", val_fraction=args.val_fraction, seed=args.seed)
            kw = dict(image_size=8, patch_size=2, in_channels=1, dim=64, depth=6, heads=4)
            vit_args.positions = "every"
        else:
            vit_splits = load_splits("cifar10", args.data_dir, val_fraction=args.val_fraction,
                                     train_limit=args.train_limit, val_limit=args.val_limit,
                                     test_limit=args.test_limit, seed=args.seed)
            kw = dict(dim=96, depth=6, heads=3)
            vit_args.positions = "every"
        train, test = vit_splits.train, vit_splits.test
        if args.vit_checkpoint:
            if args.vit_data != "cifar10":
                raise SystemExit("--vit-checkpoint needs --vit-data cifar10")
            vit = load_model(args.vit_checkpoint)
            about = (f"ViT (cifar10) loaded from `{args.vit_checkpoint}` (trained by "
                     f"`benchmarks/moe_vit_cifar.py`; {vit.frugalnn_spec['kwargs']}); heads "
                     f"trained on {len(train)} train images; tested on {len(test)}.")
        else:
            torch.manual_seed(args.seed)
            vit = create_model("vit_tiny", **kw)
            t0 = time.perf_counter()
            fit(vit, DataLoader(train, batch_size=64, shuffle=True), epochs=args.vit_epochs,
                optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
                seed=args.seed, progress=False)
            log(f"ViT trained in {time.perf_counter() - t0:.0f} s")
            about = (f"ViT ({args.vit_data}, {kw}) trained from scratch here for "
                     f"{args.vit_epochs} epochs on {len(train)} images; tested on {len(test)}.")
        vit.eval()
        for prm in vit.parameters():
            prm.requires_grad_(False)
        vit_args.check_examples = min(args.check_examples, len(test))
        vit_args.latency_examples = min(args.latency_examples, len(test))
        lines += [about, ""]
        run_case(f"ViT on {args.vit_data}", vit, train, vit_splits.val, test, vit_args, lines)
    lines += [f"Load average at end {[round(v, 2) for v in os.getloadavg()]}.", ""]
    header = results_header("Early exits (issue 4): SDN heads vs Zero-Time-Waste",
                            device="cpu")
    write_results(args.out, header + "\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
