"""Reading datasets from their original files (`source="raw"`), numpy only.

Formats:
  idx           MNIST family: `{train,t10k}-{images-idx3,labels-idx1}-ubyte`
                (gzipped or not), in the original order.
  cifar10       python batches `data_batch_1..5`, `test_batch` (in
                `cifar-10-batches-py/` or `cifar-10-python.tar.gz`).
  cifar100      python files `train`, `test` (in `cifar-100-python/` or
                `cifar-100-python.tar.gz`), fine labels.
  svhn_mat      `train_32x32.mat`, `test_32x32.mat` (label 10 means digit 0).
  tiny_imagenet Tiny-ImageNet-200: `train/<wnid>/images/*.JPEG`,
                `val/images/*.JPEG` + `val/val_annotations.txt` (its
                labelled "val" split is dpeq's "test").
  image_folder  `train/<class>/**/<image>` and `val/` (or `test/`) alike.

Folder datasets are listed in sorted (class, file) order, classes numbered by
sorted folder name, and the training set is then permuted with a fixed seed
(`FOLDER_ORDER_SEED`) so that its held-out tail ("valid") covers all classes.

Checksums: when raw_dir holds an MD5SUMS list (as `shared/data/<name>/`
does), or raw_dir is the folder an archive extracts to and the list sits
beside it, every listed file is checked before anything is read
(`dpeq.data.checksums`; a passed check is stamped in the cache dir, so an
unchanged folder is hashed once). A missing or altered file raises
`DatasetNotFoundError` naming it. A raw_dir without MD5SUMS is read as is.
"""

import gzip
import io
import os
import pathlib
import pickle
import tarfile

import numpy as np

from dpeq.data import checksums, imageio
from dpeq.data.specs import DatasetSpec

FOLDER_ORDER_SEED = 0
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp")
# Sub-folders the original archives extract to; raw_dir may point above them.
_SUBFOLDERS = {
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "tiny_imagenet": ("tiny-imagenet-200",),
    "image_folder": ("imagenette2-160",),
}
_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz",
             "cifar100": "cifar-100-python.tar.gz"}


class DatasetNotFoundError(ValueError):
  """The dataset's files are not where dpeq was told (or defaults) to look."""


def read(spec: DatasetSpec, raw_dir: str | os.PathLike, *, split: str,
         cache_dir: str | os.PathLike | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
  """Reads the official "train" or "test" split from the original files.

  Args:
    spec: the dataset (its `raw_format` selects the reader).
    raw_dir: folder with the original files (or the folder they extract to).
    split: "train" (the whole official training set) or "test".
    cache_dir: where the stamp of a passed MD5SUMS check is kept (None:
      $DPEQ_CACHE_DIR or ~/.cache/dpeq); unused without MD5SUMS.

  Returns:
    (images uint8 [N, H, W, C], labels int32 [N]).

  Raises:
    DatasetNotFoundError: when raw_dir lacks the files (the message lists
      the expected names), or when a file listed in its MD5SUMS is missing
      or differs (the message names it).
  """
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r} must be 'train' or 'test'.")
  if spec.raw_format is None:
    raise ValueError(
        f"{spec.name} has no raw source: use source='tfds' (with manual_dir "
        f"holding {', '.join(spec.tfds_files)})."
    )
  root = pathlib.Path(raw_dir).expanduser()
  if not root.is_dir():
    raise _missing(spec, root)
  _verify(spec, root, cache_dir)
  for sub in _SUBFOLDERS.get(spec.raw_format, ()):
    if (root / sub).is_dir():
      root = root / sub
      break
  reader = {
      "idx": _read_idx_split,
      "cifar10": _read_cifar,
      "cifar100": _read_cifar,
      "svhn_mat": _read_svhn,
      "tiny_imagenet": _read_tiny_imagenet,
      "image_folder": _read_image_folder,
  }[spec.raw_format]
  images, labels = reader(spec, root, split)
  _check(spec, images, labels, root)
  return images, labels


def _missing(spec: DatasetSpec, root: pathlib.Path, detail: str = ""):
  return DatasetNotFoundError(
      f"{spec.name}: raw_dir={str(root)!r} does not hold the original files"
      f"{' (' + detail + ')' if detail else ''}. Put "
      f"{', '.join(spec.raw_files)} there and pass it as raw_dir (or "
      f"data.raw_dir), or use source='tfds' with manual_dir / TFDS_DATA_DIR."
  )


def _verify(spec: DatasetSpec, root: pathlib.Path, cache_dir) -> None:
  """Checks root against the MD5SUMS in it (or beside it, when root is the
  folder an archive extracts to); no list, no check."""
  candidates = [root]
  if root.name in _SUBFOLDERS.get(spec.raw_format, ()):
    candidates.append(root.parent)
  sums = next((c / checksums.SUMS_FILE for c in candidates
               if (c / checksums.SUMS_FILE).is_file()), None)
  if sums is None:
    return
  problems = checksums.check(sums, cache_dir=cache_dir)
  if not problems:
    return
  archive = _ARCHIVES.get(spec.raw_format)
  restore = (f"Re-extract {archive} (from the dataset's home page) into "
             f"{str(sums.parent)!r}" if archive else
             f"Copy the original {spec.name} files into "
             f"{str(sums.parent)!r} again")
  raise DatasetNotFoundError(
      f"{spec.name}: the original files fail their check against "
      f"{str(sums)!r}: {'; '.join(problems)}. {restore} (`md5sum -c "
      f"{checksums.SUMS_FILE}` there tells when they are intact), or point "
      f"raw_dir (data.raw_dir) at a folder with intact files."
  )


