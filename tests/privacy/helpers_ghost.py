"""Shared by the ghost-vs-vmap tests (not collected): cases and the check.

Ghost clipping equals per-example instantiation on every registered model.

For each model, K in {1, 4} views, a batch with a padded row (garbage
pixels) and a non-finite row: the per-example norms and the clipped sum of
`ghost_gradients` (mixed routes, and each route forced) against those of
`vmap_gradients`.

In float64, to 1e-8 relative: the two compute the same numbers by different
contractions, and in float32 their difference is rounding of the size of
each one's own error (up to 3e-5 relative on the deeper equivariant nets at
initialisation, where float32 vmap itself is 4e-4 away from the float64
value on eq_wrn); float64 makes the check sharp. The float32 paths are
checked against naive loops in tests/privacy (rtol 1e-5).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpeq import models
from dpeq.privacy.ghost_clipping import ghost_gradients
from dpeq.xla import conv_weight_grads

# name -> (model kwargs, image side, channels): small layouts and 16x16
# images (8x8 for the WRNs), about the smallest each takes; same layers.
CASES = {
    "cnn_tramer": ({}, 16, 1),
    "cnn_tramer_cifar10": ({}, 16, 3),
    "eq_cnn": ({"group": "C4"}, 16, 1),
    "eq_tramer_cnn_d1": ({"group": "D1"}, 16, 1),
    "eq_tramer_cnn_c4": ({"group": "C4"}, 16, 3),
    "eq_resnet9_c4": ({"group": "C4", "layout": (4, 8, 16)}, 16, 3),
    "eq_resnet9_d4": ({"group": "D4", "layout": (4, 8, 16)}, 16, 3),
    "eq_resnet9_c8": ({"group": "C8", "layout": (4, 8, 16)}, 16, 3),
    "eq_resnet9_so2": ({"group": "SO2", "layout": (4, 8, 16)}, 16, 3),
    # scaled weight standardization, no group pooling (the defaults)
    "eq_resnet9_lean_d1": ({"group": "D1", "channels": (4, 8, 16)}, 16, 3),
    "eq_wrn": ({"group": "C4", "depth": 10}, 8, 3),
    "resnet9": ({"layout": (4, 8, 16)}, 16, 3),
    "wrn": ({"depth": 10, "width": 1}, 8, 3),
}
# K = 4 (the views' cross terms) on every model; K = 1 on one of each kind.
PAIRS = [(case, 4) for case in sorted(CASES)] + [
    (case, 1) for case in ("cnn_tramer", "eq_tramer_cnn_d1", "resnet9",
                           "eq_resnet9_so2")]
# Every route forced (where the layer allows it) on these.
FORCED_ROUTES = ("cnn_tramer",)
BATCH = 4
PADDED, NONFINITE = 2, 3
TOLERANCE = 1e-8  # relative, float64


def _setup(case, num_views):
  kwargs, side, channels = CASES[case]
  name = case.rsplit("_", 1)[0] if case.startswith(("eq_tramer", "eq_res")) \
      else case
  model = models.create(name, num_classes=10, **kwargs)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(BATCH, num_views, side, side, channels))
  images[PADDED] = 1e6  # garbage in padding
  images[NONFINITE, -1, 0, 0, 0] = np.nan  # one pixel of one view
  labels = rng.integers(0, 10, (BATCH, num_views))
  real_dtype = jax.dtypes.canonicalize_dtype(jnp.float64)  # f32 without x64
  batch = {"images": jnp.asarray(images, real_dtype),
           "labels": jnp.asarray(labels, jnp.int32)}
  mask = jnp.asarray([i != PADDED for i in range(BATCH)])
  params = model.init(jax.random.key(0), batch["images"][:1, 0])
  params = jax.tree.map(lambda x: x.astype(real_dtype), params)

  def loss_fn(p, views):
    logits = model.apply(p, views["images"])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, views["labels"]), ()

  return loss_fn, params, batch, mask


def _relative(a, b):
  diff = optax.tree.norm(jax.tree.map(jnp.subtract, a, b))
  return float(diff / optax.tree.norm(b))


def check_ghost_equals_vmap(case, num_views):
  """Norms and weighted (clipped) sums of both strategies, float64."""
  with jax.enable_x64(True):
    _check(case, num_views)


def _check(case, num_views):
  loss_fn, params, batch, mask = _setup(case, num_views)
  routes = (None, "ghost", "instantiate") if case in FORCED_ROUTES else (
      None,)
  # The reference: vmap as the runner runs it on CPU (dpeq.xla's per-tap
  # conv weight gradients). Plain vmap is not usable here: XLA:CPU's
  # float64 grouped convolutions (vmapped conv weight gradients) spread a
  # non-finite example to every example of the batch.
  strategies = [conv_weight_grads.vmap_gradients] + [
      functools.partial(ghost_gradients, route=r) for r in routes] + [
      functools.partial(ghost_gradients, two_pass=True)]

  # Params are an argument, as in training: XLA:CPU (jaxlib 0.10.2)
  # constant-folds eq_wrn's backward pass wrongly when its params are
  # compile-time constants and the input is not (47% off; right without
  # the constant_folding pass, eager, or with params as arguments).
  @jax.jit
  def run(params, weights):  # one compilation: every strategy, any weights
    results = [s(loss_fn, params, batch) for s in strategies]
    return ([r.norms for r in results],
            [r.weighted_sum(weights) for r in results])

  run = functools.partial(run, params)
  norms, _ = run(jnp.zeros(BATCH, batch["images"].dtype))
  reference = np.asarray(norms[0])
  real = [i for i in range(BATCH) if i not in (PADDED, NONFINITE)]
  assert np.all(np.isfinite(reference[real]) & (reference[real] > 0))
  assert not np.isfinite(reference[NONFINITE])
  # Clip factors as clipped_grad_sum makes them, with a clip norm between
  # the two real rows' norms (one clipped, one not); 0 drops the padded
  # and the non-finite row.
  clip = float(np.mean(reference[real]))
  weights = np.zeros(BATCH)
  weights[real] = np.minimum(1.0, clip / reference[real])
  assert 0 < np.sum(weights[real] < 1) < len(real)
  norms, sums = run(jnp.asarray(weights, batch["images"].dtype))
  names = [f"route={r}" for r in routes] + ["two_pass"]
  for route, got, total in zip(names, norms[1:], sums[1:], strict=True):
    got = np.asarray(got)
    np.testing.assert_allclose(got[real], reference[real], rtol=TOLERANCE,
                               err_msg=str(route))
    assert not np.isfinite(got[NONFINITE])
    assert jax.tree.structure(total) == jax.tree.structure(params)
    assert np.isfinite(float(optax.tree.norm(total)))
    assert _relative(total, sums[0]) < TOLERANCE, route
