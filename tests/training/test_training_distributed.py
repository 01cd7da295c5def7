"""The same run on 1 device, 8 simulated devices and 2 processes agrees.

Global micro-batches have 64 rows everywhere (64 x 1 device, 8 x 8 devices,
16 x 2 x 2 devices), so batches, augmentation keys and noise are identical;
only the order of the cross-device gradient sums differs (float rounding).
"""

import shutil
import time

import helpers_runner
import helpers_tiny_config
import jax
import numpy as np
import pytest

from dpeq.training import checkpointing, loop, secret_file

NUM_UPDATES = 4
GLOBAL_MICRO_BATCH = 64


def _assert_same_run(workdir, reference, what: str) -> None:
  state, _ = checkpointing.read_checkpoint(workdir)
  expected, _ = checkpointing.read_checkpoint(reference)
  assert int(state["update_step"]) == NUM_UPDATES
  params = helpers_runner.flat(state["params"])
  # Summation order differs across devices (float32 rounding, ~1e-6 after
  # 4 updates with momentum); other noise or batches would move the params by
  # ~sigma C lr / B = 8e-3, far outside this tolerance.
  for name, value in helpers_runner.flat(expected["params"]).items():
    np.testing.assert_allclose(params[name], value, rtol=1e-4, atol=2e-5,
                               err_msg=f"{what}: {name}")
  records = [r for r in helpers_runner.records(workdir) if "params" not in r]
  expected_records = [r for r in helpers_runner.records(reference)
                      if "params" not in r]
  assert len(records) == len(expected_records) == NUM_UPDATES, what
  for r, e in zip(records, expected_records, strict=True):
    assert (r["nonprivate/batch_size"] == e["nonprivate/batch_size"]), what
    assert r["epsilon"] == e["epsilon"], what
    assert r["nonprivate/loss"] == pytest.approx(e["nonprivate/loss"],
                                                 rel=1e-4), what


def _wait_for_file(path, processes) -> None:
  """Waits (on the file, not the clock) until `path` exists; fails early if
  a process ends first."""
  while not path.exists():
    for process, log in processes:
      if process.poll() is not None:
        helpers_runner.wait_ok(process, log)  # fails with the log if != 0
        if not path.exists():
          raise AssertionError(f"{path} was not written:\n"
                               + log.read_text()[-3000:])
    time.sleep(0.05)


def test_eight_devices_and_two_processes_match_one_device(fashion_mnist_dir,
                                                          tmp_path):
  cache = f"--config.data.cache_dir={tmp_path / 'data_cache'}"
  arg = f"updates={NUM_UPDATES}"
  logs = {name: tmp_path / f"{name}.log" for name in ("eight", "p0", "p1")}
  # 2 processes x 2 devices, joined through jax.distributed on 127.0.0.1, with
  # secret randomness: process 0 draws it and broadcasts it to process 1.
  two = tmp_path / "two_processes"
  port = helpers_runner.free_port()
  runs = []
  for process_id in (0, 1):
    log = logs[f"p{process_id}"]
    runs.append((helpers_runner.start_cli(
        two, f"{arg},micro={GLOBAL_MICRO_BATCH // 4}", cache,
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={process_id}", num_devices=2,
        log_path=log), log))
  # The other runs take the same secret (as a run restarted before its first
  # checkpoint does), so batches, augmentation and noise are the same.
  secret = two / secret_file.SECRET_FILE
  _wait_for_file(secret, runs)
  eight = tmp_path / "eight_devices"
  reference = tmp_path / "reference"
  for workdir in (eight, reference):
    workdir.mkdir()
    shutil.copy(secret, workdir / secret_file.SECRET_FILE)
  # 8 simulated CPU devices in one process.
  runs.append((helpers_runner.start_cli(
      eight, f"{arg},micro={GLOBAL_MICRO_BATCH // 8}", cache, num_devices=8,
      log_path=logs["eight"]), logs["eight"]))

  # Meanwhile, the reference on this process's device(s).
  config = helpers_tiny_config.get_config(
      f"{arg},micro={GLOBAL_MICRO_BATCH // jax.device_count()}")
  config.data.raw_dir = str(fashion_mnist_dir)
  config.data.cache_dir = str(tmp_path / "reference_cache")
  try:
    loop.train(config, workdir=reference)
  finally:
    for process, log in runs:
      helpers_runner.wait_ok(process, log)

  _assert_same_run(eight, reference, "8 devices")
  _assert_same_run(two, reference, "2 processes")
  assert "8 device(s), 1 process(es)" in logs["eight"].read_text()
  assert "4 device(s), 2 process(es)" in logs["p0"].read_text()
