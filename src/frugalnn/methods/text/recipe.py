"""The text recipe: budgeted feed-forward models over hashed features.

* :class:`NgramConfig`: the task (``langid``: one label per sentence; ``pos``: one tag per
  token), the memory budget in bytes, the embedding bits and the training settings;
* :func:`ngram`: training data -> :class:`TextModel` that fits the budget, the public
  ``frugalnn.ngram(train, frugalnn.NgramConfig(budget_bytes=100_000), val_data=val)``;
  the training epoch kept is the one with the best *validation* accuracy;
* :func:`run_ngram`: the whole run directory (model, records of the sentence classifier
  on the test and validation splits, extras with bytes, float-vs-8-bit accuracy and
  latency, report). The CLI command, the demo hook and the benchmark scripts call these.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from frugalnn.errors import UserError
from frugalnn.methods.text.budget import Plan, plan_budget
from frugalnn.methods.text.data import (
    HashedText,
    HashedTokens,
    labelled_texts,
    tagged_sentences,
)
from frugalnn.methods.text.features import token_group_names
from frugalnn.methods.text.models import NgramNet
from frugalnn.utils.rundir import check_run_dir

__all__ = ["TASKS", "NgramConfig", "NgramRun", "TextModel", "ngram", "run_ngram",
           "token_records"]

TASKS = ("langid", "pos")


@dataclass
class NgramConfig:
    """Every setting of a budgeted text model; the defaults are those of ``frugalnn text``.

    ``budget_bytes``: the whole model (tables + perceptron) must fit it, counting the
    tables in ``bits`` (8: uint8 with per-row float16 scale and offset; 32: float32).
    ``orders``: character n-gram orders (default 1-4 for langid, 2-3 of each word for
    pos). For ``pos``: ``window`` words either side, ``affixes`` (suffix and prefix
    lengths), ``prev_tags`` previous tags, ``tag_column`` ``upos`` or ``xpos``.
    """

    task: str = "langid"
    budget_bytes: int = 100_000
    bits: int = 8
    orders: Sequence[int] | None = None
    max_chars: int = 256
    hidden_layers: int = 1
    reduce: str = "mean"
    window: int = 2
    affixes: Sequence[int] = (1, 2, 3)
    prev_tags: int = 2
    tag_column: str = "upos"
    epochs: int = 8
    lr: float = 5e-3
    batch_size: int = 64
    seed: int = 0
    latency_sentences: int = 200
    tags: Sequence[str] = field(default_factory=list)  # filled by training (pos)

    def validate(self) -> NgramConfig:
        """Raise :class:`UserError` (one line) on a setting that cannot work; return self."""
        if self.task not in TASKS:
            raise UserError(f"unknown text task {self.task!r}; use langid or pos")
        if self.bits not in (8, 32):
            raise UserError(f"--bits must be 8 or 32, got {self.bits}")
        for name in ("budget_bytes", "max_chars", "epochs", "batch_size", "latency_sentences"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be positive, got "
                                f"{getattr(self, name)}")
        if self.orders is not None and (not self.orders or min(self.orders) < 1):
            raise UserError(f"n-gram orders must be positive integers, got {self.orders}")
        if self.reduce not in ("mean", "sum"):
            raise UserError(f"--reduce must be mean or sum, got {self.reduce!r}")
        if self.hidden_layers not in (0, 1, 2):
            raise UserError(f"--hidden-layers must be 0, 1 or 2, got {self.hidden_layers}")
        if self.tag_column not in ("upos", "xpos"):
            raise UserError(f"--tags must be upos or xpos, got {self.tag_column!r}")
        if self.window < 0 or self.prev_tags < 0 or not self.lr > 0:
            raise UserError("--window and --prev-tags must be >= 0 and --lr positive")
        return self

    @property
    def ngram_orders(self) -> tuple[int, ...]:
        default = (1, 2, 3, 4) if self.task == "langid" else (2, 3)
        return tuple(int(n) for n in (self.orders or default))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["orders"] = list(self.ngram_orders)
        out["affixes"] = list(self.affixes)
        out["tags"] = list(self.tags)
        return out


@dataclass
class TextModel:
    """A trained budgeted model with what it needs to read raw text."""

    net: NgramNet
    config: NgramConfig
    classes: list[str]  # languages (langid) or tags (pos)
    plan: Plan
    history: list[dict[str, float]] = field(default_factory=list)
    chosen_epoch: int = 0  # chosen on validation when validation data was given

    def quantized(self) -> TextModel:
        """A copy whose tables are stored in 8 bits."""
        return TextModel(copy.deepcopy(self.net).quantize_(), self.config, self.classes,
                         self.plan, self.history, self.chosen_epoch)

    def features(self, texts: Sequence[str | bytes]) -> torch.Tensor:
        """Hashed n-grams of raw sentences, ``[len(texts), G, K]`` (langid)."""
        ds = HashedText(list(texts), np.zeros(len(texts), dtype=np.int64),
                        self.config.ngram_orders, self.config.max_chars)
        return ds.batch(np.arange(len(texts)))[0]

    @torch.no_grad()
    def predict(self, texts: Sequence[str | bytes]) -> list[str]:
        """The language of each raw sentence."""
        if self.config.task != "langid":
            raise UserError("predict() classifies sentences; use tag() for a tagger")
        if not len(texts):
            return []
        pred = self.net.eval()(self.features(texts)).argmax(1)
        return [self.classes[int(i)] for i in pred]

    @torch.no_grad()
    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
        """Greedy left-to-right tags of tokenised sentences (pos)."""
        from frugalnn.data.conllu import Sentence

        sents = [Sentence(list(s), ["_"] * len(s), ["_"] * len(s)) for s in sentences]
        pred = _greedy(self, _tokens(self.config, sents, _tag_index(self.classes)))
        out, start = [], 0
        for s in sents:
            out.append([self.classes[int(i)] for i in pred[start:start + len(s.words)]])
            start += len(s.words)
        return out

    def save(self, path: str | Path) -> None:
        """Weights (``torch.load(weights_only=True)``-safe) and the config, atomically."""
        from frugalnn.utils.io import write_bytes_atomic

        buf = io.BytesIO()
        torch.save({"state": self.net.state_dict(), "spec": self.net.spec(),
                    "config": self.config.to_dict(), "classes": self.classes,
                    "plan": self.plan.to_dict()}, buf)
        write_bytes_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> TextModel:
        blob = torch.load(path, weights_only=True)
        spec = blob["spec"]
        net = NgramNet(spec["rows"], spec["dims"], spec["hidden"], spec["num_classes"],
                       spec["reduce"])
        if spec["quantized"]:
            net.quantize_()
        net.load_state_dict(blob["state"])
        cfg = NgramConfig(**blob["config"])
        return cls(net.eval(), cfg, list(blob["classes"]), Plan(**{
            k: tuple(v) if isinstance(v, list) else v for k, v in blob["plan"].items()}))


def _tag_index(tags: Sequence[str]) -> dict[str, int]:
    return {t: i for i, t in enumerate(tags)}


def _tokens(cfg: NgramConfig, sentences: Sequence[Any], tags: dict[str, int]) -> HashedTokens:
    return HashedTokens(sentences, tags, cfg.tag_column, window=cfg.window,
                        affixes=cfg.affixes, orders=cfg.ngram_orders, prev_tags=cfg.prev_tags)


def _build(cfg: NgramConfig, num_classes: int) -> tuple[NgramNet, Plan]:
    if cfg.task == "langid":
        hashed, fixed = len(cfg.ngram_orders), []
    else:
        hashed = len(token_group_names(cfg.window, cfg.affixes, cfg.ngram_orders))
        fixed = [num_classes + 1] * cfg.prev_tags
    # Fixed-size groups (previous tags) come last in the input, first in the plan.
    plan = plan_budget(cfg.budget_bytes, hashed_groups=hashed, num_classes=num_classes,
                       bits=cfg.bits, fixed_rows=fixed, hidden_layers=cfg.hidden_layers)
    k = len(fixed)
    rows, dims = list(plan.rows[k:]) + list(plan.rows[:k]), list(plan.dims[k:]) + list(
        plan.dims[:k])
    return NgramNet(rows, dims, plan.hidden, num_classes, cfg.reduce), plan


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


@torch.no_grad()
def _accuracy(model: TextModel, data: Any) -> float:
    """Sentence accuracy (HashedText) or greedy token accuracy (HashedTokens)."""
    if isinstance(data, HashedTokens):
        pred = _greedy(model, data)
        return float(np.mean(pred == data.labels)) if len(data) else 0.0
    net, correct = model.net.eval(), 0
    for rows in _batches(len(data), 512, None):
        x, y = data.batch(rows)
        correct += int((net(x).argmax(1) == y).sum())
    return correct / max(1, len(data))


@torch.no_grad()
def _greedy(model: TextModel, data: HashedTokens) -> np.ndarray:
    """Greedy decoding: the predicted tag of every token (see :func:`_greedy_scores`)."""
    return _greedy_scores(model, data)[0]


@torch.no_grad()
def _greedy_scores(model: TextModel, data: HashedTokens) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding, position by position over all sentences at once, each token seeing
    the tags predicted for the tokens before it: ``(pred, loss)`` per token, ``loss`` the
    cross-entropy of the gold tag (NaN for a tag unseen in training)."""
    net = model.net.eval()
    pred = np.full(len(data), data.start, dtype=np.int64)
    loss = np.full(len(data), np.nan)
    for p in range(int(data.position.max(initial=-1)) + 1):
        rows = np.flatnonzero(data.position == p)
        prev = [np.where(data.position[rows] >= k, pred[np.maximum(rows - k, 0)], data.start)
                for k in range(1, data.prev_tags + 1)]
        x, y = data.batch(rows, prev)
        logits = net(x)
        pred[rows] = logits.argmax(1).numpy()
        known = y >= 0
        ce = nn.functional.cross_entropy(logits[known], y[known], reduction="none")
        loss[rows[known.numpy()]] = ce.numpy()
    return pred, loss


