"""SIGKILL a CLI run at a random update, resume it, compare bit for bit.

Every run is pinned to one CPU: XLA:CPU with several intra-op threads may
round differently from run to run (jax-ml/jax#39741), interrupted or not.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import helpers_runner
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq import paths
from dpeq.training import checkpointing, secret_file

NUM_UPDATES = 8
POLL_SECONDS = 0.02


def _training_steps(workdir) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  steps = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line being written
      continue
    if "params" not in record:
      steps.append(record["step"])
  return steps


def _kill_at_step(process, workdir, step: int) -> None:
  """SIGKILLs `process` once metrics.jsonl shows training step >= `step`
  (waits on the file, not on the clock: a loaded machine is slow)."""
  while process.poll() is None:
    if any(s >= step for s in _training_steps(workdir)):
      os.kill(process.pid, signal.SIGKILL)
      break
    time.sleep(POLL_SECONDS)
  process.wait()


def _without_offset(record):
  return {k: v for k, v in record.items() if k != "metrics_bytes"}


def test_sigkill_then_resume_gives_identical_params_metrics_and_epsilon(
    fashion_mnist_dir, tmp_path):
  del fashion_mnist_dir  # the config reads ../shared/data/fashion_mnist
  cache = f"--config.data.cache_dir={tmp_path / 'data_cache'}"
  compile_cache = tmp_path / "xla_cache"
  arg = f"updates={NUM_UPDATES}"
  logs = {name: tmp_path / f"{name}.log"
          for name in ("reference", "killed", "resumed")}

  # Uninterrupted reference (it also fills the compilation cache).
  reference = tmp_path / "reference"
  helpers_runner.wait_ok(
      helpers_runner.start_cli(reference, arg, cache,
                               compile_cache=compile_cache, single_cpu=True,
                               log_path=logs["reference"]),
      logs["reference"])

  # The same run, killed at a random update (checkpoints every 2 updates,
  # so the kill may land between checkpoints, or during one). Both runs use
  # secret randomness; the second gets the first's secret file, so that it
  # is the same run.
  kill_step = random.Random().randint(1, NUM_UPDATES - 1)
  interrupted = tmp_path / "interrupted"
  interrupted.mkdir()
  shutil.copy(reference / secret_file.SECRET_FILE,
              interrupted / secret_file.SECRET_FILE)
  process = helpers_runner.start_cli(interrupted, arg, cache,
                                     compile_cache=compile_cache,
                                     single_cpu=True, log_path=logs["killed"])
  _kill_at_step(process, interrupted, kill_step)
  assert process.returncode == -signal.SIGKILL, (
      f"kill at step {kill_step}: the run ended with {process.returncode}\n"
      + logs["killed"].read_text()[-3000:])
  assert not (interrupted / "report.md").exists()

  # Restarting the same command resumes from the latest checkpoint.
  helpers_runner.wait_ok(
      helpers_runner.start_cli(interrupted, arg, cache,
                               compile_cache=compile_cache, single_cpu=True,
                               log_path=logs["resumed"]),
      logs["resumed"])

  context = f"(killed at training step >= {kill_step})"
  expected_state, expected_record = checkpointing.read_checkpoint(reference)
  state, record = checkpointing.read_checkpoint(interrupted)
  expected_leaves = helpers_runner.flat(expected_state)
  leaves = helpers_runner.flat(state)
  assert leaves.keys() == expected_leaves.keys()
  for name, value in expected_leaves.items():  # params, optimizer, averages,
    assert np.array_equal(leaves[name], value), (name, context)  # keys, step
  # metrics_bytes: the same records, but their wall-clock digits differ.
  assert _without_offset(record) == _without_offset(expected_record), context
  # metrics.jsonl: every record exactly once, identical values.
  assert (helpers_runner.records(interrupted)
          == helpers_runner.records(reference)), context
  for name in ("privacy.json", "config.json"):
    assert (json.loads((interrupted / name).read_text())
            == json.loads((reference / name).read_text())), (name, context)
  # keep=2: only the newest checkpoints remain.
  kept = sorted(int(p.name) for p in (interrupted / "checkpoints").iterdir()
                if p.name.isdigit())
  assert kept == [NUM_UPDATES - 2, NUM_UPDATES], context
  assert (interrupted / "report.md").exists()


def test_checkpointer_keeps_the_last_n_and_round_trips_keys(tmp_path):
  state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)},
           "key": jax.random.key(7), "step": jnp.int32(0)}
  saver = checkpointing.Checkpointer(tmp_path, keep=2)
  for step in (1, 2, 3):
    state = {**state, "step": jnp.int32(step),
             "params": {"w": state["params"]["w"] + 1}}
    saver.save(step, state=state, record={"step": step})
  assert saver.all_steps() == [2, 3]
  restored, record = saver.restore(3, like=state)
  saver.close()
  assert record == {"step": 3}
  assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
  assert np.array_equal(jax.random.key_data(restored["key"]),
                        jax.random.key_data(state["key"]))
  assert np.array_equal(restored["params"]["w"], state["params"]["w"])
  assert int(restored["step"]) == 3


def test_truncate_metrics_cuts_back_to_the_checkpointed_length(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
  checkpointing.truncate_metrics(path, length=len('{"step": 1}\n'))
  assert path.read_text() == '{"step": 1}\n'
  with pytest.raises(ValueError, match="modified outside the run"):
    checkpointing.truncate_metrics(path, length=1000)


FAULT_SCRIPT = "tests/training/helpers_fault_cli.py"
MANY_KILLS = 10
LONG_RUN = 32  # updates: ten kills advance a run by at most ~2 updates each


def _start_with_fault(workdir, fault, count, arg, cache, compile_cache, log):
  command = [sys.executable, FAULT_SCRIPT, fault, str(count), "--",
             *helpers_runner.cli_command(workdir, arg, cache)[3:]]
  with open(log, "w") as out:
    return subprocess.Popen(
        command, cwd=paths.REPO_ROOT,
        env=helpers_runner.cli_env(compile_cache=compile_cache),
        stdout=out, stderr=subprocess.STDOUT,
        preexec_fn=helpers_runner.pin_to_one_cpu)


def _last_checkpoint(workdir) -> int:
  steps = [int(p.name) for p in (workdir / "checkpoints").glob("*")
           if p.name.isdigit()] if (workdir / "checkpoints").exists() else []
  return max(steps, default=0)


def test_ten_sigkills_in_checkpoints_metrics_and_updates_lose_nothing(
    fashion_mnist_dir, tmp_path):
  """Ten SIGKILLs of one run (inside a checkpoint save, halfway through a
  metrics line, between updates, in random order), then a clean restart:
  the same parameters bit for bit, every metric once, the same epsilon."""
  del fashion_mnist_dir
  cache = f"--config.data.cache_dir={tmp_path / 'data_cache'}"
  compile_cache = tmp_path / "xla_cache"
  arg = f"updates={LONG_RUN}"
  reference = tmp_path / "reference"
  log = tmp_path / "reference.log"
  helpers_runner.wait_ok(helpers_runner.start_cli(
      reference, arg, cache, compile_cache=compile_cache, single_cpu=True,
      log_path=log), log)

  interrupted = tmp_path / "interrupted"
  interrupted.mkdir()
  shutil.copy(reference / secret_file.SECRET_FILE,
              interrupted / secret_file.SECRET_FILE)
  rng = random.Random()
  kinds = (["checkpoint", "metrics", "update"] * 4)[:MANY_KILLS]
  rng.shuffle(kinds)
  plan = []
  for index, kind in enumerate(kinds):
    log = tmp_path / f"kill{index}.log"
    if kind == "update":
      target = _last_checkpoint(interrupted) + rng.randint(1, 2)
      plan.append((kind, target))
      process = helpers_runner.start_cli(
          interrupted, arg, cache, compile_cache=compile_cache,
          single_cpu=True, log_path=log)
      _kill_at_step(process, interrupted, target)
    else:
      count = 1 if kind == "checkpoint" else rng.randint(1, 3)
      plan.append((kind, count))
      process = _start_with_fault(interrupted, kind, count, arg, cache,
                                  compile_cache, log)
      process.wait()
    assert process.returncode == -signal.SIGKILL, (
        f"fault {index} {plan[-1]} of {plan}: the run ended with "
        f"{process.returncode}\n" + log.read_text()[-3000:])
    assert not (interrupted / "report.md").exists()
  log = tmp_path / "final.log"
  helpers_runner.wait_ok(helpers_runner.start_cli(
      interrupted, arg, cache, compile_cache=compile_cache, single_cpu=True,
      log_path=log), log)

  context = f"(faults: {plan})"
  expected_state, expected_record = checkpointing.read_checkpoint(reference)
  state, record = checkpointing.read_checkpoint(interrupted)
  expected_leaves = helpers_runner.flat(expected_state)
  for name, value in helpers_runner.flat(state).items():
    assert np.array_equal(value, expected_leaves[name]), (name, context)
  assert _without_offset(record) == _without_offset(expected_record), context
  assert (helpers_runner.records(interrupted)
          == helpers_runner.records(reference)), context
  privacy = json.loads((interrupted / "privacy.json").read_text())
  assert privacy == json.loads((reference / "privacy.json").read_text()), (
      context)
  assert privacy["num_updates"] == LONG_RUN
