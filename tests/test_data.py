"""Data loaders on synthetic files (no real data needed)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from frugalnn.data import (
    dataset_info,
    dataset_names,
    get_dataset,
    normalize,
    random_crop_flip,
    resolve_data_dir,
)
from frugalnn.data import images as images_mod
from frugalnn.data.base import save_npz_atomic
from frugalnn.errors import UserError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUGALNN_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------ digits, names, dirs


def test_digits_split_is_fixed_and_disjoint():
    tr, te = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(tr), len(te)) == (1437, 360)
    assert tr[0][0].shape == (1, 8, 8) and tr[0][0].dtype == torch.float32
    assert sorted(set(te.labels.tolist())) == list(range(10))
    x, _ = tr.tensors()
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 0.01
    again = get_dataset("digits", "train")
    assert torch.equal(again.images, tr.images)
    assert len(get_dataset("digits", "test", limit=7)) == 7


def test_names_and_info():
    assert {"digits", "mnist", "cifar10", "cifar10-exact", "wikitext2"} <= set(dataset_names())
    assert dataset_info("mnist").input_shape == (1, 28, 28)
    assert dataset_info("tinyshakespeare").task == "lm"
    with pytest.raises(UserError, match="unknown dataset"):
        dataset_info("imagenet")


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("FRUGALNN_DATA", raising=False)
    with pytest.raises(UserError, match="FRUGALNN_DATA"):
        resolve_data_dir()
    with pytest.raises(UserError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.setenv("FRUGALNN_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path


@pytest.mark.parametrize(
    "kw", [dict(split="valid"), dict(split="train", limit=0), dict(split="train", colour=1)]
)
def test_bad_arguments(kw):
    with pytest.raises(UserError):
        get_dataset("digits", **kw)


# ------------------------------------------------------------------ augmentation


def test_normalize_and_identity_augmentation():
    x = torch.rand(2, 3, 4, 4)
    y = normalize(x, (0.5, 0.4, 0.3), (0.2, 0.2, 0.1))
    torch.testing.assert_close(y[:, 2], (x[:, 2] - 0.3) / 0.1)
    assert torch.equal(random_crop_flip(x, 0, flip=False), x)


def test_crop_flip_takes_windows_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(3)
    out = random_crop_flip(x, 2, generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        wins = [padded[b, :, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in wins)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_crop_flip(x, 2, generator=g1), random_crop_flip(x, 2, generator=g2))


def test_single_image_path_matches_batch_version():
    from frugalnn.data.augment import random_crop_flip_one

    x = torch.randn(3, 8, 8)
    for seed in range(20):
        one = random_crop_flip_one(x, 4, torch.Generator().manual_seed(seed))
        batch = random_crop_flip(x[None], 4, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(one, batch[0])


def test_dataset_augmentation_is_seeded_per_example_and_epoch():
    ds = get_dataset("digits", "train", augment=True, seed=1)
    a = torch.stack([ds[i][0] for i in range(20)])
    b = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(a, b)
    ds.set_epoch(1)
    c = torch.stack([ds[i][0] for i in range(20)])
    assert not torch.equal(a, c)
    plain = get_dataset("digits", "train")
    assert not torch.equal(a, torch.stack([plain[i][0] for i in range(20)]))


# ------------------------------------------------------------------ MNIST (IDX)


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write_mnist(root, n=10_000):
    """MNIST-format files with the test split's published count (10,000), mostly zeros."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = np.zeros((n, 28, 28), dtype=np.uint8)
    imgs[:5] = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = np.arange(n, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labs)))
    return imgs, labs


def test_mnist_idx_round_trip(tmp_path):
    imgs, labs = _write_mnist(tmp_path / "mnist")
    ds = get_dataset("mnist", "test", tmp_path)
    assert len(ds) == 10_000 and ds[0][0].shape == (1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.labels.tolist() == labs.tolist()
    x = ds[1][0]
    torch.testing.assert_close(x, (torch.from_numpy(imgs[1]).float()[None] / 255 - 0.1307) / 0.3081)


def test_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz"):
        get_dataset("mnist", "test", tmp_path)
    _write_mnist(tmp_path)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-10]))
    with pytest.raises(UserError, match="truncated or corrupt"):
        get_dataset("mnist", "test", tmp_path)
    f.write_bytes(b"not gzip at all")
    with pytest.raises(UserError):
        get_dataset("mnist", "test", tmp_path)
    f.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + bytes(20)))
    with pytest.raises(UserError, match="magic"):
        get_dataset("mnist", "test", tmp_path)


# ------------------------------------------------------------------ image folders


