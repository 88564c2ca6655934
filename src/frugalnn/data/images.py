"""Image datasets: digits, MNIST (IDX), image folders and archives, CIFAR-10
(pixel-exact subset, official python batches) and generic ``.npz`` arrays.

Each loader returns an :class:`ImageArrayDataset`. Image folders are decoded
once into a cached uint8 array; everything else is small or already an array.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from frugalnn.data.augment import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
from frugalnn.data.base import (
    DatasetInfo,
    ImageArrayDataset,
    arrays_digest,
    cache_dir,
    channel_stats,
    save_npz_atomic,
    subset_rows,
)
from frugalnn.errors import UserError

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

DIGITS_INFO = DatasetInfo(10, (1, 8, 8), description="scikit-learn 8x8 digits (1797 images)")
MNIST_INFO = DatasetInfo(10, (1, 28, 28), description="MNIST from the gzipped IDX files")
CIFAR10_INFO = DatasetInfo(10, (3, 32, 32), description="CIFAR-10 (32x32 RGB, 10 classes)")

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> str:
    if split not in allowed:
        raise UserError(f"dataset {name!r} has splits {', '.join(allowed)}; got {split!r}")
    return split


# ----------------------------------------------------------------------------- digits


def load_digits_dataset(
    split: str, augment: bool = False, limit: int | None = None, seed: int = 0
) -> ImageArrayDataset:
    """scikit-learn's bundled digits, split 1437/360 by a fixed stratified shuffle.

    Values 0..16 are scaled to [0, 1] and normalised with the training split's
    mean and standard deviation. No data directory is needed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split, ("train", "test"), "digits")
    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    mean, std = float(x_tr.mean() / 16), float(x_tr.std() / 16)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    rows = subset_rows(len(y), limit, spread=True)
    return ImageArrayDataset(
        x[rows],
        y[rows],
        DIGITS_INFO,
        mean=(mean,),
        std=(std,),
        scale=16.0,
        augment=augment,
        pad=1,
        flip=False,
        seed=seed,
    )


# ----------------------------------------------------------------------------- MNIST

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MNIST_LAYOUT = (
    "expected <data-dir>/mnist/ (or <data-dir>) holding train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
)


def read_idx(path: Path) -> np.ndarray:
    """Parse one (gzipped) IDX file: magic ``0 0 type ndim``, big-endian sizes, data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip checks its CRC and length at the end
        raise UserError(f"cannot read {path} ({exc}); {_MNIST_LAYOUT}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic); {_MNIST_LAYOUT}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(dims) != ndim or len(raw) - header != int(np.prod(dims)):
        raise UserError(f"{path} is truncated or corrupt (sizes {dims}); {_MNIST_LAYOUT}")
    if not dims or dims[0] == 0:
        raise UserError(f"{path} holds no items (sizes {dims}); {_MNIST_LAYOUT}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


#: Examples per split of the known datasets; a source holding another count is incomplete.
EXPECTED_COUNTS = {
    "mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
}


def check_count(name: str, split: str, n: int, source: Path) -> None:
    """Refuse a known dataset whose ``split`` does not hold its published number of examples."""
    expected = EXPECTED_COUNTS.get(name, {}).get(split)
    if expected is not None and n != expected:
        raise UserError(f"{source} holds {n} {name} {split} examples, expected {expected}; "
                        "the data is incomplete or corrupt, download it again")


def _locate(data_dir: Path, sub: str, required: tuple[str, ...], layout: str) -> Path:
    """``data_dir/sub`` or ``data_dir`` itself, whichever holds all ``required`` files."""
    for base in (data_dir / sub, data_dir):
        if all((base / f).is_file() for f in required):
            return base
    raise UserError(f"dataset files not found under {data_dir}; {layout}")


def load_mnist(
    data_dir: Path, split: str, augment: bool = False, limit: int | None = None, seed: int = 0
) -> ImageArrayDataset:
    """MNIST from the original gzipped IDX files (60k train / 10k test)."""
    _check_split(split, ("train", "test"), "mnist")
    img_name, lab_name = _MNIST_FILES[split]
    base = _locate(data_dir, "mnist", (img_name, lab_name), _MNIST_LAYOUT)
    images, labels = read_idx(base / img_name), read_idx(base / lab_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max() > 9:
        raise UserError(
            f"MNIST files in {base} do not match (images {images.shape}, labels "
            f"{labels.shape}); {_MNIST_LAYOUT}"
        )
    check_count("mnist", split, len(labels), base)
    rows = subset_rows(len(labels), limit, spread=True)
    return ImageArrayDataset(
        images[rows, None],
        labels[rows],
        MNIST_INFO,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        augment=augment,
        pad=2,
        flip=False,
        seed=seed,
    )


# ----------------------------------------------------------------------------- image folders

_FOLDER_LAYOUT = (
    "expected an image folder root/{train,test}/<class>/*.jpg or a .tar.gz/.zip archive of one"
)


def _source_key(path: Path) -> str:
    """Cache key of a file or folder: resolved path, size and modification time."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        desc = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    else:
        parts = [str(path)]
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in _IMAGE_EXT:
                st = p.stat()
                parts.append(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}")
        desc = "\n".join(parts)
    return hashlib.sha256(desc.encode()).hexdigest()[:20]


