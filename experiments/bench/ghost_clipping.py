"""Ghost clipping against vmap: memory plan at a large batch, small-CNN speed.

  python -m experiments.bench.ghost_clipping                 (both parts)
  python -m experiments.bench.ghost_clipping --part memory --batch_size 256
  python -m experiments.bench.ghost_clipping --part speed --batch_size 128

memory  XLA's memory plan (arguments + outputs + temporaries) of the whole
        private update with per_example_grads "vmap", "ghost" and
        "ghost_two_pass" and of the
        non-private update of the same model, one micro-batch of
        `batch_size` rows, K = 1 (compile only: independent of load).
speed   the clipped-gradient sum alone (dpeq.privacy.clipping), vmap and
        ghost interleaved, for the small CNNs of the reproductions at their
        training micro-batch.
The per-case private / non-private timings of both strategies are in
`make bench` (experiments.bench.models_overhead, "per-example grads").
"""

import argparse
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpeq import models
from dpeq.privacy import clipping
from dpeq.training import per_example_grads
from experiments.bench import common
from experiments.bench import models_overhead as overhead

MEMORY_CASES = ("resnet9/cifar", "wrn16_4/cifar", "eq_resnet9_d4/cifar",
                "cnn_tramer/fmnist")
SPEED_CASES = {
    "cnn_tramer/fmnist": ("cnn_tramer", {}, (28, 28, 1)),
    "eq_tramer_cnn_d1/fmnist": ("eq_tramer_cnn", {"group": "D1"},
                                (28, 28, 1)),
    "cnn_tramer_cifar10/cifar": ("cnn_tramer_cifar10", {}, (32, 32, 3)),
    "eq_tramer_cnn_d1/cifar": ("eq_tramer_cnn", {"group": "D1"},
                               (32, 32, 3)),
}
STRATEGIES = {name: per_example_grads.strategy(name)
              for name in ("vmap", "ghost", "ghost_two_pass")}


def memory_row(case: str, *, batch_size: int) -> dict:
  """XLA memory plan (MiB) of the private (both strategies) and plain steps."""
  row = {"case": case, "batch_size": batch_size, "num_views": 1}
  for name in STRATEGIES:
    (private_step, private_args, plain_step, plain_args,
     num_params) = overhead.make_steps(
         overhead.CASES[case], batch_size=batch_size, num_views=1,
         per_example_grads=name)
    compiled, _ = common.compile_timed(private_step, *private_args)
    row[f"{name}_mib"] = common.xla_memory_mib(compiled)
  compiled, _ = common.compile_timed(plain_step, *plain_args)
  row["non_private_mib"] = common.xla_memory_mib(compiled)
  row["num_params"] = int(num_params)
  for name in STRATEGIES:
    row[f"{name}_over_non_private"] = (row[f"{name}_mib"]
                                       / row["non_private_mib"])
  return row


def speed_row(case: str, *, batch_size: int, rounds: int) -> dict:
  """Seconds of the clipped sum per strategy (interleaved medians)."""
  name, kwargs, shape = SPEED_CASES[case]
  model = models.create(name, num_classes=10, **kwargs)
  rng = np.random.default_rng(0)
  batch = {"images": jnp.asarray(rng.normal(size=(batch_size, 1, *shape)),
                                 jnp.float32),
           "labels": jnp.asarray(rng.integers(0, 10, (batch_size, 1)),
                                 jnp.int32)}
  params = model.init(jax.random.key(0), batch["images"][:1, 0])
  mask = jnp.ones((batch_size,), bool)

  def loss_fn(p, views):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, views["images"]), views["labels"]), ()

  steps = {
      s: jax.jit(lambda p, b, st=st: clipping.clipped_grad_sum(
          loss_fn, p, b, mask, l2_clip_norm=1.0,
          per_example_gradients=st).grad_sum)
      for s, st in STRATEGIES.items()}
  times = common.interleaved_seconds(
      {s: (lambda f=f: jax.block_until_ready(f(params, batch)))
       for s, f in steps.items()}, rounds=rounds)
  row = {"case": case, "batch_size": batch_size, "num_views": 1}
  for s in STRATEGIES:
    seconds = common.median(times[s])
    row[f"{s}_s"] = seconds
    row[f"{s}_examples_per_s"] = batch_size / seconds
  row["ghost_speedup"] = row["vmap_s"] / row["ghost_s"]
  row["ghost_two_pass_speedup"] = row["vmap_s"] / row["ghost_two_pass_s"]
  return row


MEMORY_COLUMNS = (("case", "case"), ("num_params", "params"),
                  ("batch_size", "B"), ("vmap_mib", "vmap MiB"),
                  ("ghost_mib", "ghost MiB"),
                  ("ghost_two_pass_mib", "ghost 2-pass MiB"),
                  ("non_private_mib", "non-private MiB"),
                  ("vmap_over_non_private", "vmap / non-private"),
                  ("ghost_over_non_private", "ghost / non-private"),
                  ("ghost_two_pass_over_non_private",
                   "ghost 2-pass / non-private"))
SPEED_COLUMNS = (("case", "case"), ("batch_size", "B"),
                 ("vmap_examples_per_s", "vmap ex/s"),
                 ("ghost_examples_per_s", "ghost ex/s"),
                 ("ghost_two_pass_examples_per_s", "ghost 2-pass ex/s"),
                 ("ghost_speedup", "ghost speed-up"),
                 ("ghost_two_pass_speedup", "ghost 2-pass speed-up"))


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--part", default="all",
                      choices=("all", "memory", "speed"))
  parser.add_argument("--batch_size", type=int, default=None,
                      help="default: 256 (memory), 128 (speed)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  out = {"machine": common.machine_info()}
  if args.part in ("all", "memory"):
    out["memory"] = [memory_row(c, batch_size=args.batch_size or 256)
                     for c in MEMORY_CASES]
    print(common.markdown_table(out["memory"], MEMORY_COLUMNS), flush=True)
  if args.part in ("all", "speed"):
    out["speed"] = [speed_row(c, batch_size=args.batch_size or 128,
                              rounds=args.rounds) for c in SPEED_CASES]
    print(common.markdown_table(out["speed"], SPEED_COLUMNS), flush=True)
  if args.json:
    common.write_json(args.json, out)
  else:
    print(json.dumps(out, default=str))
  return out


if __name__ == "__main__":
  main()