def token_records(model: TextModel, data: HashedTokens, *, method: str,
                  split: str) -> Any:
    """Evaluation records of a tagger, one row per token (the columns of
    ``frugalnn evaluate``: ``correct`` is whether the greedy tag is the gold one, ``flops``
    the perceptron's per token), so that ``frugalnn report`` puts the tagger on the plane."""
    from frugalnn.cost.machine import describe_machine
    from frugalnn.evaluation.fingerprint import ExampleFingerprint
    from frugalnn.evaluation.records import STATIC, EvalRecords

    t0 = time.perf_counter()
    pred, loss = _greedy_scores(model, data)
    seconds = time.perf_counter() - t0
    n = len(data)
    fp = ExampleFingerprint()
    if n:
        fp.update(data.batch(np.arange(n))[0], torch.from_numpy(data.labels))
    flops = float(model.net.mlp_flops())
    columns = {"budget": np.full(n, STATIC), "example_id": np.arange(n),
               "label": data.labels.copy(), "pred": pred, "correct": (pred == data.labels)
               .astype(np.float64), "loss": loss, "flops": np.full(n, flops)}
    meta = {"method": method, "model": "NgramNet tagger", "budget_name": "static",
            "baseline_flops": None, "baseline_accuracy": None, "baseline_source": None,
            "static_flops_per_example": None, "examples": n, "unit": "token",
            "fingerprint": fp.to_dict(), "batch_size": n, "threads": torch.get_num_threads(),
            "device": "cpu", "machine": dict(describe_machine("cpu")),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "transforms": [],
            "split": split}
    return EvalRecords(columns, [(STATIC, n, seconds)] if n else [], meta)


