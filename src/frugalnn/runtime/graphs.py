"""One module -> one graph file, and a graph file -> a callable on a runtime.

Formats: ``onnx`` (the TorchScript-based ONNX exporter, a dynamic batch
dimension, run by ONNX Runtime), ``exported-program`` (``torch.export`` with a
dynamic batch dimension, saved as ``.pt2``, run eagerly or through
``torch.compile``) and ``torchscript`` (``torch.jit.trace``, saved as ``.pt``).
Every graph takes batch-first tensors and returns one tensor or a tuple of
tensors. A graph here is static: input-dependent control flow (exits, expert
choice) stays outside it, in a method's runner.

When an exporter fails, :func:`export_graph` names the operation it could not
handle and the deepest submodule that fails on its own, in one line.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError
from frugalnn.runtime.deps import require
from frugalnn.utils.io import write_bytes_atomic

__all__ = [
    "FORMATS",
    "RUNTIMES_OF",
    "SUFFIX",
    "OrtGraph",
    "export_graph",
    "graph_bytes",
    "load_graph",
]

FORMATS = ("onnx", "exported-program", "torchscript")
SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".pt"}
#: The runtimes each format can run on (the first is the default).
RUNTIMES_OF = {
    "onnx": ("onnxruntime",),
    "exported-program": ("eager", "compile"),
    "torchscript": ("torchscript",),
}
DEFAULT_OPSET = 17

_OP = re.compile(r"((?:aten|prim|onnx|quantized)::[\w.]+)")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}{i}" for i in range(n)]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: the ONNX exporter prints its whole IR graph from C++
    when it fails, and the failure is reported in one line instead."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _varargs_only(module: Any) -> bool:
    """Whether ``module.forward`` takes its inputs as ``*args`` (then torch.export wants
    the dynamic shapes of all of them as one entry)."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind is inspect.Parameter.VAR_POSITIONAL


def _export_bytes(module: Any, inputs: tuple, fmt: str, input_names: Sequence[str],
                  output_names: Sequence[str], opset: int,
                  row_axes: dict[str, str] | None = None,
                  custom_domains: Sequence[str] = (),
                  dynamic_axes: dict[str, dict[int, str]] | None = None) -> bytes:
    import torch

    buf = io.BytesIO()
    more = dynamic_axes or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
        if fmt == "onnx":
            require("onnx", "ONNX export")
            axes = {n: {0: (row_axes or {}).get(n, "batch"), **more.get(n, {})}
                    for n in [*input_names, *output_names]}
            with _quiet_stdout():
                torch.onnx.export(module, inputs, buf, dynamo=False,
                                  input_names=list(input_names),
                                  output_names=list(output_names), dynamic_axes=axes,
                                  opset_version=opset, do_constant_folding=True,
                                  custom_opsets={d: 1 for d in custom_domains})
        elif fmt == "exported-program":
            dyn = torch.export.Dim.DYNAMIC
            shapes: tuple = tuple({a: dyn for a in {0: "batch", **more.get(n, {})}}
                                  for n, _ in zip(input_names, inputs))
            if _varargs_only(module):
                shapes = (shapes,)
            program = torch.export.export(module, inputs, dynamic_shapes=shapes, strict=False)
            torch.export.save(program, buf)
        else:
            traced = torch.jit.trace(module, inputs, check_trace=False)
            torch.jit.save(traced, buf)
    return buf.getvalue()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "GuardOnDataDependentSymNode" in type(exc).__name__ or "data-dependent" in text:
        return "data-dependent control flow (GuardOnDataDependentSymNode)"
    op = _OP.search(text)
    if op:
        return f"operation {op.group(1)}"
    lines = text.strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


def _culprit(module: Any, inputs: tuple, fmt: str, opset: int) -> str | None:
    """The deepest submodule that fails to export on its own (top-down search)."""
    import torch

    captured: dict[str, tuple] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: Any, args: tuple, _out: Any) -> None:  # None: output unchanged
            captured.setdefault(name, args)
        return hook

    hooks = [sub.register_forward_hook(keep(name))
             for name, sub in module.named_modules() if name]
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception:  # noqa: BLE001 - the search is best effort
        return None
    finally:
        for h in hooks:
            h.remove()

    def search(path: str, current: Any) -> str | None:
        """Depth first: a child that fails on its own is looked inside (else it is the
        culprit); a child called with keywords only (a Hugging Face model's parts) cannot
        be tried alone, so it is looked inside too."""
        for child_name, child in current.named_children():
            full = f"{path}.{child_name}" if path else child_name
            args = captured.get(full)
            if not args or not all(isinstance(a, torch.Tensor) for a in args):
                found = search(full, child)
                if found:
                    return found
                continue
            try:
                _export_bytes(child, args, fmt, _names("input", len(args)), ["output"], opset)
            except Exception:  # noqa: BLE001 - this child fails: look inside it
                return search(full, child) or full
        return None

    return search("", module)


