"""Fashion-MNIST through tfds (offline, from the shared files) and raw IDX."""

import numpy as np
import pytest

from dpeq import data
from dpeq.data import raw, specs, tfds_source


@pytest.fixture(scope="session")
def raw_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("raw_cache")


@pytest.fixture(scope="session")
def raw_splits(fashion_mnist_dir, raw_cache_dir):
  return {split: data.load("fashion_mnist", split=split, source="raw",
                           raw_dir=fashion_mnist_dir, cache_dir=raw_cache_dir)
          for split in data.SPLITS}


@pytest.fixture(scope="session")
def tfds_splits(fashion_mnist_dir, tmp_path_factory):
  """tfds prepares from the shared originals (its default manual_dir) into an
  empty data_dir: no network involved."""
  data_dir = tmp_path_factory.mktemp("tfds_data")
  cache_dir = tmp_path_factory.mktemp("tfds_cache")
  assert not tfds_source.resolved_data_dir(data_dir).joinpath(
      "fashion_mnist").exists()
  return {split: data.load("fashion_mnist", split=split, data_dir=data_dir,
                           cache_dir=cache_dir)
          for split in ("train_valid", "test")}


def _sorted_rows(dataset):
  """The multiset of (label, image) as sorted byte rows."""
  rows = np.concatenate([dataset.labels[:, None].astype(np.uint8),
                         dataset.images.reshape(len(dataset), -1)], axis=1)
  return np.sort(rows.view(np.dtype((np.void, rows.shape[1]))).ravel())


def test_tfds_and_raw_give_the_same_multiset(tfds_splits, raw_splits):
  for split in ("train_valid", "test"):
    a, b = tfds_splits[split], raw_splits[split]
    assert a.info == b.info
    assert not np.array_equal(a.labels, b.labels)  # tfds reorders...
    np.testing.assert_array_equal(_sorted_rows(a), _sorted_rows(b))  # ...only.


def test_shapes_dtypes_and_class_counts(raw_splits):
  sizes = {"train": 50_000, "valid": 10_000, "train_valid": 60_000,
           "test": 10_000}
  for split, dataset in raw_splits.items():
    assert dataset.images.shape == (sizes[split], 28, 28, 1)
    assert dataset.images.dtype == np.uint8
    assert dataset.labels.dtype == np.int32
    assert dataset.info.num_examples == sizes[split] == len(dataset)
    assert dataset.info.num_classes == 10
    assert dataset.info.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(
      np.bincount(raw_splits["train_valid"].labels), [6_000] * 10)
  np.testing.assert_array_equal(
      np.bincount(raw_splits["test"].labels), [1_000] * 10)


def test_train_and_valid_partition_train_valid(raw_splits):
  full = raw_splits["train_valid"]
  train, valid = raw_splits["train"], raw_splits["valid"]
  assert len(train) + len(valid) == len(full)
  for name in ("images", "labels"):
    np.testing.assert_array_equal(getattr(train, name),
                                  getattr(full, name)[:len(train)])
    np.testing.assert_array_equal(getattr(valid, name),
                                  getattr(full, name)[len(train):])


def test_mean_and_std_are_fixed_public_constants_not_training_statistics(
    raw_splits, fashion_mnist_dir, tmp_path):
  # Every split, and any subset of it, gets the published constants: a
  # statistic of the private training set would not be covered by epsilon.
  for dataset in raw_splits.values():
    assert dataset.info.mean == specs.FASHION_MNIST_MEAN
    assert dataset.info.std == specs.FASHION_MNIST_STD
  small = data.load("fashion_mnist", split="train", source="raw",
                    raw_dir=fashion_mnist_dir, max_examples=7,
                    cache_dir=tmp_path)
  assert (small.info.mean, small.info.std) == (specs.FASHION_MNIST_MEAN,
                                               specs.FASHION_MNIST_STD)
  # The constants are close to (but are not) the exact training moments.
  counts = np.bincount(raw_splits["train_valid"].images.ravel(), minlength=256)
  values = np.arange(256) / 255
  mean = np.sum(counts * values) / counts.sum()
  assert abs(mean - specs.FASHION_MNIST_MEAN[0]) < 1e-3
  assert mean != specs.FASHION_MNIST_MEAN[0]


def test_every_dataset_has_fixed_constants():
  for name in specs.available():
    spec = specs.get_spec(name)
    assert len(spec.mean) == len(spec.std) == spec.image_shape[-1], name
    assert all(0 < m < 1 for m in spec.mean) and all(0 < s < 1 for s in spec.std)


def test_raw_idx_matches_an_independent_parse(fashion_mnist_dir, raw_splits):
  import gzip

  with gzip.open(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read()[8:], np.uint8)
  with gzip.open(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28, 1)
  np.testing.assert_array_equal(raw_splits["test"].labels, labels)
  np.testing.assert_array_equal(raw_splits["test"].images, images)


def test_second_load_comes_from_the_cache(fashion_mnist_dir, raw_cache_dir,
                                          raw_splits, tmp_path, monkeypatch):
  for split in ("train", "test"):
    entry = raw_cache_dir / "fashion_mnist" / "raw" / split
    assert (entry / "images.npy").is_file() and (entry / "labels.npy").is_file()

  def fail(*args, **kwargs):
    raise AssertionError("read the source although the cache holds the split")

  monkeypatch.setattr(raw, "read", fail)
  for split, first in raw_splits.items():
    second = data.load("fashion_mnist", split=split, source="raw",
                       raw_dir=fashion_mnist_dir, cache_dir=raw_cache_dir)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.info == second.info
  # Another raw_dir is another origin: the cached entry is not used.
  with pytest.raises(AssertionError, match="cache holds"):
    data.load("fashion_mnist", split="test", source="raw", raw_dir=tmp_path,
              cache_dir=raw_cache_dir)


def test_valid_size_is_configurable(fashion_mnist_dir, raw_cache_dir,
                                    raw_splits):
  kwargs = dict(source="raw", raw_dir=fashion_mnist_dir, cache_dir=raw_cache_dir)
  valid = data.load("fashion_mnist", split="valid", valid_size=100, **kwargs)
  train = data.load("fashion_mnist", split="train", valid_size=100, **kwargs)
  full = raw_splits["train_valid"]
  assert (len(train), len(valid)) == (59_900, 100)
  np.testing.assert_array_equal(valid.images, full.images[-100:])
  with pytest.raises(ValueError, match="valid_size"):
    data.load("fashion_mnist", split="train", valid_size=60_000, **kwargs)
  head = data.load("fashion_mnist", split="test", max_examples=7, **kwargs)
  np.testing.assert_array_equal(head.labels, raw_splits["test"].labels[:7])
