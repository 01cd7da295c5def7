"""What costs the equivariant models accuracy under DP on a CPU budget.

  python -m experiments.reproduce.fashion_mnist_ablation            (all arms)
  python -m experiments.reproduce.fashion_mnist_ablation --arms eqt_c4,eqt_d4
  python -m experiments.reproduce.fashion_mnist_ablation --table

Every arm trains on "train" (55k) and is evaluated on "valid" (5k) at
epsilon 3, delta 1e-5, Poisson sampling, expected batch 2048, Tramèr &
Boneh's optimizer (SGD, momentum 0.9, learning rate 4, clip norm 0.1),
unless the arm changes one of these. The arms get the SAME CPU budget, not
the same number of updates: T = BUDGET_S x (measured per-example clipped
gradients per second of the model, idle 2-core CPU) / 2048, so a model that
is twice as slow per example gets half the updates, as it would under a
wall-clock limit. THROUGHPUT holds the measured rates; `--measure` times
them again (the jitted clipped-gradient sum at B = 512, micro-batch 256).

Records go to experiments/results/fashion_mnist_ablation_runs.jsonl (one JSON
line per finished arm; a recorded arm is not rerun, a killed one resumes from
its checkpoints); the table to fashion_mnist_ablation.md.
"""

import argparse
import math
import pathlib
import time
from collections.abc import Sequence

from experiments.bench import common
from experiments.configs import fashion_mnist as fmnist_configs
from experiments.reproduce import harness

# Seconds of clipped-gradient work per arm on an idle 2-core CPU.
BUDGET_S = 240
BATCH = 2048
# Clipped per-example gradients per second (B = 512, micro-batch 256, idle
# Intel Xeon 2 cores, JAX 0.10.2), measured before the runs; eqt_d1 and
# eqt_c2 were measured while a run shared the CPU and scaled by cnn_tramer's
# idle / shared ratio (3375 / 1834); the D1 arms without group pooling run
# the same convolutions and take eqt_d1's rate (the C4 pair measured 2094
# with and 2346 without group pooling).
THROUGHPUT = {
    "cnn_tramer": 3375,
    "eq_cnn_c4": 520,
    "eqt_c4": 2094,
    "eqt_c4_no_group_pool": 2346,
    "eqt_d4": 2391,
    "eqt_c4_wide": 1462,
    "eqt_c4_elu": 2094,
    "eqt_c4_lr2": 2094,
    "eqt_d1": 2115,
    "eqt_c2": 2090,
    "eqt_d1_no_group_pool": 2115,
    "cnn_tramer_b512": 3375,
    "eqt_d1_b512": 2115,
    "eqt_d1_b256": 2115,
    "eqt_d1_no_group_pool_b512": 2115,
}
_TRAMER_OPT = {}  # the config file's recipe for cnn_tramer / eq_tramer_cnn
_EQ_CNN_AS_TRAMER = {  # eq_cnn with the same optimizer and batch as the rest
    "training.optimizer.learning_rate": 4.0,
    "training.optimizer.momentum": 0.9, "dp.l2_clip_norm": 0.1,
    "training.micro_batch_size": 256,
}
# arm -> (config model, overrides, what it tests).
ARMS = {
    "cnn_tramer": ("cnn_tramer", _TRAMER_OPT, "conventional baseline"),
    "eq_cnn_c4": ("eq_cnn", dict(_EQ_CNN_AS_TRAMER, **{
        "model.kwargs.group": "C4"}),
        "Hoelzl width rule (2.3-4.8x wider maps), 5x5 stride-1 convs"),
    "eqt_c4": ("eq_tramer_cnn", {"model.kwargs.group": "C4"},
               "Tramer widths as C4 regular fields, group pool before head"),
    "eqt_c4_no_group_pool": ("eq_tramer_cnn", {
        "model.kwargs.group": "C4", "model.kwargs.group_pool": False},
        "regular fields kept to the head (4x head params)"),
    "eqt_d4": ("eq_tramer_cnn", {"model.kwargs.group": "D4"},
               "D4 instead of C4 (half the fields, 1/2 the params)"),
    "eqt_c4_wide": ("eq_tramer_cnn", {
        "model.kwargs.group": "C4", "model.kwargs.channels": (24, 48)},
        "1.5x wider maps (fewer updates at the budget)"),
    "eqt_c4_elu": ("eq_tramer_cnn", {
        "model.kwargs.group": "C4", "model.kwargs.activation": "elu"},
        "ELU instead of tanh"),
    "eqt_d1": ("eq_tramer_cnn", {"model.kwargs.group": "D1"},
               "the mirror only (Fashion-MNIST's own symmetry), group pool"),
    "eqt_c2": ("eq_tramer_cnn", {"model.kwargs.group": "C2"},
               "180-degree rotations only, group pool"),
    "eqt_d1_no_group_pool": ("eq_tramer_cnn", {
        "model.kwargs.group": "D1", "model.kwargs.group_pool": False},
        "the mirror only, regular fields kept to the head"),
    # (the batch and a micro-batch of 128 go into the run's overrides)
    "cnn_tramer_b512": ("cnn_tramer", {"training.expected_batch_size": 512},
                        "batch 512: 4x the updates, 4x the noise per update"),
    "eqt_d1_b512": ("eq_tramer_cnn", {"model.kwargs.group": "D1",
                                      "training.expected_batch_size": 512},
                    "the mirror only at batch 512"),
    "eqt_d1_b256": ("eq_tramer_cnn", {"model.kwargs.group": "D1",
                                      "training.expected_batch_size": 256},
                    "the mirror only at batch 256"),
    "eqt_d1_no_group_pool_b512": (
        "eq_tramer_cnn", {"model.kwargs.group": "D1",
                          "model.kwargs.group_pool": False,
                          "training.expected_batch_size": 512},
        "the mirror only, regular fields to the head, batch 512"),
    "eqt_c4_lr2": ("eq_tramer_cnn", {
        "model.kwargs.group": "C4", "training.optimizer.learning_rate": 2.0},
        "learning rate 2 instead of 4"),
}

