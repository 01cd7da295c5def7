"""The secret randomness of a run: the noise key and the sampler's seed.

Threat model: the guarantee holds against anyone who sees what the run
releases (parameters, averages, the private metrics) but NOT its secret
randomness. Whoever knows the noise key recomputes the noise and subtracts
it, recovering the clipped gradient sum exactly; whoever knows the sampler's
seed knows which examples were in which batch, so Poisson sampling amplifies
nothing against them. Both therefore come from the operating system's
entropy (`secrets`) by default, are never printed, logged or put in a
report, and are stored only where resuming needs them (the run's secret
file and its checkpoints, which are secret for that reason).

`RunRandomness.reproducible(seed)` is the explicit opt-in for reproducible
runs (tests, debugging, comparisons): everything then follows from `seed`,
and the run is NOT private against anyone who knows that seed.

The three streams (noise, sampler, augmentation) are derived from one
128-bit entropy with numpy's SeedSequence, so they are independent of each
other and of the public seed that initialises the model. The noise key is
a threefry2x32 key (64 bits); jax's PRNG is not a cryptographic generator,
like that of every other float32 DP-SGD library.
"""

import dataclasses
import secrets

import jax
import numpy as np

ENTROPY_BITS = 128
KEY_IMPL = "threefry2x32"
_NOISE, _SAMPLER, _AUGMENTATION = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class RunRandomness:
  """One run's secret randomness (the value is kept out of its repr).

  Attributes:
    entropy: a non-negative int of at most 128 bits.
    is_reproducible: True when `entropy` is a public seed chosen by the user
      (the run is then not private against anyone who knows it).
  """

  entropy: int = dataclasses.field(repr=False)
  is_reproducible: bool = False

  def __post_init__(self):
    if (isinstance(self.entropy, bool) or not isinstance(self.entropy, int)
        or not 0 <= self.entropy < 2 ** ENTROPY_BITS):
      raise ValueError(
          "entropy must be an int in [0, 2^128); draw it with "
          "RunRandomness.from_os_entropy().")

  @classmethod
  def from_os_entropy(cls) -> "RunRandomness":
    """Fresh secret randomness from the operating system (the default)."""
    return cls(entropy=secrets.randbits(ENTROPY_BITS), is_reproducible=False)

  @classmethod
  def reproducible(cls, seed: int) -> "RunRandomness":
    """Randomness that follows from a PUBLIC seed: not private against
    anyone who knows it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
      raise ValueError(f"seed={seed!r} must be a non-negative int.")
    return cls(entropy=int(seed), is_reproducible=True)

  def _words(self, stream: int, count: int) -> np.ndarray:
    sequence = np.random.SeedSequence(self.entropy, spawn_key=(stream,))
    return sequence.generate_state(count, np.uint32)

  def noise_key(self) -> jax.Array:
    """The key of the Gaussian noise (dpeq.privacy.noise)."""
    return jax.random.wrap_key_data(self._words(_NOISE, 2), impl=KEY_IMPL)

  def sampler_seed(self) -> int:
    """The seed of the batch sampler (dpeq.privacy.sampling), 128 bits."""
    words = self._words(_SAMPLER, 4)
    return sum(int(w) << (32 * i) for i, w in enumerate(words))

  def augmentation_key(self) -> jax.Array:
    """The key of the data augmentation (random crops and flips)."""
    return jax.random.wrap_key_data(self._words(_AUGMENTATION, 2),
                                    impl=KEY_IMPL)

  def to_words(self) -> np.ndarray:
    """uint32 [4]: the entropy, little-endian (for files and broadcasts)."""
    return np.array([(self.entropy >> (32 * i)) & 0xFFFFFFFF
                     for i in range(4)], np.uint32)

  @classmethod
  def from_words(cls, words, *, is_reproducible: bool) -> "RunRandomness":
    """Inverse of `to_words`."""
    words = np.asarray(words, np.uint64).reshape(-1)
    if words.shape != (4,):
      raise ValueError(f"expected 4 uint32 words, got shape {words.shape}.")
    return cls(entropy=sum(int(w) << (32 * i) for i, w in enumerate(words)),
               is_reproducible=is_reproducible)