def _iter_images(path: Path):
    """Yield ``(relative path parts, bytes)`` for every image in a folder or archive."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in _IMAGE_EXT:
                yield p.relative_to(path).parts, p.read_bytes()
    elif path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in _IMAGE_EXT:
                    f = tf.extractfile(m)
                    if f is not None:
                        yield Path(m.name).parts, f.read()
            _check_tar_end(tf, path)
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            for n in zf.namelist():
                if Path(n).suffix.lower() in _IMAGE_EXT:
                    yield Path(n).parts, zf.read(n)
    else:
        raise UserError(f"{path} is neither a folder nor a .tar.gz/.zip archive; {_FOLDER_LAYOUT}")


def _check_tar_end(tf: tarfile.TarFile, path: Path) -> None:
    """Refuse an archive whose member list ended early: ``tarfile`` stops silently at a
    damaged header, so everything after the last member read must be end-of-archive
    zeros; reading to the end also makes gzip verify its checksum."""
    fh = tf.fileobj
    assert fh is not None
    fh.seek(tf.offset)
    position = tf.offset
    while chunk := fh.read(1 << 20):
        if chunk.count(0) != len(chunk):
            raise UserError(
                f"{path} is corrupt: a damaged tar header at byte {position} of the "
                "uncompressed archive hides the members after it; download it again")
        position += len(chunk)


def _resize_center(img: Any, size: int) -> Any:
    """``img`` with its shorter side scaled to ``size``, then the central ``size`` square."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     resample=2)  # bilinear
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image_folder(path: Path, size: int | None = None) -> dict[str, np.ndarray]:
    """Decode every image under ``path`` into uint8 arrays per split (the slow, one-off step).

    Splits and classes come from the last three path components
    ``<split>/<class>/<file>``; classes are sorted by name (for CIFAR-10 this is
    the official label order). All images must have the same size, unless ``size``
    is given: each is then scaled (shorter side ``size``) and centre-cropped to
    ``size`` x ``size``.
    """
    from PIL import Image, UnidentifiedImageError

    found: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    try:
        for parts, data in _iter_images(path):
            if len(parts) < 3:
                continue
            split, cls, fname = parts[-3], parts[-2], parts[-1]
            img = Image.open(io.BytesIO(data))
            mode = "L" if img.mode in ("L", "1", "I;16") else "RGB"
            img = img.convert(mode)
            if size is not None:
                img = _resize_center(img, size)
            found.setdefault(split, []).append((cls, fname, np.asarray(img)))
    except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile,
            UnidentifiedImageError, ValueError) as e:
        raise UserError(f"cannot decode images in {path} ({e}); {_FOLDER_LAYOUT}") from None
    if not found:
        raise UserError(f"no images found in {path}; {_FOLDER_LAYOUT}")
    classes = sorted({c for items in found.values() for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))
        shapes = {a.shape for _, _, a in items}
        if len(shapes) != 1:
            raise UserError(
                f"images in {path}/{split} differ in size ({sorted(shapes)[:3]}); "
                "resize them to one size first"
            )
        arr = np.stack([a for _, _, a in items])
        arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
        out[f"x_{split}"] = np.ascontiguousarray(arr)
        out[f"y_{split}"] = np.array([index[c] for c, _, _ in items], dtype=np.int64)
    return out


