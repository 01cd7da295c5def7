"""Checkpoints of a training run: save, keep the last N, resume the latest.

A checkpoint holds everything the loop needs to continue bit for bit: the
`TrainState` pytree (params, optimizer state, privatizer state with its noise
key, averages, update step) as arrays, and a small JSON record with the
privacy ledger and the length of `metrics.jsonl` at that moment. Batches
need no saved position: the sampler is a pure function of (secret seed,
update step), and so are the augmentation keys; the secret comes from the
run's secret file (dpeq.training.secret_file).

Checkpoints are SECRET: they hold the noise key, and whoever has it
subtracts the noise. Publish `release/` (dpeq.training.release), never them.

Atomicity: orbax writes each step into a temporary directory and renames it
when complete, so a run killed at any point leaves only whole checkpoints;
`latest_step` sees only those. Old checkpoints beyond `keep` are deleted
after a new one is complete.

metrics.jsonl after a resume (the rule): the checkpoint of update step s
stores the byte length of metrics.jsonl right after every record of steps
<= s (and nothing later) was written. On resume the file is truncated to that
length, dropping the records of steps > s that the interrupted run wrote
after its last checkpoint (they are written again, identically, by the
resumed run) and any half-written line. So no record is lost or duplicated.
TensorBoard event files are append-only: scalars of the replayed steps
appear twice there, with identical values.

Damage: a checkpoint that cannot be read (truncated or corrupted files, a
broken record) is moved to `checkpoints_set_aside/` with a warning and the
run resumes from the previous one (dpeq.training.loop); when checkpoints
exist but none can be read, the run refuses to start from scratch.

Bit-for-bit: a resumed run computes exactly what the uninterrupted run would
have, as far as the backend is deterministic. XLA:CPU is, with one intra-op
thread (e.g. `taskset -c 0 python -m dpeq.train ...`); with several it may
round differently from one execution to the next (jax-ml/jax#39741),
interrupted or not.
"""

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any
CHECKPOINT_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints_set_aside"


def _is_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: PyTree) -> PyTree:
  """Typed PRNG keys -> their uint32 data (orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      tree)


def _abstract(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs (with shardings) of `tree`, keys as their data."""

  def leaf(x):
    if _is_key(x):
      x = jax.random.key_data(x)
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

  return jax.tree.map(leaf, tree)


def _data_to_keys(restored: PyTree, like: PyTree) -> PyTree:
  """Inverse of `_keys_to_data`, using the key implementations of `like`."""

  def leaf(data, ref):
    if _is_key(ref):
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(ref))
    return data

  return jax.tree.map(leaf, restored, like)


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (disk full, no permission, ...)."""


def _os_error_in(error: BaseException) -> OSError | None:
  """The first OSError in `error`'s chain of causes, or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


