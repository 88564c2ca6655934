"""Latency lookup table: every candidate op timed at its input shape on a device.

ProxylessNAS predicts a network's latency as the sum of its blocks'
latencies, each measured once on the target hardware. We time every
(op, input shape, output width, stride, shortcut) the search space contains,
plus the fixed stem and head, with :func:`frugalnn.cost.latency.measure_latency`
(warm-up, repeats, median), and cache the results per device in a JSON file.

Per-call overhead: timing a block alone also times the harness's call into
it; in a whole network that cost is paid once, not once per block. We time a
do-nothing callable in the same way and subtract it from every entry, then
add it back once per network (``overhead_ms``). Blocks that are ``zero`` are
dropped from derived networks, so they cost 0.

Measured here, a block timed alone runs 10-20 % faster than inside a network
(its weights and input stay in cache between repeats). Optionally
(``calibrate=N``) we time ``N`` random architectures end to end and fit
``measured = scale * table_sum + offset`` by least squares; the correction is
affine, so the expected latency stays differentiable. The validation
benchmark reports the error on *other* random architectures.

Statistic: on a shared machine other processes inflate some repeats; the
minimum over repeats estimates the uncontended cost and is far more
reproducible than the median there, so ``statistic="min"`` is the default;
``"median"`` is available for a quiet machine.

The expected latency of the supernet, ``fixed + sum_blocks sum_ops p_op *
lat_op``, is differentiable in the architecture parameters
(:meth:`LatencyModel.expected`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from frugalnn.cost.latency import measure_latency
from frugalnn.errors import UserError
from frugalnn.methods.nas.net import NASBlock, NASNet
from frugalnn.methods.nas.space import BlockSlot, SearchSpace, build_head, build_stem
from frugalnn.utils.io import write_text_atomic

__all__ = [
    "LatencyModel",
    "LatencyTable",
    "build_latency_table",
    "default_cache_dir",
    "device_description",
    "fit_affine",
    "measure_network_ms",
    "measure_networks_ms",
    "time_interleaved",
    "random_archs",
    "resolve_device",
]


# -- devices --------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """A present device, or ``UserError`` naming what is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} is not present (no CUDA GPU); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {device!r} is not present ({torch.cuda.device_count()} GPU(s))"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device {device!r} is not present; use --device cpu")
        return dev
    raise UserError(f"unsupported device {device!r}; use cpu or cuda")


def device_description(device: torch.device, threads: int, batch_size: int) -> dict[str, Any]:
    """What the latencies depend on: hardware, threads, batch size, torch version."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = _cpu_name()
    return {
        "device": str(device),
        "hardware": hardware,
        "threads": threads if device.type == "cpu" else None,
        "batch_size": batch_size,
        "torch": torch.__version__.split("+")[0],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_cache_dir() -> Path:
    """``$FRUGALNN_CACHE/nas`` or ``~/.cache/frugalnn/nas``."""
    base = os.environ.get("FRUGALNN_CACHE")
    return Path(base) / "nas" if base else Path.home() / ".cache" / "frugalnn" / "nas"


# -- timing -----------------------------------------------------------------------


STATISTICS = ("min", "median")


def _time_ms(fn: Callable[..., Any], x: torch.Tensor, *, warmup: int, repeats: int,
             threads: int, device: torch.device, statistic: str = "min") -> float:
    """Wall-clock of ``fn(x)`` in ms (``statistic`` over repeats) via the shared harness."""
    if statistic not in STATISTICS:
        raise UserError(f"unknown latency statistic {statistic!r}; use one of {STATISTICS}")
    rec = measure_latency(fn, x, warmup=warmup, repeats=repeats,
                          threads=threads if device.type == "cpu" else None, device=device)
    return float(rec.min_ms if statistic == "min" else rec.median_ms)


def measure_network_ms(model: nn.Module, space: SearchSpace, *, device: torch.device,
                       batch_size: int = 1, threads: int = 1, warmup: int = 10,
                       repeats: int = 50, statistic: str = "min") -> float:
    """Measured end-to-end latency (ms) of ``model`` on one input batch."""
    model = model.to(device).eval()
    x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size,
                    device=device)
    with torch.inference_mode():
        return _time_ms(model, x, warmup=warmup, repeats=repeats, threads=threads,
                        device=device, statistic=statistic)


def random_archs(space: SearchSpace, n: int, seed: int) -> list[list[str]]:
    """``n`` architectures drawn uniformly per block (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [s.candidates[int(torch.randint(len(s.candidates), (1,), generator=gen))]
         for s in space.slots()]
        for _ in range(n)
    ]


def _slot_key(op: str, slot: BlockSlot, batch_size: int) -> str:
    res = "res" if slot.residual else "plain"
    return (f"{op}|{slot.c_in}x{slot.in_size}x{slot.in_size}->{slot.c_out}"
            f"|s{slot.stride}|{res}|b{batch_size}")


