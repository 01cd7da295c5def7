"""Raw file formats (on small synthetic files), argument checks, failing fast."""

import pickle
import tarfile
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image

from dpeq import data
from dpeq.data import raw, tfds_source


@pytest.fixture(autouse=True)
def _no_shared_defaults(monkeypatch, tmp_path_factory):
  """No shared/ folder and no downloads: every source must be explicit."""
  monkeypatch.setenv("DPEQ_SHARED_DIR", str(tmp_path_factory.mktemp("noshare")))
  monkeypatch.setenv(tfds_source.OFFLINE_ENV, "1")


def _images(seed, n, shape):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), np.uint8)


def _pickle(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(pickle.dumps(obj))


def _cifar_record(images, labels, key):
  chw = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  return {b"data": chw, key: list(labels)}


def test_cifar10_python_batches_from_folder_and_archive(tmp_path):
  images = _images(0, 12, (32, 32, 3))
  labels = np.arange(12) % 10
  folder = tmp_path / "extracted" / "cifar-10-batches-py"
  for i in range(5):
    _pickle(folder / f"data_batch_{i + 1}",
            _cifar_record(images[2 * i:2 * i + 2], labels[2 * i:2 * i + 2],
                          b"labels"))
  _pickle(folder / "test_batch", _cifar_record(images[10:], labels[10:], b"labels"))
  archive_dir = tmp_path / "archive"
  archive_dir.mkdir()
  with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  for raw_dir in (tmp_path / "extracted", folder, archive_dir):
    kwargs = dict(source="raw", raw_dir=raw_dir, cache_dir=tmp_path / "cache")
    train = data.load("cifar10", split="train_valid", **kwargs)
    test = data.load("cifar10", split="test", **kwargs)
    np.testing.assert_array_equal(train.images, images[:10])
    np.testing.assert_array_equal(train.labels, labels[:10])
    np.testing.assert_array_equal(test.images, images[10:])
    assert train.info.mean == data.specs.CIFAR10_MEAN  # De et al.'s constants.


def test_cifar100_fine_labels(tmp_path):
  images = _images(1, 6, (32, 32, 3))
  labels = np.array([0, 99, 5, 42, 7, 63])
  folder = tmp_path / "cifar-100-python"
  _pickle(folder / "train", _cifar_record(images[:4], labels[:4], b"fine_labels"))
  _pickle(folder / "test", _cifar_record(images[4:], labels[4:], b"fine_labels"))
  train = data.load("cifar100", split="train_valid", source="raw",
                    raw_dir=tmp_path, cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(train.images, images[:4])
  np.testing.assert_array_equal(train.labels, labels[:4])
  assert train.info.num_classes == 100
  # Fixed public constants, not statistics of these (training) images.
  assert train.info.mean == data.specs.CIFAR100_MEAN


def test_svhn_mat_maps_label_10_to_0(tmp_path):
  images = _images(2, 5, (32, 32, 3))
  labels = np.array([10, 1, 2, 9, 10])
  for split in ("train", "test"):
    scipy.io.savemat(tmp_path / f"{split}_32x32.mat",
                     {"X": images.transpose(1, 2, 3, 0), "y": labels[:, None]})
  test = data.load("svhn_cropped", split="test", source="raw", raw_dir=tmp_path,
                   cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(test.images, images)
  np.testing.assert_array_equal(test.labels, [0, 1, 2, 9, 0])


def test_idx_uncompressed_and_truncated(tmp_path):
  images = _images(3, 4, (28, 28))
  labels = np.array([3, 1, 4, 1], np.uint8)
  for prefix in ("train", "t10k"):
    (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (28).to_bytes(4, "big")
        + (28).to_bytes(4, "big") + images.tobytes())
    (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + labels.tobytes())
  test = data.load("mnist", split="test", source="raw", raw_dir=tmp_path,
                   cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(test.images[..., 0], images)
  np.testing.assert_array_equal(test.labels, labels)
  with pytest.raises(ValueError, match="truncated"):
    raw.parse_idx(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00")


def _color(label):
  return (label % 256, 255 - label % 256, (7 * label) % 256)


def test_tiny_imagenet_layout(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  wnids = [f"n{i:08d}" for i in range(200)]
  rng = np.random.default_rng(4)
  for label, wnid in enumerate(wnids):
    folder = root / "train" / wnid / "images"
    folder.mkdir(parents=True)
    # PNG content under the .JPEG name: lossless, so pixels can be compared.
    Image.new("RGB", (64, 64), _color(label)).save(folder / f"{wnid}_0.JPEG",
                                                   format="PNG")
  (root / "val" / "images").mkdir(parents=True)
  val_labels = rng.integers(0, 200, 5)
  lines = []
  for i, label in enumerate(val_labels):
    Image.new("L", (64, 64), 17).save(root / "val" / "images" / f"val_{i}.JPEG",
                                      format="PNG")  # Grayscale file -> RGB.
    lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  kwargs = dict(source="raw", raw_dir=tmp_path, cache_dir=tmp_path / "cache")
  train = data.load("tiny_imagenet", split="train_valid", **kwargs)
  assert train.images.shape == (200, 64, 64, 3)
  for image, label in zip(train.images, train.labels, strict=True):
    assert tuple(image[0, 0]) == _color(label) and np.all(image == image[0, 0])
  assert sorted(train.labels) == list(range(200))
  assert not np.array_equal(train.labels, np.arange(200))  # Shuffled once.
  test = data.load("tiny_imagenet", split="test", **kwargs)
  np.testing.assert_array_equal(test.labels, val_labels)
  assert np.all(test.images == 17)


def test_image_folder_resizes_and_centre_crops(tmp_path):
  root = tmp_path / "imagenette2-160"
  gradient = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (160, 1, 3))
  for label in range(10):
    for split in ("train", "val"):
      folder = root / split / f"n{label:08d}"
      folder.mkdir(parents=True)
      Image.new("RGB", (400, 320), _color(label)).save(folder / "big.png")
    Image.fromarray(gradient).save(root / "train" / f"n{label:08d}" / "wide.png")
  kwargs = dict(source="raw", raw_dir=tmp_path, cache_dir=tmp_path / "cache")
  train = data.load("imagenette", split="train_valid", **kwargs)
  assert train.images.shape == (20, 160, 160, 3)
  for image, label in zip(train.images, train.labels, strict=True):
    if np.all(image == image[0, 0]):  # The uniform 320 x 400 image, resized.
      assert tuple(image[0, 0]) == _color(label)
    else:  # The 160 x 200 gradient: no resize, columns 20..179 kept.
      np.testing.assert_array_equal(image, gradient[:, 20:180])
  test = data.load("imagenette", split="test", **kwargs)
  np.testing.assert_array_equal(test.labels, np.arange(10))


def _assert_fails_fast(match, **kwargs):
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load(**kwargs)
  assert time.monotonic() - start < 10.0
  for word in match:
    assert word in str(info.value)


def test_missing_tfds_dataset_fails_fast_and_says_how(tmp_path):
  common = dict(name="cifar10", split="train", data_dir=tmp_path / "tfds",
                cache_dir=tmp_path / "cache")
  # An explicit manual_dir without the files.
  (tmp_path / "manual").mkdir()
  _assert_fails_fast(["manual_dir", "cifar-10-binary.tar.gz", "raw_dir"],
                     manual_dir=tmp_path / "manual", **common)
  # No manual files anywhere and downloads forbidden ($DPEQ_OFFLINE).
  _assert_fails_fast(["manual_dir", "TFDS_DATA_DIR", "raw_dir"], **common)
  # ImageNet cannot be downloaded by tfds at all.
  _assert_fails_fast(["manual_dir", "ILSVRC2012_img_train.tar"],
                     name="imagenet2012", split="test", max_examples=10,
                     data_dir=tmp_path / "tfds", cache_dir=tmp_path / "cache")


def test_missing_raw_dataset_fails_fast_and_says_how(tmp_path):
  _assert_fails_fast(["raw_dir", "data_batch_1"], name="cifar10", split="test",
                     source="raw", raw_dir=tmp_path, cache_dir=tmp_path)
  _assert_fails_fast(["raw_dir", "train-images-idx3-ubyte"], name="mnist",
                     split="test", source="raw", cache_dir=tmp_path)


def test_unreachable_host_is_detected_within_the_timeout():
  start = time.monotonic()
  assert not tfds_source._host_reachable("https://dpeq-test.invalid/x", 2.0)
  assert time.monotonic() - start < 4.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="cifar11", split="train"), "cifar10"),
    (dict(name="cifar10", split="validation"), "valid"),
    (dict(name="cifar10", split="train", source="hub"), "raw"),
    (dict(name="tiny_imagenet", split="train"), "source='raw'"),
    (dict(name="imagenet2012", split="train", source="raw"), "source='tfds'"),
    (dict(name="imagenet2012", split="train"), "max_examples"),
    (dict(name="cifar10", split="train", max_examples=0), "max_examples"),
    (dict(name="cifar10", split="train", valid_size=1.5), "valid_size"),
])
def test_bad_arguments_raise_value_error(kwargs, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    data.load(cache_dir=tmp_path, **kwargs)
