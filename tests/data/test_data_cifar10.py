"""CIFAR-10 from the original python batches: the offline default of load().

The first tests use the real files in ../shared/data/cifar10 (skipped when
absent), loaded once per session the way a default config does
(source="tfds", an empty tfds data_dir, TensorFlow and the network out of
reach). The others build small fake folders in the shared layout
(`cifar10/MD5SUMS` beside `cifar10/cifar-10-batches-py/`) to test the
fallback rules and the MD5SUMS check.
"""

import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from dpeq import data
from dpeq.data import checksums, raw, specs, tfds_source

SIZES = {"train": 45_000, "valid": 5_000, "train_valid": 50_000, "test": 10_000}
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _fail(what):
  def fail(*args, **kwargs):
    raise AssertionError(f"{what} was used")
  return fail


def _forbid_tfds(mp):
  """No TensorFlow, no network, no downloads."""
  mp.setattr(tfds_source, "_import_tfds", _fail("tensorflow_datasets"))
  mp.setattr(tfds_source, "_host_reachable", _fail("the network"))
  mp.setenv(tfds_source.OFFLINE_ENV, "1")


# --- The real files in ../shared/data/cifar10


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cifar10_cache")


@pytest.fixture(scope="session")
def splits(cifar10_dir, cache_dir, tmp_path_factory):
  """Every split through a plain load(): source="tfds" (the default), an
  empty tfds data_dir, tfds unimportable; the shared batches are the only
  way in."""
  data_dir = tmp_path_factory.mktemp("empty_tfds_data")
  with pytest.MonkeyPatch.context() as mp:
    _forbid_tfds(mp)
    return {split: data.load("cifar10", split=split, data_dir=data_dir,
                             cache_dir=cache_dir)
            for split in data.SPLITS}


def _digests(dataset):
  """One digest per image (its bytes), to compare images across splits."""
  rows = dataset.images.reshape(len(dataset), -1)
  return [hashlib.blake2b(row.tobytes(), digest_size=16).digest()
          for row in rows]


def test_default_tfds_load_reads_the_shared_batches(splits, cifar10_dir,
                                                    cache_dir):
  for split in ("train", "test"):
    meta = json.loads((cache_dir / "cifar10" / "raw" / split / "meta.json")
                      .read_text())
    assert meta["origin"] == f"raw:{os.path.realpath(cifar10_dir)}"
  assert not (cache_dir / "cifar10" / "tfds").exists()
  # One passed MD5SUMS check, stamped with every listed file.
  (stamp,) = (cache_dir / "checksums").glob("*.json")
  files = json.loads(stamp.read_text())["files"]
  assert sorted(files) == sorted(f"cifar-10-batches-py/{n}"
                                 for n in (*BATCHES, "batches.meta"))
  # source="raw" without raw_dir is the same folder (same cache entries).
  again = data.load("cifar10", split="test", source="raw", cache_dir=cache_dir)
  np.testing.assert_array_equal(again.images, splits["test"].images)
  np.testing.assert_array_equal(again.labels, splits["test"].labels)


def test_split_sizes_and_class_counts(splits):
  for split, dataset in splits.items():
    assert dataset.images.shape == (SIZES[split], 32, 32, 3), split
    assert dataset.images.dtype == np.uint8 and dataset.labels.dtype == np.int32
    assert dataset.info.num_examples == SIZES[split]
    assert dataset.info.num_classes == 10
    assert dataset.info.mean == specs.CIFAR10_MEAN
    assert dataset.info.std == specs.CIFAR10_STD
  counts = {split: np.bincount(d.labels, minlength=10)
            for split, d in splits.items()}
  np.testing.assert_array_equal(counts["train_valid"], [5_000] * 10)
  np.testing.assert_array_equal(counts["test"], [1_000] * 10)
  np.testing.assert_array_equal(counts["train"] + counts["valid"],
                                counts["train_valid"])
  assert counts["valid"].min() > 0  # The tail of the original order.


