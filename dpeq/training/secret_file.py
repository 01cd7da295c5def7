"""The run's secret randomness on disk: `workdir/secret_randomness.json`.

What it holds is the entropy of dpeq.privacy.randomness.RunRandomness (the
noise key and the sampler's seed follow from it). It is written, readable
by its owner only, before the first update, so that a run killed before its
first checkpoint restarts with the same noise and batches (re-running the
same mechanism with the same randomness releases nothing new); a resumed run
reads it back. Like the checkpoints, it must never be published: whoever
has it can subtract the noise. In reproducible mode
(`config.dp.reproducible_seed`) no file is written: the seed is the secret,
and it is public.
"""

import json
import os
import pathlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from dpeq.privacy import randomness as randomness_lib
from dpeq.training import config as config_lib

SECRET_FILE = "secret_randomness.json"


def _read(path: pathlib.Path) -> np.ndarray:
  try:
    words = json.loads(path.read_text())["entropy_words"]
    words = np.asarray(words, np.uint64)
    if words.shape != (4,) or (words > 0xFFFFFFFF).any():
      raise ValueError(f"bad entropy_words {words.tolist()}")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise config_lib.ConfigError(
        f"{path} cannot be read ({e}); it holds the run's secret noise "
        "randomness: restore it from a backup, or start a fresh --workdir."
    ) from None
  return words.astype(np.uint32)


def _write(path: pathlib.Path, words: np.ndarray) -> None:
  tmp = path.with_suffix(".tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  with os.fdopen(fd, "w") as f:
    json.dump({"entropy_words": [int(w) for w in words],
               "warning": "SECRET: whoever has this file can remove the "
                          "run's noise. Never publish it or the "
                          "checkpoints/ folder."}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load_or_create(workdir: str | os.PathLike, *,
                   reproducible_seed: int | None,
                   resuming: bool) -> randomness_lib.RunRandomness:
  """The run's randomness: read back, or drawn from OS entropy and saved.

  Every process of a multi-process run must call it; process 0 reads or
  writes the file and broadcasts the entropy to the others.

  Args:
    workdir: the run directory.
    reproducible_seed: config.dp.reproducible_seed (None: secret entropy).
    resuming: whether the workdir holds checkpoints of this run.

  Raises:
    ConfigError: when the file is missing although checkpoints exist, is
      unreadable, or the workdir mixes a secret and a reproducible run.
  """
  path = pathlib.Path(workdir) / SECRET_FILE
  if reproducible_seed is not None:
    if path.exists():
      raise config_lib.ConfigError(
          f"config.dp.reproducible_seed={reproducible_seed} but {path} exists: "
          "this workdir belongs to a run with secret randomness; resume it "
          "without dp.reproducible_seed, or use a fresh --workdir.")
    return randomness_lib.RunRandomness.reproducible(reproducible_seed)
  status = np.zeros(5, np.uint32)  # [ok, entropy words...]
  error = None
  if jax.process_index() == 0:
    try:
      if path.exists():
        words = _read(path)
      elif resuming:
        raise config_lib.ConfigError(
            f"the workdir {path.parent} holds checkpoints but no "
            f"{SECRET_FILE}: the run cannot resume with its own noise. "
            "Restore the file, or start a fresh --workdir.")
      else:
        words = randomness_lib.RunRandomness.from_os_entropy().to_words()
        _write(path, words)
      status = np.concatenate([[1], words]).astype(np.uint32)
    except config_lib.ConfigError as e:
      error = e
  if jax.process_count() > 1:
    status = np.asarray(multihost_utils.broadcast_one_to_all(status))
  if error is not None:
    raise error
  if not status[0]:
    raise config_lib.ConfigError(
        f"process 0 could not read or create {path}; see its log.")
  return randomness_lib.RunRandomness.from_words(status[1:],
                                                 is_reproducible=False)
