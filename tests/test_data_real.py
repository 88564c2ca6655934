"""Loaders on the team's real data directory (skipped when it is absent)."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from frugalnn.data import get_dataset
from frugalnn.errors import UserError

pytestmark = pytest.mark.data


def test_mnist_shapes_and_labels(data_dir):
    tr, te = get_dataset("mnist", "train", data_dir), get_dataset("mnist", "test", data_dir)
    assert (len(tr), len(te)) == (60000, 10000)
    assert tr.images.shape == (60000, 1, 28, 28) and tr.images.dtype == torch.uint8
    # Well-known facts about the official files: first labels and class counts.
    assert tr.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert te.labels[:3].tolist() == [7, 2, 1]
    assert torch.bincount(te.labels).tolist()[:2] == [980, 1135]


def test_exact_subset_matches_official_labels(data_dir):
    ds = get_dataset("cifar10-exact", "test", data_dir)
    official = np.load(data_dir / "cifar10-exact" / "test_labels_all10000.npy")
    assert len(ds) == 932 and ds.images.shape == (932, 3, 32, 32)
    assert ds.labels.tolist() == official[:932].tolist()
    with pytest.raises(UserError, match="splits"):
        get_dataset("cifar10-exact", "train", data_dir)


def test_corrupt_copy_gives_user_error(data_dir, tmp_path):
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    f = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:500]))
    with pytest.raises(UserError, match="t10k-labels"):
        get_dataset("mnist", "test", tmp_path)


def test_text_windows(data_dir):
    tr = get_dataset("tinyshakespeare", "train", data_dir, context=64)
    va = get_dataset("tinyshakespeare", "val", data_dir, context=64)
    assert tr.vocab_size == 65
    n = 1_115_394
    assert len(tr) == (int(0.9 * n) - 65) // 64 + 1
    assert len(va) == (n - int(0.9 * n) - 65) // 64 + 1
    assert tr.decode(tr[0][0]).startswith("First Citizen:")
    wt = get_dataset("wikitext2", "test", data_dir, context=32, limit=10)
    x, y = wt[0]
    assert len(wt) == 10 and torch.equal(x[1:], y[:-1])
    assert "<unk>" in wt.vocab


@pytest.mark.slow
def test_cifar10_jpeg_counts(data_dir, tmp_path, monkeypatch):
    # Decodes all 60,000 JPEGs once (about 15-40 s on one core) into a private cache.
    monkeypatch.setenv("FRUGALNN_CACHE", str(tmp_path))
    tr = get_dataset("cifar10", "train", data_dir, augment=True)
    te = get_dataset("cifar10", "test", data_dir)
    assert (len(tr), len(te)) == (50000, 10000)
    assert torch.bincount(tr.labels).tolist() == [5000] * 10
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    assert te.classes[0] == "airplane" and te.classes[9] == "truck"
    assert tr[0][0].shape == (3, 32, 32)
    assert len(list(tmp_path.glob("imagefolder-*.npz"))) == 1
