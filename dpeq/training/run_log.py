"""Run logs: `metrics.jsonl`, TensorBoard scalars and a tqdm progress bar.

Record conventions (what `dpeq.training.report` reads back):
- every record is a flat dict with an int `step` (the optimizer update step,
  i.e. the number of updates done when the record was taken);
- a training record carries `epsilon` (privacy spent after `step` updates)
  and per-step values such as `noise_std`, `noisy_grad_norm`,
  `update_norm`; values computed from the NON-noised batch (loss, train
  accuracy, realised batch size, gradient norms, fraction clipped) are not
  covered by epsilon and carry the prefix NON_PRIVATE_PREFIX
  ("nonprivate/loss", "nonprivate/train_accuracy", ...);
- an evaluation record carries `params` (which parameters: "last",
  "ema_0.999", "polyak"), `accuracy` (top-1) and `top5`, `loss`, `brier`,
  `ece`; `is_evaluation(record)` tells the two apart. One evaluated on a
  split that overlaps the training data also carries
  EVAL_ON_TRAINING_DATA = True (then it is not covered by epsilon);
- `private_part(record)` is what may be released: the record without its
  non-private values (None for an evaluation on training data);
- l0-eps sparsity values use keys starting with `sparsity` (for example
  `sparsity/params/1e-3`, `sparsity/grad/1e-3`), in either kind of record.

Values are converted to plain python (jax / numpy scalars -> int / float,
arrays -> lists); non-finite floats are written as null so every line is
strict JSON. A run resumed from a checkpoint may repeat steps; readers keep
the last record of each (kind, params, step).
"""

import json
import logging
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
NON_PRIVATE_PREFIX = "nonprivate/"
EVAL_ON_TRAINING_DATA = "nonprivate_eval_on_training_data"

_log = logging.getLogger(__name__)


def is_evaluation(record: Mapping[str, Any]) -> bool:
  """True for an evaluation record (it names its `params`), else training."""
  return "params" in record and "accuracy" in record


def private_part(record: Mapping[str, Any]) -> dict[str, Any] | None:
  """The part of `record` covered by epsilon (None when nothing is)."""
  if record.get(EVAL_ON_TRAINING_DATA):
    return None
  return {k: v for k, v in record.items()
          if not str(k).startswith(NON_PRIVATE_PREFIX)}


def to_python(value: Any) -> Any:
  """A JSON-ready copy of `value`: python scalars, lists, dicts; NaN -> None."""
  if isinstance(value, Mapping):
    return {str(k): to_python(v) for k, v in value.items()}
  if isinstance(value, str | bool) or value is None:
    return value
  if isinstance(value, list | tuple):
    return [to_python(v) for v in value]
  if hasattr(value, "__array__") or isinstance(value, np.generic):
    array = np.asarray(value)
    if array.ndim == 0:
      return to_python(array.item())
    return [to_python(v) for v in array.tolist()]
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, int):
    return value
  raise TypeError(
      f"cannot log a value of type {type(value).__name__} ({value!r}); log "
      "numbers, strings, booleans or arrays."
  )


def _load_tensorflow():
  """tensorflow, or None (with a warning) when it cannot be imported."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    _log.warning(
        "TensorBoard logging is off: tensorflow cannot be imported (%s). "
        "Install dpeq[data] or set config.logging.tensorboard=False.",
        e,
    )
    return None
  try:
    tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators
  except (RuntimeError, ValueError):
    pass
  return tf


def _ends_mid_line(path: pathlib.Path) -> bool:
  if not path.exists() or path.stat().st_size == 0:
    return False
  with open(path, "rb") as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


class MetricsWriter:
  """Appends records to `workdir/metrics.jsonl` (and TensorBoard, optionally).

  Each record is flushed as soon as it is written, so a killed run loses
  nothing already logged; `close()` also fsyncs the file. Use one writer per
  run on process 0 only. Also a context manager.
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool):
    """Opens the log files.

    Args:
      workdir: the run directory (created if missing).
      tensorboard: also write TensorBoard scalars under `workdir/tensorboard`
        (skipped with a warning when tensorflow is not installed).
    """
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / METRICS_FILE
    torn = _ends_mid_line(self.path)
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
    if torn:  # a run killed mid-write: start the next record on its own line
      self._file.write("\n")
    self._tf = None
    self._summary_writer = None
    if tensorboard:
      self._tf = _load_tensorflow()
      if self._tf is not None:
        self._summary_writer = self._tf.summary.create_file_writer(
            str(self.workdir / TENSORBOARD_DIR)
        )
        # tf.summary.scalar lives in the separate `tensorboard` package, which
        # tensorflow-cpu does not pull in; the core op with the scalar plugin's
        # metadata writes the same event.
        v1 = self._tf.compat.v1
        self._scalar_metadata = v1.SummaryMetadata(
            plugin_data=v1.SummaryMetadata.PluginData(plugin_name="scalars")
        )

  def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one record (a flat dict with an int `step`); returns it as logged."""
    if self._file is None:
      raise ValueError("MetricsWriter.write called after close().")
    if "step" not in record:
      raise ValueError(f"a metrics record needs a `step`; got keys {sorted(record)}.")
    converted = to_python(record)
    self._file.write(json.dumps(converted, allow_nan=False) + "\n")
    self._file.flush()
    if self._summary_writer is not None:
      self._write_scalars(converted)
    return converted

  def _write_scalars(self, record: Mapping[str, Any]) -> None:
    prefix = f"eval_{record['params']}" if is_evaluation(record) else "train"
    step = int(record["step"])
    with self._summary_writer.as_default():
      for key, value in record.items():
        if key == "step" or isinstance(value, bool):
          continue
        if isinstance(value, int | float):
          self._tf.summary.write(
              f"{prefix}/{key}",
              self._tf.constant(value, self._tf.float32),
              step=step,
              metadata=self._scalar_metadata,
          )

  def close(self) -> None:
    """Flushes and fsyncs the JSONL file and closes TensorBoard (idempotent)."""
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None
    if self._summary_writer is not None:
      self._summary_writer.flush()
      self._summary_writer.close()
      self._summary_writer = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_records(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl` in file order ([] if absent).

  A torn last line (a run killed mid-write) is ignored.
  """
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        _log.warning("skipping a malformed line of %s: %.80s", path, line)
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


class ProgressBar:
  """A tqdm bar over update steps that shows epsilon spent and the
  (non-private) training accuracy of the last batch."""

  def __init__(self, *, total: int, initial: int = 0, enabled: bool = True):
    """Args: total updates of the run, the step it starts (resumes) from, and
    whether to show it (disable on processes other than 0)."""
    self._bar = tqdm.tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        unit="update",
        dynamic_ncols=True,
    )
    self._postfix: dict[str, str] = {}

  def update(
      self,
      step: int,
      *,
      epsilon: float | None = None,
      train_accuracy: float | None = None,
  ) -> None:
    """Moves the bar to `step`; shows the latest epsilon / accuracy given."""
    if epsilon is not None:
      self._postfix["eps"] = f"{float(epsilon):.3f}"
    if train_accuracy is not None:
      self._postfix["nonprivate_train_acc"] = f"{float(train_accuracy):.4f}"
    self._bar.set_postfix(self._postfix, refresh=False)
    self._bar.update(int(step) - self._bar.n)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
