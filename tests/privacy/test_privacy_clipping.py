"""Clipped per-example gradient sums against a naive loop of jax.grad."""

import dataclasses
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpeq.privacy import clipping
from dpeq.privacy.ghost_clipping import ghost_gradients
from dpeq.privacy.sampling import BatchSelection
from dpeq.training.micro_batching import MicroBatching
from dpeq.xla import conv_weight_grads

NUM_CLASSES = 3
BATCH = 14  # Divisible by 1, 2 and 7 micro-batches.
PADDED_ROWS = (2, 9, 13)


def _net(images):
  x = jax.nn.relu(hk.Conv2D(3, 3, stride=2)(images))
  return hk.Linear(NUM_CLASSES)(jnp.mean(x, axis=(-3, -2)))


_MODEL = hk.without_apply_rng(hk.transform(_net))


def _loss_fn(params, views):
  logits = _MODEL.apply(params, views["images"])
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, views["labels"])
  return losses, {"first_logit": logits[0, 0]}


@pytest.fixture(scope="module")
def params():
  return jax.jit(_MODEL.init)(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))


def _batch(num_views, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(BATCH, num_views, 6, 6, 2)).astype(np.float32)
  images *= rng.uniform(0.1, 5.0, size=(BATCH, 1, 1, 1, 1)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, (BATCH, num_views)).astype(np.int32)
  mask = np.ones(BATCH, bool)
  mask[list(PADDED_ROWS)] = False
  images[PADDED_ROWS[0]] = np.nan  # Garbage in padding must not leak.
  return {"images": jnp.asarray(images), "labels": jnp.asarray(labels)}, (
      jnp.asarray(mask))


# One jitted entry point: calls with the same shapes and settings share one
# compilation (eager calls would compile op by op, ~6 s per shape).
_clipped = jax.jit(
    functools.partial(clipping.clipped_grad_sum, _loss_fn),
    static_argnames=("l2_clip_norm", "rescale_to_unit_norm",
                     "per_example_gradients"))


def _micro_batched(clip_fn, batch, mask, num_micro_batches):
  """The logical batch through dpeq's one micro-batching path."""
  selection = BatchSelection(indices=np.arange(BATCH), mask=np.asarray(mask))
  batching = MicroBatching(micro_batch_size=BATCH // num_micro_batches)

  def micro_step(index, part):
    del index
    rows = jax.tree.map(lambda x: x[part.indices], batch)
    return clip_fn(rows, jnp.asarray(part.mask))

  return batching.accumulate(selection, micro_step=micro_step,
                             merge=lambda a, b: a.merge(b))
# Both per-example-gradient strategies meet the same naive loop.
# The runner's CPU path (dpeq.xla: per-tap conv weight gradients) too.
STRATEGIES = {"vmap": clipping.vmap_gradients, "ghost": ghost_gradients,
              "vmap_xla": conv_weight_grads.vmap_gradients}

_single_grad = jax.jit(jax.grad(lambda p, v: jnp.mean(_loss_fn(p, v)[0])))


def _naive(params, batch, mask, l2_clip_norm, rescale=False):
  """A Python loop over examples, float64 accumulation."""
  total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
  norms = []
  for i in range(BATCH):
    if not mask[i]:
      norms.append(0.0)
      continue
    views = jax.tree.map(lambda x, i=i: x[i], batch)
    grad = jax.tree.map(lambda g: np.asarray(g, np.float64),
                        _single_grad(params, views))
    norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grad)))
    norms.append(norm)
    factor = min(1.0, l2_clip_norm / norm)
    if rescale:
      factor /= l2_clip_norm
    total = jax.tree.map(lambda t, g, f=factor: t + f * g, total, grad)
  return total, np.array(norms)


def _assert_tree_close(actual, expected, rtol=1e-5, atol=1e-7):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol)


