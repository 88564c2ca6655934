"""``frugalnn demo``: the whole pipeline in a few minutes on a CPU.

Trains a small baseline on the embedded digits (or MNIST), profiles and
evaluates it, then gives every available method a turn through a **hook**: a
module listed in :data:`DEMO_HOOKS` with a function
``run_demo(ctx: DemoContext) -> list[Path]`` that converts/trains/evaluates its
models with the context's helpers and returns the run directories to plot.
Finally one report puts all runs on one cost–accuracy plane against the
baseline.

Methods join without touching this file's logic: a hook module that does not
exist yet is skipped; a hook that raises is reported (its traceback is saved
under ``logs/``) and the demo goes on, unless ``strict`` is set, which tests
use so a broken hook fails CI.
"""

from __future__ import annotations

import copy
import importlib
import json
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from frugalnn.errors import UserError
from frugalnn.evaluation import evaluate_into, load_summary
from frugalnn.plugins import plugin_modules
from frugalnn.utils.io import atomic_writer, jsonable

__all__ = ["DEMO_HOOKS", "DemoContext", "HookResult", "run_demo"]

#: Modules whose ``run_demo(ctx)`` adds a method to the demo, in report order.
DEMO_HOOKS = tuple(plugin_modules("demo"))

MARKER = "demo.json"  # marks a directory written by the demo (so --force may replace it)

# Data sizes: digits is small enough to use whole; MNIST is cut so the demo stays short.
_LIMITS = {  # (train, validation, test) examples; None = all
    ("digits", False): (None, None, None),
    ("digits", True): (None, None, None),
    ("mnist", False): (12000, 1000, 2000),
    ("mnist", True): (2000, 500, 500),
}

#: Share of the training examples held out as the validation split, where the
#: methods choose their operating points (thresholds, tau, budgets).
VAL_FRACTION = 0.1

#: Model sizes for the demo data, on top of the arguments that fit a model to it.
#: The registry's ``cnn_small`` costs 0.6 MFLOPs on an 8x8 digit: per-call overheads
#: (Python dispatch, small kernels) then dominate its measured time, and a method
#: saving half its FLOPs is no faster on the clock. At 4x the widths (9.5 MFLOPs,
#: about what the default ``cnn_small`` costs on a 28x28 MNIST image) the arithmetic
#: dominates at batch 64 and FLOP savings show up as measured speed-ups; training it
#: still takes seconds on one core. ``--quick`` (tests) keeps the registry's sizes:
#: it checks that every step runs, and its timings are not read.
DEMO_SIZES: dict[tuple[str, str], dict[str, Any]] = {
    ("digits", "cnn_small"): {"widths": (64, 128, 256)},
    ("digits", "mlp"): {"hidden": 1024},
}

#: Training settings per registry model, on top of :meth:`DemoContext.fit`'s defaults
#: (a hook's own arguments win). The demo ViT (width 128) trains to ~90 % test accuracy
#: on digits at 1e-3 and to ~80 % at the CNN's 3e-3.
DEMO_FIT: dict[str, dict[str, Any]] = {"vit_tiny": {"lr": 1e-3}}


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


