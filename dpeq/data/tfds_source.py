"""Reading datasets through tensorflow_datasets (`source="tfds"`).

tensorflow_datasets (and TensorFlow) are imported only here and only when
this source is used; their logging and progress bars are turned down, and
TensorFlow is kept off any GPU.

Where the prepared data comes from, in order:
  1. `data_dir` (or $TFDS_DATA_DIR, or ~/tensorflow_datasets), if tfds has
     already prepared the dataset there;
  2. the original files in a manual folder: `manual_dir`, else
     `shared/data/<name>` beside the repository, else
     `<data_dir>/downloads/manual`; tfds checks their checksums and prepares
     offline (preparing needs tensorflow-cpu);
  3. a download by tfds, only when the download host answers within
     `PROBE_TIMEOUT_S` seconds and $DPEQ_OFFLINE is unset.
Otherwise `DatasetNotFoundError` says how to provide the data, before tfds
starts any download (no waiting on network retries).

`dpeq.data.load` asks `available_offline` before it comes here: when 1. and
2. fail but `shared/data/<name>` holds the original files in their raw
format (CIFAR-10's python batches rather than the binary archive tfds
prepares from), it reads those with `dpeq.data.raw` instead of downloading.
"""

import contextlib
import logging
import os
import pathlib
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np

from dpeq import paths
from dpeq.data import imageio
from dpeq.data.raw import DatasetNotFoundError
from dpeq.data.specs import DatasetSpec

PROBE_TIMEOUT_S = 3.0
OFFLINE_ENV = "DPEQ_OFFLINE"


def resolved_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """The folder tfds uses: data_dir, else $TFDS_DATA_DIR, else its default."""
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return pathlib.Path(data_dir).expanduser().resolve()


@contextlib.contextmanager
def _quiet():
  """Silences absl/TF chatter around tfds calls; restores levels after."""
  loggers = [logging.getLogger(n) for n in ("absl", "tensorflow")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels, strict=True):
      lg.setLevel(level)


def _import_tfds():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "source='tfds' needs tensorflow-datasets and tensorflow-cpu "
        "(pip install -e '.[data]'), or use source='raw' with raw_dir."
    ) from e
  with contextlib.suppress(RuntimeError):  # Already initialised: fine.
    tf.config.set_visible_devices([], "GPU")  # Leave accelerators to JAX.
  tfds.disable_progress_bar()
  return tfds


def _has_files(folder: pathlib.Path | None, names) -> bool:
  return folder is not None and all((folder / n).is_file() for n in names)


def _host_reachable(url: str, timeout: float) -> bool:
  """Whether a TCP connection to url's host (or its proxy) opens in time.

  Runs in a daemon thread so that a hanging DNS lookup cannot block.
  """
  parsed = urllib.parse.urlsplit(url)
  proxy = urllib.request.getproxies().get(parsed.scheme)
  if proxy:
    parsed = urllib.parse.urlsplit(proxy if "//" in proxy else "//" + proxy)
  host = parsed.hostname
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  result = []

  def connect():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(result and result[0])


def _unavailable(spec: DatasetSpec, data_dir, manual_dir, reason: str):
  files = ", ".join(spec.tfds_files)
  raw = ""
  if spec.raw_format is not None:
    raw = (f" Or use source='raw' with raw_dir=<folder with "
           f"{', '.join(spec.raw_files)}>.")
  return DatasetNotFoundError(
      f"{spec.name} is not prepared in data_dir={str(data_dir)!r} and {reason}. "
      f"Put the original files ({files}) in a folder and pass it as manual_dir "
      f"(data.manual_dir), or point data_dir / TFDS_DATA_DIR at a folder where "
      f"tfds has prepared {spec.tfds_name}.{raw}"
  )


def _manual_folder(spec: DatasetSpec, manual_dir, root: pathlib.Path):
  """The first candidate manual folder that holds all of spec.tfds_files."""
  candidates = ([pathlib.Path(manual_dir).expanduser()] if manual_dir else
                [paths.shared_data_dir(spec.name), root / "downloads" / "manual"])
  return next((c for c in candidates if _has_files(c, spec.tfds_files)), None)


def _maybe_prepared(spec: DatasetSpec, root: pathlib.Path) -> bool:
  """Whether some version of spec looks prepared in root (file names only)."""
  return any((root / spec.tfds_name).glob("*/dataset_info.json"))