#: The cache entry holding the SHA-256 of every other array (see ``arrays_digest``).
FINGERPRINT_KEY = "fingerprint_sha256"


def cached_image_folder(path: Path, size: int | None = None) -> dict[str, np.ndarray]:
    """:func:`decode_image_folder` through an ``.npz`` cache keyed on the source (and
    ``size``)."""
    tag = "" if size is None else f"-{int(size)}px"
    cache = cache_dir() / f"imagefolder-{_source_key(path)}{tag}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            digest = str(arrays.pop(FINGERPRINT_KEY, ""))
            if digest == arrays_digest(arrays):
                return arrays
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
            pass
        cache.unlink(missing_ok=True)  # a damaged or unverifiable cache is rebuilt, not trusted
    arrays = decode_image_folder(path) if size is None else decode_image_folder(path, size)
    save_npz_atomic(cache, **arrays, **{FINGERPRINT_KEY: np.array(arrays_digest(arrays))})
    return arrays


def _find_cifar_jpeg(data_dir: Path) -> Path:
    candidates = [
        data_dir / "cifar10-jpeg",
        data_dir / "cifar10-jpeg.tar.gz",
        data_dir,
    ]
    for c in candidates:
        if c.is_file() or (c.is_dir() and ((c / "train").is_dir() or (c / "test").is_dir())):
            return c
    raise UserError(
        f"CIFAR-10 JPEG data not found under {data_dir}; expected cifar10-jpeg.tar.gz or "
        "cifar10-jpeg/{train,test}/<class>/*.jpg"
    )


def load_image_folder(
    path: Path,
    split: str,
    augment: bool = False,
    limit: int | None = None,
    seed: int = 0,
    info: DatasetInfo | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    image_size: int | None = None,
) -> ImageArrayDataset:
    """An image folder (or archive) split; mean/std (fractions of 255) default to the
    training split's; ``image_size`` scales and centre-crops every image to a square."""
    if image_size is not None and int(image_size) < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    arrays = cached_image_folder(path, None if image_size is None else int(image_size))
    if f"x_{split}" not in arrays:
        have = sorted(k[2:] for k in arrays if k.startswith("x_"))
        raise UserError(
            f"{path} has no split {split!r} (found {', '.join(have)}); {_FOLDER_LAYOUT}"
        )
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    classes = [str(c) for c in arrays["classes"]]
    if mean is None or std is None:
        mean, std = channel_stats(arrays.get("x_train", x))
    if info is None:
        info = DatasetInfo(len(classes), tuple(x.shape[1:]), description=f"image folder {path}")
    rows = subset_rows(len(y), limit, spread=True)
    return ImageArrayDataset(
        x[rows], y[rows], info, mean=mean, std=std, augment=augment, seed=seed, classes=classes
    )


def load_cifar10_jpeg(
    data_dir: Path, split: str, augment: bool = False, limit: int | None = None, seed: int = 0
) -> ImageArrayDataset:
    """The CIFAR-10 JPEG image folder (or its .tar.gz), with the checkpoints' normalisation."""
    _check_split(split, ("train", "test"), "cifar10")
    ds = load_image_folder(
        _find_cifar_jpeg(data_dir),
        split,
        augment,
        limit,
        seed,
        CIFAR10_INFO,
        CIFAR10_MEAN,
        CIFAR10_STD,
    )
    if limit is None:
        check_count("cifar10", split, len(ds), data_dir)
    if ds.images.shape[1:] != (3, 32, 32) or len(ds.classes or []) != 10:
        raise UserError(
            f"{data_dir} does not look like CIFAR-10 (images "
            f"{tuple(ds.images.shape[1:])}, {len(ds.classes or [])} classes)"
        )
    return ds


# ----------------------------------------------------------------------------- CIFAR-10 arrays

_EXACT_LAYOUT = "expected <data-dir>/cifar10-exact/test_first932.npz with arrays data, labels"