@dataclass
class DemoContext:
    """What a method's demo hook gets: data, the trained baseline, and helpers.

    Attributes: ``out_dir`` (the demo's directory; put runs in
    :meth:`run_dir`), ``data`` (dataset name), ``data_dir``, ``train_set``,
    ``val_set`` and ``test_set`` (``(x, y)`` datasets; the validation split is
    carved from the training data with the seed, never trained on, and is where
    operating points are chosen; ``None`` when there is none), ``seed``,
    ``device``, ``threads``,
    ``quick`` (tests: keep the hook well under a minute), ``progress``,
    ``batch_size`` (evaluation; :attr:`latency_batch_sizes` are the timed
    ones), ``epochs`` (the baseline's epoch count; scale a method's
    training from it), ``baseline_model`` (registry name),
    ``baseline_run`` / ``baseline_flops`` / ``baseline_accuracy`` (the
    evaluated baseline, set before hooks run).
    """

    out_dir: Path
    data: str
    data_dir: Path | None
    train_set: Dataset
    test_set: Dataset
    val_set: Dataset | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    quick: bool = False
    progress: bool = True
    batch_size: int = 64
    epochs: int = 15
    baseline_model: str = "cnn_small"
    baseline_run: Path | None = None
    baseline_flops: float | None = None
    baseline_accuracy: float | None = None
    baseline_runs: list[Path] = field(default_factory=list)
    _baselines: dict[str, tuple[nn.Module, Path]] = field(default_factory=dict, repr=False)

    # -- data -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.test_set.info.num_classes)  # type: ignore[attr-defined]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test_set.info.input_shape)  # type: ignore[attr-defined]

    def loader(
        self, dataset: Dataset | None = None, *, batch_size: int | None = None,
        shuffle: bool = False,
    ) -> DataLoader:
        """A DataLoader (seeded when shuffling); default: the test set, in order."""
        ds = self.test_set if dataset is None else dataset
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size or self.batch_size, shuffle=shuffle,
                          generator=gen)

    def train_loader(self, batch_size: int | None = None) -> DataLoader:
        return self.loader(self.train_set, batch_size=batch_size, shuffle=True)

    def test_loader(self, batch_size: int | None = None) -> DataLoader:
        return self.loader(self.test_set, batch_size=batch_size)

    def model_kwargs(self, model_name: str) -> dict[str, Any]:
        """Arguments that fit a registered model to this data (channels, size, classes).

        Only arguments the model's builder accepts are returned (the same rule
        as ``frugalnn train``). Models listed in :data:`DEMO_SIZES` for this
        data get the demo's size (e.g. the wider ``cnn_small`` on digits),
        except in quick mode.
        """
        from frugalnn.models.registry import model_kwargs_for

        sizes = {} if self.quick else DEMO_SIZES.get((self.data, model_name), {})
        return model_kwargs_for(model_name, self.test_set.info,  # type: ignore[attr-defined]
                                dict(sizes))

    @property
    def latency_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes every run is timed at: 1 (one request) and the evaluation batch."""
        return (1, self.batch_size) if self.batch_size > 1 else (1,)

    # -- runs ---------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        """A new directory ``out_dir/name`` for one run (``UserError`` if taken)."""
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"bad run name {name!r}; use a plain directory name")
        path = self.out_dir / name
        if path.exists():
            raise UserError(f"demo run {path} exists already; give the run another name")
        path.mkdir(parents=True)
        return path

    def fit(self, model: nn.Module, *, epochs: int | None = None, **kwargs: Any) -> Any:
        """:func:`frugalnn.train.fit` with the demo's data, seed, device and progress bars.

        Defaults: AdamW at 3e-3 with a cosine schedule, and :data:`DEMO_FIT`'s
        settings for the registry model ``model`` was built as.
        """
        from frugalnn.train import fit

        loader = kwargs.pop("train_loader", None) or self.train_loader()
        name = (getattr(model, "frugalnn_spec", None) or {}).get("name")
        defaults: dict[str, Any] = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4,
                                    "schedule": "cosine", "seed": self.seed,
                                    "progress": self.progress, "device": self.device,
                                    **DEMO_FIT.get(str(name), {})}
        return fit(model, loader, epochs=epochs or self.epochs, **{**defaults, **kwargs})

    def train_baseline(
        self, model_name: str | None = None, *, epochs: int | None = None,
        **model_kwargs: Any,
    ) -> tuple[nn.Module, Path]:
        """Train (once) and evaluate a registered model; return a copy and its run dir.

        Results are cached by name and arguments, so several hooks share one
        trained model; each call returns a fresh deep copy, so a hook may
        transform it in place. Data-dependent arguments (:meth:`model_kwargs`)
        are filled in. Every baseline is evaluated (method ``baseline``) and
        appears on the report as a star.
        """
        from frugalnn.models import create_model

        name = model_name or self.baseline_model
        kwargs = {**self.model_kwargs(name), **model_kwargs}
        key = json.dumps([name, kwargs, epochs], sort_keys=True, default=str)
        if key not in self._baselines:
            run_name = "baseline" if not self._baselines else f"baseline-{name}"
            k = 2
            while (self.out_dir / run_name).exists():
                run_name = f"baseline-{name}-{k}"
                k += 1
            run = self.run_dir(run_name)
            torch.manual_seed(self.seed)
            model = create_model(name, **kwargs)
            _log(f"training baseline {name} on {self.data} "
                 f"({len(self.train_set)} examples, {epochs or self.epochs} epochs)")
            self.fit(model, epochs=epochs, run_dir=run)
            model.eval()
            _profile(model, self.test_loader(), run / "extras" / "profile.md", name)
            _log(f"evaluating baseline {name}")
            self._evaluate(model, run, method="baseline", compare=False)
            self._baselines[key] = (model, run)
            self.baseline_runs.append(run)
        model, run = self._baselines[key]
        return copy.deepcopy(model), run

    def evaluate_run(
        self, model: nn.Module, name: str, *, method: str,
        budgets: Sequence[float] | None = None,
    ) -> Path:
        """Evaluate ``model`` on the test set into a new run ``name``; return its path.

        The run is compared with the baseline of the same registry model when
        the demo trained one. Put method-specific figures and tables in
        ``<run>/extras/`` (``*.png``, ``*.md``) afterwards; the report shows them.
        """
        run = self.run_dir(name)
        self._evaluate(model, run, method=method, budgets=budgets)
        return run

    def _evaluate(
        self, model: nn.Module, run: Path, *, method: str,
        budgets: Sequence[float] | None = None, compare: bool = True,
    ) -> None:
        evaluate_into(
            model, self.test_set, run, val_dataset=self.val_set, method=method,
            batch_size=self.batch_size, budgets=budgets, threads=self.threads,
            device=self.device, latency_batch_sizes=self.latency_batch_sizes,
            latency_warmup=2, latency_repeats=5 if self.quick else 20,
            baseline_run=self.baseline_run_of(model) if compare else None,
            reference_model=self.baseline_model_of(model) if compare else None,
            config={"demo": True, "method": method, "seed": self.seed},
            force=True, progress=self.progress,
        )

    def baseline_model_of(self, model: nn.Module) -> nn.Module | None:
        """The demo's trained baseline of the registry model ``model`` was built as: timed
        beside each method run, interleaved, so a speed-up is measured under one load."""
        spec = getattr(model, "frugalnn_spec", None) or {}
        for base, _run in self._baselines.values():
            if getattr(base, "frugalnn_spec", {}) == spec:
                return base
        return None

    def baseline_run_of(self, model: nn.Module) -> Path | None:
        """The demo's evaluated baseline run of the registry model ``model`` was built as."""
        spec = getattr(model, "frugalnn_spec", None) or {}
        for base, run in self._baselines.values():
            if getattr(base, "frugalnn_spec", {}) == spec:
                return run
        return None


