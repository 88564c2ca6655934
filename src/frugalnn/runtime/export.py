"""Export a model, check it against PyTorch on real data, and only then write it.

Python API::

    import frugalnn

    result = frugalnn.export(model, "runs/ee/export/onnx",
                             frugalnn.ExportConfig(format="onnx"), check_data=splits.test)
    runner = frugalnn.load_exported("runs/ee/export/onnx")      # ONNX Runtime
    runner.set_budget(0.9)                                     # the knob survives export
    logits = runner(x)

A static model becomes one graph; an input-dependent one is handed to its
method's exporter (found through the plugin list), which writes segments,
heads or experts and the settings of the loop that drives them. The export is
then run on ``check_data`` at every budget value the model offers and
compared with the PyTorch model row by row; ``check.json`` records the
result. Everything is written to a temporary directory next to ``out`` and
renamed into place only when the check passes, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from frugalnn import __version__
from frugalnn.errors import UserError
from frugalnn.runtime.graphs import DEFAULT_OPSET, RUNTIMES_OF, SUFFIX, check_format, graph_bytes
from frugalnn.runtime.inputs import (
    TENSOR_INPUT,
    KeywordInputs,
    describe_inputs,
    dynamic_axes,
    input_names,
    ordered,
)
from frugalnn.runtime.package import (
    CHECK,
    FORMAT_TAG,
    MANIFEST,
    exporter_for,
    load_exported,
)
from frugalnn.utils.io import write_bytes_atomic, write_json_atomic

__all__ = ["ExportConfig", "ExportResult", "check_export", "check_batches", "export"]


@dataclass
class ExportConfig:
    """How to export and how strictly to check.

    ``atol``/``rtol``: a row matches when ``max|exported - eager| <= atol + rtol * max|eager|``.
    ``min_match``: the fraction of rows that must match for a static model (all of them).
    ``dynamic_min_match``: the same for an input-dependent model, where a row whose
    confidence sits within float error of a threshold may leave at a neighbouring exit.
    ``budgets``: the budget values checked (default: every value the model offers).
    ``layout``: how a method lays out an input-dependent model in graphs (``auto``: the
    method's default for the format; MoE and ACM take ``in-graph``, ``segments`` and
    ``one-graph``).
    ``int8``: quantise a static model's ONNX graph to ONNX Runtime's QDQ int8
    (:mod:`frugalnn.runtime.int8`), calibrated on ``calibration_size`` examples of
    ``calibration_data`` (a seeded random subset); its check passes when the top-1
    agreement with the float PyTorch model is at least ``int8_min_agreement`` (int8 does
    not reproduce float logits to ``atol``; the largest difference is recorded).
    """

    format: str = "onnx"
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    rtol: float = 1e-4
    batch_size: int = 32
    check_limit: int | None = 256
    seed: int = 0
    min_match: float = 1.0
    dynamic_min_match: float = 0.99
    budgets: list[float] | None = None
    threads: int | None = None
    layout: str = "auto"
    int8: bool = False
    calibration_size: int = 256
    int8_min_agreement: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest

    def validate(self) -> None:
        check_format(self.format)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be positive, got {self.batch_size}")
        if self.check_limit is not None and self.check_limit < 1:
            raise UserError(f"check_limit must be positive, got {self.check_limit}")
        if self.atol < 0 or self.rtol < 0:
            raise UserError("atol and rtol must be >= 0")
        if self.int8 and self.format != "onnx":
            raise UserError(f"int8 export quantises an ONNX graph for ONNX Runtime; use "
                            f"format onnx, not {self.format!r}")
        if self.calibration_size < 1:
            raise UserError(f"calibration_size must be positive, got {self.calibration_size}")
        if not 0.0 <= self.int8_min_agreement <= 1.0:
            raise UserError("int8_min_agreement is a fraction of rows, between 0 and 1")


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    check: dict[str, Any]


def check_batches(data: Any, limit: int | None, batch_size: int, seed: int) -> list[Any]:
    """Input batches to check with: a seeded random ``limit`` of a dataset (labels dropped),
    or inputs (a tensor, or a dict of tensors) cut into batches."""
    import torch

    from frugalnn.data.splits import random_subset, seeded_loader
    from frugalnn.utils.batch import batch_len, slice_batch, split_batch

    if isinstance(data, (torch.Tensor, dict)):
        n = min(batch_len(data), limit or batch_len(data))
        return [slice_batch(data, i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    loader = seeded_loader(random_subset(data, limit, seed), batch_size, seed, shuffle=False)
    return [split_batch(b)[0] for b in loader]


def _budgets(model: Any, config: ExportConfig) -> list[float | None]:
    from frugalnn.budget import has_budget

    if not has_budget(model):
        return [None]
    values = config.budgets if config.budgets is not None else model.budget_values()
    return list(values) or [None]


def check_export(model: Any, runner: Any, batches: list[Any], budgets: list[float | None], *,
                 atol: float, rtol: float) -> dict[str, Any]:
    """Run the eager model and the export side by side on ``batches`` at every budget;
    per budget: rows, rows within tolerance, argmax agreement, largest difference."""
    import torch

    from frugalnn.utils.batch import call_model, logits_of

    full = model.full_budget() if budgets != [None] else None
    points = []
    try:
        with torch.inference_mode():
            for b in budgets:
                if b is not None:
                    model.set_budget(b)
                    runner.set_budget(b)
                rows = within = agree = 0
                worst = 0.0
                for x in batches:
                    ref = logits_of(call_model(model, x)).float().cpu()
                    got = logits_of(runner(x)).float().cpu()
                    if got.shape != ref.shape:
                        raise UserError(f"the export returns shape {tuple(got.shape)} where "
                                        f"the model returns {tuple(ref.shape)}")
                    diff = (got - ref).abs().amax(dim=1)
                    tol = atol + rtol * ref.abs().amax(dim=1)
                    rows += len(diff)
                    within += int((diff <= tol).sum())
                    agree += int((got.argmax(1) == ref.argmax(1)).sum())
                    worst = max(worst, float(diff.max()))
                points.append({"budget": b, "rows": rows, "within_tolerance": within,
                               "match": within / max(rows, 1), "argmax_agreement":
                               agree / max(rows, 1), "max_abs_diff": worst})
    finally:
        if full is not None:
            model.set_budget(full)
            runner.set_budget(full)
    return {"atol": atol, "rtol": rtol, "points": points,
            "match": min(p["match"] for p in points),
            "max_abs_diff": max(p["max_abs_diff"] for p in points)}


def _int8_graph(graph: bytes, data: Any, config: ExportConfig) -> tuple[bytes, dict[str, Any]]:
    """The QDQ int8 graph and what the manifest records about it."""
    from frugalnn.runtime.int8 import SCHEME, quantize_graph

    calib = check_batches(data, config.calibration_size, config.batch_size, config.seed)
    int8 = quantize_graph(graph, calib, input_name="input")
    return int8, {**SCHEME, "calibration_examples": sum(len(b) for b in calib),
                  "calibration_seed": config.seed,
                  "calibration_data": getattr(data, "name", None) or type(data).__name__,
                  "float_graph_bytes": len(graph), "graph_bytes": len(int8)}


def _example(batches: list[Any], example_input: Any) -> Any:
    """The input the model is exported on: ``example_input``, else the first two rows of
    the checked data (a tensor or a dict of tensors, :mod:`frugalnn.runtime.inputs`)."""
    from frugalnn.runtime.inputs import input_names
    from frugalnn.utils.batch import batch_len, cat, take

    if example_input is not None:
        input_names(example_input)  # a tensor or a dict of tensors, else one line
        return example_input
    if not batches:
        raise UserError("no data to check the export with; pass check_data")
    first = batches[0]
    input_names(first)
    # torch.export and the tracer specialise a batch of 1: export with at least 2 rows.
    return take(first, 2) if batch_len(first) >= 2 else cat([first, first])


def _single_key_tensor(model: Any, example: dict[str, Any]) -> Any:
    """The tensor of a one-key dict input when ``model`` gives the same output on it alone
    (an input-dependent model is exported on that tensor); else a one-line refusal."""
    import torch

    from frugalnn.utils.batch import call_model, logits_of

    if len(example) == 1:
        (tensor,) = example.values()
        try:
            with torch.no_grad():
                same = torch.equal(logits_of(call_model(model, example)),
                                   logits_of(call_model(model, tensor)))
        except Exception:  # noqa: BLE001 - the model does not take the bare tensor
            same = False
        if same:
            return tensor
    raise UserError(f"{type(model).__name__} is input-dependent and takes a dict input "
                    f"({', '.join(example)}); its method's exporter takes one tensor, so only "
                    "a static model (one graph) is exported on a dict of several tensors")


def export(model: Any, out: str | os.PathLike, config: ExportConfig | None = None, *,
           check_data: Any = None, example_input: Any = None, force: bool = False,
           source: dict[str, Any] | None = None,
           calibration_data: Any = None) -> ExportResult:
    """Export ``model`` to the directory ``out``, checked on ``check_data`` (a dataset of
    ``(x, y)`` pairs or Hugging Face dicts, or inputs: a tensor or a dict of tensors);
    see the module docstring. A model that takes a dict (``{"input_ids",
    "attention_mask"}``, ``{"pixel_values"}``) gets one graph input per key, named by
    the key, with dynamic batch (and token sequence) axes (:mod:`frugalnn.runtime.inputs`).
    With ``config.int8``, ``calibration_data`` (the training split, never the checked
    data) calibrates the int8 graph."""
    import torch

    from frugalnn.utils.batch import batch_len

    config = config or ExportConfig()
    config.validate()
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force (force=True) to overwrite it")
    if check_data is None:
        raise UserError("an export is checked on real data before it is written; "
                        "pass check_data (a dataset or a tensor of inputs)")
    model = model.eval()
    batches = check_batches(check_data, config.check_limit, config.batch_size, config.seed)
    example = _example(batches, example_input)
    exporter = exporter_for(model)
    if exporter is None and config.layout not in ("auto", "one-graph"):
        raise UserError(f"a static model is one graph; layout {config.layout!r} "
                        "is for input-dependent models")
    if config.int8 and exporter is not None:
        raise UserError(f"int8 export is for static models; this {exporter.KIND} model is "
                        "input-dependent: export it in float, or quantise it with "
                        "`frugalnn quant` (int8 PyTorch kernels keep its knob)")
    if config.int8 and isinstance(example, dict):
        raise UserError("int8 export calibrates a graph of one tensor input; this model "
                        f"takes a dict ({', '.join(example)}): export it in float")
    if config.int8 and calibration_data is None:
        raise UserError("int8 export calibrates on real data; pass calibration_data "
                        "(the training split)")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    made_parent = not out.parent.exists()
    tmp.mkdir(parents=True)
    try:
        with torch.no_grad():
            names = input_names(example)
            if exporter is None:
                file = "model" + SUFFIX[config.format]
                module = model if names == [TENSOR_INPUT] else KeywordInputs(model, names)
                graph = graph_bytes(module, ordered(example, names), config.format,
                                    input_names=names, output_names=["logits"],
                                    opset=config.opset, what=type(model).__name__,
                                    dynamic_axes=dynamic_axes(example))
                parts: dict[str, Any] = {"graphs": {"model": file}}
                if config.int8:
                    graph, parts["int8"] = _int8_graph(graph, calibration_data, config)
                write_bytes_atomic(tmp / file, graph)
                kind = "static"
            else:
                parts = {}
                # An exporter that declares DICT_INPUTS takes a dict of several tensors.
                if isinstance(example, dict) and not (
                        len(example) > 1 and getattr(exporter, "DICT_INPUTS", False)):
                    parts["input_key"] = names[0]
                    example = _single_key_tensor(model, example)
                    names = [TENSOR_INPUT]
                parts.update(exporter.export_parts(model, example, config.format, tmp,
                                                   config.opset, layout=config.layout))
                kind = exporter.KIND
        # A static export is one graph at the model's current setting; an input-dependent
        # one keeps its knob and is checked at every value.
        budgets = [None] if exporter is None else _budgets(model, config)
        inputs = describe_inputs(example)
        if "input_key" in parts:
            inputs[0]["name"] = parts["input_key"]
        manifest = {
            "format_tag": FORMAT_TAG, "frugalnn_version": __version__, "torch": torch.__version__,
            "format": config.format, "runtime": RUNTIMES_OF[config.format][0], "kind": kind,
            "input_shape": inputs[0]["example_shape"], "input_dtype": inputs[0]["dtype"],
            "inputs": inputs,
            "budget_values": [b for b in budgets if b is not None],
            "source": source or {}, "config": asdict(config), **parts,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        runner = load_exported(tmp, threads=config.threads)
        check = check_export(model, runner, batches, budgets, atol=config.atol, rtol=config.rtol)
        needed = config.min_match if kind == "static" else config.dynamic_min_match
        check.update(passed=check["match"] >= needed, required_match=needed,
                     examples=sum(batch_len(b) for b in batches),
                     data=getattr(check_data, "name", None) or type(check_data).__name__,
                     runtime=manifest["runtime"])
        if config.int8:
            agreement = min(p["argmax_agreement"] for p in check["points"])
            check.update(criterion="argmax_agreement", required_match=None,
                         argmax_agreement=agreement,
                         required_agreement=config.int8_min_agreement,
                         passed=agreement >= config.int8_min_agreement,
                         compared_with="the float PyTorch model")
        write_json_atomic(tmp / CHECK, check)
        if config.int8 and not check["passed"]:
            raise UserError(
                f"the int8 export agrees with the float PyTorch model on "
                f"{check['argmax_agreement']:.1%} of top-1 predictions (needed "
                f"{config.int8_min_agreement:.1%}; largest logit difference "
                f"{check['max_abs_diff']:.3g}); nothing was written")
        if not check["passed"]:
            raise UserError(
                f"the {config.format} export does not match the PyTorch model: "
                f"{check['match']:.1%} of rows within tolerance (needed {needed:.1%}), "
                f"largest difference {check['max_abs_diff']:.3g}; nothing was written")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent and not out.exists():
            with contextlib.suppress(OSError):  # only if empty: nothing of anyone else's
                out.parent.rmdir()
    return ExportResult(out, manifest, check)
