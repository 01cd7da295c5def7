"""Pretrain on public CIFAR-10 classes, fine-tune privately on the others.

  python -m experiments.reproduce.cifar10_finetune [--eps 3 1] [--seeds 0]
      [--stages finetune finetune_head scratch] [--model eq_tramer_cnn_d1]
  python -m experiments.reproduce.cifar10_finetune --table

Runs experiments/configs/cifar10_finetune.py: one non-private pretraining
run on classes 0-4, then, for every eps and seed, the private runs on classes
5-9 from the pretrained parameters (all of them, or only a fresh classifier)
and from scratch, at the same epsilon, updates and batch size. Each finished
run appends a JSON line to experiments/results/cifar10_finetune_runs.jsonl
(skipped when already there; a killed run resumes from its checkpoints) and
the table experiments/results/cifar10_finetune.md is rewritten from them.
The test accuracies are on the 5,000 test images of the run's own classes.
"""

import argparse
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

from dpeq.training import loop
from experiments.bench import common
from experiments.configs import cifar10_finetune
from experiments.reproduce import harness

RESULTS = harness.RESULTS_DIR
RUNS_FILE = RESULTS / "cifar10_finetune_runs.jsonl"
TABLE_FILE = RESULTS / "cifar10_finetune.md"
WORKDIRS = pathlib.Path("runs/cifar10_finetune")
PARAMS = ("last", "ema_0.999", "polyak")
COMMAND = "python -m experiments.reproduce.cifar10_finetune"


def _records() -> list[dict[str, Any]]:
  if not RUNS_FILE.exists():
    return []
  return [json.loads(line) for line in RUNS_FILE.read_text().splitlines()
          if line.strip()]


def _run(key: str, arg: str, *, seed: int, workdir: pathlib.Path,
         init_from: pathlib.Path | None) -> dict[str, Any]:
  """Trains one stage unless recorded; returns its record."""
  for record in _records():
    if record["key"] == key:
      return record
  config = cifar10_finetune.get_config(arg)
  config.seed = seed
  config.logging.tensorboard = False
  config.logging.progress_bar = False
  if config.finetune.init_from is not None:
    config.finetune.init_from = str(init_from)
  print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)
  start = time.perf_counter()
  final = loop.train(config, workdir=workdir)
  record = {
      "key": key, "arg": arg, "seed": seed,
      "stage": arg.split(",")[0].split("=")[1],
      "model": config.model.name, "model_kwargs": config.model.kwargs.to_dict(),
      "classes": list(config.data.classes),
      "trainable": config.finetune.trainable,
      "init_from": config.finetune.init_from,
      "epsilon": float(final["epsilon"]), "delta": float(final["delta"]),
      "noise_multiplier": float(final["noise_multiplier"]),
      "num_updates": int(final["num_updates"]),
      "expected_batch_size": int(config.training.expected_batch_size),
      "accuracy": {p: float(final[f"{p}/accuracy"]) for p in PARAMS
                   if f"{p}/accuracy" in final},
      "wall_s": time.perf_counter() - start,
      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "load_average_1min": common.machine_info()["load_average_1min"],
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  with open(RUNS_FILE, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")
  print(f"  -> {record['accuracy']} ({record['wall_s']:.0f} s)", flush=True)
  return record


def write_table() -> pathlib.Path:
  """Rewrites the markdown table from the recorded runs."""
  records = _records()
  lines = [
      "# Private fine-tuning from a public pretraining run (CIFAR-10 by class)",
      "",
      f"Command: `{COMMAND}` (config experiments/configs/cifar10_finetune.py).",
      "Public data: classes 0-4 (pretraining, non-private); private data: "
      "classes 5-9 (25,000 training images; accuracy on their 5,000 test "
      "images). Every private run: Poisson sampling, delta 1e-5, PLD, 400 "
      "updates of expected batch 512, sigma calibrated to eps, K = 1. "
      "Machine: the 2-core development CPU; wall-clock includes the load "
      "recorded.",
      "",
      "| stage | model | eps | seed | trainable | test acc. last | EMA 0.999 "
      "| Polyak | epsilon spent | sigma | wall (s) | load |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in sorted(records, key=lambda r: (r["stage"] != "pretrain",
                                          r["arg"], r["seed"])):
    eps = r["arg"].split("eps=")[1].split(",")[0] if "eps=" in r["arg"] else "-"
    acc = [f"{100 * r['accuracy'].get(p, float('nan')):.2f}%" for p in PARAMS]
    lines.append(
        f"| {r['stage']} | {r['model']} {r['model_kwargs'] or ''} | "
        f"{eps if r['stage'] != 'pretrain' else 'inf'} | {r['seed']} | "
        f"{r['trainable']} | {' | '.join(acc)} | {r['epsilon']:.3g} | "
        f"{r['noise_multiplier']:.3g} | {r['wall_s']:.0f} | "
        f"{r['load_average_1min']:.1f} |")
  gains = []
  by_key = {(r["stage"], r["arg"].split("stage=")[1].split(",", 1)[-1],
             r["seed"]): r for r in records}
  for (stage, rest, seed), r in sorted(by_key.items()):
    scratch = by_key.get(("scratch", rest, seed))
    if stage.startswith("finetune") and scratch is not None:
      best = max(r["accuracy"].values())
      base = max(scratch["accuracy"].values())
      gains.append(f"- {stage} ({rest}, seed {seed}): {100 * best:.2f}% vs "
                   f"{100 * base:.2f}% from scratch: "
                   f"{100 * (best - base):+.2f} points (best of last / EMA / "
                   "Polyak each).")
  if gains:
    lines += ["", "Gain of fine-tuning over training from scratch at the same "
              "epsilon:", "", *gains]
  TABLE_FILE.write_text("\n".join(lines) + "\n")
  return TABLE_FILE


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--eps", type=int, nargs="+", default=[3, 1])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--stages", nargs="+",
                      default=list(cifar10_finetune.STAGES[1:]),
                      choices=cifar10_finetune.STAGES[1:])
  parser.add_argument("--model", default="eq_tramer_cnn_d1",
                      choices=cifar10_finetune.MODELS)
  parser.add_argument("--table", action="store_true",
                      help="only rewrite the table from the recorded runs")
  args = parser.parse_args(argv)
  if not args.table:
    pretrain = pathlib.Path(
        cifar10_finetune.PRETRAIN_WORKDIR.format(model=args.model))
    _run(f"pretrain_{args.model}", f"stage=pretrain,model={args.model}",
         seed=0, workdir=pretrain, init_from=None)
    for eps in args.eps:
      for seed in args.seeds:
        for stage in args.stages:
          arg = f"stage={stage},eps={eps},model={args.model}"
          key = f"{stage}_eps{eps}_{args.model}_seed{seed}"
          _run(key, arg, seed=seed, workdir=WORKDIRS / key, init_from=pretrain)
          write_table()
  print(write_table())


if __name__ == "__main__":
  main()