def _check(spec, images, labels, root):
  if images.shape[1:] != spec.image_shape or len(images) != len(labels):
    raise ValueError(
        f"{spec.name}: files in {str(root)!r} gave images {images.shape} and "
        f"labels {labels.shape}; expected [N, {spec.image_shape}] and [N]. "
        "Check that raw_dir holds the original release of this dataset."
    )
  if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise ValueError(
        f"{spec.name}: labels in {str(root)!r} span [{labels.min()}, "
        f"{labels.max()}], outside [0, {spec.num_classes}); wrong dataset?"
    )


# --- IDX (MNIST family)


def parse_idx(data: bytes) -> np.ndarray:
  """Parses an IDX file of unsigned bytes (magic 0x0000 08 <ndim>)."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError("Not an IDX file of unsigned bytes (bad magic number).")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise ValueError(f"IDX header says {shape} but the file holds {body.size} "
                     "values: truncated download?")
  return body.reshape(shape)


def _read_idx_file(root: pathlib.Path, stem: str, spec) -> np.ndarray:
  for path, opener in ((root / stem, open), (root / (stem + ".gz"), gzip.open)):
    if path.is_file():
      with opener(path, "rb") as f:
        return parse_idx(f.read())
  raise _missing(spec, root, f"no {stem}[.gz]")


def _read_idx_split(spec, root, split):
  prefix = "train" if split == "train" else "t10k"
  images = _read_idx_file(root, f"{prefix}-images-idx3-ubyte", spec)
  labels = _read_idx_file(root, f"{prefix}-labels-idx1-ubyte", spec)
  return images[..., None], labels.astype(np.int32)


# --- CIFAR python batches


def _cifar_members(spec, root, names):
  """Yields the unpickled dicts of `names`, from a folder or the archive."""
  if all((root / n).is_file() for n in names):
    for n in names:
      with open(root / n, "rb") as f:
        yield pickle.load(f, encoding="bytes")
    return
  archive = root / _ARCHIVES[spec.raw_format]
  if not archive.is_file():
    raise _missing(spec, root, f"no {', '.join(names)}")
  folder = _SUBFOLDERS[spec.raw_format][0]
  with tarfile.open(archive, "r:gz") as tar:
    for n in names:
      with tar.extractfile(f"{folder}/{n}") as f:
        yield pickle.load(io.BytesIO(f.read()), encoding="bytes")


def _read_cifar(spec, root, split):
  if spec.raw_format == "cifar10":
    names = ([f"data_batch_{i}" for i in range(1, 6)] if split == "train"
             else ["test_batch"])
    label_key = b"labels"
  else:
    names = [split]
    label_key = b"fine_labels"
  images, labels = [], []
  for batch in _cifar_members(spec, root, names):
    images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
    labels.append(np.asarray(batch[label_key], np.int32))
  images = np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))
  return images, np.concatenate(labels)


# --- SVHN .mat


def _read_svhn(spec, root, split):
  path = root / f"{split}_32x32.mat"
  if not path.is_file():
    raise _missing(spec, root, f"no {path.name}")
  import scipy.io  # pylint: disable=g-import-not-at-top

  mat = scipy.io.loadmat(path)
  images = np.ascontiguousarray(np.asarray(mat["X"], np.uint8).transpose(3, 0, 1, 2))
  labels = np.asarray(mat["y"], np.int64).reshape(-1) % 10
  return images, labels.astype(np.int32)


# --- Image folders


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.rglob("*")
                if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def _class_names(spec, root):
  train = root / "train"
  if not train.is_dir():
    raise _missing(spec, root, "no train/ folder")
  names = sorted(p.name for p in train.iterdir() if p.is_dir())
  if len(names) != spec.num_classes:
    raise ValueError(
        f"{spec.name}: {str(train)!r} has {len(names)} class folders; expected "
        f"{spec.num_classes}. Point raw_dir at the original release."
    )
  return names


def _train_files(spec, root):
  """(paths, labels) of train/<class>/**, in a fixed pseudo-random order."""
  paths, labels = [], []
  for label, name in enumerate(_class_names(spec, root)):
    files = _image_files(root / "train" / name)
    paths += files
    labels += [label] * len(files)
  order = np.random.default_rng(FOLDER_ORDER_SEED).permutation(len(paths))
  return [paths[i] for i in order], np.asarray(labels, np.int32)[order]


def _decode(spec, paths, labels, root):
  if not paths:
    raise _missing(spec, root, "no image files")
  return imageio.decode_many(paths, image_shape=spec.image_shape), labels


def _read_image_folder(spec, root, split):
  if split == "train":
    paths, labels = _train_files(spec, root)
    return _decode(spec, paths, labels, root)
  names = _class_names(spec, root)
  test = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
  if test is None:
    raise _missing(spec, root, "no val/ or test/ folder")
  paths, labels = [], []
  for label, name in enumerate(names):
    files = _image_files(test / name)
    paths += files
    labels += [label] * len(files)
  return _decode(spec, paths, np.asarray(labels, np.int32), root)


def _read_tiny_imagenet(spec, root, split):
  if split == "train":
    paths, labels = _train_files(spec, root)
    return _decode(spec, paths, labels, root)
  index = {name: i for i, name in enumerate(_class_names(spec, root))}
  annotations = root / "val" / "val_annotations.txt"
  if not annotations.is_file():
    raise _missing(spec, root, "no val/val_annotations.txt")
  rows = sorted(line.split("\t")[:2]
                for line in annotations.read_text().splitlines() if line.strip())
  paths = [root / "val" / "images" / file for file, _ in rows]
  labels = np.asarray([index[wnid] for _, wnid in rows], np.int32)
  return _decode(spec, paths, labels, root)
