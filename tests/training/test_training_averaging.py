"""EMA (with De et al.'s warm-up) and Polyak averages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpeq.privacy.plan import PrivacyPlan
from dpeq.privacy.sampling import BatchSelection
from dpeq.training import averaging, update
from dpeq.training.micro_batching import MicroBatching


def test_ema_and_polyak_match_a_naive_loop():
  averager = averaging.ParamAverager(ema_decays=(0.9, 0.999), polyak=True)
  assert averager.names == ("ema_0.9", "ema_0.999", "polyak")
  rng = np.random.default_rng(0)
  sequence = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
              for _ in range(40)]
  averages = averager.init(jax.tree.map(jnp.asarray, sequence[0]))
  step = jax.jit(averager.update)
  for t, params in enumerate(sequence[1:]):
    averages = step(averages, jax.tree.map(jnp.float32, params),
                    update_index=jnp.int32(t))
  for decay in (0.9, 0.999):
    expected = sequence[0]
    for t, params in enumerate(sequence[1:]):
      mu = min(decay, (1 + t) / (10 + t))
      expected = jax.tree.map(lambda e, p, mu=mu: mu * e + (1 - mu) * p,
                              expected, params)
    for key in ("w", "b"):
      np.testing.assert_allclose(averages[f"ema_{decay}"][key],
                                 expected[key], rtol=1e-5, atol=1e-6)
  # Polyak: the plain mean of the parameters after each update.
  for key in ("w", "b"):
    np.testing.assert_allclose(
        averages["polyak"][key],
        np.mean([p[key] for p in sequence[1:]], axis=0), rtol=1e-5, atol=1e-6)


def test_warm_up_schedule():
  assert float(averaging.ema_decay(0.999, 0)) == pytest.approx(0.1)
  assert float(averaging.ema_decay(0.999, 90)) == pytest.approx(91 / 100)
  assert float(averaging.ema_decay(0.5, 10**6)) == 0.5


@pytest.mark.parametrize("decays", [(0.0,), (1.0,), (1.5,), (0.9, 0.9)])
def test_bad_decays_are_rejected(decays):
  with pytest.raises(ValueError, match="0.9|\\(0, 1\\)|duplicates"):
    averaging.ParamAverager(ema_decays=decays)


def test_averages_move_once_per_update_never_per_micro_batch():
  def loss_fn(params, views):
    pred = views["x"] @ params["w"]
    return jnp.sum((pred - views["y"]) ** 2, axis=-1), ()

  plan = PrivacyPlan(l2_clip_norm=0.5, noise_multiplier=1.0,
                     expected_batch_size=6, num_updates=3)
  private = update.make_private_update(loss_fn=loss_fn,
                                       optimizer=optax.sgd(0.1), plan=plan,
                                       ema_decays=(0.99,), polyak=True)
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}
  batch = {"x": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)}
  mask = jnp.ones(6, bool)
  state = private.init(params, key=jax.random.key(0))
  averager = averaging.ParamAverager(ema_decays=(0.99,), polyak=True)
  clipped = jax.jit(lambda p, b, m: private.clipped_grads(
      p, b, m, key=jax.random.key(0)).totals())
  apply = jax.jit(private.apply)
  selection = BatchSelection(indices=np.arange(6), mask=np.asarray(mask))

  def run(state):  # The runner's path: 3 micro-batches, then one apply.
    total = MicroBatching(micro_batch_size=2).accumulate(
        selection, micro_step=lambda i, part: clipped(
            state.params, jax.tree.map(lambda x: x[part.indices], batch),
            jnp.asarray(part.mask)),
        merge=lambda a, b: a.merge(b))
    return apply(state, total)

  expected = averager.init(params)
  for t in range(3):  # Each update has 3 micro-batches.
    state, metrics = run(state)
    expected = averager.update(expected, state.params, update_index=t)
    assert int(metrics["update_step"]) == t + 1
  assert int(state.update_step) == 3
  for name in ("ema_0.99", "polyak"):
    np.testing.assert_allclose(state.averages[name]["w"], expected[name]["w"],
                               rtol=1e-6)
