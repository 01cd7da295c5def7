"""`make bench`: every dpeq benchmark, one results table per backend.

  python -m experiments.bench.run            (5 cases, B = 16, K in {1, 4})
  python -m experiments.bench.run --full     (all cases, K in {1, 4, 16};
                                              ~25 min on a 2-core CPU)
  python -m experiments.bench.run --flags    (+ XLA:CPU flag variants)

Runs, on the default JAX backend:
  models       experiments.bench.models_overhead in this process: the private
               update against a non-private update of the same model and
               images (interleaved rounds; the ratio is the headline),
               examples/s and images/s, compile time, memory;
  variants     (--flags) the same for one case in subprocesses under other
               XLA_FLAGS and micro-batch sizes;
  components   the other benchmarks of this folder (privacy_overhead,
               r2conv, kernel_bases, augmentation, ghost_clipping) in
               subprocesses, with their own output kept verbatim.
Writes experiments/results/bench_<backend>.md and .json (with the machine:
CPU model, cores, JAX version, device kind).
"""

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from experiments.bench import common, models_overhead

RESULTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "results"
FULL_VIEWS = (1, 4, 16)
DEFAULT_VIEWS = (1, 4)

# Other benchmarks of this folder: module -> (bounded args, --full args).
COMPONENTS = {
    "privacy_overhead": ([], []),
    "r2conv": (["--batch_size", "16", "--repeats", "5"], []),
    "kernel_bases": (["--repeats", "1"], []),
    "augmentation": (["--batch_size", "64", "--num_views", "4",
                      "--repeats", "5"], []),
    "ghost_clipping": (["--part", "speed", "--rounds", "3"], []),
}

# XLA:CPU variants for --flags: name -> (XLA_FLAGS, micro_batch_size).
VARIANTS = {
    "default": ("", None),
    "micro_batch_8": ("", 8),
    "eigen_single_thread": ("--xla_cpu_multi_thread_eigen=false", None),
    "fast_math": ("--xla_cpu_enable_fast_math=true", None),
}
VARIANT_CASE = "eq_cnn/fmnist"


def _run_subprocess(args: Sequence[str], *, env_flags: str = "",
                    timeout: float = 900) -> tuple[int, str, float]:
  env = dict(os.environ)
  if env_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + env_flags).strip()
  start = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, *args], env=env, timeout=timeout,
                          capture_output=True, text=True, check=False)
    output = proc.stdout + ("\n" + proc.stderr[-2000:] if proc.returncode
                            else "")
    code = proc.returncode
  except subprocess.TimeoutExpired:
    output, code = f"timed out after {timeout:.0f} s", -1
  return code, output.strip(), time.perf_counter() - start


def run_variants(*, batch_size: int, views: Sequence[int], rounds: int,
                 log=print) -> list[dict[str, Any]]:
  """models_overhead for VARIANT_CASE under each of VARIANTS (subprocesses)."""
  rows = []
  for name, (flags, micro) in VARIANTS.items():
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / "out.json"
      args = ["-m", "experiments.bench.models_overhead", "--cases",
              VARIANT_CASE, "--batch_size", str(batch_size), "--views",
              ",".join(map(str, views)), "--rounds", str(rounds), "--json",
              str(out)]
      if micro:
        args += ["--micro_batch_size", str(micro)]
      code, output, _ = _run_subprocess(args, env_flags=flags)
      if code or not out.exists():
        log(f"variant {name}: failed ({output[-300:]})")
        rows.append({"variant": name, "xla_flags": flags, "failed": output})
        continue
      for row in json.loads(out.read_text())["rows"]:
        row.update(variant=name, xla_flags=flags)
        rows.append(row)
        log(f"variant {name} K={row['num_views']}: private "
            f"{row['private_s'] * 1e3:.1f} ms, ratio {row['ratio']:.2f}")
  return rows


def run_components(*, full: bool, log=print) -> dict[str, dict[str, Any]]:
  """The other benchmarks of this folder, each in its own process."""
  results = {}
  for module, (bounded, full_args) in COMPONENTS.items():
    name = f"experiments.bench.{module}"
    if importlib.util.find_spec(name) is None:
      results[module] = {"skipped": "module not present"}
      continue
    code, output, seconds = _run_subprocess(
        ["-m", name, *(full_args if full else bounded)])
    log(f"{module}: exit {code} in {seconds:.0f} s")
    results[module] = {"exit_code": code, "seconds": seconds,
                       "output": output[-6000:]}
  return results


