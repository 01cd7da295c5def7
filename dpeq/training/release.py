"""What a run may publish: `workdir/release/`, apart from its secrets.

The guarantee of privacy.json covers the final parameters, their averages
(EMA, Polyak) and every metric computed from the noisy updates or from
those parameters on data other than the training set. The rest of the
workdir is not for publication: `checkpoints/` and `secret_randomness.json`
hold the noise key (whoever has it removes the noise), and metrics.jsonl,
TensorBoard and report.md also show non-private diagnostics of the
non-noised batches. `write_release` copies the publishable part:

  release/params_<name>.npz   parameters "last", "ema_<decay>", "polyak"
                              (keys "module/param", float arrays)
  release/privacy.json        the (epsilon, delta) guarantee and its inputs
  release/config.json         the resolved config
  release/metrics.jsonl       metrics.jsonl without non-private values
  release/README.md           the threat model in two sentences
"""

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpeq.training import run_log as run_logging

RELEASE_DIR = "release"
THREAT_MODEL = (
    "What is secret: the run's randomness (the noise key and the batch "
    "sampler's seed, drawn from the operating system's entropy and kept in "
    "secret_randomness.json and checkpoints/), and the non-private "
    "diagnostics of the non-noised batches (\"nonprivate/*\" metrics). What "
    "may be released: the final and averaged parameters, privacy.json and "
    "the private metrics (this folder); they are (epsilon, delta)-DP as "
    "privacy.json states, against anyone who does not know the secret "
    "randomness.")
REPRODUCIBLE_WARNING = (
    "This run used config.dp.reproducible_seed={seed}: its noise and batches "
    "follow from that public seed, so it is NOT private against anyone who "
    "knows the seed.")


def _flat_params(params: Mapping[str, Any], prefix: str = "") -> dict:
  flat = {}
  for key, value in params.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flat_params(value, f"{name}/"))
    else:
      flat[name] = np.asarray(value)
  return flat


def _write_text(path: pathlib.Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def write_release(workdir: str | os.PathLike, *, config: Mapping[str, Any],
                  privacy: Mapping[str, Any],
                  params: Mapping[str, Mapping[str, Any]]) -> pathlib.Path:
  """Writes `workdir/release/` (replacing an older one); returns its path.

  Args:
    workdir: the run directory (its metrics.jsonl is filtered into the
      release).
    config: the resolved config as a dict.
    privacy: the privacy summary (privacy.json's content).
    params: name -> parameter pytree (nested dicts of arrays), e.g.
      {"last": ..., "ema_0.999": ..., "polyak": ...}.
  """
  workdir = pathlib.Path(workdir)
  target = workdir / RELEASE_DIR
  staging = workdir / (RELEASE_DIR + ".tmp")
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  for name, tree in params.items():
    np.savez(staging / f"params_{name}.npz", **_flat_params(tree))
  _write_text(staging / "privacy.json",
              json.dumps(run_logging.to_python(dict(privacy)), indent=2) + "\n")
  _write_text(staging / "config.json",
              json.dumps(run_logging.to_python(dict(config)), indent=2) + "\n")
  lines = []
  for record in run_logging.read_records(workdir):
    public = run_logging.private_part(record)
    if public is not None:
      lines.append(json.dumps(run_logging.to_python(public), allow_nan=False))
  _write_text(staging / run_logging.METRICS_FILE,
              "".join(line + "\n" for line in lines))
  readme = ["# Release of a dpeq run", "", THREAT_MODEL, ""]
  seed = (config.get("dp") or {}).get("reproducible_seed")
  if seed is not None:
    readme += ["**" + REPRODUCIBLE_WARNING.format(seed=seed) + "**", ""]
  _write_text(staging / "README.md", "\n".join(readme))
  shutil.rmtree(target, ignore_errors=True)
  os.replace(staging, target)
  return target
