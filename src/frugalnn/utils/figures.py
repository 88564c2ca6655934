"""Figure helpers shared by every layer that draws: PNG writes and images for display.

matplotlib (Agg backend) and torch are imported on use, so importing this
module stays cheap.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError
from frugalnn.utils.io import write_bytes_atomic

__all__ = ["display_images", "pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def display_images(images: Any) -> Any:
    """``(B, C, H, W)`` normalised images -> ``(B, H, W[, 3])`` NumPy array in [0, 1].

    Each image is min-max scaled on its own (the datasets store normalised
    tensors; the exact mean/std do not matter for looking at them).
    """
    import torch

    x = torch.as_tensor(images, dtype=torch.float32).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"expected (B, 1|3, H, W) images, got shape {tuple(x.shape)}")
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-8)
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x
