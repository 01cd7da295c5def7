"""Benchmark: what DP-SGD costs over non-private training of the same model.

  python -m experiments.bench.privacy_overhead --out runs/bench/privacy \
      [--models small_cnn,wrn16_4 --views 1,4 --micro_batch_sizes 8,16,32
       --num_micro_batches 2 --rounds 5]

For each model, augmentation multiplicity K and micro-batch size m, on the
default JAX backend, float32, one logical batch of L = m * num_micro_batches
examples (each with K views, 32x32x3 by default):

  private      the runner's loop: one jitted `clipped_grads` per micro-batch
               (per-example gradients of the mean loss over the K views by
               vmap, clipping, masked sum), merged, then one jitted `apply`
               (Gaussian noise, SGD step);
  non_private  the same loop over the same images: one jitted gradient of the
               mean loss over the m * K images per micro-batch, summed, then
               one jitted SGD step.

Both run interleaved in one process (median of rounds); the headline is the
ratio private / non_private of the update times, in wall-clock and in
process CPU time (steadier on a shared machine). Also: examples/s (L / time),
images/s (L * K / time), compile time of the per-micro-batch functions, XLA's
memory plan of each (arguments + outputs + temporaries) and the process'
peak RSS after the case (monotone over the run).

On XLA:CPU, the runner's vmap strategy computes conv weight gradients per
kernel tap (dpeq.xla.conv_weight_grads); the second table compares that with plain
vmap(grad) and a Python loop over examples.

Models: "small_cnn" (3 conv layers, ~25k params) and "wrn16_4" (a WRN-16-4
with De et al.'s layout: pre-activation ReLU -> GroupNorm(16) -> conv, ~2.7M
params), both defined here; "dpeq:NAME" plugs in dpeq.models.create(NAME).
"""

import argparse
import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpeq.privacy import clipping
from dpeq.privacy.plan import PrivacyPlan
from dpeq.training import update as update_lib
from dpeq.xla import conv_weight_grads
from experiments.bench import common

NUM_CLASSES = 10


