"""File writing shared by every layer: atomic text/JSON/bytes writes, strict JSON.

A writer creates a temp file in the target's directory and moves it into place
with ``os.replace``, so a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_writer",
    "jsonable",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as fh:
        fh.write(data)
    return path


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict JSON: NaN/inf become null, numpy scalars become Python."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside ``path``; move it into place only if the block succeeds.

    A reader never sees a half-written file, and a crash leaves the old one.
    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kw: dict[str, Any] = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
