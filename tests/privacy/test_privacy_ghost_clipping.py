"""Ghost clipping equals per-example instantiation on every registered model.

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
import pytest

from dpeq import models
from dpeq.privacy import clipping, ghost_layers
from dpeq.privacy.ghost_clipping import find_taps, ghost_gradients

# name -> (model kwargs, image side, channels): small layouts and 16x16
# images (the smallest every model takes), same layers as full size.
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
    "eq_wrn": ({"group": "C4", "depth": 10}, 16, 3),
    "resnet9": ({"layout": (4, 8, 16)}, 16, 3),
    "wrn": ({"depth": 10, "width": 1}, 16, 3),
}
# K = 4 (the views' cross terms) on every model; K = 1 on one of each kind.
PAIRS = [(case, 4) for case in sorted(CASES)] + [
    (case, 1) for case in ("cnn_tramer", "eq_tramer_cnn_d1", "resnet9",
                           "eq_resnet9_so2")]
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


@pytest.mark.parametrize("case,num_views", PAIRS)
def test_ghost_norms_and_clipped_sum_equal_vmap(case, num_views):
  with jax.enable_x64(True):
    _check_ghost_equals_vmap(case, num_views)


def _check_ghost_equals_vmap(case, num_views):
  loss_fn, params, batch, mask = _setup(case, num_views)

  @functools.partial(jax.jit, static_argnames=("l2_clip_norm", "strategy"))
  def clipped(l2_clip_norm, strategy):
    return clipping.clipped_grad_sum(
        loss_fn, params, batch, mask, l2_clip_norm=l2_clip_norm,
        per_example_gradients=strategy)

  norms = np.asarray(jax.jit(
      lambda: clipping.vmap_gradients(loss_fn, params, batch).norms)())
  real = [i for i in range(BATCH) if i not in (PADDED, NONFINITE)]
  assert np.all(np.isfinite(norms[real]) & (norms[real] > 0))
  assert not np.isfinite(norms[NONFINITE])
  # A clip norm between the two real rows' norms: one clipped, one not.
  clip = float(np.mean(norms[real]))
  reference = clipped(clip, clipping.vmap_gradients)
  assert int(reference.num_nonfinite) == 1
  routes = (None,) if case not in ("cnn_tramer", "wrn") else (
      None, "ghost", "instantiate")
  for route in routes:
    strategy = functools.partial(ghost_gradients, route=route)
    result = clipped(clip, strategy)
    got = np.asarray(result.per_example_norms)
    np.testing.assert_allclose(got[real], norms[real], rtol=TOLERANCE)
    assert got[PADDED] == 0 and not np.isfinite(got[NONFINITE])
    assert int(result.num_clipped) == int(reference.num_clipped) == 1
    assert int(result.num_nonfinite) == 1
    assert _relative(result.grad_sum, reference.grad_sum) < TOLERANCE, route
    assert jax.tree.structure(result.grad_sum) == jax.tree.structure(params)


def test_every_parameter_is_tapped_once_and_routes_follow_the_rule():
  loss_fn, params, batch, _ = _setup("cnn_tramer", 4)
  taps = find_taps(loss_fn, params, batch)
  assert set(taps) == set(params)
  for tap in taps.values():
    choice = tap.rule.choice((BATCH,) + tap.input_shape,
                             (BATCH,) + tap.output_shape)
    assert choice.route == ghost_layers.mixed_route(
        choice.positions, choice.fan_in, choice.fan_out)
  # conv1: 4 views x 8 x 8 positions, p = 8 * 8, d = 16 -> instantiate;
  # the classifier: T = 4, p = 32, d = 10 -> ghost.
  conv1 = taps["tramer_cnn/conv1"]
  assert conv1.rule.choice((BATCH,) + conv1.input_shape,
                           (BATCH,) + conv1.output_shape).route == (
                               "instantiate")
  head = [t for n, t in taps.items() if n.endswith("classifier")][0]
  assert head.rule.choice((BATCH,) + head.input_shape,
                          (BATCH,) + head.output_shape).route == "ghost"


def test_unsupported_layer_is_named_in_the_error():
  model = models.create("nf_resnet50", num_classes=10)
  images = jnp.zeros((2, 1, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), images[:1, 0])

  def loss_fn(p, views):
    return jnp.sum(model.apply(p, views), axis=-1), ()

  with pytest.raises(ghost_layers.UnsupportedLayerError,
                     match=r"NFBottleneck.*per_example_grads='vmap'"):
    jax.eval_shape(lambda p: ghost_gradients(loss_fn, p, images).norms,
                   params)
