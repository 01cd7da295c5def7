"""Shared helpers of the runner tests (not collected by pytest)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax

from dpeq import paths

TINY_CONFIG = "tests/training/helpers_tiny_config.py"


def cli_command(workdir, config_arg: str = "", *overrides: str) -> list[str]:
  """`python -m dpeq.train` on the tiny config, with --config.* overrides."""
  config = TINY_CONFIG + (f":{config_arg}" if config_arg else "")
  return [sys.executable, "-m", "dpeq.train", f"--config={config}",
          f"--workdir={workdir}", *overrides]


def cli_env(*, num_devices: int = 1, compile_cache=None) -> dict[str, str]:
  """Environment of a CLI subprocess: CPU only, `num_devices` CPU devices.

  With `compile_cache` (a folder), runs of the same program share compiled
  XLA executables (JAX's persistent compilation cache).
  """
  env = dict(os.environ)
  if compile_cache is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(compile_cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  if num_devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  env["PYTHONPATH"] = os.pathsep.join(
      [str(paths.REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def pin_to_one_cpu() -> None:
  """Runs in the child before exec: XLA:CPU then uses one intra-op thread.

  With more threads XLA:CPU may round differently from run to run
  (jax-ml/jax#39741), so bit-for-bit comparisons need one thread.
  """
  cpus = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cpus[os.getppid() % len(cpus)]})


def start_cli(workdir, config_arg: str = "", *overrides: str,
              num_devices: int = 1, compile_cache=None, single_cpu=False,
              log_path=None) -> subprocess.Popen:
  """Starts the CLI in the repository root; output goes to `log_path`."""
  with open(log_path or os.devnull, "w") as log:  # the child keeps its copy
    return subprocess.Popen(
        cli_command(workdir, config_arg, *overrides), cwd=paths.REPO_ROOT,
        env=cli_env(num_devices=num_devices, compile_cache=compile_cache),
        stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=pin_to_one_cpu if single_cpu else None)


def wait_ok(process: subprocess.Popen, log_path) -> None:
  """Waits for a CLI run (no wall-clock limit: a loaded machine is slow) and
  fails with its log when it did not succeed."""
  code = process.wait()
  if code != 0:
    log = pathlib.Path(log_path).read_text() if log_path else ""
    raise AssertionError(f"run exited with {code}:\n{log[-4000:]}")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def records(workdir, *, keep_wall_clock: bool = False) -> list[dict]:
  """Every line of metrics.jsonl, parsed (a torn line fails the test).

  The training records' wall-clock (nonprivate/train_seconds), which differs
  between identical runs, is dropped unless `keep_wall_clock`.
  """
  path = pathlib.Path(workdir) / "metrics.jsonl"
  parsed = [json.loads(line) for line in path.read_text().splitlines()]
  if not keep_wall_clock:
    for record in parsed:
      record.pop("nonprivate/train_seconds", None)
  return parsed


def flat(tree) -> dict[str, object]:
  """{path: leaf} of a pytree, for leaf-by-leaf comparisons."""
  return {jax.tree_util.keystr(k): v
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}