class Checkpointer:
  """Saves and restores training checkpoints under `workdir/checkpoints`.

  Every process of a multi-host run must make the same calls (orbax
  synchronizes them); only process 0 writes the JSON record.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int):
    """Opens (or creates) the checkpoint directory of a run.

    Args:
      workdir: the run's directory.
      keep: how many of the most recent checkpoints to keep (>= 1).
    """
    if keep < 1:
      raise ValueError(f"keep={keep} must be at least 1 (config.checkpoint."
                       "keep).")
    self.directory = pathlib.Path(workdir).resolve() / CHECKPOINT_DIR
    # Blocking saves; temporary directories of a save that was killed are
    # removed when the next run opens the directory.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "record"))

  def latest_step(self) -> int | None:
    """The update step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Update steps of the complete checkpoints on disk, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, *, state: PyTree,
           record: Mapping[str, Any]) -> None:
    """Writes checkpoint `step` (blocking; atomic on disk).

    Args:
      step: the update step of `state` (number of updates applied).
      state: the TrainState pytree (jax arrays; typed keys allowed).
      record: JSON-serializable extras (data key, ledger, metrics length).
    """
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(_keys_to_data(state)),
              record=ocp.args.JsonSave(dict(record))),
          force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # orbax may wrap the OSError
      os_error = _os_error_in(e)
      if os_error is None:
        raise
      previous = self.all_steps()
      raise CheckpointWriteError(
          f"Could not write checkpoint {step} to {self.directory}: "
          f"{os_error.strerror or os_error}. "
          + (f"The previous checkpoint ({previous[-1]}) is intact: free "
             "space (or fix the permissions) and rerun the same command to "
             "resume from it." if previous else
             "There is no earlier checkpoint: free space (or fix the "
             "permissions) and rerun the command.")) from e

  def restore(self, step: int, *, like: PyTree) -> tuple[PyTree, dict]:
    """Reads checkpoint `step`.

    Args:
      step: a step from `all_steps()`.
      like: a TrainState of the same structure (e.g. a fresh init); the
        restored arrays get its shapes, dtypes and shardings.

    Returns:
      (state, record) as saved.
    """
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like)),
            record=ocp.args.JsonRestore()))
    return _data_to_keys(restored["state"], like), dict(restored["record"])

  def set_aside(self, step: int) -> pathlib.Path:
    """Moves checkpoint `step` (e.g. an unreadable one) out of the managed
    folder, to `<workdir>/checkpoints_set_aside/<step>[.N]`; returns where."""
    target_dir = self.directory.parent / SET_ASIDE_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / str(step)
    suffix = 0
    while target.exists():
      suffix += 1
      target = target_dir / f"{step}.{suffix}"
    os.replace(self.directory / str(step), target)
    self._manager.reload()
    return target

  def read_record(self, step: int) -> dict:
    """The JSON record of checkpoint `step` alone (no arrays are read)."""
    return _read_record(self.directory / str(step))

  def close(self) -> None:
    self._manager.close()


def _read_record(step_dir: pathlib.Path) -> dict:
  return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      step_dir / "record"))


def metrics_length(path: str | os.PathLike) -> int:
  """Current byte length of a metrics file (0 when it does not exist)."""
  try:
    return os.path.getsize(path)
  except FileNotFoundError:
    return 0


def truncate_metrics(path: str | os.PathLike, *, length: int) -> None:
  """Cuts a metrics file back to `length` bytes (see the module docstring)."""
  path = pathlib.Path(path)
  if not path.exists():
    if length:
      raise ValueError(
          f"{path} is missing but the checkpoint expects {length} bytes of "
          "metrics; restore the file or start a fresh workdir.")
    return
  size = path.stat().st_size
  if size < length:
    raise ValueError(
        f"{path} has {size} bytes but the checkpoint recorded {length}; the "
        "metrics file was modified outside the run.")
  with open(path, "r+b") as f:
    f.truncate(length)


def read_checkpoint(workdir: str | os.PathLike, *, step: int | None = None
                    ) -> tuple[dict, dict]:
  """Reads a checkpoint of a run on this machine, whatever devices wrote it.

  For inspection and comparisons (e.g. params of runs on different device
  counts); resuming goes through `Checkpointer.restore`.

  Args:
    workdir: the run's directory.
    step: the update step to read (None: the newest complete checkpoint).

  Returns:
    (state, record): the TrainState as nested dicts / lists of numpy arrays
    (PRNG keys as their uint32 data), and the JSON record.
  """
  directory = pathlib.Path(workdir).resolve() / CHECKPOINT_DIR
  if step is None:
    steps = []
    if directory.is_dir():
      steps = ocp.CheckpointManager(
          directory, options=ocp.CheckpointManagerOptions(
              read_only=True, create=False)).all_steps()
    if not steps:
      raise ValueError(f"{directory} holds no complete checkpoint.")
    step = max(steps)
  path = directory / str(step)
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path / "state").item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  state = jax.tree.map(np.asarray, checkpointer.restore(path / "state",
                                                        abstract))
  return state, _read_record(path)
