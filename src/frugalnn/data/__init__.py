"""Data loaders: ``get_dataset(name, split, data_dir=None, augment=False, limit=None)``.

See ``docs/data.md`` for the names, the expected file layouts and the caches.
"""

from frugalnn.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    normalize,
    random_crop_flip,
)
from frugalnn.data.base import DatasetInfo, ImageArrayDataset, cache_dir, resolve_data_dir
from frugalnn.data.catalog import dataset_info, dataset_names, get_dataset
from frugalnn.data.text import TokenWindows

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "DatasetInfo",
    "ImageArrayDataset",
    "TokenWindows",
    "cache_dir",
    "dataset_info",
    "dataset_names",
    "get_dataset",
    "normalize",
    "random_crop_flip",
    "resolve_data_dir",
]
