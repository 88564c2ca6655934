"""A fingerprint of the evaluated examples, so that runs on different examples are not compared.

Two evaluations with the same fingerprint saw the same examples in the same
order: the same labels and the same input bytes. It is computed batch by batch
during the evaluation pass (one sha256 per input tensor and one over the
labels), and does not depend on the batch size as long as the examples have a
fixed shape. Reports refuse to put runs with different fingerprints on one plane.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from frugalnn.utils.batch import batch_len

__all__ = ["ExampleFingerprint", "same_examples"]


def _leaves(x: Any, prefix: str = "x") -> Iterator[tuple[str, Any]]:
    """``(name, value)`` for every tensor (or other item) of a batch, in a fixed order."""
    if isinstance(x, dict):
        for key in sorted(x, key=str):
            yield from _leaves(x[key], f"{prefix}.{key}")
    elif isinstance(x, (list, tuple)) and not (x and isinstance(x[0], str)):
        for i, item in enumerate(x):
            yield from _leaves(item, f"{prefix}.{i}")
    else:
        yield prefix, x


def _bytes(value: Any, *, labels: bool = False) -> tuple[bytes, str]:
    """Raw bytes of ``value`` and a short description of its type (dtype and trailing shape)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if labels and not t.is_floating_point() and t.dtype != torch.bool:
            t = t.to(torch.int64)  # int32 and int64 labels are the same labels
        t = t.contiguous()
        kind = f"{t.dtype}{list(t.shape[1:])}"
        if t.dim() == 0:
            t = t.reshape(1)
        return t.view(torch.uint8).numpy().tobytes(), kind
    return repr(value).encode("utf-8"), type(value).__name__


class ExampleFingerprint:
    """Count and sha256 of the examples passed to :meth:`update`, one batch at a time."""

    def __init__(self) -> None:
        self.count = 0
        self._labels = hashlib.sha256()
        self._inputs: dict[str, Any] = {}
        self._kinds: dict[str, str] = {}

    def update(self, x: Any, y: Any) -> None:
        """Add one batch: inputs ``x`` (tensor, dict or list of them) and labels ``y``."""
        self.count += batch_len(x)
        data, kind = _bytes(y, labels=True)
        self._labels.update(data)
        self._kinds.setdefault("labels", kind)
        for name, value in _leaves(x):
            data, kind = _bytes(value)
            self._inputs.setdefault(name, hashlib.sha256()).update(data)
            self._kinds.setdefault(name, kind)

    def hexdigest(self) -> str:
        total = hashlib.sha256(f"{self.count}\n".encode())
        total.update(f"labels {self._kinds.get('labels', '')} "
                     f"{self._labels.hexdigest()}\n".encode())
        for name in sorted(self._inputs):
            total.update(f"{name} {self._kinds[name]} {self._inputs[name].hexdigest()}\n"
                         .encode())
        return total.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """What a summary stores under ``"fingerprint"``: ``{"count": n, "sha256": hex}``."""
        return {"count": self.count, "sha256": self.hexdigest()}


def same_examples(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    """Whether two summaries were evaluated on the same examples.

    Compares fingerprints when both have one; otherwise only the example
    counts (older runs record no fingerprint). ``None`` when neither is known.
    """
    fa, fb = a.get("fingerprint"), b.get("fingerprint")
    if fa and fb:
        return fa.get("sha256") == fb.get("sha256") and fa.get("count") == fb.get("count")
    na, nb = a.get("examples"), b.get("examples")
    if na is None or nb is None:
        return None
    return int(na) == int(nb)