def available_offline(spec: DatasetSpec, *, data_dir=None,
                      manual_dir=None) -> bool:
  """Whether tfds can provide spec without the network.

  True when data_dir (see `resolved_data_dir`) looks prepared for it, or a
  manual folder (manual_dir, else shared/data/<name>, else
  <data_dir>/downloads/manual) holds all of spec.tfds_files. Decided from
  file names alone, without importing TensorFlow.
  """
  root = resolved_data_dir(data_dir)
  return (_maybe_prepared(spec, root)
          or _manual_folder(spec, manual_dir, root) is not None)


def _raise_if_unobtainable(spec: DatasetSpec, root: pathlib.Path, manual_dir,
                           manual, *, prepared: bool) -> None:
  """Raises DatasetNotFoundError when neither prepared data, manual files nor
  a permitted download can provide the dataset (no network access here)."""
  if prepared or manual is not None:
    return
  if manual_dir is not None:
    missing = [n for n in spec.tfds_files
               if not (pathlib.Path(manual_dir) / n).is_file()]
    raise _unavailable(spec, root, manual_dir,
                       f"manual_dir={str(manual_dir)!r} lacks {', '.join(missing)}")
  if spec.tfds_manual_only:
    raise _unavailable(spec, root, None, "tfds cannot download it")
  if os.environ.get(OFFLINE_ENV):
    raise _unavailable(spec, root, None, f"${OFFLINE_ENV} forbids downloads")


def _builder(spec: DatasetSpec, data_dir, manual_dir):
  """A prepared tfds builder for spec (preparing offline when possible)."""
  root = resolved_data_dir(data_dir)
  manual = _manual_folder(spec, manual_dir, root)
  # Decide before importing TensorFlow when the data clearly is not there.
  _raise_if_unobtainable(spec, root, manual_dir, manual,
                         prepared=_maybe_prepared(spec, root))
  tfds = _import_tfds()
  with _quiet():
    builder = tfds.builder(spec.tfds_name, data_dir=str(root))
    if builder.is_prepared():
      return builder
  _raise_if_unobtainable(spec, root, manual_dir, manual, prepared=False)
  if manual is None:
    urls = [u for u, info in builder.url_infos.items()
            if info.filename in spec.tfds_files] or list(builder.url_infos)
    if not _host_reachable(urls[0], PROBE_TIMEOUT_S):
      host = urllib.parse.urlsplit(urls[0]).hostname
      raise _unavailable(spec, root, None,
                         f"its download host {host} is unreachable (offline?)")
  config = tfds.download.DownloadConfig(manual_dir=str(manual) if manual else None)
  with _quiet():
    builder.download_and_prepare(download_config=config)
  return builder


def num_examples(spec: DatasetSpec, *, split: str, data_dir=None,
                 manual_dir=None) -> int:
  """Size of a tfds split ("train" or the spec's test split name)."""
  builder = _builder(spec, data_dir, manual_dir)
  return builder.info.splits[split].num_examples


def read(spec: DatasetSpec, *, split: str, data_dir=None,
         manual_dir=None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a tfds split (slices like "train[:1000]" allowed) into memory.

  Args:
    spec: the dataset; `spec.tfds_name` names the builder.
    split: a tfds split string (e.g. "train", "validation[:5000]").
    data_dir: tfds data folder (None: $TFDS_DATA_DIR or tfds's default).
    manual_dir: folder with the original files for offline preparation.

  Returns:
    (images uint8 [N, *spec.image_shape], labels int32 [N]) in tfds's
    deterministic order (shuffle_files=False). Variable-size images are
    resized (shorter side) and centre-cropped to the spec's shape.
  """
  if spec.tfds_name is None:
    raise ValueError(
        f"{spec.name} is not in tfds: use source='raw' with raw_dir=<folder "
        f"with {', '.join(spec.raw_files)}>."
    )
  builder = _builder(spec, data_dir, manual_dir)
  tfds = _import_tfds()
  with _quiet():
    if not spec.variable_size:
      arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      images = np.asarray(arrays["image"], np.uint8)
      labels = np.asarray(arrays["label"], np.int32)
    else:
      images, labels = [], []
      size = spec.image_shape[0]
      for example in tfds.as_numpy(builder.as_dataset(split=split)):
        images.append(imageio.resize_center_crop(example["image"], size=size))
        labels.append(example["label"])
      images = np.stack(images) if images else np.zeros((0, *spec.image_shape),
                                                        np.uint8)
      labels = np.asarray(labels, np.int32)
  return images, labels
