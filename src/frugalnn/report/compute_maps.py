"""Per-image compute maps: where on the image a per-token method spends compute.

A per-token method (adaptive computation modules: learners per patch; a
mixture-of-experts layer: experts per token) decides per token. For a vision
transformer the tokens are image patches on a square grid (plus, optionally,
a class token), so a ``(B, T)`` tensor of per-token counts becomes a
``(B, g, g)`` map that can be laid over the image. :func:`save_compute_maps`
writes a PNG grid with, per image, the image itself and the image with the
map overlaid (the map's colour scale is shared by all images so they compare).

It only needs the counts and the images, so any method can use it::

    counts = per_token_counts          # (B, T) tensor, e.g. learners per token
    save_compute_maps(counts, images, run_dir / "extras" / "compute_map.png",
                      label="learners per patch", vmax=num_learners)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from frugalnn.errors import UserError  # noqa: E402
from frugalnn.utils.figures import display_images, save_figure  # noqa: E402

__all__ = ["save_compute_maps", "token_grid"]


def token_grid(counts: torch.Tensor, *, cls_token: bool | None = None) -> torch.Tensor:
    """``(B, T)`` per-token counts -> ``(B, g, g)`` patch maps.

    ``cls_token=None`` drops a leading class token when ``T - 1`` is a square
    and ``T`` is not; ``True``/``False`` force it.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 2:
        raise UserError(
            f"compute maps need (batch, tokens) counts, got shape {tuple(counts.shape)}")
    t = counts.shape[1]
    if cls_token is None:
        cls_token = not _is_square(t) and _is_square(t - 1)
    if cls_token:
        counts, t = counts[:, 1:], t - 1
    if not _is_square(t):
        raise UserError(
            f"{t} patch tokens do not form a square grid; compute maps need a square ViT patch "
            "grid (pass cls_token=True/False if the class token was guessed wrongly)"
        )
    g = math.isqrt(t)
    return counts.reshape(-1, g, g)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def save_compute_maps(
    counts: torch.Tensor,
    images: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    label: str = "compute per patch",
    titles: Sequence[str] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cls_token: bool | None = None,
    columns: int = 4,
    alpha: float = 0.55,
) -> Path:
    """Write a PNG grid: each image next to its per-patch compute map overlaid on it.

    ``counts`` is ``(B, T)`` (per token) or already ``(B, g, g)``; ``images``
    is ``(B, C, H, W)``. The colour scale runs from ``vmin`` to ``vmax``
    (default: the range of all counts) and is shown once.
    """
    maps = counts if torch.as_tensor(counts).dim() == 3 else token_grid(counts, cls_token=cls_token)
    maps = torch.as_tensor(maps, dtype=torch.float64)
    imgs = display_images(images)
    b = maps.shape[0]
    if imgs.shape[0] != b:
        raise UserError(f"{b} compute maps but {imgs.shape[0]} images; pass one map per image")
    if b == 0:
        raise UserError("no images to draw compute maps for")
    lo = float(maps.min()) if vmin is None else vmin
    hi = float(maps.max()) if vmax is None else vmax
    if hi <= lo:
        hi = lo + 1.0
    h, w = imgs.shape[1], imgs.shape[2]
    cols = max(1, min(columns, b))
    rows = math.ceil(b / cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.2 * 2 * cols, 2.3 * rows), squeeze=False)
    mappable = None
    for i in range(rows * cols):
        ax_img, ax_map = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.axis("off")
        ax_map.axis("off")
        if i >= b:
            continue
        cmap = "gray" if imgs.ndim == 3 else None
        ax_img.imshow(imgs[i], cmap=cmap, interpolation="nearest")
        ax_map.imshow(imgs[i], cmap=cmap, interpolation="nearest")
        mappable = ax_map.imshow(maps[i].numpy(), cmap="magma", vmin=lo, vmax=hi, alpha=alpha,
                                 extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        if titles is not None and i < len(titles):
            ax_img.set_title(str(titles[i]), fontsize=8)
        ax_map.set_title(f"mean {float(maps[i].mean()):.2f}", fontsize=8)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
