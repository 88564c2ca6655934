"""ONNX Runtime's int8: a float ONNX graph quantised to QDQ int8 with calibration on real data.

``frugalnn export RUN --format onnx --int8`` (``ExportConfig(int8=True)``)
exports the float graph as usual, then quantises it with
``onnxruntime.quantization.quantize_static``: QDQ format (``QuantizeLinear`` /
``DequantizeLinear`` pairs around every quantisable node, which ONNX Runtime
fuses into its int8 kernels such as ``QLinearConv`` when the session loads),
weights int8 with one scale per output channel, activations uint8 with ranges
from min/max calibration on a seeded random subset of training examples.

Only a static model is quantised: an input-dependent export is several graphs
driven by a loop, and its tokens / rows per graph change with the input.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError
from frugalnn.runtime.deps import require

__all__ = ["SCHEME", "quantize_graph"]

#: What the manifest records about how the graph was quantised.
SCHEME = {"format": "QDQ", "weights": "int8, per output channel", "activations": "uint8",
          "calibration": "minmax", "tool": "onnxruntime.quantization.quantize_static"}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantiser logs advice (pre-processing) on the root logger at WARNING level."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(float_graph: bytes, batches: Sequence[Any], *,
                   input_name: str = "input", per_channel: bool = True) -> bytes:
    """The QDQ int8 version of ``float_graph`` (ONNX bytes), its activation ranges
    calibrated on ``batches`` (tensors fed to ``input_name``, one at a time)."""
    require("onnx", "int8 ONNX export")
    ort = require("onnxruntime", "int8 ONNX export")
    if not batches:
        raise UserError("int8 quantisation calibrates on real data, and none was given; "
                        "pass calibration_data (the training split)")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    feeds = [{input_name: b.detach().cpu().numpy()} for b in batches]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="frugalnn-int8-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(float_graph)
        try:
            with warnings.catch_warnings(), _quiet_root_logger():
                warnings.simplefilter("ignore")
                quantize_static(str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
        except Exception as exc:  # noqa: BLE001 - the quantiser's failures become one line
            lines = str(exc).strip().splitlines()
            raise UserError(f"ONNX Runtime {ort.__version__} could not quantise the graph to "
                            f"int8: {type(exc).__name__}: {lines[0] if lines else ''}"
                            ) from None
        return dst.read_bytes()
