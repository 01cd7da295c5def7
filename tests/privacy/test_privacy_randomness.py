"""The run's secret randomness: OS entropy by default, independent streams."""

import jax
import numpy as np
import pytest

from dpeq.privacy import randomness, sampling

RunRandomness = randomness.RunRandomness


def _key_words(key):
  return np.asarray(jax.random.key_data(key)).tolist()


def test_default_randomness_is_fresh_os_entropy_and_kept_out_of_repr():
  draws = [RunRandomness.from_os_entropy() for _ in range(4)]
  assert len({r.entropy for r in draws}) == 4  # 128 bits: never repeats
  assert len({tuple(_key_words(r.noise_key())) for r in draws}) == 4
  assert len({r.sampler_seed() for r in draws}) == 4
  for r in draws:
    assert not r.is_reproducible
    assert str(r.entropy) not in repr(r) and str(r.entropy) not in str(r)
    assert r.entropy.bit_length() <= randomness.ENTROPY_BITS


def test_the_batches_do_not_follow_from_any_small_public_seed():
  # Today's bug: the sampler seed was config.seed (0 by default). With the
  # secret randomness, the batches differ from those of every small seed.
  kwargs = dict(num_examples=1000, expected_batch_size=50)
  secret = sampling.PoissonSampler(
      seed=RunRandomness.from_os_entropy().sampler_seed(), **kwargs)
  batch = secret.batch(0).indices
  for public_seed in range(100):
    guess = sampling.PoissonSampler(seed=public_seed, **kwargs).batch(0)
    assert not np.array_equal(guess.indices, batch)


def test_reproducible_randomness_follows_from_the_seed_and_streams_differ():
  a, b = RunRandomness.reproducible(3), RunRandomness.reproducible(3)
  assert a.is_reproducible
  assert _key_words(a.noise_key()) == _key_words(b.noise_key())
  assert a.sampler_seed() == b.sampler_seed()
  other = RunRandomness.reproducible(4)
  assert _key_words(a.noise_key()) != _key_words(other.noise_key())
  # Noise, augmentation and the model's public init key(seed) all differ.
  words = {tuple(_key_words(k)) for k in (
      a.noise_key(), a.augmentation_key(), jax.random.key(3))}
  assert len(words) == 3


def test_words_round_trip_and_bad_values_are_rejected():
  r = RunRandomness.from_os_entropy()
  back = RunRandomness.from_words(r.to_words(), is_reproducible=False)
  assert back.entropy == r.entropy
  with pytest.raises(ValueError, match="entropy"):
    RunRandomness(entropy=2 ** 128)
  with pytest.raises(ValueError, match="seed"):
    RunRandomness.reproducible(-1)


def test_an_accounting_only_sampler_refuses_to_draw():
  sampler = sampling.PoissonSampler(num_examples=100, expected_batch_size=10,
                                    seed=None)
  assert sampler.dp_event(noise_multiplier=1.0, num_updates=3) is not None
  with pytest.raises(ValueError, match="secret seed"):
    sampler.batch(0)