def _fixed_key(kind: str, space: SearchSpace, batch_size: int) -> str:
    if kind == "stem":
        shape = (f"{space.in_channels}x{space.input_size}x{space.input_size}"
                 f"->{space.stem_channels}->{space.first_channels}|s{space.stem_stride}")
    else:
        shape = (f"{space.last_channels}x{space.final_size}x{space.final_size}"
                 f"->{space.head_channels}->{space.num_classes}")
    return f"{kind}|{shape}|b{batch_size}"


# -- the table --------------------------------------------------------------------------


@dataclass
class LatencyTable:
    """Measured latencies (ms, per-call overhead removed) for one device setting."""

    device: dict[str, Any]
    entries: dict[str, float] = field(default_factory=dict)
    overhead_ms: float = 0.0
    scale: float = 1.0
    offset_ms: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def device_key(self) -> str:
        return json.dumps(self.device, sort_keys=True)

    @property
    def batch_size(self) -> int:
        return int(self.device["batch_size"])

    def op_ms(self, op: str, slot: BlockSlot) -> float:
        if op == "zero":
            return 0.0
        key = _slot_key(op, slot, self.batch_size)
        if key not in self.entries:
            raise UserError(f"latency table has no entry {key!r}; rebuild it for this space")
        return self.entries[key]

    def fixed_ms(self, space: SearchSpace) -> float:
        total = self.overhead_ms
        for kind in ("stem", "head"):
            key = _fixed_key(kind, space, self.batch_size)
            if key not in self.entries:
                raise UserError(f"latency table has no entry {key!r}; rebuild it for this space")
            total += self.entries[key]
        return total

    def raw_sum(self, space: SearchSpace, ops: list[str]) -> float:
        """Uncalibrated prediction: fixed parts plus the chosen ops' entries."""
        return self.fixed_ms(space) + sum(
            self.op_ms(op, slot) for op, slot in zip(ops, space.slots())
        )

    def predict(self, space: SearchSpace, ops: list[str]) -> float:
        """Predicted end-to-end latency (ms) of an architecture."""
        return self.scale * self.raw_sum(space, ops) + self.offset_ms

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "overhead_ms": self.overhead_ms, "scale": self.scale,
                "offset_ms": self.offset_ms, "calibration": self.calibration,
                "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | os.PathLike[str]) -> Path:
        self.path = write_text_atomic(path, json.dumps(self.to_dict(), indent=1))
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(d["device"], {k: float(v) for k, v in d["entries"].items()},
                       float(d.get("overhead_ms", 0.0)), float(d.get("scale", 1.0)),
                       float(d.get("offset_ms", 0.0)), dict(d.get("calibration", {})), path)
        except FileNotFoundError:
            raise UserError(f"latency table {path} not found; run `frugalnn nas latency-table`")\
                from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"latency table {path} is corrupt ({exc}); delete it and rebuild")\
                from None

    @staticmethod
    def cache_path(device: dict[str, Any], cache_dir: Path | None = None) -> Path:
        digest = hashlib.sha1(json.dumps(device, sort_keys=True).encode()).hexdigest()[:12]
        name = f"latency-{device['device'].replace(':', '')}-b{device['batch_size']}-{digest}.json"
        return (cache_dir or default_cache_dir()) / name


def time_interleaved(
    items: list[tuple[str, nn.Module, torch.Tensor]],
    *,
    rounds: int,
    warmup: int,
    repeats: int,
    threads: int,
    device: torch.device,
    statistic: str = "min",
    desc: str = "timing",
    progress: bool = True,
) -> dict[str, float]:
    """Time every ``(key, module, input)`` in ``rounds`` shuffled passes.

    Contention on a shared machine comes and goes; spreading each item's
    repeats over several passes in random order exposes every item to the
    same conditions. The result per item is the ``statistic`` of its
    per-pass values (min of mins, or median of medians).
    """
    per_key: dict[str, list[float]] = {k: [] for k, _, _ in items}
    gen = torch.Generator().manual_seed(len(items))
    bar = tqdm(total=rounds * len(items), desc=desc, disable=not progress or not items)
    for _ in range(rounds):
        for i in torch.randperm(len(items), generator=gen).tolist():
            key, module, x = items[i]
            with torch.inference_mode():
                per_key[key].append(_time_ms(module, x, warmup=warmup, repeats=repeats,
                                             threads=threads, device=device,
                                             statistic=statistic))
            bar.update(1)
    bar.close()
    pick = min if statistic == "min" else statistics.median
    return {k: float(pick(v)) for k, v in per_key.items()}


def measure_networks_ms(
    archs: list[list[str]],
    space: SearchSpace,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 3,
    statistic: str = "min",
    progress: bool = True,
) -> list[float]:
    """Measured end-to-end latency (ms) of the plain network of every architecture."""
    dev = resolve_device(device)
    x = torch.randn(batch_size, space.in_channels, space.input_size, space.input_size,
                    device=dev)
    items = [(str(i), NASNet(space, ops).to(dev).eval(), x) for i, ops in enumerate(archs)]
    out = time_interleaved(items, rounds=rounds, warmup=warmup, repeats=repeats,
                           threads=threads, device=dev, statistic=statistic,
                           desc="end-to-end latency", progress=progress)
    return [out[str(i)] for i in range(len(archs))]