def test_train_valid_partition_and_test_is_disjoint(splits):
  full, train, valid = splits["train_valid"], splits["train"], splits["valid"]
  # De et al.: train is the first 45,000, valid the last 5,000.
  np.testing.assert_array_equal(train.images, full.images[:45_000])
  np.testing.assert_array_equal(valid.images, full.images[45_000:])
  np.testing.assert_array_equal(valid.labels, full.labels[45_000:])
  # Equal arrays have equal digests: slice those of train_valid.
  digests = _digests(full)
  full_set = set(digests)
  train_set, valid_set = set(digests[:45_000]), set(digests[45_000:])
  test_set = set(_digests(splits["test"]))
  assert len(full_set) == 50_000 and len(test_set) == 10_000
  assert not train_set & valid_set
  assert train_set | valid_set == full_set
  assert not test_set & full_set


def test_matches_an_independent_parse(splits, cifar10_dir):
  folder = cifar10_dir / "cifar-10-batches-py"
  # test is test_batch; valid is the second half of data_batch_5 (images
  # 45,000..49,999 of the training batches in their order).
  for name, dataset, start in (("test_batch", splits["test"], 0),
                               ("data_batch_5", splits["valid"], 5_000)):
    with open(folder / name, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(dataset.images, images[start:])
    np.testing.assert_array_equal(dataset.labels,
                                  np.asarray(batch[b"labels"])[start:])


# --- Small fake folders in the shared layout


@pytest.fixture
def fake_shared(tmp_path, monkeypatch):
  """shared/data/cifar10 with 10 training and 2 test images, MD5SUMS beside
  the batches; DPEQ_SHARED_DIR points at it, tfds is out of reach."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 32, 32, 3), np.uint8)
  labels = np.arange(12) % 10
  root = tmp_path / "shared" / "data" / "cifar10"
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  for i, name in enumerate(BATCHES):
    rows = slice(2 * i, 2 * i + 2)
    chw = images[rows].transpose(0, 3, 1, 2).reshape(2, -1)
    (folder / name).write_bytes(pickle.dumps(
        {b"data": chw, b"labels": list(labels[rows])}))
  (folder / "batches.meta").write_bytes(pickle.dumps(
      {b"label_names": [b"c%d" % i for i in range(10)]}))
  lines = [f"{checksums.file_md5(folder / n)}  cifar-10-batches-py/{n}"
           for n in (*BATCHES, "batches.meta")]
  (root / "MD5SUMS").write_text("\n".join(lines) + "\n")
  monkeypatch.setenv("DPEQ_SHARED_DIR", str(tmp_path / "shared"))
  _forbid_tfds(monkeypatch)
  return root, images, labels


def _corrupt(path):
  """Flips one byte, keeping the size (the mtime changes)."""
  blob = bytearray(path.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  path.write_bytes(bytes(blob))


def test_tfds_falls_back_to_the_shared_folder_only_when_it_must(fake_shared,
                                                                tmp_path):
  root, images, labels = fake_shared
  kwargs = dict(data_dir=tmp_path / "tfds", valid_size=2)
  valid = data.load("cifar10", split="valid", cache_dir=tmp_path / "c1",
                    **kwargs)
  np.testing.assert_array_equal(valid.images, images[8:10])
  np.testing.assert_array_equal(valid.labels, labels[8:10])
  test = data.load("cifar10", split="test", cache_dir=tmp_path / "c1", **kwargs)
  np.testing.assert_array_equal(test.images, images[10:])
  # tfds looks prepared in data_dir: tfds it is.
  (tmp_path / "tfds" / "cifar10" / "3.0.2").mkdir(parents=True)
  (tmp_path / "tfds" / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
  with pytest.raises(AssertionError, match="tensorflow_datasets was used"):
    data.load("cifar10", split="test", cache_dir=tmp_path / "c2", **kwargs)
  # An explicit manual_dir keeps tfds, which says what manual_dir lacks.
  (tmp_path / "manual").mkdir()
  with pytest.raises(data.DatasetNotFoundError, match="cifar-10-binary"):
    data.load("cifar10", split="test", data_dir=tmp_path / "empty",
              manual_dir=tmp_path / "manual", cache_dir=tmp_path / "c3")


@pytest.mark.parametrize("how", ["tfds", "raw_dir", "batches_dir"])
def test_a_corrupt_file_is_named(fake_shared, tmp_path, how):
  root, _, _ = fake_shared
  _corrupt(root / "cifar-10-batches-py" / "data_batch_3")
  kwargs = {"tfds": dict(data_dir=tmp_path / "tfds"),
            "raw_dir": dict(source="raw", raw_dir=root),
            "batches_dir": dict(source="raw",
                                raw_dir=root / "cifar-10-batches-py")}[how]
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load("cifar10", split="train", cache_dir=tmp_path / "cache", **kwargs)
  message = str(info.value)
  assert "cifar-10-batches-py/data_batch_3 has md5" in message
  assert "data_batch_1" not in message  # Only the bad file is named.
  assert "cifar-10-python.tar.gz" in message and "raw_dir" in message
  # Nothing was cached: the next load checks again.
  assert not list((tmp_path / "cache").glob("checksums/*.json"))
  assert not (tmp_path / "cache" / "cifar10").exists()


def test_a_missing_file_is_named(fake_shared, tmp_path, monkeypatch):
  root, _, _ = fake_shared
  (root / "cifar-10-batches-py" / "test_batch").unlink()
  monkeypatch.setattr(checksums, "file_md5", _fail("hashing"))
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load("cifar10", split="train", source="raw", cache_dir=tmp_path)
  assert "cifar-10-batches-py/test_batch is missing" in str(info.value)
  assert "data_batch_1" not in str(info.value)  # Only the missing file.
  assert "Re-extract cifar-10-python.tar.gz" in str(info.value)


def test_a_bad_md5sums_line_is_named(fake_shared, tmp_path):
  root, _, _ = fake_shared
  with open(root / "MD5SUMS", "a") as f:
    f.write("not a checksum line\n")
  with pytest.raises(data.DatasetNotFoundError, match="MD5SUMS line 8"):
    data.load("cifar10", split="test", source="raw", cache_dir=tmp_path)


def test_a_passed_check_is_hashed_once(fake_shared, tmp_path, monkeypatch):
  root, _, _ = fake_shared
  spec = specs.get_spec("cifar10")
  hashed = []
  real_md5 = checksums.file_md5

  def counting_md5(path):
    hashed.append(os.path.basename(path))
    return real_md5(path)

  monkeypatch.setattr(checksums, "file_md5", counting_md5)
  raw.read(spec, root, split="train", cache_dir=tmp_path)
  assert len(hashed) == 7  # The whole list, once.
  monkeypatch.setattr(checksums, "file_md5", _fail("hashing"))
  raw.read(spec, root, split="test", cache_dir=tmp_path)
  raw.read(spec, root / "cifar-10-batches-py", split="train",
           cache_dir=tmp_path)
  # A touched file (new mtime) is checked again ...
  batch = root / "cifar-10-batches-py" / "data_batch_2"
  st = batch.stat()
  os.utime(batch, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  with pytest.raises(AssertionError, match="hashing was used"):
    raw.read(spec, root, split="test", cache_dir=tmp_path)
  monkeypatch.setattr(checksums, "file_md5", counting_md5)
  raw.read(spec, root, split="test", cache_dir=tmp_path)
  assert len(hashed) == 14
  # ... and so is a resized one, which now fails (no stamp is left for it).
  with open(batch, "ab") as f:
    f.write(b"\0")
  for _ in range(2):
    with pytest.raises(data.DatasetNotFoundError, match="data_batch_2 has md5"):
      raw.read(spec, root, split="test", cache_dir=tmp_path)
  assert len(hashed) == 28
  # Another cache dir holds no stamp.
  batch.write_bytes(batch.read_bytes()[:-1])
  raw.read(spec, root, split="test", cache_dir=tmp_path / "other")
  assert len(hashed) == 35


def test_a_folder_without_md5sums_is_read_as_is(fake_shared, tmp_path,
                                                monkeypatch):
  root, images, _ = fake_shared
  (root / "MD5SUMS").unlink()
  monkeypatch.setattr(checksums, "file_md5", _fail("hashing"))
  train = data.load("cifar10", split="train_valid", source="raw",
                    raw_dir=root, cache_dir=tmp_path)
  np.testing.assert_array_equal(train.images, images[:10])
  assert not (tmp_path / "checksums").exists()
