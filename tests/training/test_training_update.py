"""The private update end to end on a tiny conv net."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from dpeq.models import finetune
from dpeq.privacy.plan import PrivacyPlan
from dpeq.privacy.sampling import BatchSelection
from dpeq.training import update
from dpeq.training.micro_batching import MicroBatching

BATCH, EXPECTED, CLIP, LR = 8, 6, 2.0, 0.5


def _net(images):
  x = jax.nn.relu(hk.Conv2D(3, 3, stride=2)(images))
  return hk.Linear(3)(jnp.mean(x, axis=(-3, -2)))


_MODEL = hk.without_apply_rng(hk.transform(_net))


def _loss_fn(params, views):
  logits = _MODEL.apply(params, views["images"])
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, views["labels"])
  return losses, {"loss": jnp.mean(losses)}


def _views_fn(key, batch):
  """K = 3 views: the image, its mirror, and a noisy copy."""
  images = batch["images"]
  noisy = images + 0.1 * jax.random.normal(key, images.shape)
  views = jnp.stack([images, images[:, :, ::-1], noisy], axis=1)
  labels = jnp.repeat(batch["labels"][:, None], 3, axis=1)
  return {"images": views, "labels": labels}


@pytest.fixture(scope="module")
def data():
  params = jax.jit(_MODEL.init)(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))
  rng = np.random.default_rng(0)
  batch = {
      "images": jnp.asarray(
          rng.normal(size=(BATCH, 6, 6, 2))
          * rng.uniform(0.02, 3.0, size=(BATCH, 1, 1, 1)), jnp.float32),
      "labels": jnp.asarray(rng.integers(0, 3, BATCH), jnp.int32),
  }
  mask = jnp.asarray([True] * 5 + [False, True, False])
  return params, batch, mask


def _naive_clipped_sum(params, views, mask, clip):
  grad = jax.jit(jax.grad(lambda p, v: jnp.mean(_loss_fn(p, v)[0])))
  total = jax.tree.map(lambda p: np.zeros(p.shape), params)
  num_clipped = 0
  for i in np.flatnonzero(np.asarray(mask)):
    g = grad(params, jax.tree.map(lambda x, i=i: x[i], views))
    norm = float(optax.tree.norm(g))
    num_clipped += norm > clip
    factor = min(1.0, clip / norm)
    total = jax.tree.map(lambda t, g, f=factor: t + f * g, total, g)
  return total, num_clipped


def _plan(noise_multiplier, *, non_private=False, rescale=False):
  return PrivacyPlan(l2_clip_norm=CLIP, noise_multiplier=noise_multiplier,
                     expected_batch_size=EXPECTED, num_updates=1,
                     non_private=non_private, rescale_to_unit_norm=rescale)


def _make(noise_multiplier, *, non_private=False, views_fn=None,
          rescale=False, **kwargs):
  return update.make_private_update(
      loss_fn=_loss_fn, optimizer=optax.sgd(LR),
      plan=_plan(noise_multiplier, non_private=non_private, rescale=rescale),
      views_fn=views_fn, **kwargs)


def _micro_batched_update(private, state, batch, mask, *, key, micro):
  """One logical batch through the runner's micro-batching path: micro-batch
  i augmented with fold_in(key, i), merged, then ONE apply."""
  clipped = jax.jit(lambda p, b, m, k: private.clipped_grads(p, b, m, key=k))
  selection = BatchSelection(indices=np.arange(BATCH), mask=np.asarray(mask))

  def micro_step(index, part):
    rows = jax.tree.map(lambda x: x[part.indices], batch)
    return clipped(state.params, rows, jnp.asarray(part.mask),
                   jax.random.fold_in(key, index))

  total = MicroBatching(micro_batch_size=micro).accumulate(
      selection, micro_step=micro_step, merge=lambda a, b: a.merge(b))
  assert total.aux["loss"].shape == (BATCH,)
  return jax.jit(private.apply)(state, total.totals())


def test_noiseless_update_is_sgd_on_the_clipped_mean(data):
  params, batch, mask = data
  private = _make(0.0, non_private=True, views_fn=_views_fn)
  state = private.init(params, key=jax.random.key(1))
  key = jax.random.key(2)
  new_state, metrics = _micro_batched_update(private, state, batch, mask,
                                             key=key, micro=4)
  # Micro-batch i is augmented with fold_in(key, i).
  views = [_views_fn(jax.random.fold_in(key, i),
                     jax.tree.map(lambda x, s=4 * i: x[s:s + 4], batch))
           for i in range(2)]
  views = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *views)
  expected_sum, num_clipped = _naive_clipped_sum(params, views, mask, CLIP)
  for new, old, g in zip(jax.tree.leaves(new_state.params),
                         jax.tree.leaves(params),
                         jax.tree.leaves(expected_sum), strict=True):
    np.testing.assert_allclose(new, old - LR * g / EXPECTED, rtol=1e-5,
                               atol=1e-7)
  assert 0 < num_clipped < 6
  assert int(metrics["nonprivate/num_examples"]) == 6
  assert float(metrics["nonprivate/fraction_clipped"]) == pytest.approx(
      num_clipped / 6)
  assert float(metrics["noise_std"]) == 0.0
  assert int(new_state.update_step) == 1
  assert int(new_state.privatizer_state.update_step) == 1


@pytest.mark.parametrize("micro", [1, 2, 4])
def test_micro_batching_does_not_change_the_update(data, micro):
  params, batch, mask = data
  private = _make(0.0, non_private=True)  # K = 1, no augmentation.
  state = private.init(params, key=jax.random.key(5))
  key = jax.random.key(6)
  whole, whole_metrics = jax.jit(private.update)(state, batch, mask, key=key)
  looped, metrics = _micro_batched_update(private, state, batch, mask,
                                          key=key, micro=micro)
  for a, b in zip(jax.tree.leaves((whole.params, whole.opt_state)),
                  jax.tree.leaves((looped.params, looped.opt_state)),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for name in ("nonprivate/num_examples", "nonprivate/fraction_clipped",
               "nonprivate/mean_grad_norm"):
    assert float(metrics[name]) == pytest.approx(float(whole_metrics[name]))


def test_noise_has_the_calibrated_scale_and_depends_only_on_the_key(data):
  params, batch, mask = data
  sigma = 2.0
  # Many coordinates, so that the noise can be tested statistically.
  wide = dict(params, extra={"w": jnp.zeros(20_000)})
  loss = lambda p, v: (_loss_fn(p, v)[0] + 0.0 * jnp.sum(p["extra"]["w"]),
                       ())
  private = update.make_private_update(loss_fn=loss, optimizer=optax.sgd(LR),
                                       plan=_plan(sigma))
  run = jax.jit(private.update)

  def new_params(noise_key):
    state = private.init(wide, key=jax.random.key(noise_key))
    new_state, metrics = run(state, batch, mask, key=jax.random.key(0))
    assert float(metrics["noise_std"]) == pytest.approx(sigma * CLIP)
    return np.concatenate([np.ravel(x)
                           for x in jax.tree.leaves(new_state.params)])

  runs = {k: new_params(k) for k in (3, 4, 5, 6)}
  np.testing.assert_array_equal(runs[3], new_params(3))  # Same key.
  # Same data, so differences of two runs are differences of two noises:
  # (n_a - n_b) * EXPECTED / LR ~ N(0, 2 (sigma C)^2) if keys are independent.
  diff = lambda a, b: (runs[a] - runs[b]) * EXPECTED / LR
  std = np.sqrt(2) * sigma * CLIP
  assert stats.kstest(diff(3, 4), stats.norm(scale=std).cdf).pvalue > 1e-3
  # The same test rejects the scale a division by a realised batch of 5
  # (instead of the expected 6) would give.
  wrong = std * EXPECTED / 5
  assert stats.kstest(diff(3, 4), stats.norm(scale=wrong).cdf).pvalue < 1e-6
  n = len(runs[3])
  assert abs(np.corrcoef(diff(3, 4), diff(5, 6))[0, 1]) < 4 / np.sqrt(n)


def test_rescale_to_unit_norm_uses_sensitivity_one(data):
  params, batch, mask = data
  private = _make(1.0, rescale=True)
  state = private.init(params, key=jax.random.key(0))
  clipped = jax.jit(private.clipped_grads)(params, batch, mask,
                                           key=jax.random.key(0))
  assert clipped.sensitivity == 1.0
  _, metrics = private.apply(state, clipped.totals())
  assert float(metrics["noise_std"]) == 1.0
  other = _make(1.0)
  with pytest.raises(ValueError, match="sensitivity"):
    other.apply(other.init(params, key=jax.random.key(0)), clipped)


def test_bad_averages_and_uncalibrated_plans_are_rejected():
  with pytest.raises(ValueError, match="EMA decay"):
    _make(1.0, ema_decays=(1.0,))
  uncalibrated = PrivacyPlan(l2_clip_norm=1.0, expected_batch_size=8,
                             target_epsilon=1.0, num_updates=10)
  with pytest.raises(ValueError, match="calibrated"):
    update.make_private_update(loss_fn=_loss_fn, optimizer=optax.sgd(LR),
                               plan=uncalibrated)


def test_fine_tuning_clips_noises_and_moves_only_the_trainable_leaves(data):
  """partition: the classifier trains; the conv stays bit-identical, in the
  params and in every average; the noise dimension is the classifier's."""
  params, batch, mask = data
  # Rename the head so that finetune.split_trainable finds it.
  params = {("classifier" if name == "linear" else name): value
            for name, value in params.items()}
  model = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(
      3, name="classifier")(jnp.mean(jax.nn.relu(hk.Conv2D(3, 3, stride=2)(
          x)), axis=(-3, -2)))))
  assert set(params) == set(jax.jit(model.init)(
      jax.random.key(0), jnp.zeros((1, 6, 6, 2))))

  def loss_fn(p, views):
    logits = model.apply(p, views["images"])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, views["labels"]), {}

  partition = lambda p: finetune.split_trainable(p, trainable="classifier")
  private = update.make_private_update(
      loss_fn=loss_fn, optimizer=optax.sgd(LR), plan=_plan(3.0),
      ema_decays=(0.9,), polyak=True, partition=partition)
  state = private.init(params, key=jax.random.key(0))
  # The optimizer and the noise see the classifier only.
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      optax.sgd(LR).init(partition(params)[0]))
  step = jax.jit(private.update)
  for i in range(3):
    state, _ = step(state, batch, mask, key=jax.random.key(i))
  for tree in (state.params, *state.averages.values()):
    np.testing.assert_array_equal(tree["conv2_d"]["w"], params["conv2_d"]["w"])
    np.testing.assert_array_equal(tree["conv2_d"]["b"], params["conv2_d"]["b"])
    assert not np.allclose(tree["classifier"]["w"], params["classifier"]["w"])
  # The clipped norm is that of the classifier's gradient alone.
  clipped = private.clipped_grads(params, batch, mask, key=jax.random.key(0))
  assert set(clipped.grad_sum) == {"classifier"}
  head_grad = jax.grad(lambda w, i: jnp.mean(loss_fn(
      {**params, "classifier": w},
      jax.tree.map(lambda x: x[i][None], batch))[0]))
  norm = optax.tree.norm(head_grad(params["classifier"], 0))
  np.testing.assert_allclose(clipped.per_example_norms[0], norm, rtol=1e-5)


def test_noisy_grad_metrics_see_the_mean_the_optimizer_gets(data):
  """apply's own noise-side metrics: no caller rebuilds the privatizer."""
  params, batch, mask = data
  private = update.make_private_update(
      loss_fn=_loss_fn, optimizer=optax.sgd(LR), plan=_plan(1.0),
      noisy_grad_metrics=lambda g: {"first_leaf": jax.tree.leaves(g)[0]})
  state = private.init(params, key=jax.random.key(1))
  new_state, metrics = jax.jit(private.update)(state, batch, mask,
                                               key=jax.random.key(0))
  seen = jax.tree.leaves(jax.tree.map(
      lambda new, old: (old - new) / LR, new_state.params, state.params))[0]
  # Plain SGD: the update is -LR times the noisy mean the metric saw.
  np.testing.assert_allclose(metrics["first_leaf"], seen, rtol=1e-5,
                             atol=1e-6)
