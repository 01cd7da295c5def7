"""Benchmark: the private update of whole models against a non-private one.

  python -m experiments.bench.models_overhead [--cases resnet9/cifar,...]
      [--batch_size 32 --views 1,4 --rounds 5 --micro_batch_size 16
       --json out.json]

For each case (a model at an image shape) and each augmentation
multiplicity K, on the default JAX backend, float32, both steps jitted:

  private      `make_private_update(...).update`: K augmented views per
               example (dpeq.data.augment), per-example gradients of the
               mean loss over the views (vmap), clipping, the clipped sum,
               Gaussian noise, the optimizer step;
  non_private  the same views and the same optimizer step, with the plain
               gradient of the mean loss over all B * K views.

Both run in one process in alternating rounds (median of rounds); the
headline is the ratio private / non_private of the median update times. Also
reported: examples/s (B / update time) and images/s (B * K / update time) of
the private update, the compile time of both steps, XLA's memory plan of each
executable (arguments + outputs + temporaries) and the process' peak RSS.
"""

import argparse
import contextlib
import dataclasses
import functools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from dpeq import models
from dpeq.data import augment
from dpeq.privacy.plan import PrivacyPlan
from dpeq.privacy.sampling import BatchSelection
from dpeq.training import per_example_grads
from dpeq.training import update as update_lib
from dpeq.training.micro_batching import MicroBatching
from experiments.bench import common

CIFAR_SHAPE = (32, 32, 3)
FMNIST_SHAPE = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class Case:
  """A model at an input shape.

  Attributes:
    model: a dpeq.models registry name.
    kwargs: the model's options as (name, value) pairs.
    image_shape: (H, W, C) of the images.
    crop_padding: reflect-pad width of the random crop of every view.
  """

  model: str
  kwargs: tuple[tuple[str, Any], ...]
  image_shape: tuple[int, int, int]
  crop_padding: int = 4

  def create(self) -> hk.Transformed:
    return models.create(self.model, num_classes=10, **dict(self.kwargs))


# The benchmark's cases, by name "model/shape".
CASES = {
    "cnn_tramer/fmnist": Case("cnn_tramer", (), FMNIST_SHAPE, 2),
    "eq_cnn/fmnist": Case("eq_cnn", (), FMNIST_SHAPE, 2),
    "resnet9_small/fmnist": Case("resnet9", (("layout", (16, 32, 64)),),
                                 FMNIST_SHAPE, 2),
    "eq_resnet9_d4_small/fmnist": Case(
        "eq_resnet9", (("group", "D4"), ("layout", (16, 32, 64))),
        FMNIST_SHAPE, 2),
    "resnet9/cifar": Case("resnet9", (), CIFAR_SHAPE),
    "eq_resnet9_c4/cifar": Case("eq_resnet9", (("group", "C4"),), CIFAR_SHAPE),
    "eq_resnet9_d4/cifar": Case("eq_resnet9", (("group", "D4"),), CIFAR_SHAPE),
    "eq_resnet9_c8/cifar": Case("eq_resnet9", (("group", "C8"),), CIFAR_SHAPE),
    "eq_resnet9_so2/cifar": Case("eq_resnet9", (("group", "SO2"),),
                                 CIFAR_SHAPE),
    "wrn16_4/cifar": Case("wrn", (("depth", 16), ("width", 4)), CIFAR_SHAPE),
}
# A bounded default for a shared 2-core CPU (make bench); --full: all CASES.
DEFAULT_CASES = ("cnn_tramer/fmnist", "eq_cnn/fmnist", "resnet9/cifar",
                 "eq_resnet9_d4/cifar", "wrn16_4/cifar")


# ----------------------------------------------------------------------------
# An alternative per-example gradient formulation (measured, not the default).

_XLA_CONV = lax.conv_general_dilated
_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_patch_grad(x, w, strides, pads):
  return _XLA_CONV(x, w, strides, pads, dimension_numbers=_NHWC)


def _conv_patch_grad_fwd(x, w, strides, pads):
  return _conv_patch_grad(x, w, strides, pads), (x, w)