def ngram(
    train_data: Any,
    config: NgramConfig | None = None,
    *,
    val_data: Any = None,
    progress: bool = False,
) -> TextModel:
    """Train a model that fits ``config.budget_bytes`` on ``train_data``.

    ``train_data`` / ``val_data``: labelled sentences (``langid``: the ``langid`` dataset
    or a Subset) or tagged sentences (``pos``: ``pos-turkish``). The model trains in float;
    with ``bits=8`` its tables are then stored in 8 bits. With ``val_data`` the epoch with
    the best validation accuracy is kept (``model.chosen_epoch``).
    """
    cfg = copy.deepcopy(config or NgramConfig()).validate()
    model = _train(train_data, cfg, val_data, progress)
    return model.quantized() if cfg.bits == 8 else model


def _train(train_data: Any, cfg: NgramConfig, val_data: Any, progress: bool) -> TextModel:
    """The float model of :func:`ngram` (sized by the plan at ``cfg.bits``)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.task == "langid":
        texts, labels, classes = labelled_texts(train_data)
        train = HashedText(texts, labels, cfg.ngram_orders, cfg.max_chars)
        val = None
        if val_data is not None:
            vt, vl, _ = labelled_texts(val_data)
            val = HashedText(vt, vl, cfg.ngram_orders, cfg.max_chars)
    else:
        sents = tagged_sentences(train_data)
        classes = sorted({t for s in sents for t in getattr(s, cfg.tag_column)})
        cfg.tags = list(classes)
        train = _tokens(cfg, sents, _tag_index(classes))
        val = (_tokens(cfg, tagged_sentences(val_data), _tag_index(classes))
               if val_data is not None else None)
    if len(train) == 0:
        raise UserError("no training examples")
    net, plan = _build(cfg, len(classes))
    model = TextModel(net, cfg, list(classes), plan)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    best, best_state = -1.0, None
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        total = 0.0
        for rows in _batches(len(train), cfg.batch_size, rng):
            x, y = train.batch(rows)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        row = {"epoch": epoch, "train_loss": total / len(train)}
        if val is not None:
            row["val_accuracy"] = _accuracy(model, val)
            if row["val_accuracy"] > best:
                best, best_state = row["val_accuracy"], copy.deepcopy(net.state_dict())
                model.chosen_epoch = epoch
        model.history.append(row)
        if progress:
            print(f"  epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                   if k != "epoch"), flush=True)
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        model.chosen_epoch = cfg.epochs
    net.eval()
    return model


def latency_per_item(fn: Any, items: Sequence[Any], *, repeats: int = 1) -> dict[str, float]:
    """Median and spread of the wall time of ``fn([item])`` per item, on the current thread
    count (the benchmark sets one thread), after three warm-up calls."""
    for item in items[:3]:
        fn([item])
    times = []
    for _ in range(repeats):
        for item in items:
            t0 = time.perf_counter()
            fn([item])
            times.append(time.perf_counter() - t0)
    arr = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)),
            "p90_ms": float(np.percentile(arr, 90)), "items": len(items),
            "threads": torch.get_num_threads()}


def throughput(fn: Any, items: Sequence[Any], batch: int = 256) -> float:
    """Items per second of ``fn`` over ``items`` in batches of ``batch``."""
    fn(list(items[:batch]))
    t0 = time.perf_counter()
    for i in range(0, len(items), batch):
        fn(list(items[i:i + batch]))
    return len(items) / (time.perf_counter() - t0)


@dataclass
class NgramRun:
    """What :func:`run_ngram` produced: the run directory, the stored model, its float
    original and the figures written to ``extras/text.json``."""

    out: Path
    model: TextModel
    float_model: TextModel
    figures: dict[str, Any]


def run_ngram(
    config: NgramConfig,
    splits: Any,
    out: str | Path,
    *,
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
    run_config: dict[str, Any] | None = None,
) -> NgramRun:
    """Train on ``splits.train`` (epoch chosen on ``splits.val``), then write ``out``:
    ``model.pt``, the records on ``splits.test`` and ``splits.val`` (langid:
    ``evaluate_into``, one row per sentence; pos: :func:`token_records`, one row per
    token) and the report, and ``extras/text.json`` with the plan, the exact
    bytes, float and 8-bit accuracy on both splits and the latency per sentence (raw text
    in, one call per sentence) or per token (pos)."""
    from frugalnn.utils.io import write_json_atomic

    cfg = copy.deepcopy(config).validate()
    out = check_run_dir(out, force)
    if threads:
        torch.set_num_threads(threads)
    float_model = _train(splits.train, cfg, splits.val, progress)
    model = float_model.quantized() if cfg.bits == 8 else float_model
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.pt")
    figures: dict[str, Any] = {"task": cfg.task, "plan": model.plan.to_dict(),
                               "bytes": model.net.nbytes(), "float_bytes": float_model.net.nbytes(),
                               "embedding_bytes": {"8bit": model.net.embedding_bytes(8),
                                                   "float": model.net.embedding_bytes(32)},
                               "mlp_flops": model.net.mlp_flops(),
                               "chosen_epoch": model.chosen_epoch,
                               "chosen_on": "validation" if splits.val is not None else "none",
                               "history": model.history, "accuracy": {}}
    evals = {"test": splits.test, "validation": splits.val}
    for split, data in evals.items():
        if data is None:
            continue
        hashed = _hashed(cfg, data, model.classes)
        figures["accuracy"][split] = {"8bit": _accuracy(float_model.quantized(), hashed),
                                      "float": _accuracy(float_model, hashed)}
    if cfg.task == "langid" and splits.test is not None:
        from frugalnn.evaluation import evaluate_into
        from frugalnn.report import write_run_report

        test = _hashed(cfg, splits.test, model.classes)
        val = _hashed(cfg, splits.val, model.classes) if splits.val is not None else None
        evaluate_into(model.net, test, out, val_dataset=val, method=f"ngram-{cfg.bits}bit",
                      config={**(run_config or {}), "text": cfg.to_dict(),
                              "val_split": splits.val_spec},
                      batch_size=cfg.batch_size, threads=threads, latency_batch_sizes=(1, 64),
                      force=force, progress=progress)
        texts = labelled_texts(splits.test)[0][:cfg.latency_sentences]
        figures["latency_per_sentence"] = latency_per_item(model.predict, texts)
        figures["sentences_per_second"] = throughput(model.predict, texts * 4)
        write_json_atomic(out / "extras" / "text.json", figures)
        write_run_report(out)
    elif splits.test is not None:
        from frugalnn.evaluation.records import VALIDATION_DIR
        from frugalnn.report import write_run_report
        from frugalnn.utils.io import jsonable

        method = f"ngram-tagger-{cfg.bits}bit"
        records = token_records(model, _hashed(cfg, splits.test, model.classes), method=method,
                                split="test")
        records.meta["config"] = jsonable({**(run_config or {}), "text": cfg.to_dict(),
                                           "val_split": splits.val_spec})
        if splits.val is not None:
            val = token_records(model, _hashed(cfg, splits.val, model.classes), method=method,
                                split="validation")
            val.save(out / VALIDATION_DIR, force=True)
            records.meta["validation"] = {"dir": VALIDATION_DIR, "examples": len(val),
                                          "fingerprint": val.meta["fingerprint"]}
        records.save(out, force=True)
        sents = tagged_sentences(splits.test)[:cfg.latency_sentences]
        per_sentence = latency_per_item(lambda s: model.tag([x.words for x in s]), sents)
        tokens = sum(len(s.words) for s in sents) / max(1, len(sents))
        figures["latency_per_sentence"] = per_sentence
        figures["latency_per_token_ms"] = per_sentence["median_ms"] / max(tokens, 1e-9)
        figures["tokens_per_second"] = throughput(
            lambda s: model.tag([x.words for x in s]), sents) * tokens
        write_json_atomic(out / "extras" / "text.json", figures)
        write_run_report(out)
    return NgramRun(out, model, float_model, figures)


def _hashed(cfg: NgramConfig, data: Any, classes: list[str]) -> Any:
    if cfg.task == "langid":
        texts, labels, _ = labelled_texts(data)
        return HashedText(texts, labels, cfg.ngram_orders, cfg.max_chars)
    return _tokens(cfg, tagged_sentences(data), _tag_index(classes))
