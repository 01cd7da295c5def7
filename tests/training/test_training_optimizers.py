"""Optimizers and schedules: semantics against hand-written updates."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpeq.training import optimizers


def _run(optimizer, grads, params):
  state = optimizer.init(params)
  trajectory = []
  for g in grads:
    updates, state = optimizer.update(g, state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  return trajectory


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_decoupled_weight_decay(nesterov):
  lr, mu, wd = 0.1, 0.9, 0.01
  rng = np.random.default_rng(0)
  grads = [jnp.asarray(rng.normal(size=3), jnp.float32) for _ in range(5)]
  p0 = jnp.asarray([1.0, -2.0, 0.5])
  got = _run(optimizers.make_optimizer(name="sgd", learning_rate=lr,
                                       momentum=mu, nesterov=nesterov,
                                       weight_decay=wd), grads, p0)
  p, m = np.asarray(p0, np.float64), np.zeros(3)
  for g, actual in zip(grads, got, strict=True):
    m = np.asarray(g) + mu * m
    direction = np.asarray(g) + mu * m if nesterov else m
    # Decoupled: the decay bypasses the momentum buffer.
    p = p - lr * (direction + wd * p)
    np.testing.assert_allclose(actual, p, rtol=1e-5)


def test_plain_sgd_and_adamw_follow_optax():
  grads = [jnp.asarray([0.3, -1.0]), jnp.asarray([0.1, 0.2])]
  p0 = jnp.asarray([1.0, 1.0])
  sgd = _run(optimizers.make_optimizer(name="sgd", learning_rate=0.5), grads,
             p0)
  np.testing.assert_allclose(sgd[-1], p0 - 0.5 * (grads[0] + grads[1]),
                             rtol=1e-6)
  ours = _run(optimizers.make_optimizer(name="adamw", learning_rate=0.1,
                                        weight_decay=0.05, b1=0.8), grads, p0)
  ref = _run(optax.adamw(0.1, b1=0.8, weight_decay=0.05), grads, p0)
  np.testing.assert_allclose(ours[-1], ref[-1], rtol=1e-6)


@pytest.mark.parametrize("name", optimizers.available())
def test_every_optimizer_descends_a_quadratic(name):
  optimizer = optimizers.make_optimizer(name=name, learning_rate=0.05)
  params = jnp.asarray([3.0, -2.0])
  state = optimizer.init(params)
  for _ in range(50):
    updates, state = optimizer.update(2 * params, state, params)
    params = optax.apply_updates(params, updates)
  assert float(jnp.sum(params**2)) < 13.0 * 0.5


def test_schedules():
  constant = optimizers.make_schedule(name="constant", learning_rate=2.0,
                                      num_updates=None)
  assert float(constant(1000)) == 2.0
  cosine = optimizers.make_schedule(name="cosine", learning_rate=2.0,
                                    num_updates=100)
  assert [float(cosine(t)) for t in (0, 50, 100)] == pytest.approx(
      [2.0, 1.0, 0.0], abs=1e-6)
  warm = optimizers.make_schedule(name="warmup_cosine", learning_rate=2.0,
                                  num_updates=110, warmup_updates=10)
  assert [float(warm(t)) for t in (0, 5, 10, 60, 110)] == pytest.approx(
      [0.0, 1.0, 2.0, 1.0, 0.0], abs=1e-6)
  piecewise = optimizers.make_schedule(
      name="piecewise", learning_rate=2.0, num_updates=100,
      boundaries=(10, 50), scales=(0.5, 0.1))
  assert [float(piecewise(t)) for t in (0, 9, 10, 49, 50, 99)] == (
      pytest.approx([2.0, 2.0, 1.0, 1.0, 0.1, 0.1]))
  # A schedule plugs into an optimizer.
  optimizer = optimizers.make_optimizer(name="sgd", learning_rate=cosine)
  assert optimizer.init(jnp.zeros(2)) is not None


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="rmsprop"), "not one of"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(momentum=1.0), "momentum"),
    (dict(nesterov=True), "momentum > 0"),
    (dict(name="adam", momentum=0.9), "SGD options"),
    (dict(name="adam", weight_decay=0.1), "adamw"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(name="adamw", b2=1.0), "b2"),
])
def test_bad_optimizer_settings_are_rejected(kwargs, match):
  args = dict(name="sgd", learning_rate=0.1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    optimizers.make_optimizer(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="linear"), "not one of"),
    (dict(name="cosine", num_updates=None), "num_updates"),
    (dict(name="warmup_cosine", warmup_updates=100), "warmup_updates"),
    (dict(name="constant", warmup_updates=5), "warmup_cosine"),
    (dict(name="piecewise", boundaries=(10, 5), scales=(1.0, 1.0)),
     "increasing"),
    (dict(name="piecewise", boundaries=(10,), scales=()), "scales"),
])
def test_bad_schedules_are_rejected(kwargs, match):
  args = dict(learning_rate=1.0, num_updates=100)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    optimizers.make_schedule(**args)