def _conv_patch_grad_bwd(strides, pads, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(
      lambda x_: _XLA_CONV(x_, w, strides, pads, dimension_numbers=_NHWC), x)
  (dx,) = input_vjp(g)
  kh, kw, cin, cout = w.shape
  # [N, H', W', cin * kh * kw], features ordered (cin, kh, kw).
  patches = lax.conv_general_dilated_patches(
      x, (kh, kw), strides, pads, dimension_numbers=_NHWC)
  dw = jnp.einsum("nhwp,nhwo->po", patches, g)
  return dx, dw.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


_conv_patch_grad.defvjp(_conv_patch_grad_fwd, _conv_patch_grad_bwd)


def _patched_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                  rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1, batch_group_count=1, precision=None,
                  preferred_element_type=None):
  """lax.conv_general_dilated whose kernel gradient is a patch matmul.

  Under vmap (per-example gradients) XLA's kernel gradient is a convolution
  grouped over the examples; here it is im2col patches contracted with the
  output gradient, a batched matmul. Only plain 2D NHWC/HWIO convolutions are
  rewritten; anything else goes to XLA unchanged.
  """
  plain = (lhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and preferred_element_type is None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                          dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain:
    return _XLA_CONV(lhs, rhs, window_strides, padding, lhs_dilation,
                     rhs_dilation, dimension_numbers, feature_group_count,
                     batch_group_count, precision, preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return _conv_patch_grad(lhs, rhs, strides, pads)


@contextlib.contextmanager
def patch_conv_gradients() -> Iterator[None]:
  """While active (i.e. while tracing), convolutions use `_patched_conv`."""
  lax.conv_general_dilated = _patched_conv
  jax.lax.conv_general_dilated = _patched_conv
  try:
    yield
  finally:
    lax.conv_general_dilated = _XLA_CONV
    jax.lax.conv_general_dilated = _XLA_CONV


def make_loss_fn(apply_fn):
  """Per-example loss for dpeq.privacy: cross-entropy of each of K views."""

  def loss_fn(params, views):
    logits = apply_fn(params, views["images"], is_training=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, views["labels"])
    return losses, {"loss": jnp.mean(losses)}

  return loss_fn


# The private step's per-example-gradient strategies, as the runner takes them.
PER_EXAMPLE_GRADS = {name: per_example_grads.strategy(name)
                     for name in ("vmap", "ghost", "ghost_two_pass")}


def make_steps(case: Case, *, batch_size: int, num_views: int,
               micro_batch_size: int | None = None, seed: int = 0,
               per_example_grads: str = "vmap"):
  """The two jittable steps of a case and their example arguments.

  Returns:
    (private_step, private_args, non_private_step, non_private_args,
    num_params), where private_step(state, batch, mask, key) and
    non_private_step(params, opt_state, batch, key) each return the new
    state; the batch is uint8 images [B, H, W, C] and int32 labels [B].
  """
  model = case.create()
  rng = np.random.default_rng(seed)
  batch = {
      "images": jnp.asarray(rng.integers(0, 256, (batch_size,
                                                  *case.image_shape)),
                            jnp.uint8),
      "labels": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32),
  }
  mask = jnp.ones([batch_size], bool)
  key = jax.random.key(seed)
  params = model.init(jax.random.key(seed + 1),
                      jnp.zeros((1, *case.image_shape), jnp.float32))
  num_params = sum(x.size for x in jax.tree.leaves(params))
  optimizer = optax.sgd(0.1, momentum=0.9)
  views_fn = augment.views_fn(
      augment.AugmentConfig(num_views=num_views,
                            crop_padding=case.crop_padding, random_flip=True),
      mean=0.5, std=0.25)

  private = update_lib.make_private_update(
      loss_fn=make_loss_fn(model.apply), optimizer=optimizer,
      plan=PrivacyPlan(l2_clip_norm=1.0, noise_multiplier=1.0,
                       expected_batch_size=batch_size, num_updates=1),
      views_fn=views_fn,
      per_example_gradients=PER_EXAMPLE_GRADS[per_example_grads])
  state = private.init(params, key=jax.random.key(seed + 2))
  # The runner's micro-batching path, traced into one jitted step.
  batching = MicroBatching(micro_batch_size=micro_batch_size or batch_size)
  whole = BatchSelection(indices=np.arange(batch_size),
                         mask=np.ones(batch_size, bool))

  def private_step(state, batch, mask, key):
    def micro_step(index, part):
      rows = slice(int(part.indices[0]), int(part.indices[-1]) + 1)
      return private.clipped_grads(
          state.params, jax.tree.map(lambda x: x[rows], batch), mask[rows],
          key=jax.random.fold_in(key, index)).totals()

    total = batching.accumulate(whole, micro_step=micro_step,
                                merge=lambda a, b: a.merge(b))
    return private.apply(state, total)[0]

  def non_private_step(params, opt_state, batch, key):
    views = views_fn(key, batch)
    images = views["images"].reshape(-1, *case.image_shape)
    labels = views["labels"].reshape(-1)

    def mean_loss(p):
      logits = model.apply(p, images, is_training=True)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
          logits, labels))

    grads = jax.grad(mean_loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return (private_step, (state, batch, mask, key), non_private_step,
          (params, optimizer.init(params), batch, key), num_params)


def bench_case(name: str, *, batch_size: int, num_views: int, rounds: int,
               calls_per_round: int = 1, micro_batch_size: int | None = None,
               conv_grad: str = "dpeq", per_example_grads: str = "vmap"
               ) -> dict[str, Any]:
  """Times one case at one K; returns a results row (seconds, MiB).

  conv_grad: "dpeq" (the library as it is: on CPU, dpeq.privacy computes
  per-example conv weight gradients per kernel tap) or "patches"
  (`patch_conv_gradients` around both steps: im2col patch matmuls).
  per_example_grads: the private step's strategy, "vmap" (per-example
  gradients materialised) or "ghost" (dpeq.privacy.ghost_clipping: mixed
  ghost clipping).
  """
  if conv_grad not in ("dpeq", "patches"):
    raise ValueError(f"conv_grad={conv_grad!r}: use 'dpeq' or 'patches'.")
  case = CASES[name]
  rss_before = common.peak_rss_mib()
  (private_step, private_args, non_private_step, non_private_args,
   num_params) = make_steps(case, batch_size=batch_size, num_views=num_views,
                            micro_batch_size=micro_batch_size,
                            per_example_grads=per_example_grads)
  with (patch_conv_gradients() if conv_grad == "patches"
        else contextlib.nullcontext()):
    private_c, private_compile = common.compile_timed(private_step,
                                                      *private_args)
    plain_c, plain_compile = common.compile_timed(non_private_step,
                                                  *non_private_args)
  times = common.interleaved_seconds(
      {"private": lambda: private_c(*private_args),
       "non_private": lambda: plain_c(*non_private_args)},
      rounds=rounds, calls_per_round=calls_per_round)
  private_s = common.median(times["private"])
  plain_s = common.median(times["non_private"])
  return {
      "case": name,
      "model": case.model,
      "kwargs": {k: v for k, v in case.kwargs},
      "image_shape": list(case.image_shape),
      "num_params": int(num_params),
      "batch_size": batch_size,
      "num_views": num_views,
      "micro_batch_size": micro_batch_size,
      "conv_grad": conv_grad,
      "per_example_grads": per_example_grads,
      "rounds": rounds,
      "private_s": private_s,
      "non_private_s": plain_s,
      "ratio": private_s / plain_s,
      "private_examples_per_s": batch_size / private_s,
      "private_images_per_s": batch_size * num_views / private_s,
      "non_private_images_per_s": batch_size * num_views / plain_s,
      "private_compile_s": private_compile,
      "non_private_compile_s": plain_compile,
      "private_xla_mib": common.xla_memory_mib(private_c),
      "non_private_xla_mib": common.xla_memory_mib(plain_c),
      "peak_rss_delta_mib": common.peak_rss_mib() - rss_before,
      "private_times_s": times["private"],
      "non_private_times_s": times["non_private"],
  }


TABLE_COLUMNS = (
    ("case", "case"), ("per_example_grads", "per-example grads"),
    ("conv_grad", "conv grad"), ("num_params", "params"),
    ("batch_size", "B"),
    ("num_views", "K"), ("private_s", "private s"),
    ("non_private_s", "non-private s"), ("ratio", "ratio"),
    ("private_examples_per_s", "ex/s"), ("private_images_per_s", "img/s"),
    ("private_compile_s", "compile s (priv)"),
    ("non_private_compile_s", "compile s (non-priv)"),
    ("private_xla_mib", "XLA MiB (priv)"),
    ("non_private_xla_mib", "XLA MiB (non-priv)"),
    ("peak_rss_delta_mib", "RSS peak +MiB"),
)


def run(cases: Sequence[str], *, batch_size: int, views: Sequence[int],
        rounds: int, calls_per_round: int = 1,
        micro_batch_size: int | None = None, conv_grad: str = "dpeq",
        per_example_grads: str = "vmap", log=print) -> list[dict]:
  """Benchmarks every (case, K); skips a case whose model is not built."""
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    raise ValueError(f"Unknown case(s) {unknown}; known: {', '.join(CASES)}.")
  rows = []
  for name in cases:
    for num_views in views:
      start = time.perf_counter()
      try:
        row = bench_case(name, batch_size=batch_size, num_views=num_views,
                         rounds=rounds, calls_per_round=calls_per_round,
                         micro_batch_size=micro_batch_size,
                         conv_grad=conv_grad,
                         per_example_grads=per_example_grads)
      except (ImportError, ModuleNotFoundError) as e:
        log(f"{name}: skipped ({e})")
        rows.append({"case": name, "num_views": num_views,
                     "skipped": f"{type(e).__name__}: {e}"})
        break
      rows.append(row)
      log(f"{name} K={num_views} {conv_grad} {per_example_grads}: private "
          f"{row['private_s'] * 1e3:.1f} ms, "
          f"non-private {row['non_private_s'] * 1e3:.1f} ms, ratio "
          f"{row['ratio']:.2f} ({time.perf_counter() - start:.0f} s)")
  return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                      help=f"comma-separated, from: {', '.join(CASES)}")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--views", default="1,4")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--micro_batch_size", type=int, default=None)
  parser.add_argument("--conv_grad", default="dpeq",
                      choices=("dpeq", "patches"))
  parser.add_argument("--per_example_grads", default="vmap,ghost",
                      help="comma-separated, from: vmap, ghost")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  rows = []
  for strategy in args.per_example_grads.split(","):
    rows += run(args.cases.split(","), batch_size=args.batch_size,
                views=[int(v) for v in args.views.split(",")],
                rounds=args.rounds, micro_batch_size=args.micro_batch_size,
                conv_grad=args.conv_grad, per_example_grads=strategy)
  print(common.markdown_table([r for r in rows if "skipped" not in r],
                              TABLE_COLUMNS))
  if args.json:
    common.write_json(args.json, {"machine": common.machine_info(),
                                  "rows": rows})
  return rows


if __name__ == "__main__":
  main()

