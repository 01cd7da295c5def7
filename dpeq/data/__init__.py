"""dpeq.data: datasets as in-memory arrays, batches, on-device augmentation.

  load(name, split=...)          -> ArrayDataset (uint8 images, int32 labels,
                                    DatasetInfo with mean/std)
  augment.AugmentConfig, augment.make_views, augment.views_fn
                                 K normalised views per example, in JAX
  batching.gather / to_devices   sampler selection -> sharded device batch

tensorflow_datasets is imported only when a split is first read from tfds.
"""

from dpeq.data import augment, batching
from dpeq.data.augment import AugmentConfig, make_views, views_fn
from dpeq.data.datasets import (
    SOURCES,
    ArrayDataset,
    DatasetInfo,
    DatasetNotFoundError,
    load,
)
from dpeq.data.specs import SPLITS, available

__all__ = [
    "SOURCES",
    "SPLITS",
    "ArrayDataset",
    "AugmentConfig",
    "DatasetInfo",
    "DatasetNotFoundError",
    "augment",
    "available",
    "batching",
    "load",
    "make_views",
    "views_fn",
]
