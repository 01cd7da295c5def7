"""Host-side samplers: distribution, padding, determinism, DpEvents."""

import dp_accounting
import numpy as np
import pytest

from dpeq.privacy import accounting, sampling

N, EXPECTED, STEPS = 1000, 50, 2000


@pytest.fixture(scope="module")
def poisson_batches():
  sampler = sampling.PoissonSampler(num_examples=N, expected_batch_size=EXPECTED,
                                    seed=3, pad_multiple=16)
  return sampler, [sampler.batch(t) for t in range(STEPS)]


def test_poisson_batch_sizes_follow_the_binomial(poisson_batches):
  _, batches = poisson_batches
  sizes = np.array([b.num_real for b in batches])
  q = EXPECTED / N
  variance = N * q * (1 - q)
  assert abs(sizes.mean() - q * N) < 4 * np.sqrt(variance / STEPS)
  # Poisson (not fixed-size): the sizes vary like Binomial(n, q).
  assert 0.85 < sizes.var() / variance < 1.15
  # Every example is included with probability q.
  counts = np.zeros(N)
  for b in batches:
    counts[b.indices[b.mask]] += 1
  std = np.sqrt(STEPS * q * (1 - q))
  assert np.all(np.abs(counts - STEPS * q) < 5.5 * std)


def test_poisson_padding_invariants(poisson_batches):
  sampler, batches = poisson_batches
  assert sampler.sampling_rate == EXPECTED / N
  for b in batches:
    assert b.indices.dtype == np.int64 and b.mask.dtype == bool
    assert len(b.indices) == len(b.mask)
    assert len(b.mask) % 16 == 0 and len(b.mask) >= 16
    assert len(b.mask) - b.num_real < 16  # Smallest multiple.
    real = b.indices[b.mask]
    assert np.all(b.mask[:b.num_real]) and not np.any(b.mask[b.num_real:])
    assert np.all(b.indices[~b.mask] == 0)
    assert np.all((real >= 0) & (real < N))
    assert len(np.unique(real)) == len(real)


def test_batches_are_a_pure_function_of_seed_and_step():
  for cls in (sampling.PoissonSampler, sampling.ShuffleSampler):
    make = lambda seed, cls=cls: cls(num_examples=N, expected_batch_size=EXPECTED,
                                     seed=seed)
    a, b, c = make(1), make(1), make(2)
    for t in (0, 5, 123, 10**6):
      np.testing.assert_array_equal(a.batch(t).indices, b.batch(t).indices)
      np.testing.assert_array_equal(a.batch(t).mask, b.batch(t).mask)
    # Out of order and repeated queries give the same answer (resumption).
    np.testing.assert_array_equal(b.batch(5).indices, a.batch(5).indices)
    assert not np.array_equal(a.batch(0).indices, c.batch(0).indices)
    assert not np.array_equal(a.batch(0).indices, a.batch(1).indices)


def test_poisson_cap_gives_static_shapes_and_the_truncated_event():
  sampler = sampling.PoissonSampler(num_examples=N, expected_batch_size=EXPECTED,
                                    seed=0, pad_multiple=8, max_batch_size=52)
  for t in range(200):
    b = sampler.batch(t)
    assert len(b.mask) == 56 and b.num_real <= 52
  event = sampler.dp_event(noise_multiplier=3.0, num_updates=10)
  assert isinstance(event.event, dp_accounting.TruncatedSubsampledGaussianDpEvent)
  uncapped = sampling.PoissonSampler(num_examples=N, expected_batch_size=EXPECTED,
                                     seed=0)
  eps = lambda s: accounting.epsilon_of_event(
      s.dp_event(noise_multiplier=3.0, num_updates=10), delta=1e-5,
      value_discretization_interval=1e-3)
  # Truncation to near the mean costs privacy (it is accounted, not hidden).
  assert eps(sampler) > eps(uncapped)
  with pytest.raises(ValueError, match="pld"):
    accounting.epsilon_of_event(event, delta=1e-5, accountant="rdp")


def test_shuffle_epochs_are_disjoint_fixed_size_batches():
  sampler = sampling.ShuffleSampler(num_examples=N, expected_batch_size=300,
                                    seed=0, pad_multiple=128)
  assert sampler.updates_per_epoch == 3
  for epoch in range(2):
    seen = []
    for t in range(3 * epoch, 3 * epoch + 3):
      b = sampler.batch(t)
      assert b.num_real == 300 and len(b.mask) == 384
      seen.extend(b.indices[b.mask])
    assert len(set(seen)) == 900  # No example twice within an epoch.
  assert set(sampler.batch(0).indices) != set(sampler.batch(3).indices)


def test_shuffle_is_not_accounted_as_poisson():
  kwargs = dict(num_examples=N, expected_batch_size=EXPECTED, seed=0)
  poisson = sampling.PoissonSampler(**kwargs)
  shuffle = sampling.ShuffleSampler(**kwargs)
  assert poisson.sampling_rate == shuffle.sampling_rate
  assert shuffle.neighboring_relation != poisson.neighboring_relation
  steps = 3 * shuffle.updates_per_epoch
  e_poisson = poisson.dp_event(noise_multiplier=2.0, num_updates=steps)
  e_shuffle = shuffle.dp_event(noise_multiplier=2.0, num_updates=steps)
  assert e_poisson != e_shuffle
  assert not any(isinstance(e, dp_accounting.PoissonSampledDpEvent)
                 for e in (e_shuffle, e_shuffle.event))
  # Shuffling claims no amplification: each epoch started is one Gaussian
  # mechanism at sigma / 2 (sensitivity 2C under replace-one adjacency).
  eps_shuffle = accounting.epsilon_of_event(e_shuffle, delta=1e-5)
  eps_epochs = accounting.epsilon_of_event(
      dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 3),
      delta=1e-5)
  assert eps_shuffle == pytest.approx(eps_epochs, rel=1e-9)
  # A partial epoch counts as a whole one.
  assert shuffle.dp_event(noise_multiplier=2.0, num_updates=steps + 1).count == 4
  # In this regime the honest shuffle guarantee is far weaker than Poisson's.
  assert eps_shuffle > 3 * accounting.epsilon_of_event(e_poisson, delta=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_examples=10, expected_batch_size=11), "exceeds"),
    (dict(num_examples=10, expected_batch_size=0), "expected_batch_size"),
    (dict(num_examples=10, expected_batch_size=5, pad_multiple=0),
     "pad_multiple"),
    (dict(num_examples=10, expected_batch_size=2.5), "expected_batch_size"),
])
def test_bad_sizes_are_rejected(kwargs, match):
  for cls in (sampling.PoissonSampler, sampling.ShuffleSampler):
    with pytest.raises(ValueError, match=match):
      cls(seed=0, **kwargs)
  with pytest.raises(ValueError, match="max_batch_size"):
    sampling.PoissonSampler(num_examples=10, expected_batch_size=5, seed=0,
                            max_batch_size=4)