def build_latency_table(
    space: SearchSpace,
    device: str | torch.device = "cpu",
    *,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 3,
    cache_dir: Path | None = None,
    path: Path | None = None,
    refresh: bool = False,
    progress: bool = True,
    statistic: str = "min",
    calibrate: int = 0,
    seed: int = 0,
) -> LatencyTable:
    """Time every op of ``space`` on ``device`` (reusing cached entries) and save the table.

    With ``calibrate=N`` (and no calibration cached for this space yet) also
    time ``N`` random architectures end to end and fit the affine correction.
    """
    dev = resolve_device(device)
    desc = device_description(dev, threads, batch_size)
    desc["statistic"] = statistic
    path = Path(path) if path else LatencyTable.cache_path(desc, cache_dir)
    table = LatencyTable(desc)
    if path.exists() and not refresh:
        cached = LatencyTable.load(path)
        if cached.device_key == table.device_key:
            table = cached
    items: list[tuple[str, nn.Module, torch.Tensor]] = []
    seen: set[str] = set()

    def want(key: str, make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
        if key in table.entries or key in seen:
            return
        seen.add(key)
        items.append((key, make().to(dev).eval(), torch.randn(batch_size, *shape, device=dev)))

    want(_fixed_key("stem", space, batch_size), lambda: build_stem(space),
         (space.in_channels, space.input_size, space.input_size))
    want(_fixed_key("head", space, batch_size), lambda: build_head(space),
         (space.last_channels, space.final_size, space.final_size))
    for slot in space.slots():
        for op in slot.candidates:
            if op != "zero":
                want(_slot_key(op, slot, batch_size), lambda s=slot, o=op: NASBlock(s, o),
                     (slot.c_in, slot.in_size, slot.in_size))
    if items or table.overhead_ms == 0.0:
        items.append(("__overhead__", _Passthrough(), torch.zeros(1, device=dev)))
    timed = time_interleaved(items, rounds=rounds, warmup=warmup, repeats=repeats,
                             threads=threads, device=dev, statistic=statistic,
                             desc=f"latency table ({dev})", progress=progress)
    table.overhead_ms = timed.pop("__overhead__", table.overhead_ms)
    for key, ms in timed.items():
        table.entries[key] = max(ms - table.overhead_ms, 0.0)
    space_key = _space_key(space)
    if calibrate > 0 and (timed or table.calibration.get("space") != space_key):
        archs = random_archs(space, calibrate, seed + 10_000)
        raw = [table.raw_sum(space, ops) for ops in archs]
        measured = measure_networks_ms(archs, space, device=dev, batch_size=batch_size,
                                       threads=threads, warmup=warmup, repeats=repeats,
                                       rounds=rounds, statistic=statistic, progress=progress)
        table.scale, table.offset_ms = fit_affine(raw, measured)
        table.calibration = {"space": space_key, "archs": calibrate, "seed": seed + 10_000,
                             "raw_sum_ms": raw, "measured_ms": measured}
    table.save(path)
    return table


class _Passthrough(nn.Module):
    """Does nothing: timing it gives the harness's per-call overhead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _space_key(space: SearchSpace) -> str:
    return hashlib.sha1(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def fit_affine(raw: list[float], measured: list[float]) -> tuple[float, float]:
    """Least-squares ``measured ~ scale * raw + offset`` (scale only if all raw are equal)."""
    import numpy as np

    x = np.asarray(raw, dtype=float)
    y = np.asarray(measured, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(y.sum() / max(x.sum(), 1e-12)), 0.0
    scale, offset = np.polyfit(x, y, 1)
    if scale <= 0:  # noise swamped the signal; fall back to a pure ratio
        return float(y.sum() / max(x.sum(), 1e-12)), 0.0
    return float(scale), float(offset)


class LatencyModel:
    """The table laid out per choice block, for differentiable expected latency."""

    def __init__(self, space: SearchSpace, table: LatencyTable) -> None:
        self.space = space
        self.table = table
        self.slots = space.slots()
        self.fixed_ms = table.fixed_ms(space)
        self.scale = table.scale
        self.offset_ms = table.offset_ms
        self.block_ms = [
            torch.tensor([table.op_ms(op, s) for op in s.candidates], dtype=torch.float32)
            for s in self.slots
        ]

    def expected(self, probs: list[torch.Tensor]) -> torch.Tensor:
        """E[latency] (ms) under per-block op probabilities (differentiable)."""
        total = torch.tensor(self.fixed_ms, dtype=torch.float32, device=probs[0].device)
        for p, lat in zip(probs, self.block_ms):
            total = total + (p * lat.to(p.device)).sum()
        return self.scale * total + self.offset_ms

    def predict(self, ops: list[str]) -> float:
        return self.table.predict(self.space, ops)

    def cheapest(self) -> tuple[list[str], float]:
        ops = [s.candidates[int(lat.argmin())] for s, lat in zip(self.slots, self.block_ms)]
        return ops, self.predict(ops)

    def most_expensive(self) -> tuple[list[str], float]:
        ops = [s.candidates[int(lat.argmax())] for s, lat in zip(self.slots, self.block_ms)]
        return ops, self.predict(ops)