def _write_folder(root, sizes=(3, 2)):
    from PIL import Image

    rng = np.random.default_rng(0)
    truth = {}
    for split, n in zip(("train", "test"), sizes):
        for cls in ("zebra", "ant"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                Image.fromarray(a).save(root / split / cls / f"{i:02d}.png")
                truth[(split, cls, i)] = a
    return truth


def test_image_folder_decodes_once_into_cache(tmp_path, monkeypatch):
    truth = _write_folder(tmp_path / "imgs")
    ds = get_dataset("imagefolder", "train", tmp_path / "imgs")
    assert ds.classes == ["ant", "zebra"] and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    zebra0 = torch.from_numpy(truth[("train", "zebra", 0)]).permute(2, 0, 1)
    assert torch.equal(ds.images[3], zebra0)
    cached = list((tmp_path / "cache").glob("imagefolder-*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def boom(path):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images_mod, "decode_image_folder", boom)
    again = get_dataset("imagefolder", "test", tmp_path / "imgs")
    assert len(again) == 4 and again.images.shape[1:] == (3, 6, 5)
    with pytest.raises(UserError, match="no split"):
        get_dataset("imagefolder", "val", tmp_path / "imgs")


def test_image_folder_from_tar_gz(tmp_path):
    _write_folder(tmp_path / "imgs")
    folder = get_dataset("imagefolder", "train", tmp_path / "imgs")
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "imgs", arcname="imgs")
    packed = get_dataset("imagefolder", "train", archive)
    assert torch.equal(packed.images, folder.images) and torch.equal(packed.labels, folder.labels)


def test_corrupt_archive_and_empty_folder(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError):
        get_dataset("imagefolder", "train", bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        get_dataset("imagefolder", "train", tmp_path / "empty")
    with pytest.raises(UserError, match="CIFAR-10 JPEG data not found"):
        get_dataset("cifar10", "train", tmp_path / "empty")


# ------------------------------------------------------------------ arrays and CIFAR batches


def test_npz_arrays(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 2, 3, 3), dtype=np.uint8)
    save_npz_atomic(tmp_path / "train.npz", x=x, y=np.array([0, 1, 2, 1]))
    ds = get_dataset("npz", "train", tmp_path)
    assert ds.info.num_classes == 3 and ds.info.input_shape == (2, 3, 3)
    torch.testing.assert_close(ds[2][0], torch.from_numpy(x[2]).float() / 255)
    save_npz_atomic(tmp_path / "bad.npz", x=x, y=np.array([0, 1]))
    with pytest.raises(UserError):
        get_dataset("npz", "test", tmp_path / "bad.npz")
    with pytest.raises(UserError, match="not found"):
        get_dataset("npz", "test", tmp_path)


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
    path.write_bytes(pickle.dumps(d, protocol=2))
    return d


def test_cifar_batches_safe_unpickling(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_batch(root / f"data_batch_{i}", 2, i)
    t = _write_batch(root / "test_batch", 3, 9)
    ds = get_dataset("cifar10-batches", "test", tmp_path)
    assert len(ds) == 3 and ds.images.shape == (3, 3, 32, 32)
    assert torch.equal(ds.images[1].flatten(), torch.from_numpy(t[b"data"][1]))
    assert len(get_dataset("cifar10-batches", "train", tmp_path)) == 10

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(UserError, match="not allowed"):
        get_dataset("cifar10-batches", "test", tmp_path)


# ------------------------------------------------------------------ text


def _write_text(root):
    (root / "text" / "tinyshakespeare").mkdir(parents=True)
    text = "".join("To be, or not to be: that is the question.\n" for _ in range(30))
    (root / "text" / "tinyshakespeare" / "input.txt").write_text(text)
    (root / "text" / "wikitext-2").mkdir(parents=True)
    (root / "text" / "wikitext-2" / "valid.txt").write_text(" = A = \n the cat sat \n" * 40)
    (root / "text" / "wikitext-2" / "test.txt").write_text(" the dog ran far \n" * 40)
    return text


def test_char_windows(tmp_path):
    text = _write_text(tmp_path)
    tr = get_dataset("tinyshakespeare", "train", tmp_path, context=16)
    va = get_dataset("tinyshakespeare", "val", tmp_path, context=16)
    assert tr.vocab_size == len(set(text)) == tr.info.num_classes
    x, y = tr[3]
    assert x.shape == y.shape == (16,) and x.dtype == torch.long
    assert torch.equal(x[1:], y[:-1])
    assert tr.decode(x) == text[3 * 16 : 4 * 16]
    cut = int(0.9 * len(text))
    assert len(tr) == (cut - 17) // 16 + 1 and len(va) == (len(text) - cut - 17) // 16 + 1
    assert len(get_dataset("tinyshakespeare", "train", tmp_path, context=16, stride=1)) == cut - 16
    with pytest.raises(UserError):
        get_dataset("tinyshakespeare", "train", tmp_path, context=10**7)


def test_word_windows(tmp_path):
    _write_text(tmp_path)
    va = get_dataset("wikitext2", "valid", tmp_path, context=8)
    te = get_dataset("wikitext2", "test", tmp_path, context=8)
    assert va.vocab == te.vocab and "<eos>" in va.vocab and "dog" in va.vocab
    assert va.decode(va[0][0]) == "= A = <eos> the cat sat <eos>"
    with pytest.raises(UserError, match="no train split"):
        get_dataset("wikitext2", "train", tmp_path)
    with pytest.raises(UserError, match="valid.txt"):
        get_dataset("wikitext2", "test", tmp_path / "text" / "tinyshakespeare")


def test_atomic_npz_write(tmp_path):
    save_npz_atomic(tmp_path / "a.npz", x=np.arange(3))
    assert os.listdir(tmp_path) == ["a.npz"]
    with np.load(tmp_path / "a.npz") as z:
        assert z["x"].tolist() == [0, 1, 2]


def test_splits_carve_validation_from_train_and_may_skip_the_test_split():
    from frugalnn.data.splits import load_splits

    s = load_splits("digits", val_fraction=0.1, seed=0, test_split=None)
    assert s.test is None and len(s.train) + len(s.val) == 1437
    assert not set(s.train.indices) & set(s.val.indices)
    again = load_splits("digits", val_fraction=0.1, seed=0, train_limit=50, val_limit=20)
    assert again.val_spec == {**s.val_spec, "examples": 20}
    assert {again.val.dataset.indices[i] for i in again.val.indices} <= set(s.val.indices)
    assert load_splits("digits", val_fraction=0, seed=0).val is None
