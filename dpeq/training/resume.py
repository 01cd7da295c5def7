"""Resuming a run from its checkpoints, and what a resume must match.

A checkpoint belongs to a config when the parts that shape the updates are
equal (`fingerprint`: seed, dp, training, model, data, finetune; not where
files live, nor logging and evaluation). `restore` picks the newest readable
checkpoint, sets unreadable ones aside, refuses to start from scratch when
none can be read (that would spend the privacy budget again), and checks
that the restored noise key follows from the workdir's secret file.
"""

import sys
from typing import Any

import jax
import numpy as np

from dpeq.training import checkpointing, distributed, secret_file
from dpeq.training import run_log as run_logging
from dpeq.training.config import ConfigError, base_config

# What must match between a checkpoint and the run resuming it: everything
# that shapes the updates (not where files live, nor logging and evaluation).
RESUME_KEYS = ("seed", "dp", "training", "model", "data", "finetune")
IGNORED_DATA_KEYS = ("source", "data_dir", "manual_dir", "raw_dir",
                     "cache_dir", "allow_eval_on_training_data")


def fingerprint(config) -> dict[str, Any]:
  """The part of a resolved config that a resumed run must share."""
  shared = {key: config[key].to_dict() if hasattr(config[key], "to_dict")
            else config[key] for key in RESUME_KEYS}
  for key in IGNORED_DATA_KEYS:
    shared["data"].pop(key)
  return run_logging.to_python(shared)


def _with_new_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A record written before a field existed: that field had its default
  (e.g. data.classes and finetune, added after runs were checkpointed)."""
  defaults = fingerprint(base_config())
  upgraded = dict(saved)
  for key, default in defaults.items():
    if key not in upgraded:
      upgraded[key] = default
    elif isinstance(default, dict) and isinstance(upgraded[key], dict):
      upgraded[key] = {**{k: v for k, v in default.items()
                          if k not in upgraded[key]}, **upgraded[key]}
  return upgraded


def _warn(message: str) -> None:
  print(f"WARNING: {message}", file=sys.stderr, flush=True)


def compatible_steps(run, checkpointer) -> tuple[list[int], dict[int, BaseException]]:
  """The checkpoints' steps, newest first, and the errors of those whose
  record cannot be read; checks that the newest readable one belongs to
  this config.

  Reads only the JSON records, so a mismatch is reported before compiling.
  """
  steps, errors = list(reversed(checkpointer.all_steps())), {}
  checked = False
  for step in steps:
    try:
      saved = _with_new_defaults(checkpointer.read_record(step)["config"])
    except Exception as e:  # noqa: BLE001 (any damage: try the previous)
      errors[step] = e
      continue
    if not checked:
      checked = True
      current = fingerprint(run.config)
      for key in RESUME_KEYS:
        if saved.get(key) != current[key]:
          raise ConfigError(
              f"the checkpoints in this workdir belong to a run whose "
              f"config.{key} differs from this one; use a fresh --workdir "
              "(or the same config to resume).")
  return steps, errors


def _set_aside(checkpointer, step: int, error: BaseException) -> None:
  """Moves an unreadable checkpoint out of the way, saying so."""
  moved = checkpointer.set_aside(step) if jax.process_index() == 0 else None
  _warn(f"checkpoint {step} in {checkpointer.directory} cannot be read "
        f"({type(error).__name__}: {str(error)[:300]}); it was moved to "
        f"{moved} and an older checkpoint is used instead.")


def restore(run, checkpointer, ledger, metrics_path,
             steps: list[int], errors: dict[int, BaseException]) -> int:
  """Restores the newest readable checkpoint of `steps` (none: a fresh
  start); returns its step.

  A checkpoint that cannot be read (truncated, corrupted; `errors` holds
  those whose record already failed) is skipped for the next older one and,
  once an older one is restored, set aside with a warning; when checkpoints
  exist but none can be read, the run refuses to start from scratch (and
  moves nothing). Also cuts
  metrics.jsonl back to what the restored checkpoint had seen (the rule is
  in dpeq.training.checkpointing). Redoing the updates after it repeats the
  same mechanism with the same secret randomness: nothing new is released.
  """
  metrics_bytes = 0
  step, record = None, None
  fresh_key = run.state.privatizer_state.key
  errors = dict(errors)
  for candidate in steps:
    if candidate in errors:
      continue
    try:
      state, record = checkpointer.restore(candidate, like=run.state)
    except Exception as e:  # noqa: BLE001 (any damage: try the previous)
      errors[candidate] = e
      continue
    run.state, step = state, candidate
    break
  if steps and step is None:
    details = "; ".join(f"{s}: {type(e).__name__}: {str(e)[:200]}"
                        for s, e in errors.items())
    raise ConfigError(
        f"none of the checkpoints in {checkpointer.directory} can be read "
        f"({details}); refusing to start from scratch, which would spend "
        "the privacy budget again. Restore a checkpoint, or start a fresh "
        "--workdir.")
  for bad in sorted(errors):
    _set_aside(checkpointer, bad, errors[bad])
  if step is not None:
    restored_key = run.state.privatizer_state.key
    if not np.array_equal(
        distributed.to_host(jax.random.key_data(restored_key)),
        distributed.to_host(jax.random.key_data(fresh_key))):
      raise ConfigError(
          f"the checkpoint of update {step} holds a noise key that does not "
          f"follow from this workdir's {secret_file.SECRET_FILE} (or "
          "config.dp.reproducible_seed): the file was replaced. Restore it, "
          "or start a fresh --workdir.")
    ledger.record(record["ledger"]["num_updates"])
    metrics_bytes = record["metrics_bytes"]
  step = step or 0
  if int(distributed.to_host(run.state.update_step)) != step:
    raise AssertionError("checkpoint step and TrainState.update_step differ")
  if run.is_chief:
    checkpointing.truncate_metrics(metrics_path, length=metrics_bytes)
  return step
