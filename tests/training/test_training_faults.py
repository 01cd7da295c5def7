"""Damaged checkpoints: resume from the previous good one, or refuse."""

import errno
import json
import shutil

import helpers_runner
import helpers_tiny_config
import numpy as np
import pytest

from dpeq.training import checkpointing, loop, secret_file
from dpeq.training import config as config_lib

NUM_UPDATES = 6


def _config(fashion_mnist_dir, cache_dir):
  config = helpers_tiny_config.get_config(f"updates={NUM_UPDATES}")
  config.data.raw_dir = str(fashion_mnist_dir)
  config.data.cache_dir = str(cache_dir)
  config.eval.every_updates = 0
  return config


def _truncate_largest_file(folder) -> None:
  files = sorted((p for p in folder.rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  largest = files[-1]
  data = largest.read_bytes()
  largest.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def _trained(fashion_mnist_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("faults")
  config = _config(fashion_mnist_dir, tmp_path_factory.mktemp("cache"))
  final = loop.train(config, workdir=workdir)
  # An untouched copy, made before any test damages the shared workdir.
  pristine = tmp_path_factory.mktemp("pristine") / "run"
  shutil.copytree(workdir, pristine)
  return workdir, config, final, pristine


@pytest.fixture(scope="module")
def finished_run(_trained):
  workdir, config, final, _ = _trained
  return workdir, config, final


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes(
    finished_run, tmp_path, capsys):
  workdir, config, final = finished_run
  state, _ = checkpointing.read_checkpoint(workdir)
  records = helpers_runner.records(workdir)
  steps = checkpointing.Checkpointer(workdir, keep=2).all_steps()
  assert steps == [4, 6]
  _truncate_largest_file(workdir / "checkpoints" / "6" / "state")
  capsys.readouterr()
  again = loop.train(config, workdir=workdir)
  captured = capsys.readouterr()
  assert "checkpoint 6" in captured.err and "cannot be read" in captured.err
  assert "resuming at update 4" in captured.out
  assert (workdir / checkpointing.SET_ASIDE_DIR / "6").is_dir()
  # Updates 5 and 6 were redone with the same secret randomness: the same
  # parameters (up to XLA:CPU's thread rounding), the same epsilon, and every
  # metric recorded once.
  redone, _ = checkpointing.read_checkpoint(workdir)
  expected = helpers_runner.flat(state["params"])
  for name, value in helpers_runner.flat(redone["params"]).items():
    # XLA:CPU's thread rounding only: other noise would move them by ~1e-2.
    np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=2e-5)
  assert again["epsilon"] == final["epsilon"]
  after = helpers_runner.records(workdir)
  assert [r["step"] for r in after] == [r["step"] for r in records]
  assert json.loads((workdir / "privacy.json").read_text())["num_updates"] == (
      NUM_UPDATES)


def test_when_no_checkpoint_can_be_read_the_run_refuses(finished_run):
  workdir, config, _ = finished_run
  for step in checkpointing.Checkpointer(workdir, keep=2).all_steps():
    record = workdir / "checkpoints" / str(step) / "record"
    for path in record.rglob("*"):
      if path.is_file():
        path.write_text("{ not json")
  for _ in range(2):  # and again: nothing was moved, nothing started afresh
    with pytest.raises(config_lib.ConfigError,
                       match="refusing to start from scratch"):
      loop.train(config, workdir=workdir)
  assert checkpointing.Checkpointer(workdir, keep=2).all_steps() == [4, 6]


def test_a_full_disk_while_checkpointing_stops_with_the_path_and_keeps_the_last(
    fashion_mnist_dir, tmp_path, monkeypatch):
  config = _config(fashion_mnist_dir, tmp_path / "cache")
  workdir = tmp_path / "run"
  original = checkpointing.ocp.CheckpointManager.save
  calls = []

  def save_then_disk_full(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) == 2:  # the second save: the disk is full
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save",
                      save_then_disk_full)
  with pytest.raises(checkpointing.CheckpointWriteError) as raised:
    loop.train(config, workdir=workdir)
  message = str(raised.value)
  assert str(workdir / "checkpoints") in message
  assert "No space left on device" in message
  assert "previous checkpoint (2) is intact" in message
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", original)
  assert checkpointing.Checkpointer(workdir, keep=2).all_steps() == [2]
  # Space freed: the same command resumes from update 2 and finishes.
  final = loop.train(config, workdir=workdir)
  assert final["num_updates"] == NUM_UPDATES
  steps = [r["step"] for r in helpers_runner.records(workdir)
           if "params" not in r]
  assert steps == list(range(1, NUM_UPDATES + 1))


def test_an_unwritable_workdir_is_a_config_error_that_names_it(
    fashion_mnist_dir, tmp_path):
  config = _config(fashion_mnist_dir, tmp_path / "cache")
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(config_lib.ConfigError,
                     match=f"workdir '{blocker / 'run'}' cannot be written"):
    loop.train(config, workdir=blocker / "run")


def _copy_run(trained, tmp_path):
  _, config, _, pristine = trained
  copy = tmp_path / "copy"
  shutil.copytree(pristine, copy)
  return copy, config


def test_checkpoints_without_their_secret_file_refuse_to_resume(
    _trained, tmp_path):
  workdir, config = _copy_run(_trained, tmp_path)
  (workdir / secret_file.SECRET_FILE).unlink()
  with pytest.raises(config_lib.ConfigError,
                     match="holds checkpoints but no secret_randomness.json"):
    loop.train(config, workdir=workdir)


def test_a_secret_file_of_another_run_is_refused(_trained, tmp_path):
  workdir, config = _copy_run(_trained, tmp_path)
  other = tmp_path / "other"
  other.mkdir()
  # A second run's secret (the same config, fresh OS entropy).
  secret_file.load_or_create(other, reproducible_seed=None, resuming=False)
  shutil.copy(other / secret_file.SECRET_FILE,
              workdir / secret_file.SECRET_FILE)
  with pytest.raises(config_lib.ConfigError,
                     match="noise key that does not"):
    loop.train(config, workdir=workdir)


def test_an_unreadable_secret_file_is_named(_trained, tmp_path):
  workdir, config = _copy_run(_trained, tmp_path)
  (workdir / secret_file.SECRET_FILE).write_text("{ torn")
  with pytest.raises(config_lib.ConfigError, match="cannot be read"):
    loop.train(config, workdir=workdir)
