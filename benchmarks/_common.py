"""What every benchmark script shares: logging, the results header, subsets, writing.

A benchmark keeps only its experiment grid and its tables; the recipe it
measures comes from the library (``frugalnn.methods.<method>.recipe``), the
data subsets from :func:`frugalnn.data.splits.load_splits` (the same flags and
seed give the same examples as the CLI and the demo), and its results file
starts with :func:`results_header`: the exact command, the machine (CPU,
cores, torch threads, torch version, device), the date and the load average.

Scripts import it as ``from _common import ...`` (``benchmarks/`` is the
script's own directory, first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import fcntl
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "add_split_flags",
    "alternating_latency_ms",
    "log",
    "mean_sd",
    "one_line_errors",
    "results_header",
    "splits_from_args",
    "timing_lock",
    "write_results",
]

TIMING_LOCK = "/tmp/frugalnn-timing.lock"

_STARTED = time.time()


def log(msg: str) -> None:
    """One progress line with the minutes since the script started."""
    print(f"[{(time.time() - _STARTED) / 60:6.1f} min] {msg}", file=sys.stderr, flush=True)


def one_line_errors(run: Callable[[], int | None]) -> int:
    """``run()``'s exit status (0 for ``None``); a :class:`frugalnn.errors.UserError` (bad
    flags, files that are not what they should be) becomes one ``error:`` line and status 2."""
    from frugalnn.errors import UserError

    try:
        return run() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, quoted so that it can be pasted back."""
    args = list(sys.argv if argv is None else argv)
    return "python " + " ".join(shlex.quote(a) for a in args)


def results_header(title: str, *, argv: Sequence[str] | None = None,
                   device: str = "cpu", notes: str = "") -> str:
    """Markdown head of a results file: title, command, machine, date, load and run time."""
    from frugalnn.cost.machine import describe_machine, machine_markdown

    lines = [f"# {title}", "", f"Command: `{command_line(argv)}`", "",
             machine_markdown(describe_machine(device)), "",
             f"Run time: {(time.time() - _STARTED) / 60:.1f} min."]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def write_results(path: str | Path, text: str, *, echo: bool = True) -> Path:
    """Write a results file atomically (never half-written) and print it."""
    from frugalnn.utils.io import write_text_atomic

    out = write_text_atomic(path, text)
    if echo:
        print(text)
    log(f"wrote {out}")
    return out


@contextmanager
def timing_lock(path: str = TIMING_LOCK) -> Iterator[None]:
    """Hold the shared timing lock (the one ``flock /tmp/frugalnn-timing.lock`` takes) while
    a script times something, so that its training phases need not hold it."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def add_split_flags(p: argparse.ArgumentParser, *, data: str | None = None) -> None:
    """``--data``, ``--data-dir``, ``--val-fraction``, the three limits and ``--seed``:
    the same names and meaning as the CLI's."""
    p.add_argument("--data", default=data, required=data is None, help="dataset name")
    p.add_argument("--data-dir", help="data directory (default: $FRUGALNN_DATA)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the training split held out to choose operating points (0.1)")
    p.add_argument("--train-limit", type=int, help="random N training examples (seeded)")
    p.add_argument("--val-limit", type=int, help="random N validation examples (seeded)")
    p.add_argument("--test-limit", type=int, help="random N test examples (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and training (0)")


def splits_from_args(a: argparse.Namespace, **train_options: Any) -> Any:
    """:func:`frugalnn.data.splits.load_splits` with the flags of :func:`add_split_flags`
    (``augment=False`` is the same as leaving it out)."""
    from frugalnn.data.splits import load_splits

    if train_options.get("augment") is False:
        del train_options["augment"]

    return load_splits(a.data, a.data_dir, val_fraction=a.val_fraction,
                       train_limit=a.train_limit, val_limit=a.val_limit,
                       test_limit=a.test_limit, seed=a.seed, **train_options)


def time_on_runtimes(models: dict[str, Any], runners: dict[str, Any], images: Any,
                     sizes: list[int], *, rounds: int, repeats: int) -> dict[tuple, float]:
    """``{(name, runtime, batch size): median ms per batch}`` of each PyTorch model
    (``"eager"``) and its exported runner (``"onnxruntime"``), in ``rounds`` interleaved
    rounds. Every batch size runs over the same ``images`` (their count a multiple of the
    largest batch), so that batch 1 is not one image that happens to exit early or late."""
    import statistics

    from frugalnn.cost.latency import measure_latency

    n_img = len(images)
    units = {bs: [images[i:i + bs] for i in range(0, n_img, bs)] for bs in sizes}

    def over(fn: Any, parts: list[Any]) -> Any:
        return lambda: [fn(u) for u in parts]

    times: dict[tuple, list[float]] = {}
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        for bs in sizes:
            for name in models:
                for runtime, fn in (("eager", models[name]), ("onnxruntime", runners[name])):
                    rec = measure_latency(over(fn, units[bs]), warmup=1, repeats=repeats,
                                          threads=1, batch_size=n_img)
                    times.setdefault((name, runtime, bs), []).append(
                        rec.median_ms / len(units[bs]))
    return {k: statistics.median(v) for k, v in times.items()}


def mean_sd(values: Sequence[float], digits: int = 2, *, signed: bool = False) -> str:
    """``"mean ± sd"`` of ``values`` (sd 0 for one value; ``"-"`` for none); ``signed``
    writes the mean's sign (``+0.40``), and a mean that rounds to zero is never ``-0.00``."""
    import statistics

    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = statistics.mean(values)
    mean = 0.0 if abs(mean) < 0.5 * 10.0**-digits else mean
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {sd:.{digits}f}"


def alternating_latency_ms(models: dict[str, Any], x: Any, *, passes: int, repeats: int,
                           threads: int | None) -> dict[str, float]:
    """``{name: ms}``: the median over ``passes`` of each model's median of ``repeats``
    calls on ``x``, the models alternating within every pass so that a drift in load
    hits them all alike."""
    import statistics

    from frugalnn.cost.latency import measure_latency

    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(passes):
        for name, model in models.items():
            rec = measure_latency(model, x, warmup=3, repeats=repeats, threads=threads)
            times[name].append(rec.median_ms)
    return {k: statistics.median(v) for k, v in times.items()}
