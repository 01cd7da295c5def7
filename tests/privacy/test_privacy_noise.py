"""The Gaussian privatizer: scale, averaging, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpeq.privacy import noise

SIGMA, SENSITIVITY, EXPECTED_BATCH = 1.7, 0.6, 100


def _privatizer(key=0, sigma=SIGMA):
  return noise.gaussian_privatizer(
      noise_multiplier=sigma, sensitivity=SENSITIVITY,
      expected_batch_size=EXPECTED_BATCH, key=jax.random.key(key))


def _zeros():
  return {"a": jnp.zeros(58000), "b": {"w": jnp.zeros((40, 50))}}


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_noise_on_the_sum_has_std_sigma_times_sensitivity():
  grad_sum = jax.tree.map(lambda z: z + 3.0, _zeros())
  privatizer = _privatizer()
  out, state = jax.jit(privatizer.update)(grad_sum,
                                          privatizer.init(grad_sum))
  assert int(state.update_step) == 1
  # Undo the averaging by the EXPECTED batch size, remove the signal.
  draws = _flat(out) * EXPECTED_BATCH - 3.0
  std = SIGMA * SENSITIVITY
  assert stats.kstest(draws, stats.norm(scale=std).cdf).pvalue > 1e-3
  # The same test tells apart the scale a privatizer would have that divided
  # by a realised batch of 90 instead of the expected 100.
  wrong_std = std * EXPECTED_BATCH / 90
  assert stats.kstest(draws, stats.norm(scale=wrong_std).cdf).pvalue < 1e-6


def test_same_key_same_noise_and_steps_are_independent():
  zeros = _zeros()
  privatizer = _privatizer(key=7)
  update = jax.jit(privatizer.update)
  state0 = privatizer.init(zeros)
  out0, state1 = update(zeros, state0)
  again, _ = jax.jit(_privatizer(key=7).update)(zeros, state0)  # A new one.
  np.testing.assert_array_equal(_flat(out0), _flat(again))
  out1, _ = update(zeros, state1)
  other_key, _ = update(zeros, _privatizer(key=8).init(zeros))
  n = _flat(out0).size
  bound = 4 / np.sqrt(n)  # 4 standard errors of a correlation.
  for other in (out1, other_key):
    assert abs(np.corrcoef(_flat(out0), _flat(other))[0, 1]) < bound
  # Leaves get independent draws too.
  a, w = np.asarray(out0["a"][:2000]), np.ravel(out0["b"]["w"])
  assert abs(np.corrcoef(a, w)[0, 1]) < 4 / np.sqrt(2000)
  std = SIGMA * SENSITIVITY / EXPECTED_BATCH
  assert stats.kstest(_flat(out1), stats.norm(scale=std).cdf).pvalue > 1e-3


def test_zero_noise_only_averages():
  grad_sum = {"a": jnp.arange(5.0)}
  privatizer = _privatizer(sigma=0.0)
  out, _ = privatizer.update(grad_sum, privatizer.init(grad_sum))
  np.testing.assert_allclose(out["a"], np.arange(5.0) / EXPECTED_BATCH)


@pytest.mark.parametrize("kwargs", [
    dict(noise_multiplier=-1.0), dict(sensitivity=0.0),
    dict(expected_batch_size=0), dict(noise_multiplier=float("nan")),
])
def test_bad_arguments_are_rejected(kwargs):
  args = dict(noise_multiplier=1.0, sensitivity=1.0, expected_batch_size=10,
              key=jax.random.key(0))
  args.update(kwargs)
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    noise.gaussian_privatizer(**args)
