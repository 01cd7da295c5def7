"""The Gaussian privatizer: scale, averaging, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpeq.privacy import noise

SIGMA, SENSITIVITY, EXPECTED_BATCH = 1.7, 0.6, 100


def _privatizer(key=0, sigma=SIGMA):
  return noise.gaussian_mean_privatizer(
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
    noise.gaussian_mean_privatizer(**args)


# ----------------------------------------------------------------------------
# The wide-tailed sampler (float32 noise whose support reaches ~11.6 sigma).


def test_privatizer_draws_its_noise_from_the_wide_tailed_sampler():
  grad_sum = _zeros()
  privatizer = _privatizer(key=5)
  state = privatizer.init(grad_sum)
  out, _ = jax.jit(privatizer.update)(grad_sum, state)
  step_key = jax.random.fold_in(jax.random.key(5), 0)
  size = _flat(grad_sum).size
  expected = SIGMA * SENSITIVITY * np.asarray(
      noise.standard_normal(step_key, size)) / EXPECTED_BATCH
  np.testing.assert_allclose(_flat(out), expected, rtol=1e-6, atol=1e-12)


def test_extreme_quantiles_of_the_radius_match_the_gaussian():
  # Box-Muller: the radius R of a pair is Rayleigh, P(R > r) = exp(-r^2 / 2),
  # so the word pattern with radius uniform u = p must give r = sqrt(-2 ln p).
  # p = 2^-k for k up to 96 covers the tail down to 1.3e-29 per pair.
  for k in list(range(1, 97, 5)) + [96]:
    total = 2 ** 96 >> k  # u = total / 2^96 = 2^-k (before the + 1/2 cell)
    words = [(total >> 64) & 0xFFFFFFFF, (total >> 32) & 0xFFFFFFFF,
             total & 0xFFFFFFFF]
    bits = np.array([[w] for w in words] + [[0]], np.uint32)
    cell = (total + 0.5) / 2.0 ** 96
    radius = float(np.hypot(*np.asarray(
        noise.standard_normal_from_bits(jnp.asarray(bits)))[:, 0]))
    assert radius == pytest.approx(np.sqrt(-2 * np.log(cell)), rel=2e-6), k
  # The largest draw the sampler can make, vs what float32 erfinv can make.
  zeros = jnp.zeros((4, 1), jnp.uint32)
  largest = float(noise.standard_normal_from_bits(zeros)[0, 0])
  assert largest == pytest.approx(noise.MAX_ABS_DRAW, rel=1e-6)
  assert largest > 11.5
  # P(|Z| > 11.5) = 1.2e-30: the cut tail is negligible against any delta.
  assert 2 * stats.norm.sf(11.5) < 1e-29


def test_conditional_tail_beyond_nine_sigma_is_rayleigh():
  # Force the first two radius words to 0: u < 2^-64, i.e. the pair's radius
  # is conditioned on R > r0 = sqrt(128 ln 2) ~ 9.42. There the Gaussian
  # says P(R > r | R > r0) = exp(-(r^2 - r0^2) / 2): a KS test on the draws
  # checks the sampler's distribution in the 9.4-11.6 sigma tail itself.
  n = 20_000
  rest = jax.random.bits(jax.random.key(11), (2, n), jnp.uint32)
  bits = jnp.concatenate([jnp.zeros((2, n), jnp.uint32), rest])
  pairs = np.asarray(noise.standard_normal_from_bits(bits), np.float64)
  radius = np.hypot(pairs[0], pairs[1])
  r0_sq = 128 * np.log(2)
  excess = (radius ** 2 - r0_sq) / 2  # Exp(1) under the Gaussian
  assert excess.min() > -1e-3 and radius.max() <= noise.MAX_ABS_DRAW + 1e-4
  assert stats.kstest(excess, stats.expon().cdf).pvalue > 1e-4
  # The test has power: a tail 10% thinner in r^2 is rejected.
  assert stats.kstest(excess * 1.1, stats.expon().cdf).pvalue < 1e-6


def test_bulk_and_moderate_tail_match_the_gaussian():
  n = 1 << 21
  draws = np.asarray(noise.standard_normal(jax.random.key(2), n), np.float64)
  assert draws.shape == (n,)
  assert stats.kstest(draws, stats.norm().cdf).pvalue > 1e-4
  # Tail frequencies P(|Z| > t) within 5 binomial standard errors.
  for t in (1.0, 2.0, 3.0, 4.0):
    p = 2 * stats.norm.sf(t)
    count = np.sum(np.abs(draws) > t)
    assert abs(count - n * p) < 5 * np.sqrt(n * p * (1 - p)) + 1, t
  # The two draws of a pair are uncorrelated, and odd sizes work.
  assert abs(np.corrcoef(draws[:n // 2], draws[n // 2:])[0, 1]) < 5 / np.sqrt(n)
  assert noise.standard_normal(jax.random.key(2), 7).shape == (7,)


def test_noise_tail_delta_is_the_union_bound():
  got = noise.noise_tail_delta(epsilon=2.0, num_updates=1000, dimension=101)
  assert got == pytest.approx((1 + np.exp(2.0)) * 1000 * 51 * 2.0 ** -96)
  assert noise.noise_tail_delta(epsilon=2.0, num_updates=0, dimension=5) == 0
  # A large run: still far below any delta worth stating.
  assert noise.noise_tail_delta(epsilon=8.0, num_updates=10 ** 5,
                                dimension=25 * 10 ** 6) < 1e-12
