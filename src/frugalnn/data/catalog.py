"""Dataset names -> loaders, and the static description of each dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from frugalnn.data import images, text
from frugalnn.data.base import DatasetInfo, resolve_data_dir
from frugalnn.errors import UserError

_INFO: dict[str, DatasetInfo] = {
    "digits": images.DIGITS_INFO,
    "mnist": images.MNIST_INFO,
    "cifar10": images.CIFAR10_INFO,
    "cifar10-exact": images.CIFAR10_INFO,
    "cifar10-batches": images.CIFAR10_INFO,
    "npz": DatasetInfo(None, (), description="arrays x, y from an .npz (shape from the file)"),
    "imagefolder": DatasetInfo(None, (), description="root/{train,test}/<class>/*.jpg"),
    "tinyshakespeare": DatasetInfo(65, (128,), "lm", "long", "tiny-shakespeare characters"),
    "wikitext2": DatasetInfo(None, (64,), "lm", "long", "WikiText-2 words (valid/test)"),
    "langid": DatasetInfo(None, (), "classification", "text", "langid TSV: (sentence, label)"),
    "pos-turkish": DatasetInfo(None, (), "tagging", "text", "Turkish web treebank (CoNLL-U)"),
}


def dataset_names() -> list[str]:
    return sorted(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Static description; ``num_classes``/``input_shape`` of ``npz``, ``imagefolder`` and
    ``wikitext2`` depend on the files (read them from ``get_dataset(...).info``)."""
    try:
        return _INFO[name]
    except KeyError:
        raise UserError(
            f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}"
        ) from None


def get_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    augment: bool = False,
    limit: int | None = None,
    **options: Any,
) -> Dataset:
    """Load split ``split`` of dataset ``name``; each item is ``(x, y)``.

    ``data_dir`` (else ``$FRUGALNN_DATA``) is the directory holding the data (or,
    for ``npz``/``imagefolder``/``cifar10``, the file or folder itself). Options:
    ``seed`` (augmentation) for images; ``context`` and ``stride`` for text.
    """
    dataset_info(name)  # unknown names fail first, with the list of known ones
    seed = int(options.pop("seed", 0))
    if name in ("tinyshakespeare", "wikitext2"):
        if augment:
            raise UserError("augmentation applies to image datasets only")
        loader = text.load_tinyshakespeare if name == "tinyshakespeare" else text.load_wikitext2
        allowed = {"context", "stride"}
        _check_options(name, options, allowed)
        return loader(resolve_data_dir(data_dir), split, limit=limit, **options)
    if name in ("langid", "pos-turkish"):  # raw sentences (frugalnn.methods.text featurises)
        from frugalnn.data import conllu, langid

        _check_options(name, options, {"source"} if name == "pos-turkish" else set())
        load = langid.load_langid if name == "langid" else conllu.load_pos_turkish
        return load(resolve_data_dir(data_dir), split, limit, **options)
    _check_options(name, options, set())
    if name == "digits":
        return images.load_digits_dataset(split, augment, limit, seed)
    path: Path = resolve_data_dir(data_dir)
    loaders = {
        "mnist": images.load_mnist,
        "cifar10": images.load_cifar10_jpeg,
        "cifar10-exact": images.load_cifar10_exact,
        "cifar10-batches": images.load_cifar10_batches,
        "npz": images.load_npz,
        "imagefolder": images.load_image_folder,
    }
    return loaders[name](path, split, augment, limit, seed)


def _check_options(name: str, options: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(options) - allowed)
    if extra:
        raise UserError(
            f"dataset {name!r} takes no option(s) {', '.join(extra)}; "
            f"allowed: {', '.join(sorted(allowed | {'seed'})) or 'none'}"
        )