# Without jit every new shape compiles op by op (~6 s each on CPU), so the
# eager path runs on two of the six (views, micro-batches) combinations.
@pytest.mark.parametrize("use_jit,num_views,num_micro_batches,strategy", [
    (True, 1, 1, "vmap"), (True, 1, 2, "vmap"), (True, 1, 7, "vmap"),
    (True, 4, 1, "vmap"), (True, 4, 2, "vmap"), (True, 4, 7, "vmap"),
    (False, 1, 2, "vmap"), (False, 4, 1, "vmap"),
    (True, 1, 1, "ghost"), (True, 4, 2, "ghost"), (True, 4, 7, "ghost"),
    (True, 1, 1, "vmap_xla"), (True, 4, 2, "vmap_xla"),
])
def test_clipped_sum_equals_naive_loop(params, use_jit, num_views,
                                       num_micro_batches, strategy):
  batch, mask = _batch(num_views)
  _, norms = _naive(params, batch, mask, 1.0)
  # Clip between two middle norms: both branches (clipped / kept) run.
  ordered = np.sort(norms[np.asarray(mask)])
  clip = float(ordered[len(ordered) // 2 - 1:len(ordered) // 2 + 1].mean())
  expected, norms = _naive(params, batch, mask, clip)
  clip_fn = _clipped if use_jit else functools.partial(
      clipping.clipped_grad_sum, _loss_fn)
  result = _micro_batched(
      lambda b, m: clip_fn(params, b, m, l2_clip_norm=clip,
                           per_example_gradients=STRATEGIES[strategy]),
      batch, mask, num_micro_batches)
  _assert_tree_close(result.grad_sum, expected)
  np.testing.assert_allclose(result.per_example_norms, norms, rtol=1e-5)
  real = np.asarray(mask)
  assert int(result.num_examples) == real.sum()
  assert int(result.num_clipped) == np.sum(norms[real] > clip)
  assert 0 < int(result.num_clipped) < real.sum()
  assert int(result.num_nonfinite) == 0
  np.testing.assert_allclose(result.norm_sum, norms[real].sum(), rtol=1e-5)
  np.testing.assert_allclose(result.norm_max, norms.max(), rtol=1e-5)
  assert result.aux["first_logit"].shape == (BATCH,)
  assert result.sensitivity == clip


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_rescale_to_unit_norm_matches_naive_and_has_sensitivity_one(
    params, strategy):
  batch, mask = _batch(2, seed=1)
  clip = 0.05
  expected, _ = _naive(params, batch, mask, clip, rescale=True)
  strategy = STRATEGIES[strategy]
  result = _clipped(params, batch, mask, l2_clip_norm=clip,
                    rescale_to_unit_norm=True, per_example_gradients=strategy)
  _assert_tree_close(result.grad_sum, expected)
  assert result.sensitivity == 1.0
  # Each rescaled contribution has norm <= 1: removing any one example moves
  # the sum by at most 1 (and by ~1 here, since every example is clipped).
  for i in np.flatnonzero(np.asarray(mask)):
    removed = _clipped(params, batch, mask.at[i].set(False), l2_clip_norm=clip,
                       rescale_to_unit_norm=True,
                       per_example_gradients=strategy)
    diff = optax.tree.norm(
        jax.tree.map(jnp.subtract, result.grad_sum, removed.grad_sum))
    assert 0.99 < float(diff) <= 1.0 + 1e-6


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_nonfinite_rows_contribute_zero_and_are_counted(params, strategy):
  batch, mask = _batch(1, seed=2)
  images = np.array(batch["images"])
  images[0] = np.nan
  images[5] = np.inf
  poisoned = dict(batch, images=jnp.asarray(images))
  clean_mask = mask.at[0].set(False).at[5].set(False)
  result = _clipped(params, poisoned, mask, l2_clip_norm=0.5,
                    per_example_gradients=STRATEGIES[strategy])
  expected, _ = _naive(params, batch, clean_mask, 0.5)
  _assert_tree_close(result.grad_sum, expected)
  assert int(result.num_nonfinite) == 2
  assert int(result.num_examples) == int(mask.sum())
  assert np.isfinite(float(result.norm_sum))


def test_merge_adds_sums_and_concatenates_rows(params):
  batch, mask = _batch(1, seed=3)
  whole = _clipped(params, batch, mask, l2_clip_norm=0.5)
  half = BATCH // 2
  parts = [
      _clipped(params, jax.tree.map(lambda x, s=s: x[s:s + half], batch),
               mask[s:s + half], l2_clip_norm=0.5)
      for s in (0, half)
  ]
  merged = parts[0].merge(parts[1])
  _assert_tree_close(merged.grad_sum, whole.grad_sum)
  np.testing.assert_allclose(merged.per_example_norms, whole.per_example_norms,
                             rtol=1e-6)
  assert int(merged.num_clipped) == int(whole.num_clipped)
  totals = merged.totals()
  assert totals.per_example_norms is None and totals.aux is None
  with pytest.raises(ValueError, match="sensitivit"):
    parts[0].merge(dataclasses.replace(parts[1], sensitivity=0.25))


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_clip_norm_is_rejected(params, clip):
  batch, mask = _batch(1)
  with pytest.raises(ValueError, match="l2_clip_norm"):
    clipping.clipped_grad_sum(_loss_fn, params, batch, mask, l2_clip_norm=clip)


def test_bad_shapes_and_micro_batch_are_rejected(params):
  batch, mask = _batch(1)
  selection = BatchSelection(indices=np.arange(BATCH), mask=np.asarray(mask))
  with pytest.raises(ValueError, match="pad_multiple=4"):
    list(MicroBatching(micro_batch_size=4).split(selection))
  with pytest.raises(ValueError, match="pad_multiple=8"):
    list(MicroBatching(micro_batch_size=4, num_devices=2).split(selection))
  with pytest.raises(ValueError, match=r"\[B, K"):
    clipping.clipped_grad_sum(_loss_fn, params, batch, mask[:5],
                              l2_clip_norm=1.0)
  with pytest.raises(ValueError, match="bool"):
    clipping.clipped_grad_sum(_loss_fn, params, batch, mask.astype(jnp.int32),
                              l2_clip_norm=1.0)
