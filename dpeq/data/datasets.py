"""Datasets as in-memory arrays: `load(name, split=...) -> ArrayDataset`.

Images stay uint8 [N, H, W, C] on the host (C = 1 for grayscale); labels are
int32 [N]. Augmentation and normalisation happen on device
(`dpeq.data.augment`). Each official split is read once from its source
(tfds or the original files) and cached as .npy (`dpeq.data.cache`), so later
loads skip tfds and TensorFlow entirely.

Splits: "train_valid" = the whole official training set; "valid" = its last
`valid_size` examples (per-dataset default in `dpeq.data.specs`); "train" =
the rest; "test" = the official test set. The held-out tail is taken in the
source's order, which differs between tfds (its own fixed shuffle) and the
raw files (original order), so "train"/"valid" are the same multiset across
sources only as a union.

Offline default: source="tfds" reads `shared/data/<name>` (the folder beside
the repository, see `dpeq.paths`) with the raw reader instead when tfds has
not prepared the dataset in data_dir, no manual folder holds the files tfds
prepares from, no manual_dir was given, and that shared folder exists. So
CIFAR-10 comes from the original python batches there (checked once against
their MD5SUMS) with no network and no TensorFlow, while Fashion-MNIST, whose
shared files are also tfds's, still goes through tfds; machines without the
shared folder keep tfds (and its download).

Normalisation statistics (`DatasetInfo.mean` / `.std`, per channel, in [0, 1]
units) are fixed public constants of `dpeq.data.specs` (published, e.g. De
et al.'s for CIFAR-10), never computed from the data a run trains on: a
statistic of the private training set would not be covered by the guarantee.
"""

import dataclasses
import os

import numpy as np

from dpeq import paths
from dpeq.data import cache, raw, specs, tfds_source
from dpeq.data.raw import DatasetNotFoundError

SOURCES = ("tfds", "raw")