def render(payload: dict[str, Any]) -> str:
  """The markdown results page of one `make bench` run."""
  machine = payload["machine"]
  rows = [r for r in payload["models"] if "skipped" not in r]
  skipped = [r for r in payload["models"] if "skipped" in r]
  lines = [
      f"# dpeq benchmarks ({machine['backend']})", "",
      f"Written by `{payload['command']}` on {payload['date']}.", "",
      common.machine_line(machine), "",
      "## Private update vs non-private update", "",
      "Same model, same augmented views, same optimizer (SGD, momentum 0.9); "
      "private = per-example gradients of the mean loss over K views, "
      "clipping, sum, Gaussian noise (dpeq.training.update); non-private = "
      "the gradient of the mean loss over all B * K views. Median seconds "
      "per update over interleaved rounds; ratio = private / non-private; "
      "ex/s and img/s (= ex/s * K) of the private update; XLA MiB: "
      "arguments + outputs + temporaries of the compiled step; RSS peak "
      "+MiB: growth of the process' peak resident memory during the case.",
      "", common.markdown_table(rows, models_overhead.TABLE_COLUMNS), "",
  ]
  if rows:
    ratios = sorted(r["ratio"] for r in rows)
    lines += [f"Ratio over all rows: min {ratios[0]:.2f}, median "
              f"{ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f} "
              "(target <= 1.3).", ""]
  for r in skipped:
    lines.append(f"- {r['case']}: skipped ({r['skipped']})")
  if payload.get("variants"):
    ok = [r for r in payload["variants"] if "failed" not in r]
    lines += ["", f"## XLA:CPU variants ({VARIANT_CASE})", "",
              common.markdown_table(ok, (("variant", "variant"),
                                         ("xla_flags", "XLA_FLAGS"),
                                         ("micro_batch_size", "micro-batch"),
                                         ("num_views", "K"),
                                         ("private_s", "private s"),
                                         ("non_private_s", "non-private s"),
                                         ("ratio", "ratio"))), ""]
    for r in payload["variants"]:
      if "failed" in r:
        lines.append(f"- {r['variant']}: failed")
  for module, result in payload.get("components", {}).items():
    lines += ["", f"## {module}", ""]
    if "skipped" in result:
      lines.append(f"skipped: {result['skipped']}")
    else:
      lines += [f"exit {result['exit_code']}, {result['seconds']:.0f} s", "",
                "```", result["output"], "```"]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--full", action="store_true",
                      help="all cases, K in {1, 4, 16}")
  parser.add_argument("--flags", action="store_true",
                      help="also time XLA:CPU flag / micro-batch variants")
  parser.add_argument("--cases", default=None)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--views", default=None)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--conv_grads", default="dpeq",
                      help="comma-separated kernel-gradient formulations to "
                      "time: dpeq (the library's), patches (see "
                      "models_overhead.patch_conv_gradients)")
  parser.add_argument("--per_example_grads", default="vmap,ghost",
                      help="comma-separated private-step strategies: vmap "
                      "(per-example gradients), ghost (dpeq.privacy.ghost_clipping)")
  parser.add_argument("--no_components", action="store_true")
  parser.add_argument("--results_dir", default=str(RESULTS_DIR))
  args = parser.parse_args(argv)
  cases = (args.cases.split(",") if args.cases else
           list(models_overhead.CASES if args.full
                else models_overhead.DEFAULT_CASES))
  views = ([int(v) for v in args.views.split(",")] if args.views else
           list(FULL_VIEWS if args.full else DEFAULT_VIEWS))
  batch_size, rounds = args.batch_size, args.rounds

  start = time.perf_counter()
  payload = {
      "command": "python -m experiments.bench.run "
                 + " ".join(argv if argv is not None else sys.argv[1:]),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "machine": common.machine_info(),
      "settings": {"batch_size": batch_size, "views": views,
                   "rounds": rounds, "cases": cases,
                   "conv_grads": args.conv_grads,
                   "per_example_grads": args.per_example_grads},
  }
  results_dir = pathlib.Path(args.results_dir)
  stem = f"bench_{payload['machine']['backend']}"

  def save():
    payload["total_s"] = time.perf_counter() - start
    common.write_json(results_dir / f"{stem}.json", payload)
    (results_dir / f"{stem}.md").write_text(render(payload))

  payload["models"] = []
  for case in cases:  # Results are saved after every case.
    for conv_grad in args.conv_grads.split(","):
      for strategy in args.per_example_grads.split(","):
        payload["models"] += models_overhead.run(
            [case], batch_size=batch_size, views=views, rounds=rounds,
            conv_grad=conv_grad, per_example_grads=strategy)
        save()
  if args.flags:
    payload["variants"] = run_variants(batch_size=batch_size, views=views[:1],
                                       rounds=rounds)
    save()
  if not args.no_components:
    payload["components"] = run_components(full=args.full)
  save()
  print(f"wrote {results_dir / stem}.md and .json "
        f"({payload['total_s']:.0f} s)")
  return payload


if __name__ == "__main__":
  main()