STUDY = harness.Study(
    name="fashion_mnist_ablation", title="Fashion-MNIST ablation",
    get_config=fmnist_configs.get_config,
    models={arm: (model, overrides) for arm, (model, overrides, _)
            in ARMS.items()},
    sweep={}, select_from={}, final_length={},
    sweep_batch_size=BATCH, sweep_updates=1)


def batch_size(arm: str) -> int:
  return ARMS[arm][1].get("training.expected_batch_size", BATCH)


def num_updates(arm: str) -> int:
  """Updates that spend BUDGET_S of `arm`'s measured throughput."""
  return max(1, round(BUDGET_S * THROUGHPUT[arm] / batch_size(arm)))


def run_of(arm: str) -> harness.Run:
  overrides = [("training.num_updates", num_updates(arm))]
  if batch_size(arm) != BATCH:  # the sweep stage would reset it
    overrides += [("training.expected_batch_size", batch_size(arm)),
                  ("training.micro_batch_size", 128)]
  return harness.Run(arm, 3.0, 0, tuple(sorted(overrides)), "sweep")


def table_markdown(records) -> str:
  by_key = {r["key"]: r for r in records}
  lines = [
      "| arm | what it tests | clipped grads / s | batch | T | valid last % | "
      "valid EMA % | wall-clock | load |",
      "|---|---|---|---|---|---|---|---|---|"]
  for arm, (_, _, what) in ARMS.items():
    record = by_key.get(run_of(arm).key)
    if record is None:
      lines.append(f"| {arm} | {what} | {THROUGHPUT[arm]} | "
                   f"{batch_size(arm)} | {num_updates(arm)} | (not run) | | "
                   "| |")
      continue
    acc = record["accuracy"]
    lines.append(
        f"| {arm} | {what} | {THROUGHPUT[arm]} | {batch_size(arm)} | "
        f"{record['num_updates']} | "
        f"{100 * acc.get('last', math.nan):.2f} | "
        f"{100 * acc.get('ema_0.999', math.nan):.2f} | "
        f"{record['wall_s'] / 60:.1f} min | "
        f"{record.get('load_average_1min') or 0:.1f} |")
  return "\n".join(lines)


