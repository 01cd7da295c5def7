"""Empirical sensitivity of the clipped sum on neighbouring batches."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpeq.privacy import clipping
from dpeq.privacy.ghost_clipping import ghost_gradients
from dpeq.xla import conv_weight_grads

CLIP = 0.3
BATCH, VIEWS = 8, 2
FREE_ROW = 6  # Padding in the base batch: where an example gets added.


def _net(images):
  x = jax.nn.relu(hk.Conv2D(3, 3, stride=2)(images))
  x = jnp.mean(x, axis=(-3, -2))
  return hk.Linear(3)(jax.nn.relu(hk.Linear(5)(x)))


_MODEL = hk.without_apply_rng(hk.transform(_net))


def _loss_fn(params, views):
  logits = _MODEL.apply(params, views["images"])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, views["labels"]), ()


_clipped = jax.jit(
    functools.partial(clipping.clipped_grad_sum, _loss_fn),
    static_argnames=("l2_clip_norm", "rescale_to_unit_norm",
                     "per_example_gradients"))
# Both per-example-gradient strategies: materialised (vmap) and ghost norms.
# The runner's CPU path (dpeq.xla: per-tap conv weight gradients) too.
STRATEGIES = {"vmap": clipping.vmap_gradients, "ghost": ghost_gradients,
              "vmap_xla": conv_weight_grads.vmap_gradients}


@pytest.fixture(scope="module")
def setup():
  params = jax.jit(_MODEL.init)(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(BATCH, VIEWS, 6, 6, 2)).astype(np.float32)
  labels = rng.integers(0, 3, (BATCH, VIEWS)).astype(np.int32)
  mask = np.ones(BATCH, bool)
  mask[FREE_ROW:] = False
  return params, images, labels, mask


def _neighbours(images, labels, mask):
  """(name, images, mask, distance in add/remove steps) of neighbours."""
  def added(content):
    new_images = images.copy()
    new_images[FREE_ROW] = content
    new_mask = mask.copy()
    new_mask[FREE_ROW] = True
    return new_images, new_mask

  removed = mask.copy()
  removed[0] = False
  replaced = images.copy()
  replaced[0] = 1e4 * images[1]
  yield "added", *added(images[1][::-1]), 1
  yield "added_huge", *added(1e4 * images[2]), 1
  yield "added_nan", *added(np.full_like(images[0], np.nan)), 1
  yield "added_inf", *added(np.full_like(images[0], np.inf)), 1
  yield "removed_or_padded", images, removed, 1
  yield "replaced_by_huge", replaced, mask, 2


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("rescale", [False, True])
def test_neighbouring_batches_differ_by_at_most_the_sensitivity(
    setup, rescale, strategy):
  params, images, labels, mask = setup
  run = lambda im, m: _clipped(
      params, {"images": jnp.asarray(im), "labels": jnp.asarray(labels)},
      jnp.asarray(m), l2_clip_norm=CLIP, rescale_to_unit_norm=rescale,
      per_example_gradients=STRATEGIES[strategy])
  base = run(images, mask)
  sensitivity = base.sensitivity
  assert sensitivity == (1.0 if rescale else CLIP)
  distances = {}
  for name, new_images, new_mask, steps in _neighbours(images, labels, mask):
    other = run(new_images, new_mask)
    assert other.sensitivity == sensitivity
    diff = float(optax.tree.norm(
        jax.tree.map(jnp.subtract, base.grad_sum, other.grad_sum)))
    assert np.isfinite(diff), name
    assert diff <= steps * sensitivity + 1e-6, (name, diff, sensitivity)
    distances[name] = diff
    expected_nonfinite = 1 if name in ("added_nan", "added_inf") else 0
    assert int(other.num_nonfinite) == expected_nonfinite, name
  # The bound is attained by a huge example (its gradient is clipped to
  # exactly the sensitivity), and non-finite examples add exactly nothing.
  np.testing.assert_allclose(distances["added_huge"], sensitivity, rtol=1e-4)
  assert distances["added_nan"] == 0.0
  assert distances["added_inf"] == 0.0
  assert distances["replaced_by_huge"] > sensitivity