def _profile(model: nn.Module, loader: DataLoader, path: Path, name: str) -> None:
    """Write the baseline's cost profile (parameters, FLOPs per module) as Markdown."""
    from frugalnn.cost.count import measure

    x, _ = next(iter(loader))
    device = next(model.parameters()).device
    report = measure(model, x[:1].to(device), depth=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        fh.write(f"### Profile of the baseline ({name})\n\n```\n{report.summary()}\n\n"
                 f"{report.table(depth=2)}\n```\n")


@dataclass
class HookResult:
    """What happened to one method's demo hook."""

    hook: str
    status: str  # "ran", "not available", "failed"
    runs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    @property
    def short(self) -> str:
        parts = self.hook.split(".")
        return parts[-2] if parts[-1] == "demo" and len(parts) > 1 else parts[-1]


def _select_hooks(hooks: Sequence[str], only: Sequence[str] | None) -> list[str]:
    if only is None:
        return list(hooks)
    chosen = []
    for name in only:
        match = [h for h in hooks if h == name or name in h.split(".")]
        if not match:
            known = ", ".join(HookResult(h, "").short for h in hooks)
            raise UserError(f"unknown method demo {name!r}; choose from {known}")
        chosen += [h for h in match if h not in chosen]
    return [h for h in hooks if h in chosen]


def _run_hook(hook: str, ctx: DemoContext, strict: bool) -> HookResult:
    try:
        module = importlib.import_module(hook)
    except ModuleNotFoundError as exc:
        if exc.name is not None and hook.startswith(exc.name):
            return HookResult(hook, "not available")
        if strict:
            raise
        return _failed(hook, ctx, exc, 0.0)
    t0 = time.perf_counter()
    try:
        runs = [Path(p) for p in module.run_demo(ctx)]
        for run in runs:
            load_summary(run)  # every returned run must be evaluated
    except Exception as exc:  # a broken method must not take the whole demo down
        if strict:
            raise RuntimeError(f"demo hook {hook} failed: {exc}") from exc
        return _failed(hook, ctx, exc, time.perf_counter() - t0)
    return HookResult(hook, "ran", runs, time.perf_counter() - t0)


def _failed(hook: str, ctx: DemoContext, exc: BaseException, seconds: float) -> HookResult:
    logs = ctx.out_dir / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"{hook}.txt"
    log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return HookResult(hook, "failed", [], seconds, f"{type(exc).__name__}: {first} (see {log})")


def _prepare_out(out: str | Path | None, force: bool) -> Path:
    if out is None:
        base = Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path, k = base, 2
        while path.exists():
            path = base.with_name(f"{base.name}-{k}")
            k += 1
        return path
    from frugalnn.utils.rundir import is_run_dir, mark_run, open_run

    path = Path(out)
    if path.exists() and force:
        if not (path / MARKER).is_file():
            raise UserError(f"{path} exists and was not written by `frugalnn demo`; refusing "
                            "to replace it, choose another --out")
        if not is_run_dir(path):  # a demo folder written before run markers existed
            mark_run(path, "demo")
    # Locked for this process; a replaced demo is set aside and removed only once the
    # new one holds results (frugalnn.utils.rundir).
    open_run(path, force=force, command="demo",
             taken=f"{path} already exists; pass --force to replace it or choose another --out")
    return path


def _write_marker(out_dir: Path, info: dict[str, Any]) -> None:
    with atomic_writer(out_dir / MARKER) as fh:
        json.dump(jsonable(info), fh, indent=2)
        fh.write("\n")


def _intro(ctx: DemoContext, results: list[HookResult], runs: Sequence[Path]) -> str:
    val = len(ctx.val_set) if ctx.val_set is not None else 0  # type: ignore[arg-type]
    sizes = None if ctx.quick else DEMO_SIZES.get((ctx.data, ctx.baseline_model))
    lines = [
        "## This demo",
        "",
        f"Baseline `{ctx.baseline_model}`"
        + (f" ({', '.join(f'{k}={v}' for k, v in sizes.items())})" if sizes else "")
        + f" trained for {ctx.epochs} epochs on `{ctx.data}` ({len(ctx.train_set)} training, "
        f"{val} validation, {len(ctx.test_set)} test examples), seed {ctx.seed}"
        + (", quick mode" if ctx.quick else "") + ". Every run is timed at batch sizes "
        + " and ".join(str(b) for b in ctx.latency_batch_sizes) + ". Methods:",
        "",
        "| method | status | runs | seconds | note |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        names = ", ".join(p.name for p in r.runs) or "—"
        lines.append(f"| {r.short} | {r.status} | {names} | {r.seconds:.1f} | "
                     f"{r.error.replace('|', '/')} |")
    verdicts = _verdicts(runs)
    if verdicts:
        lines += ["", "What each run gained or lost against its baseline, at the cheapest "
                  "budget within 1 pt of the baseline's accuracy (chosen on the validation "
                  "split; the most accurate budget when none is that close), scored on the "
                  "test split; speed-ups are measured against the baseline in interleaved "
                  "rounds on the same batches where the sentence says so, else against the "
                  "baseline run's own timing, minutes apart (then compare the load averages "
                  "listed with each run):", ""]
        lines += [f"- {v}" for v in verdicts]
    return "\n".join(lines)


def _verdicts(runs: Sequence[Path]) -> list[str]:
    """One :func:`~frugalnn.report.build.method_verdict` sentence per non-baseline run."""
    from frugalnn.evaluation import load_validation_summary
    from frugalnn.report.build import load_runs, method_verdict

    out = []
    for r in load_runs(runs):
        if r.is_baseline:
            continue
        base = r.reference.path if r.reference else r.summary.get("baseline_run")
        if not base or not Path(base).is_dir():
            continue
        try:
            out.append(f"**{r.name}** — " + method_verdict(
                r.summary, load_summary(base), validation=r.validation,
                baseline_validation=load_validation_summary(base)))
        except UserError as exc:  # a run the verdict cannot read must not sink the report
            out.append(f"**{r.name}** — no verdict: {exc}")
    return out


def run_demo(
    out: str | Path | None = None,
    *,
    data: str = "digits",
    data_dir: str | Path | None = None,
    model: str = "cnn_small",
    quick: bool = False,
    strict: bool = False,
    force: bool = False,
    seed: int = 0,
    threads: int | None = 1,
    device: str = "cpu",
    only: Sequence[str] | None = None,
    progress: bool = True,
    hooks: Sequence[str] = DEMO_HOOKS,
) -> Path:
    """Run the demo and return the path of its ``report/report.md``.

    ``out`` defaults to a fresh ``runs/demo/<UTC time>``; an existing ``out``
    is replaced only with ``force`` and only if an earlier demo wrote it.
    ``only`` picks method hooks by name (``None``: all, ``[]``: none).
    ``threads`` defaults to 1: the demo's models are small, and their timings
    stay stable on a busy machine.
    """
    from frugalnn.data.splits import load_splits
    from frugalnn.report import write_report

    if data not in ("digits", "mnist"):
        raise UserError(f"the demo runs on digits or mnist, not {data!r}")
    selected = _select_hooks(hooks, only)
    out_dir = _prepare_out(out, force)
    started = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        train_limit, val_limit, test_limit = _LIMITS[(data, quick)]
        splits = load_splits(data, str(data_dir) if data_dir else None,
                             val_fraction=VAL_FRACTION, train_limit=train_limit,
                             val_limit=val_limit, test_limit=test_limit, seed=seed)
        out_dir.mkdir(parents=True)
        _write_marker(out_dir, {"status": "running", "data": data, "seed": seed})
        _log(f"writing to {out_dir}")
        ctx = DemoContext(
            out_dir=out_dir, data=data, data_dir=Path(data_dir) if data_dir else None,
            train_set=splits.train, val_set=splits.val, test_set=splits.test, seed=seed,
            device=device, threads=threads, quick=quick, progress=progress,
            epochs=(3 if quick else 15) if data == "digits" else (2 if quick else 3),
            baseline_model=model,
        )
        _, ctx.baseline_run = ctx.train_baseline(model)
        row = load_summary(ctx.baseline_run)["budgets"][0]
        ctx.baseline_flops, ctx.baseline_accuracy = row["flops"], row["accuracy"]
        _log(f"baseline: {100 * row['accuracy']:.2f} % accuracy, "
             f"{row['flops'] / 1e6:.3f} MFLOPs per example")
        results = []
        for hook in selected:
            _log(f"method demo {hook}")
            res = _run_hook(hook, ctx, strict)
            _log(f"  {res.short}: {res.status}" + (f", {len(res.runs)} run(s) in "
                 f"{res.seconds:.0f} s" if res.status == "ran" else "")
                 + (f" -- {res.error}" if res.error else ""))
            results.append(res)
        runs = list(ctx.baseline_runs) + [p for r in results for p in r.runs]
        # A hook may return a baseline run that the context already lists.
        runs = list(dict.fromkeys(Path(p).resolve() for p in runs))
        _log("writing the report")
        report = write_report(
            runs, out_dir / "report", title=f"frugalnn demo: {data}", force=True,
            intro=_intro(ctx, results, runs),
            command="frugalnn report " + " ".join(str(p) for p in runs)
            + f" --out {out_dir / 'report'} --force",
        )
        _write_marker(out_dir, {
            "status": "done", "data": data, "seed": seed, "quick": quick,
            "seconds": round(time.perf_counter() - started, 1),
            "baseline": str(ctx.baseline_run), "report": str(report),
            "hooks": [{"hook": r.hook, "status": r.status, "runs": [str(p) for p in r.runs],
                       "seconds": round(r.seconds, 1), "error": r.error} for r in results],
        })
        _log(f"done in {time.perf_counter() - started:.0f} s")
        return report
    finally:
        torch.set_num_threads(old_threads)
