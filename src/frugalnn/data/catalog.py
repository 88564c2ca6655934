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
    "textfile": DatasetInfo(None, (), "classification", "text",
                            "your CSV/TSV/JSONL of text,label (docs/your_model.md)"),
    "langid": DatasetInfo(None, (), "classification", "text", "langid TSV: (sentence, label)"),
    "pos-turkish": DatasetInfo(None, (), "tagging", "text", "Turkish web treebank (CoNLL-U)"),
    "imagenet-photos": DatasetInfo(1000, (3, 224, 224), description="foolbox's 20 labelled "
                                   "ImageNet photos, EfficientNet-Lite input (smoke set)"),
    "wikitext2-subwords": DatasetInfo(None, (256,), "lm", "long", "WikiText-2 in a Hugging "
                                      "Face tokenizer's subwords (default SmolLM2's)"),
}


def dataset_names() -> list[str]:
    return sorted(_INFO)


def split_options(name: str) -> tuple[str, dict[str, Any]]:
    """``"textfile:text_column=review,max_length=64"`` -> ``("textfile", {...})``.

    A dataset name may carry loader options after ``:`` as comma-separated
    ``key=value`` pairs (integers read as such), so that every command that
    records or re-reads ``--data`` gets the same data.
    """
    base, sep, rest = str(name).partition(":")
    options: dict[str, Any] = {}
    if not sep:
        return base, options
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"dataset {name!r}: options after ':' are key=value pairs separated "
                            f"by commas, got {item!r}")
        value = value.strip()
        options[key.strip()] = int(value) if value.isdigit() else value
    return base, options


def dataset_info(name: str) -> DatasetInfo:
    """Static description; ``num_classes``/``input_shape`` of ``npz``, ``imagefolder``,
    ``textfile`` and ``wikitext2`` depend on the files (read them from
    ``get_dataset(...).info``)."""
    name = split_options(name)[0]
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
    for ``npz``/``imagefolder``/``cifar10``/``textfile``, the file or folder itself).
    Options: ``seed`` (augmentation) for images; ``context`` and ``stride`` for text;
    ``image_size``, ``normalize``, ``mean``, ``std`` for ``imagefolder``
    (:data:`IMAGEFOLDER_OPTIONS`); ``text_column``, ``label_column``, ``tokenizer``,
    ``max_length`` for ``textfile``
    (:mod:`frugalnn.data.textfile`). Options may also follow the name:
    ``"textfile:tokenizer=DIR,max_length=64"`` (:func:`split_options`).
    """
    dataset_info(name)  # unknown names fail first, with the list of known ones
    name, given = split_options(name)
    options = {**given, **options}
    seed = int(options.pop("seed", 0))
    if name == "textfile":
        from frugalnn.data import textfile

        if augment:
            raise UserError("augmentation applies to image datasets only")
        _check_options(name, options, set(textfile.OPTIONS))
        return textfile.load_textfile(resolve_data_dir(data_dir), split, limit, **options)
    if name in ("tinyshakespeare", "wikitext2"):
        if augment:
            raise UserError("augmentation applies to image datasets only")
        loader = text.load_tinyshakespeare if name == "tinyshakespeare" else text.load_wikitext2
        allowed = {"context", "stride"}
        _check_options(name, options, allowed)
        return loader(resolve_data_dir(data_dir), split, limit=limit, **options)
    if name in ("imagenet-photos", "wikitext2-subwords"):  # published models' data
        from frugalnn.data import pretrained_eval as pe

        if augment:
            raise UserError(f"{name} takes no augmentation")
        if name == "imagenet-photos":
            _check_options(name, options, set())
            return pe.load_imagenet_photos(split, limit)
        _check_options(name, options, set(pe.WIKITEXT2_SUBWORDS_OPTIONS))
        return pe.load_wikitext2_subwords(resolve_data_dir(data_dir), split, limit, **options)
    if name in ("langid", "pos-turkish"):  # raw sentences (frugalnn.methods.text featurises)
        from frugalnn.data import conllu, langid

        _check_options(name, options, {"source"} if name == "pos-turkish" else set())
        load = langid.load_langid if name == "langid" else conllu.load_pos_turkish
        return load(resolve_data_dir(data_dir), split, limit, **options)
    if name == "imagefolder":
        _check_options(name, options, set(IMAGEFOLDER_OPTIONS))
        return images.load_image_folder(resolve_data_dir(data_dir), split, augment, limit, seed,
                                        **_image_options(options))
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
    }
    return loaders[name](path, split, augment, limit, seed)


#: Options of ``imagefolder``: ``image_size`` (scale + centre crop to a square),
#: ``normalize`` (a preset of :data:`NORMALIZE`), or ``mean`` / ``std`` (one value, or one per
#: channel separated by ``/``, as fractions of 255).
IMAGEFOLDER_OPTIONS = ("image_size", "normalize", "mean", "std")
#: ``normalize`` presets: mean and std as fractions of 255 (``train``: the training split's).
NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "train": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
    "half": ((0.5,), (0.5,)),
}


def _floats(name: str, value: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in str(value).split("/"))
    except ValueError:
        raise UserError(f"imagefolder {name} takes numbers separated by '/', e.g. "
                        f"{name}=0.485/0.456/0.406; got {value!r}") from None


def _image_options(options: dict[str, Any]) -> dict[str, Any]:
    """``load_image_folder`` keywords from the ``imagefolder`` options."""
    out: dict[str, Any] = {}
    if "image_size" in options:
        out["image_size"] = int(options["image_size"])
    preset = options.get("normalize")
    if preset is not None:
        if preset not in NORMALIZE:
            raise UserError(f"imagefolder normalize must be one of {', '.join(NORMALIZE)}; "
                            f"got {preset!r}")
        if "mean" in options or "std" in options:
            raise UserError("imagefolder takes normalize= or mean=/std=, not both")
        if NORMALIZE[preset] is not None:
            out["mean"], out["std"] = NORMALIZE[preset]
    elif ("mean" in options) != ("std" in options):
        raise UserError("imagefolder mean= and std= go together")
    elif "mean" in options:
        out["mean"], out["std"] = _floats("mean", options["mean"]), _floats("std", options["std"])
    return out


def _check_options(name: str, options: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(options) - allowed)
    if extra:
        raise UserError(
            f"dataset {name!r} takes no option(s) {', '.join(extra)}; "
            f"allowed: {', '.join(sorted(allowed | {'seed'})) or 'none'}"
        )
