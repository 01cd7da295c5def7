"""On-disk cache of loaded splits as .npy files (a second load is a file read).

Layout: `<cache_dir>/<dataset>/<source>/<key>/{images.npy, labels.npy,
meta.json}`, where key names the source split (e.g. "train", "test",
"train[0:10000]"). `meta.json` records where the arrays came from (`origin`:
the tfds data folder or the raw folder) and a format version; an entry whose
origin or version differs is rebuilt. Entries are written to a temporary
folder and renamed into place, so concurrent writers (several hosts) never
leave a half-written entry.

`<cache_dir>/checksums/` holds the stamps of passed MD5SUMS checks of raw
folders (`dpeq.data.checksums`).
"""

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np

FORMAT_VERSION = 1
CACHE_ENV = "DPEQ_CACHE_DIR"


def default_cache_dir() -> pathlib.Path:
  """$DPEQ_CACHE_DIR, else ~/.cache/dpeq."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/dpeq").expanduser()


def cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  """cache_dir (with ~ expanded), else `default_cache_dir()`."""
  root = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
  return root.expanduser()


def entry_dir(cache_dir: str | os.PathLike | None, *, dataset: str, source: str,
              key: str) -> pathlib.Path:
  return cache_root(cache_dir) / dataset / source / key


def read(entry: pathlib.Path, *, origin: str
         ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
  """(images, labels, meta) of a valid entry, else None."""
  try:
    meta = json.loads((entry / "meta.json").read_text())
  except (OSError, ValueError):
    return None
  if meta.get("version") != FORMAT_VERSION or meta.get("origin") != origin:
    return None
  try:
    images = np.load(entry / "images.npy")
    labels = np.load(entry / "labels.npy")
  except (OSError, ValueError):
    return None
  if len(images) != len(labels) or len(images) != meta.get("num_examples"):
    return None
  return images, labels, meta


def read_meta(entry: pathlib.Path, *, origin: str) -> dict[str, Any] | None:
  """meta.json of a valid-looking entry, without reading the arrays."""
  try:
    meta = json.loads((entry / "meta.json").read_text())
  except (OSError, ValueError):
    return None
  ok = meta.get("version") == FORMAT_VERSION and meta.get("origin") == origin
  return meta if ok else None


def write(entry: pathlib.Path, images: np.ndarray, labels: np.ndarray, *,
          origin: str, **extra: Any) -> None:
  """Writes one entry atomically (best effort: a read-only cache is skipped)."""
  meta = dict(extra, version=FORMAT_VERSION, origin=origin,
              num_examples=int(len(images)))
  try:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
  except OSError:
    return
  try:
    np.save(tmp / "images.npy", images)
    np.save(tmp / "labels.npy", labels)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if entry.exists():
      shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
  except OSError:
    pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