def graph_bytes(module: Any, inputs: Sequence[Any], fmt: str, *,
                input_names: Sequence[str] | None = None,
                output_names: Sequence[str] | None = None, num_outputs: int = 1,
                opset: int = DEFAULT_OPSET, what: str = "",
                row_axes: dict[str, str] | None = None,
                custom_domains: Sequence[str] = (),
                dynamic_axes: dict[str, dict[int, str]] | None = None) -> bytes:
    """Export ``module`` called on ``inputs`` (batch-first tensors) to ``fmt``; the file's bytes.

    ``row_axes``: for ONNX, the name of the first (row) axis of an input or output
    (default ``batch`` for all: equal sizes); distinct names let inputs differ in rows.
    ``custom_domains``: ONNX operator domains of custom nodes the module emits.
    ``dynamic_axes``: more dynamic axes per input name, ``{axis: name}`` (e.g. a token
    sequence, :func:`frugalnn.runtime.inputs.dynamic_axes`); ONNX and exported programs.

    Raises one-line :class:`UserError` naming the operation and the layer that failed.
    """
    import torch

    check_format(fmt)
    inputs = tuple(inputs)
    input_names = list(input_names or _names("input", len(inputs)))
    output_names = list(output_names or _names("output", num_outputs))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return _export_bytes(module, inputs, fmt, input_names, output_names, opset, row_axes,
                                 custom_domains, dynamic_axes)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - every exporter failure becomes one line
        layer = _culprit(module, inputs, fmt, opset)
        from frugalnn.runtime.inputs import KeywordInputs

        if layer and isinstance(module, KeywordInputs) and layer.startswith("model."):
            layer = layer[len("model."):]  # the wrapped model's own path
        where = f" in layer {layer!r}" if layer else ""
        name = what or type(module).__name__
        raise UserError(f"cannot export {name} to {fmt}: {_reason(exc)}{where}") from None
    finally:
        module.train(was_training)


def export_graph(module: Any, inputs: Sequence[Any], path: str | Path, fmt: str,
                 **kwargs: Any) -> Path:
    """:func:`graph_bytes` written atomically to ``path``."""
    return write_bytes_atomic(path, graph_bytes(module, inputs, fmt, **kwargs))


class OrtGraph:
    """An ONNX Runtime session called like a module: torch tensors in, torch tensors out.

    ``device="cuda"`` uses ONNX Runtime's CUDA execution provider (the
    ``onnxruntime-gpu`` package); inputs then still travel through host memory.
    """

    def __init__(self, model: str | Path | bytes, *, device: str = "cpu",
                 threads: int | None = None) -> None:
        ort = require("onnxruntime", "running ONNX graphs")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("ONNX Runtime has no CUDA execution provider here; install "
                                "onnxruntime-gpu in place of onnxruntime, or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        # Kept as bytes, so that reset() works after the file is gone.
        self._source = model if isinstance(model, bytes) else Path(model).read_bytes()
        self._options, self._providers = options, providers
        self.session = ort.InferenceSession(self._source, options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = str(device)
        self.threads = threads

    def reset(self) -> None:
        """A fresh session (an empty memory arena), e.g. to measure a call's peak memory."""
        ort = require("onnxruntime")
        self.session = ort.InferenceSession(self._source, self._options,
                                            providers=self._providers)

    def run_values(self, feeds: dict[str, Any]) -> list[Any]:
        """Run on ONNX Runtime values (``OrtValue``), returning them: no copy into or out of
        numpy, for graphs that feed one another."""
        return list(self.session.run_with_ort_values(self.output_names, feeds))

    def __call__(self, *inputs: Any) -> Any:
        """Tensors in the order of the graph's inputs, or one dict fed by input name."""
        import torch

        if len(inputs) == 1 and isinstance(inputs[0], dict):
            given = inputs[0]
            missing = [n for n in self.input_names if n not in given]
            if missing:  # keys the graph does not read (an unused mask) are left out
                raise UserError(f"this ONNX graph takes inputs {', '.join(self.input_names)}; "
                                f"the dict given lacks {', '.join(missing)}")
            inputs = tuple(given[n] for n in self.input_names)
        if len(inputs) != len(self.input_names):
            raise UserError(f"this ONNX graph takes {len(self.input_names)} input(s) "
                            f"({', '.join(self.input_names)}); got {len(inputs)}")
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, inputs)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        if self.device != "cpu":
            outs = [o.to(self.device) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def load_graph(path: str | Path, runtime: str | None = None, *, device: str = "cpu",
               threads: int | None = None) -> Callable[..., Any]:
    """A graph file as a callable on ``runtime`` (default: its format's first runtime)."""
    import torch

    path = Path(path)
    fmt = next((f for f, s in SUFFIX.items() if path.suffix == s), None)
    if fmt is None:
        raise UserError(f"{path} is not a graph file ({', '.join(SUFFIX.values())})")
    runtime = runtime or RUNTIMES_OF[fmt][0]
    if runtime not in RUNTIMES_OF[fmt]:
        raise UserError(f"a {fmt} graph runs on {', '.join(RUNTIMES_OF[fmt])}, not {runtime!r}")
    if fmt == "onnx":
        return OrtGraph(path, device=device, threads=threads)
    if fmt == "exported-program":
        module = torch.export.load(str(path)).module().to(device)
        return torch.compile(module, dynamic=True) if runtime == "compile" else module
    return torch.jit.load(str(path), map_location=device).eval()