def load_cifar10_exact(
    data_dir: Path, split: str, augment: bool = False, limit: int | None = None, seed: int = 0
) -> ImageArrayDataset:
    """The pixel-exact first 932 official CIFAR-10 test images (test split only)."""
    _check_split(split, ("test",), "cifar10-exact")
    base = _locate(data_dir, "cifar10-exact", ("test_first932.npz",), _EXACT_LAYOUT)
    try:
        with np.load(base / "test_first932.npz", allow_pickle=False) as z:
            data, labels = z["data"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(
            f"cannot read {base / 'test_first932.npz'} ({exc}); {_EXACT_LAYOUT}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise UserError(f"unexpected array shapes {data.shape}/{labels.shape}; {_EXACT_LAYOUT}")
    x = data.reshape(-1, 3, 32, 32)  # channel-major rows: R plane, G plane, B plane
    return _cifar10_arrays(x, labels, augment, limit, seed)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except what numpy arrays need.

    The official CIFAR-10 batches are pickles; a pickle can run arbitrary code,
    so only numpy's array reconstruction is allowed to be looked up.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


_BATCH_LAYOUT = (
    "expected <data-dir>/cifar-10-batches-py/ holding data_batch_1..5 and test_batch "
    "(the official python version)"
)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one official batch file safely; returns ``(N, 3, 32, 32)`` uint8 and labels."""
    try:
        with open(path, "rb") as f:
            d = _ArraysOnlyUnpickler(f, encoding="bytes").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        KeyError,
        AttributeError,
        ValueError,
        TypeError,
    ) as exc:
        raise UserError(f"cannot read CIFAR batch {path} ({exc}); {_BATCH_LAYOUT}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise UserError(f"CIFAR batch {path} has shape {data.shape}; {_BATCH_LAYOUT}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10_batches(
    data_dir: Path, split: str, augment: bool = False, limit: int | None = None, seed: int = 0
) -> ImageArrayDataset:
    """CIFAR-10 in the official python-batch format (50k train / 10k test)."""
    _check_split(split, ("train", "test"), "cifar10-batches")
    names = tuple(f"data_batch_{i}" for i in range(1, 6)) if split == "train" else ("test_batch",)
    base = _locate(data_dir, "cifar-10-batches-py", names, _BATCH_LAYOUT)
    parts = [read_cifar_batch(base / n) for n in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return _cifar10_arrays(x, y, augment, limit, seed)


def _cifar10_arrays(
    x: np.ndarray, y: np.ndarray, augment: bool, limit: int | None, seed: int
) -> ImageArrayDataset:
    """A CIFAR-10 dataset (its normalisation and class names) over uint8 ``(N, 3, 32, 32)``."""
    rows = subset_rows(len(y), limit, spread=True)
    return ImageArrayDataset(
        x[rows],
        y[rows],
        CIFAR10_INFO,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        augment=augment,
        seed=seed,
        classes=CIFAR10_CLASSES,
    )


# ----------------------------------------------------------------------------- npz

_NPZ_LAYOUT = (
    "expected an .npz with arrays x (N, C, H, W) or (N, H, W) and y (N,) integer labels, "
    "either the file itself or <dir>/<split>.npz"
)


def load_npz(
    path: Path, split: str, augment: bool = False, limit: int | None = None, seed: int = 0
) -> ImageArrayDataset:
    """Generic arrays: ``x`` (uint8 images in 0..255 or floats) and ``y`` (labels)."""
    file = path if path.is_file() else path / f"{split}.npz"
    if not file.is_file():
        raise UserError(f"{file} not found; {_NPZ_LAYOUT}")
    try:
        with np.load(file, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {file} ({exc}); {_NPZ_LAYOUT}") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{file} has x {x.shape} and y {y.shape} {y.dtype}; {_NPZ_LAYOUT}")
    if x.dtype == np.uint8:
        scale = 255.0
    else:
        x, scale = x.astype(np.float32), 1.0
    c = x.shape[1]
    info = DatasetInfo(int(y.max()) + 1, tuple(x.shape[1:]), description=f"arrays from {file}")
    rows = subset_rows(len(y), limit, spread=True)
    return ImageArrayDataset(
        x[rows],
        y[rows],
        info,
        mean=(0.0,) * c,
        std=(1.0,) * c,
        scale=scale,
        augment=augment,
        seed=seed,
    )
