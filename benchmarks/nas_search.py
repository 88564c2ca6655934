"""ProxylessNAS-style search on CIFAR-10 (JPEG) at several latency targets.

For each target: search (supernet, binary gates, latency loss), derive the
argmax network, retrain it from scratch, and compare it with a hand-designed
MobileNetV2-style network of the same space (``mb3_e6`` in every block,
retrained identically) on test accuracy and *measured* latency (both measured
in this run, interleaved). Also reports the latency model's error on
held-out random architectures and the peak training memory of path
binarisation vs all paths at once.

The search may run on another machine than the one it is for: ``--deploy-table``
takes a latency table measured on the deployment machine (``--table`` of a run
there) and searches against it as it is, on ``--train-device`` (a GPU, say),
without timing anything; ``--retime JSON`` then times that run's networks on the
deployment machine and rewrites the figures (measured ms, speed-ups).

Weight steps run on the training split, architecture steps on the validation
split carved from it (``--val-fraction``, seeded: the same examples as
``frugalnn nas search`` with the same flags); the test split only scores the
retrained networks.

Full scale (what the issue asks, ~90 min on a quiet 2-core CPU):
    python benchmarks/nas_search.py --data-dir DATA --val-fraction 0.2 --epochs 10 \
        --retrain-epochs 30 --space default
Bounded run used for benchmarks/results/nas.md: see the command printed there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    add_split_flags,
    log,
    results_header,
    splits_from_args,
    timing_lock,
    write_results,
)
from torch.utils.data import DataLoader

from frugalnn.cost.machine import describe_machine
from frugalnn.methods.nas.latency import (
    LatencyModel,
    LatencyTable,
    measure_networks_ms,
    random_archs,
)
from frugalnn.methods.nas.net import baseline_arch
from frugalnn.methods.nas.recipe import (
    NASConfig,
    latency_table,
    retrain_arch,
    search_architecture,
    with_target,
)
from frugalnn.methods.nas.search import short_arch
from frugalnn.methods.nas.space import SearchSpace
from frugalnn.methods.nas.supernet import Supernet
from frugalnn.utils.io import write_json_atomic

SPACES = {
    "default": {},
    # half-width variant so that the bounded run fits on a loaded 2-core CPU
    "small": {"stem_channels": 8, "first_channels": 8, "head_channels": 128,
              "stages": [(16, 2, 1), (24, 2, 2), (40, 2, 2)]},
}


@torch.no_grad()
def accuracy(model, ds, device) -> float:
    model.eval().to(device)
    correct = 0
    for x, y in DataLoader(ds, batch_size=256):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(ds)


def saved_activation_bytes(net: Supernet, mode: str, x, y) -> int:
    """Bytes of tensors autograd keeps for backward in one training forward."""
    total = 0
    seen: set[int] = set()

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    net.train().set_mode(mode, torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    net.zero_grad(set_to_none=True)
    return total


def cuda_peak_bytes(net: Supernet, mode: str, x, y) -> int | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    net.train().set_mode(mode, torch.Generator().manual_seed(0))
    F.cross_entropy(net(x), y).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    net.zero_grad(set_to_none=True)
    return int(peak)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_flags(ap, data="cifar10")
    ap.set_defaults(train_limit=4000, val_limit=1000, test_limit=2000)
    ap.add_argument("--space", choices=sorted(SPACES), default="small")
    ap.add_argument("--epochs", type=int, default=4, help="search epochs per target")
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--retrain-epochs", type=int, default=6)
    ap.add_argument("--targets", default="0.55,0.75",
                    help="latency targets as fractions of the baseline's predicted latency")
    ap.add_argument("--arch-lr", type=float, default=0.02)
    ap.add_argument("--loss", choices=("mul", "add", "hinge"), default="mul")
    ap.add_argument("--lam", type=float, default=0.1, help="weight of the add/hinge loss")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-device", default="cpu")
    ap.add_argument("--latency-device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="threads for latency and training")
    ap.add_argument("--validate", type=int, default=20, help="held-out architectures")
    ap.add_argument("--calibrate", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--table", default=None, help="latency table path (default: fresh file)")
    ap.add_argument("--deploy-table", metavar="JSON",
                    help="a latency table measured on the deployment machine: search against "
                         "it as it is and time nothing here (then --retime there)")
    ap.add_argument("--retime", metavar="JSON",
                    help="time the networks of a --deploy-table run's --json here; rewrite "
                         "its figures to --out / --json; trains nothing")
    ap.add_argument("--out", default="benchmarks/results/nas.md")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.retime:
        return retime(args)
    torch.manual_seed(args.seed)
    t_start = time.time()
    # A --deploy-table run times nothing: its machine is the one that trains.
    machine = describe_machine(args.train_device if args.deploy_table else args.latency_device)
    space = SearchSpace(**SPACES[args.space])
    out: dict = {"machine": machine, "args": vars(args), "space": space.to_dict()}

    # -- latency table + held-out validation ----------------------------------------
    table_path = Path(args.table or f"/tmp/frugalnn-nas-bench-{args.space}-{os.getpid()}.json")
    t0 = time.time()
    config = NASConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                       retrain_epochs=args.retrain_epochs, arch_lr=args.arch_lr,
                       latency_loss=args.loss, lam=args.lam, batch_size=args.batch_size,
                       table=str(table_path), threads=args.threads, repeats=args.repeats,
                       rounds=args.rounds, calibrate=args.calibrate, seed=args.seed)
    if args.deploy_table:
        table = LatencyTable.load(args.deploy_table)
        out["deploy_table"] = table.device
        args.validate = 0  # held-out archs would be timed here, not on the deployment machine
    else:
        table = latency_table(config, space, args.latency_device)
    out["table_seconds"] = time.time() - t0
    lat = LatencyModel(space, table)
    if args.validate > 0:
        held = random_archs(space, args.validate, seed=args.seed + 777)
        measured = measure_networks_ms(held, space, device=args.latency_device,
                                       threads=args.threads, repeats=args.repeats,
                                       rounds=args.rounds, progress=False)
        pred = [table.predict(space, a) for a in held]
        raw = [table.raw_sum(space, a) for a in held]
        ape = [abs(p - m) / m * 100 for p, m in zip(pred, measured)]
        ape_raw = [abs(p - m) / m * 100 for p, m in zip(raw, measured)]
        out["latency_model"] = {"n": len(held), "mdape": statistics.median(ape),
                                "max_ape": max(ape),
                                "mdape_uncalibrated": statistics.median(ape_raw),
                                "scale": table.scale, "offset_ms": table.offset_ms,
                                "measured_ms": measured, "predicted_ms": pred,
                                "loadavg": os.getloadavg()}
        log(f"latency model: MdAPE {statistics.median(ape):.1f} % "
            f"(uncalibrated {statistics.median(ape_raw):.1f} %) on {len(held)} held-out archs")
    else:
        out["latency_model"] = None

    # -- memory: one sampled path vs all paths ------------------------------------------
    dev = torch.device(args.train_device)
    net = Supernet(space).to(dev)
    xb = torch.randn(args.batch_size, 3, 32, 32, device=dev)
    yb = torch.randint(0, 10, (args.batch_size,), device=dev)
    out["memory"] = {
        mode: {"saved_activation_bytes": saved_activation_bytes(net, mode, xb, yb),
               "cuda_peak_bytes": cuda_peak_bytes(net, mode, xb, yb)}
        for mode in ("one", "two", "full")
    }
    del net

    # -- data --------------------------------------------------------------------------------
    splits = splits_from_args(args, augment=True)
    train_set, val_set, test_set = splits.train, splits.val, splits.test
    if val_set is None:
        raise SystemExit("the architecture is chosen on the validation split: --val-fraction > 0")

    out["val_examples"] = len(val_set)
    base = baseline_arch(space)
    base_pred = table.predict(space, base["ops"])
    cheapest = lat.cheapest()[1]
    targets = [max(float(f) * base_pred, cheapest * 1.02) for f in args.targets.split(",")]
    nets: dict[str, dict] = {"baseline (mb3_e6 everywhere)": {"arch": base}}
    out["searches"] = []
    for target in targets:
        t0 = time.time()
        found = search_architecture(with_target(config, target), train_set, val_set,
                                    space=space, table=table, device=dev)
        secs = time.time() - t0
        result = found.result
        nets[f"found @ {target:.2f} ms"] = {"arch": found.arch}
        out["searches"].append({"target_ms": target, "seconds": secs,
                                "result": result.to_dict()})
        log(f"search target {target:.2f} ms: [{short_arch(result.ops)}] predicted "
            f"{result.predicted_ms:.2f} ms in {secs:.0f} s")
        del found

    # -- retrain everything identically, then measure ------------------------------------
    from frugalnn.cost.count import count_flops

    for name, row in nets.items():
        t0 = time.time()
        ops = row["arch"]["ops"]
        model = retrain_arch(row["arch"], config, train_set, device=dev)
        row["retrain_seconds"] = time.time() - t0
        row["accuracy"] = accuracy(model, test_set, dev)
        row["predicted_ms"] = table.predict(space, ops)
        row["params"] = sum(p.numel() for p in model.parameters())
        row["flops"] = count_flops(model.cpu().eval(), torch.zeros(1, 3, 32, 32))
        log(f"{name}: acc {row['accuracy']:.3f} in {row['retrain_seconds']:.0f} s")
    out["nets"] = nets
    if not args.deploy_table:
        time_nets(out, space, args)
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = time.time() - t_start
    write_markdown(out, Path(args.out))
    if args.json:
        write_json_atomic(args.json, out)
    return 0


def time_nets(out: dict, space: SearchSpace, args: argparse.Namespace) -> None:
    """Measure every network of ``out["nets"]`` here (interleaved rounds) and key the
    figures by target fraction, against the baseline measured in the same rounds."""
    nets = out["nets"]
    names = list(nets)
    ms = measure_networks_ms([nets[n]["arch"]["ops"] for n in names], space,
                             device=args.latency_device, threads=args.threads,
                             repeats=args.repeats * 2, rounds=args.rounds * 2, progress=False)
    for n, m in zip(names, ms):
        nets[n]["measured_ms"] = m
    # Keyed by the target as a fraction of the baseline's predicted latency (the ms
    # targets differ between seeds).
    ref, fracs = nets[names[0]], out["args"]["targets"].split(",")
    if len(fracs) == len(names) - 1:  # two targets clamped to the same ms share one net
        out["by_target_fraction"] = {
            frac: {"accuracy": row["accuracy"], "measured_ms": row["measured_ms"],
                   "speedup_vs_baseline": ref["measured_ms"] / row["measured_ms"],
                   "accuracy_vs_baseline_pt": 100 * (row["accuracy"] - ref["accuracy"])}
            for frac, row in zip(fracs, [nets[n] for n in names[1:]])}


def retime(args: argparse.Namespace) -> int:
    """``--retime``: time a ``--deploy-table`` run's networks on this machine."""
    try:
        out = json.loads(Path(args.retime).read_text())
        missing = [k for k in ("nets", "space", "machine", "args") if k not in out]
    except (OSError, ValueError, TypeError) as exc:
        out, missing = None, [str(exc)]
    if missing or not isinstance(out, dict):
        print(f"error: --retime {args.retime}: not the --json of a nas_search.py run "
              f"(missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    out["trained_on"] = out["machine"]
    out["machine"] = describe_machine(args.latency_device)
    out["args"].update(latency_device=args.latency_device, threads=args.threads,
                       repeats=args.repeats, rounds=args.rounds)
    with timing_lock():
        time_nets(out, SearchSpace.from_dict(out["space"]), args)
    write_markdown(out, Path(args.out))
    if args.json:
        write_json_atomic(args.json, out)
    return 0


def write_markdown(out: dict, path: Path) -> None:
    a = out["args"]
    lm = out["latency_model"]
    nets = out["nets"]
    lm_lines = ["(not run: `--validate 0`)"] if lm is None else [
        f"{lm['n']} random architectures (not used for calibration), predicted vs measured "
        f"end-to-end latency: **median absolute error {lm['mdape']:.1f} %** (max "
        f"{lm['max_ape']:.1f} %); without the affine calibration "
        f"(`measured = {lm['scale']:.3f} * table_sum + {lm['offset_ms']:.3f} ms`, fitted on "
        f"{a['calibrate']} other random architectures) {lm['mdape_uncalibrated']:.1f} %."]
    base = next(iter(nets.values()))
    lines = [
        results_header("Hardware-aware architecture search (frugalnn.methods.nas, "
                       "ProxylessNAS-style)", device=a["latency_device"]),
        f"- training device: {a['train_device']}; latency device: {a['latency_device']} "
        f"(batch 1, {a['threads']} thread(s); the networks below: min over "
        f"{2 * a['rounds']} interleaved rounds of {2 * a['repeats']} calls; a table entry: "
        f"{a['rounds']} rounds of {a['repeats']} calls)",
        *([f"- search and retraining ran on: {out['trained_on']['device']} (host CPU "
            f"{out['trained_on']['cpu']}, torch {out['trained_on']['torch']}, "
            f"{out['trained_on']['date']}); the measured ms are from this machine "
            "(`--retime`)"] if "trained_on" in out else []),
        *([f"- latency table: measured on the deployment machine ({out['deploy_table']})"]
          if "deploy_table" in out else []),
        f"- load average at end of training: {[round(v, 2) for v in out['loadavg_end']]}; "
        f"total wall time {out['seconds'] / 60:.1f} min",
        "",
        f"Scale: search space `{a['space']}` ({len(out['space']['stages'])} stages, "
        f"widths {[s[0] for s in out['space']['stages']]}), {a['train_limit']} random CIFAR-10 "
        f"(JPEG) training images for the weights and {out['val_examples']} validation images "
        f"(carved from train, fraction {a['val_fraction']}) for the architecture steps, "
        f"{a['epochs']} search epochs ({a['warmup_epochs']} warm-up), "
        f"{a['retrain_epochs']} retraining epochs, {a['test_limit']} random test images; "
        f"latency loss `{a['loss']}`" + (f" (lambda {a['lam']})" if a["loss"] != "mul" else "")
        + ". "
        + ("" if a["train_limit"] is None or a["train_limit"] >= 40000 and a["retrain_epochs"]
           >= 30 else "This is a scaled-down run; accuracies are far below converged CIFAR-10 "
           "numbers and differences of ~1-2 points are within seed noise."),
        "",
        "### Latency model on held-out architectures",
        "",
        *lm_lines,
        "",
        "### Found networks vs a MobileNetV2-style baseline (same space, `mb3_e6` everywhere)",
        "",
        "| network | architecture | test acc | predicted ms | measured ms | speed-up vs "
        "baseline (measured) | MFLOPs | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in nets.items():
        if "measured_ms" in row:
            measured = (f"{row['measured_ms']:.2f} | "
                        f"{base['measured_ms'] / row['measured_ms']:.2f}x")
        else:
            measured = "not timed here (--retime on the deployment machine) | -"
        lines.append(
            f"| {name} | `{short_arch(row['arch']['ops'])}` | {100 * row['accuracy']:.1f} % | "
            f"{row['predicted_ms']:.2f} | {measured} | "
            f"{row['flops'] / 1e6:.1f} | {row['params'] / 1e3:.0f} k |")
    lines += ["", "Search time per target: " + ", ".join(
        f"{s['target_ms']:.2f} ms: {s['seconds'] / 60:.1f} min" for s in out["searches"]), ""]
    mem = out["memory"]
    lines += [
        "### Training memory: path binarisation vs all paths",
        "",
        f"Activations autograd keeps for backward in one supernet training step (batch "
        f"{a['batch_size']}, 32x32):",
        "",
        "| mode | saved activations | CUDA peak |",
        "|---|---|---|",
    ]
    for mode, label in (("one", "one sampled path (weight step)"),
                        ("two", "two sampled paths (architecture step)"),
                        ("full", "all paths at once (DARTS-style)")):
        m = mem[mode]
        cuda = f"{m['cuda_peak_bytes'] / 2**20:.1f} MiB" if m["cuda_peak_bytes"] else "n/a (CPU)"
        lines.append(f"| {label} | {m['saved_activation_bytes'] / 2**20:.1f} MiB | {cuda} |")
    ratio = mem["full"]["saved_activation_bytes"] / mem["one"]["saved_activation_bytes"]
    lines += ["", f"All paths keep {ratio:.1f}x the activations of one sampled path.", ""]
    write_results(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