def write_table(results_dir: pathlib.Path) -> pathlib.Path:
  records = harness.load_records(STUDY, results_dir)
  text = [
      "# Fashion-MNIST ablation: what costs equivariant models accuracy",
      "", "Written by `python -m experiments.reproduce.fashion_mnist_ablation`"
      f" from `{STUDY.runs_file}`. train (55k) -> valid (5k), eps 3, delta "
      f"1e-5, Poisson sampling, expected batch {BATCH}, SGD momentum 0.9, "
      "learning rate 4, clip norm 0.1 unless the arm says otherwise. Every "
      f"arm gets the same CPU budget: T = {BUDGET_S} s x (its clipped "
      "gradients per second, idle) / (its expected batch).", "",
      common.machine_line(common.machine_info()), "",
      table_markdown(records), "",
      "\"load\": 1-minute load average when the arm ended; wall-clock "
      "includes compilation and the final evaluation.", ""]
  path = results_dir / f"{STUDY.name}.md"
  path.write_text("\n".join(text))
  return path


def measure_throughput(arm: str, *, batch_size: int = 256,
                       repeats: int = 3) -> float:
  """Clipped per-example gradients per second of `arm`'s model on this host."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from dpeq import models  # pylint: disable=g-import-not-at-top
  from dpeq.privacy import clipping  # pylint: disable=g-import-not-at-top
  config = harness.make_config(STUDY, run_of(arm))
  model = models.create(config.model.name, num_classes=10,
                        **dict(config.model.kwargs))
  images = jnp.zeros((batch_size, 1, 28, 28, 1))
  labels = jnp.zeros((batch_size, 1), jnp.int32)
  params = model.init(jax.random.key(0), images[:2, 0])

  def loss_fn(p, views):
    logits = model.apply(p, views["image"])
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                                  views["label"][:, None], axis=1)[:, 0]
    return losses, {}

  step = jax.jit(lambda p, b, m: clipping.clipped_grad_sum(
      loss_fn, p, b, m, l2_clip_norm=1.0).grad_sum)
  batch = {"image": images, "label": labels}
  mask = jnp.ones((batch_size,), bool)
  jax.block_until_ready(step(params, batch, mask))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(step(params, batch, mask))
  return batch_size * repeats / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--table", action="store_true",
                      help="only rewrite the table from the records")
  parser.add_argument("--measure", action="store_true",
                      help="only time each arm's clipped gradients per second")
  parser.add_argument("--results_dir", default=str(harness.RESULTS_DIR))
  parser.add_argument("--workdir_root",
                      default="runs/reproduce_fashion_mnist_ablation")
  args = parser.parse_args(argv)
  results_dir = pathlib.Path(args.results_dir)
  arms = args.arms.split(",")
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise SystemExit(f"Unknown arm(s) {unknown}; use {', '.join(ARMS)}.")
  if args.measure:
    for arm in arms:
      print(f"{arm}: {measure_throughput(arm):.0f} clipped gradients / s "
            f"(recorded: {THROUGHPUT[arm]})", flush=True)
    return
  if not args.table:
    for arm in arms:
      harness.execute(STUDY, run_of(arm), results_dir=results_dir,
                      workdir_root=pathlib.Path(args.workdir_root))
      write_table(results_dir)
  print(f"wrote {write_table(results_dir)}")


if __name__ == "__main__":
  main()