def _small_cnn(images: jax.Array) -> jax.Array:
  x = images
  for channels in (16, 32, 64):
    x = jax.nn.relu(hk.Conv2D(channels, 3)(x))
    x = hk.max_pool(x, 2, 2, "VALID")
  return hk.Linear(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


def _wrn16_4(images: jax.Array) -> jax.Array:
  """WRN-16-4 sized: 2 blocks per stage, widths 64, 128, 256."""
  def norm_act(x):
    return hk.GroupNorm(16)(jax.nn.relu(x))

  x = hk.Conv2D(16, 3)(images)
  for stage, width in enumerate((64, 128, 256)):
    for block in range(2):
      stride = 2 if stage > 0 and block == 0 else 1
      h = norm_act(x)
      shortcut = x
      if block == 0:
        shortcut = hk.Conv2D(width, 1, stride=stride)(h)
      h = hk.Conv2D(width, 3, stride=stride)(h)
      h = hk.Conv2D(width, 3)(norm_act(h))
      x = shortcut + h
  x = jnp.mean(norm_act(x), axis=(1, 2))
  return hk.Linear(NUM_CLASSES)(x)


LOCAL_MODELS = {"small_cnn": _small_cnn, "wrn16_4": _wrn16_4}


def build_model(name: str) -> Callable[[Any, jax.Array], jax.Array]:
  """(init, apply) of a local model or of "dpeq:NAME" from dpeq.models."""
  if name.startswith("dpeq:"):
    from dpeq import models  # Only when asked: the registry is optional.
    transformed = models.create(name[len("dpeq:"):], num_classes=NUM_CLASSES)
    return transformed.init, functools.partial(transformed.apply,
                                               is_training=True)
  if name not in LOCAL_MODELS:
    raise ValueError(
        f"Unknown model {name!r}: use one of {sorted(LOCAL_MODELS)} or "
        "'dpeq:NAME' for a dpeq.models registry name.")
  transformed = hk.without_apply_rng(hk.transform(LOCAL_MODELS[name]))
  return transformed.init, transformed.apply


@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  views: int
  micro_batch_size: int
  num_micro_batches: int
  image_size: int


def interleaved_wall_and_cpu(fns: dict[str, Callable[[], Any]], *,
                             rounds: int) -> dict[str, dict[str, float]]:
  """Median wall and process-CPU seconds per call, in alternating rounds.

  CPU time (all threads of this process) is the steadier figure on a
  shared machine: waiting for a core does not count.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      wall_start, cpu_start = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      wall[name].append(time.perf_counter() - wall_start)
      cpu[name].append(time.process_time() - cpu_start)
  return {name: {"wall": common.median(wall[name]),
                 "cpu": common.median(cpu[name])} for name in fns}


def run_case(case: Case, *, rounds: int) -> dict[str, Any]:
  """Times the private and the non-private update of one case."""
  init, apply = build_model(case.model)
  m, k, s = case.micro_batch_size, case.views, case.image_size
  rng = np.random.default_rng(0)
  micro_batches = [
      {"images": jnp.asarray(rng.normal(size=(m, k, s, s, 3)), jnp.float32),
       "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, (m, k)),
                             jnp.int32)}
      for _ in range(case.num_micro_batches)]
  mask = jnp.ones(m, bool)
  params = jax.jit(init)(jax.random.key(0), micro_batches[0]["images"][:, 0])
  num_params = sum(x.size for x in jax.tree.leaves(params))

  def loss_fn(p, views):  # One example, K views.
    logits = apply(p, views["images"])
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, views["labels"])
    return losses, ()

  optimizer = optax.sgd(0.1)
  logical = m * case.num_micro_batches
  plan = PrivacyPlan(l2_clip_norm=1.0, noise_multiplier=1.0,
                     expected_batch_size=logical, num_updates=1)
  private = update_lib.make_private_update(
      loss_fn=loss_fn, optimizer=optimizer, plan=plan,
      per_example_gradients=conv_weight_grads.vmap_gradients,
      views_fn=lambda key, batch: batch)  # The micro-batches hold the views.
  state = private.init(params, key=jax.random.key(1))
  key = jax.random.key(2)

  def clipped_grads(p, batch, mask):
    return private.clipped_grads(p, batch, mask, key=key)

  def mean_grad(p, batch):
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
    def mean_loss(p):
      logits = apply(p, flat["images"])
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits, flat["labels"]))
    return jax.grad(mean_loss)(p)

  def non_private_apply(p, opt_state, grad_sum):
    grads = jax.tree.map(lambda g: g / case.num_micro_batches, grad_sum)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  clipped_exe, clipped_compile = common.compile_timed(
      clipped_grads, params, micro_batches[0], mask)
  grad_exe, grad_compile = common.compile_timed(
      mean_grad, params, micro_batches[0])
  sample = clipped_exe(params, micro_batches[0], mask).totals()
  apply_exe, apply_compile = common.compile_timed(private.apply, state,
                                                  sample)
  opt_state = optimizer.init(params)
  non_private_exe, _ = common.compile_timed(non_private_apply, params,
                                            opt_state, params)

  def private_update():
    total = None
    for batch in micro_batches:
      part = clipped_exe(state.params, batch, mask).totals()
      total = part if total is None else total.merge(part)
    return apply_exe(state, total)

  def non_private_update():
    total = None
    for batch in micro_batches:
      grads = grad_exe(params, batch)
      total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    return non_private_exe(params, opt_state, total)

  times = interleaved_wall_and_cpu(
      {"private": private_update, "non_private": non_private_update},
      rounds=rounds)
  private_s = times["private"]["wall"]
  non_private_s = times["non_private"]["wall"]
  return {
      **dataclasses.asdict(case),
      "num_params": int(num_params),
      "logical_batch": logical,
      "private_s": private_s,
      "non_private_s": non_private_s,
      "ratio": private_s / non_private_s,
      "private_cpu_s": times["private"]["cpu"],
      "non_private_cpu_s": times["non_private"]["cpu"],
      "cpu_ratio": times["private"]["cpu"] / times["non_private"]["cpu"],
      "private_examples_per_s": logical / private_s,
      "non_private_examples_per_s": logical / non_private_s,
      "private_images_per_s": logical * k / private_s,
      "non_private_images_per_s": logical * k / non_private_s,
      "private_compile_s": clipped_compile + apply_compile,
      "non_private_compile_s": grad_compile,
      "private_xla_mib": common.xla_memory_mib(clipped_exe),
      "non_private_xla_mib": common.xla_memory_mib(grad_exe),
      "peak_rss_mib": common.peak_rss_mib(),
  }


def per_example_grad_alternatives(model: str, *, batch_size: int,
                                  image_size: int, rounds: int
                                  ) -> list[dict[str, Any]]:
  """Per-example gradient formulations against one batch gradient.

  vmap(grad) as JAX makes it (conv weight gradients become grouped convs),
  with per-tap dot-product weight gradients (dpeq.xla.conv_weight_grads),
  dpeq's clipped_grad_sum (per-example grads + clipping + sum), and a Python
  loop over examples. All compute the same backward-pass FLOPs; the
  differences are what XLA makes of them on this backend.
  """
  init, apply = build_model(model)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch_size, image_size, image_size,
                                        3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size), jnp.int32)
  params = jax.jit(init)(jax.random.key(0), images[:1])

  def loss(p, x, y):
    logits = apply(p, x)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  taps = conv_weight_grads.with_tap_weight_grads(loss)
  one = lambda p, x, y: jax.grad(loss)(p, x[None], y[None])
  one_taps = lambda p, x, y: jax.grad(taps)(p, x[None], y[None])
  fns = {
      "batch_grad": jax.jit(jax.grad(loss)),
      "vmap_grad": jax.jit(jax.vmap(one, in_axes=(None, 0, 0))),
      "vmap_grad_tap_weight_grads": jax.jit(
          jax.vmap(one_taps, in_axes=(None, 0, 0))),
      "clipped_grad_sum": jax.jit(lambda p, x, y: clipping.clipped_grad_sum(
          lambda p, v: (loss(p, v["x"], v["y"])[None], ()), p,
          {"x": x[:, None], "y": y[:, None]}, jnp.ones(len(y), bool),
          l2_clip_norm=1.0,
          per_example_gradients=conv_weight_grads.vmap_gradients).grad_sum),
      "python_loop_grad": jax.jit(lambda p, x, y: [
          one(p, x[i], y[i]) for i in range(batch_size)]),
  }
  compile_s = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(params, images, labels))
    compile_s[name] = time.perf_counter() - start
  times = interleaved_wall_and_cpu(
      {name: functools.partial(fn, params, images, labels)
       for name, fn in fns.items()}, rounds=rounds)
  base = times["batch_grad"]
  return [{"model": model, "batch_size": batch_size, "method": name,
           "seconds": t["wall"], "ratio": t["wall"] / base["wall"],
           "cpu_ratio": t["cpu"] / base["cpu"],
           "first_call_s": compile_s[name]} for name, t in times.items()]


COLUMNS = [
    ("model", "model"), ("views", "K"), ("micro_batch_size", "micro"),
    ("logical_batch", "L"), ("ratio", "private / non-private (wall)"),
    ("cpu_ratio", "(CPU time)"),
    ("private_examples_per_s", "private ex/s"),
    ("non_private_examples_per_s", "non-private ex/s"),
    ("private_images_per_s", "private img/s"),
    ("private_compile_s", "private compile s"),
    ("non_private_compile_s", "non-private compile s"),
    ("private_xla_mib", "private XLA MiB"),
    ("non_private_xla_mib", "non-private XLA MiB"),
    ("peak_rss_mib", "peak RSS MiB"),
]
ALTERNATIVE_COLUMNS = [
    ("model", "model"), ("batch_size", "B"), ("method", "per-example method"),
    ("seconds", "seconds"), ("ratio", "/ batch grad (wall)"),
    ("cpu_ratio", "(CPU time)"),
    ("first_call_s", "first call s"),
]


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/bench/privacy_overhead")
  parser.add_argument("--models", default="small_cnn,wrn16_4")
  parser.add_argument("--views", default="1,4")
  parser.add_argument("--micro_batch_sizes", default="8,16,32")
  parser.add_argument("--num_micro_batches", type=int, default=2)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument(
      "--alternatives_batch", type=int, default=8,
      help="batch of the per-example-gradient comparison (0: skip it).")
  args = parser.parse_args(argv)

  machine = common.machine_info()
  rows, alternatives = [], []
  for model in args.models.split(","):
    for views in _ints(args.views):
      for micro in _ints(args.micro_batch_sizes):
        case = Case(model=model, views=views, micro_batch_size=micro,
                    num_micro_batches=args.num_micro_batches,
                    image_size=args.image_size)
        rows.append(run_case(case, rounds=args.rounds))
        print(common.markdown_table(rows[-1:], COLUMNS), flush=True)
    if args.alternatives_batch:
      alternatives += per_example_grad_alternatives(
          model, batch_size=args.alternatives_batch,
          image_size=args.image_size, rounds=args.rounds)

  out = pathlib.Path(args.out)
  common.write_json(out / "privacy_overhead.json",
                    {"machine": machine, "args": vars(args), "cases": rows,
                     "per_example_alternatives": alternatives})
  text = "\n\n".join([
      "# Privacy overhead: private vs non-private update",
      common.machine_line(machine),
      common.markdown_table(rows, COLUMNS),
      "## Per-example gradients: formulations vs one batch gradient",
      common.markdown_table(alternatives, ALTERNATIVE_COLUMNS),
  ]) + "\n"
  (out / "privacy_overhead.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