__all__ = ["ArrayDataset", "DatasetInfo", "DatasetNotFoundError", "SOURCES",
           "load"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and the augmentation need to know about a split.

  Attributes:
    name: dataset name (see `dpeq.data.specs.available()`).
    num_examples: number of examples in this split.
    num_classes: labels are in [0, num_classes).
    image_shape: (H, W, C).
    mean: per-channel mean of the training images in [0, 1] units (C floats).
    std: per-channel standard deviation, like `mean`.
  """

  name: str
  num_examples: int
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """One split in memory.

  Attributes:
    images: uint8 [N, H, W, C].
    labels: int32 [N].
    info: its `DatasetInfo` (info.num_examples == N).
  """

  images: np.ndarray
  labels: np.ndarray
  info: DatasetInfo

  def __post_init__(self):
    if self.images.dtype != np.uint8 or self.images.ndim != 4:
      raise ValueError(f"images must be uint8 [N, H, W, C]; got "
                       f"{self.images.dtype} {self.images.shape}.")
    if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(f"labels must be int32 [{len(self.images)}]; got "
                       f"{self.labels.dtype} {self.labels.shape}.")
    if self.info.num_examples != len(self.images):
      raise ValueError(f"info.num_examples={self.info.num_examples} but there "
                       f"are {len(self.images)} images.")
    if len(self.images) == 0:
      raise ValueError(f"{self.info.name}: the split is empty (0 examples); "
                       "check the data files and config.data.subset.")
    if tuple(self.images.shape[1:]) != tuple(self.info.image_shape):
      raise ValueError(
          f"{self.info.name}: images are {tuple(self.images.shape[1:])} but "
          f"the dataset is {tuple(self.info.image_shape)} (H, W, C): the "
          "files do not hold this dataset.")
    low, high = int(self.labels.min()), int(self.labels.max())
    if low < 0 or high >= self.info.num_classes:
      bad = int(np.flatnonzero((self.labels < 0)
                               | (self.labels >= self.info.num_classes))[0])
      raise ValueError(
          f"{self.info.name}: label {int(self.labels[bad])} of example {bad} "
          f"is outside [0, {self.info.num_classes}); labels range over "
          f"[{low}, {high}]: the files are corrupt or of another dataset.")

  def __len__(self) -> int:
    return len(self.labels)


def _origin(spec, source, data_dir, raw_dir) -> str:
  if source == "tfds":
    return f"tfds:{spec.tfds_name}:{tfds_source.resolved_data_dir(data_dir)}"
  return f"raw:{os.path.realpath(os.path.expanduser(raw_dir))}"


class _Source:
  """Reads (and caches) official-split rows of one dataset from one source."""

  def __init__(self, spec, *, source, data_dir, manual_dir, raw_dir, cache_dir):
    if source == "raw" and raw_dir is None:
      raw_dir = paths.shared_data_dir(spec.name)
      if raw_dir is None:
        raise DatasetNotFoundError(
            f"source='raw' needs raw_dir=<folder with "
            f"{', '.join(spec.raw_files) or 'the original files'}> for "
            f"{spec.name}."
        )
    self.spec, self.source = spec, source
    self.data_dir, self.manual_dir, self.raw_dir = data_dir, manual_dir, raw_dir
    self.cache_dir = cache_dir
    self.origin = _origin(spec, source, data_dir, raw_dir)

  def _entry(self, key):
    return cache.entry_dir(self.cache_dir, dataset=self.spec.name,
                           source=self.source, key=key)

  def _tfds_split(self, split):
    return "train" if split == "train" else self.spec.tfds_test_split

  def split(self, split: str):
    """(images, labels, meta) of the whole official "train" or "test"."""
    entry = self._entry(split)
    hit = cache.read(entry, origin=self.origin)
    if hit is not None:
      return hit
    if self.source == "raw":
      images, labels = raw.read(self.spec, self.raw_dir, split=split,
                                cache_dir=self.cache_dir)
    else:
      images, labels = tfds_source.read(self.spec, split=self._tfds_split(split),
                                        data_dir=self.data_dir,
                                        manual_dir=self.manual_dir)
    cache.write(entry, images, labels, origin=self.origin)
    return images, labels, {"num_examples": len(images)}

  def num_train(self) -> int:
    """Size of the official training set (without reading it if possible)."""
    meta = cache.read_meta(self._entry("train"), origin=self.origin)
    if meta is not None:
      return int(meta["num_examples"])
    if self.source == "tfds":
      return tfds_source.num_examples(self.spec, split="train",
                                      data_dir=self.data_dir,
                                      manual_dir=self.manual_dir)
    return len(self.split("train")[1])

  def rows(self, split: str, start: int, stop: int):
    """(images, labels) of rows [start, stop) of an official split; only
    those rows are read (and cached) from tfds."""
    key = f"{split}[{start}:{stop}]"
    entry = self._entry(key)
    hit = cache.read(entry, origin=self.origin)
    if hit is not None:
      return hit[:2]
    if self.source == "raw":
      images, labels, _ = self.split(split)
      return images[start:stop], labels[start:stop]
    images, labels = tfds_source.read(
        self.spec, split=f"{self._tfds_split(split)}[{start}:{stop}]",
        data_dir=self.data_dir, manual_dir=self.manual_dir)
    cache.write(entry, images, labels, origin=self.origin)
    return images, labels


def _shared_raw_fallback(spec, *, data_dir, manual_dir):
  """`shared/data/<name>` when a source="tfds" load should read it raw.

  That is when tfds could only download: nothing is prepared in data_dir and
  no manual folder (the shared one included) holds spec.tfds_files, as for
  CIFAR-10, whose shared copy is the python batches rather than the binary
  archive tfds prepares from. An explicit manual_dir keeps tfds, whose error
  then names the missing files. None: use tfds.
  """
  if spec.raw_format is None or manual_dir is not None:
    return None
  shared = paths.shared_data_dir(spec.name)
  if shared is None or tfds_source.available_offline(spec, data_dir=data_dir):
    return None
  return shared


def _row_range(split, num_train, valid_size):
  """[start, stop) of `split` within its official split."""
  if split == "valid":
    return num_train - valid_size, num_train
  if split == "train":
    return 0, num_train - valid_size
  return 0, num_train


def _check_count(name, value, allow_none):
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
    raise ValueError(f"{name}={value!r} must be a positive int.")


def load(
    name: str,
    *,
    split: str,
    source: str = "tfds",
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    valid_size: int | None = None,
    max_examples: int | None = None,
    classes: tuple[int, ...] | None = None,
) -> ArrayDataset:
  """Loads one split of a dataset into memory.

  Args:
    name: one of `dpeq.data.specs.available()`: cifar10, cifar100,
      svhn_cropped, mnist, fashion_mnist, imagenette (160 px),
      tiny_imagenet, imagenet2012.
    split: "train", "valid" (held-out tail of the training set),
      "train_valid" (the whole training set) or "test".
    source: "tfds" (default) or "raw" (the original files in raw_dir).
      "tfds" reads `shared/data/<name>` raw when tfds has neither prepared
      data nor manual files for the dataset and that folder exists (the
      offline default for CIFAR-10; see the module docstring).
    data_dir: tfds data folder (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    manual_dir: folder with the original files from which tfds prepares
      offline; None: `shared/data/<name>` beside the repository when present.
    raw_dir: folder with the original files for source="raw"; None:
      `shared/data/<name>` when present. A folder with an MD5SUMS list in
      it (or beside it) is checked against the list before its first use.
    cache_dir: where loaded splits are cached as .npy (None:
      $DPEQ_CACHE_DIR or ~/.cache/dpeq).
    valid_size: examples held out as "valid" (None: the dataset's default,
      e.g. 5,000 for CIFAR, 10,000 for the MNIST family).
    max_examples: keep only the first max_examples of the split; the tfds
      source then reads only those rows. Required for imagenet2012, whose
      in-memory path is meant for subsets (it needs the manual ImageNet tars
      in manual_dir; streaming is not built).
    classes: keep only the examples of these labels, relabelled by their
      position in `classes` (e.g. (5, 6, 7, 8, 9) -> 0..4; num_classes
      becomes len(classes)); applied before max_examples. A class-disjoint
      split of one dataset: a public part to pretrain on, a private part to
      fine-tune on. None: every class, labels unchanged.

  Returns:
    ArrayDataset with images uint8 [N, H, W, C] and labels int32 [N].

  Raises:
    ValueError: for an unknown name, split or source, or bad sizes.
    DatasetNotFoundError (a ValueError): when the data is not available
      offline; its message says how to provide it (manual_dir, raw_dir or
      TFDS_DATA_DIR). Raised before any download is attempted. Also when
      a file listed in the raw folder's MD5SUMS is missing or differs; the
      message names the file.
  """
  spec = specs.get_spec(name)
  if split not in specs.SPLITS:
    raise ValueError(f"split={split!r}: use one of {', '.join(specs.SPLITS)}.")
  if source not in SOURCES:
    raise ValueError(f"source={source!r}: use one of {', '.join(SOURCES)}.")
  if source == "raw" and spec.raw_format is None:
    raise ValueError(f"{name} has no raw source: use source='tfds' with "
                     f"manual_dir holding {', '.join(spec.tfds_files)}.")
  if source == "tfds" and spec.tfds_name is None:
    raise ValueError(f"{name} is not in tfds: use source='raw' with raw_dir="
                     f"<folder with {', '.join(spec.raw_files)}>.")
  _check_count("valid_size", valid_size, allow_none=True)
  _check_count("max_examples", max_examples, allow_none=True)
  classes = _check_classes(name, classes, spec.num_classes)
  if spec.needs_max_examples and max_examples is None:
    raise ValueError(
        f"{name} does not fit in memory: pass max_examples (e.g. 100_000) to "
        "load a subset; full-size training needs a streaming input pipeline, "
        "which dpeq does not provide yet."
    )
  valid_size = spec.valid_size if valid_size is None else int(valid_size)
  if source == "tfds":
    shared = _shared_raw_fallback(spec, data_dir=data_dir, manual_dir=manual_dir)
    if shared is not None:
      source, raw_dir = "raw", shared
  reader = _Source(spec, source=source, data_dir=data_dir, manual_dir=manual_dir,
                   raw_dir=raw_dir, cache_dir=cache_dir)
  base = "test" if split == "test" else "train"

  if spec.needs_max_examples:
    if base == "test":
      count = tfds_source.num_examples(spec, split=spec.tfds_test_split,
                                       data_dir=data_dir, manual_dir=manual_dir)
    else:
      count = reader.num_train()
    start, stop = (0, count) if base == "test" else _row_range(split, count,
                                                               valid_size)
    _check_valid_size(name, split, valid_size, count)
    stop = min(stop, start + max_examples)
    images, labels = reader.rows(base, start, stop)
  else:
    images, labels, _ = reader.split(base)
    if base == "train":
      _check_valid_size(name, split, valid_size, len(images))
      start, stop = _row_range(split, len(images), valid_size)
      images, labels = images[start:stop], labels[start:stop]
  if classes is not None:
    images, labels = _keep_classes(images, labels, classes)
  if max_examples is not None:
    images, labels = images[:max_examples], labels[:max_examples]

  info = DatasetInfo(name=name, num_examples=len(images),
                     num_classes=(spec.num_classes if classes is None
                                  else len(classes)),
                     image_shape=spec.image_shape,
                     mean=tuple(spec.mean), std=tuple(spec.std))
  return ArrayDataset(images=images, labels=labels, info=info)


def _check_classes(name, classes, num_classes):
  """None, or a tuple of distinct labels of the dataset."""
  if classes is None:
    return None
  classes = tuple(classes)
  if (not classes or len(set(classes)) != len(classes)
      or any(isinstance(c, bool) or not isinstance(c, int | np.integer)
             or not 0 <= c < num_classes for c in classes)):
    raise ValueError(
        f"classes={classes!r}: give distinct integer labels of {name}, in "
        f"[0, {num_classes}) (e.g. (0, 1, 2, 3, 4)), or None for all.")
  return tuple(int(c) for c in classes)


def _keep_classes(images, labels, classes):
  """The rows whose label is in `classes`, relabelled 0..len(classes)-1."""
  relabel = np.full(int(max(labels.max(initial=0), max(classes))) + 1, -1,
                    np.int32)
  relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)
  keep = relabel[labels] >= 0
  return images[keep], relabel[labels[keep]]


def _check_valid_size(name, split, valid_size, num_train):
  if split in ("train", "valid") and valid_size >= num_train:
    raise ValueError(
        f"valid_size={valid_size} leaves no training examples of {name} "
        f"({num_train} in all): use valid_size < {num_train}."
    )
