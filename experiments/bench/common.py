"""Timing, memory and reporting helpers shared by the benchmarks.

Everything here is backend-agnostic: it times jitted callables on the default
JAX backend, reads XLA's own memory analysis of a compiled executable and the
process' peak resident memory, and writes results as a markdown table plus a
JSON file that records the machine they ran on.
"""

import json
import os
import pathlib
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

MIB = 2.0**20


def machine_info() -> dict[str, Any]:
  """The machine and software a benchmark ran on (for its results file)."""
  cpu_model = platform.processor() or "unknown"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu_model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  device = jax.devices()[0]
  return {
      "cpu_model": cpu_model,
      "cpu_cores": os.cpu_count(),
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "num_devices": jax.device_count(),
      "jax_version": jax.__version__,
      "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_average_1min": _load_average(),
  }


def _load_average() -> float | None:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def peak_rss_mib() -> float:
  """Peak resident set size of this process so far, in MiB (Linux: KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def compile_timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """jit-lowers and compiles `fn` for `args`; returns (compiled, seconds)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def xla_memory_mib(compiled: Any) -> float | None:
  """Bytes XLA reserves to run `compiled` (arguments, outputs, temporaries).

  Returns MiB, or None where the backend gives no memory analysis. Arguments
  and outputs that alias (donated buffers) are counted once.
  """
  try:
    analysis = compiled.memory_analysis()
  except (NotImplementedError, AttributeError, RuntimeError):
    return None
  if analysis is None:
    return None
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return total / MIB


def interleaved_seconds(
    fns: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    calls_per_round: int = 1,
    warmup: int = 1,
) -> dict[str, list[float]]:
  """Per-call seconds of each callable, timed in alternating rounds.

  Every round runs each callable `calls_per_round` times in turn (blocking on
  its result), so slow drifts of a shared machine's load hit all of them
  alike. Compare medians of the returned lists.

  Args:
    fns: name -> zero-argument callable returning JAX arrays.
    rounds: number of rounds (>= 1).
    calls_per_round: calls per callable per round; the round's time is
      divided by it.
    warmup: untimed calls of each callable before the first round.

  Returns:
    name -> list of `rounds` per-call times in seconds.
  """
  if rounds < 1 or calls_per_round < 1:
    raise ValueError(
        f"rounds={rounds} and calls_per_round={calls_per_round} must be >= 1.")
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls_per_round):
        jax.block_until_ready(fn())
      times[name].append((time.perf_counter() - start) / calls_per_round)
  return times


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def format_value(value: Any) -> str:
  """Compact text for a table cell: 3 significant digits for floats."""
  if value is None:
    return "-"
  if isinstance(value, float):
    if value != value:  # NaN.
      return "nan"
    if abs(value) >= 100:
      return f"{value:.0f}"
    return f"{value:.3g}"
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[tuple[str, str]]) -> str:
  """A GitHub markdown table of `rows` with (key, header) `columns`."""
  if not columns:
    raise ValueError("markdown_table needs at least one column.")
  lines = ["| " + " | ".join(header for _, header in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(format_value(row.get(key))
                                   for key, _ in columns) + " |")
  return "\n".join(lines)


def machine_line(machine: Mapping[str, Any]) -> str:
  """One markdown line naming the machine of a results file."""
  return (f"Machine: {machine['cpu_model']}, {machine['cpu_cores']} cores; "
          f"JAX {machine['jax_version']} on {machine['backend']} "
          f"({machine['device_kind']}, {machine['num_devices']} device(s)); "
          f"load average at start {machine.get('load_average_1min')}"
          + (f"; XLA_FLAGS={machine['xla_flags']}" if machine.get("xla_flags")
             else "") + ".")


def write_json(path: str | os.PathLike, payload: Any) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
  return path
