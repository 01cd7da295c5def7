"""Host-side batch selection (numpy) and the DpEvent that matches it.

Every batch is a pure function of (seed, update_step): a resumed run draws
the same batches, and no sampler state needs checkpointing. The seed is
SECRET (dpeq.privacy.randomness.RunRandomness.sampler_seed): against
someone who knows which examples formed each batch, sampling amplifies
nothing. A sampler made with `seed=None` only describes its DpEvent (for
calibration and accounting) and refuses to draw batches. Batches are
padded to a multiple of `pad_multiple` with rows (index 0, mask False) so
that the device sees a whole number of fixed-shape micro-batches.

Two samplers, each with its own, correct accounting:

* PoissonSampler: every example joins the batch of step t independently with
  probability q = expected_batch_size / num_examples. Accounting:
  Poisson-subsampled Gaussian under add/remove-one adjacency (or its
  truncated variant when `max_batch_size` caps the batch).
* ShuffleSampler: each epoch is a fresh random permutation cut into
  fixed-size batches. Batches within an epoch are NOT independent samples,
  so the subsampling amplification of Poisson (or of independent sampling
  without replacement) does not apply to them. Accounting: each example is
  in at most one batch per epoch, so every epoch is (at most) one Gaussian
  mechanism; under replace-one adjacency (the only one under which
  fixed-size batches are well defined) the clipped sum moves by at most
  2 * sensitivity, i.e. a Gaussian event with noise multiplier sigma / 2,
  composed over the epochs started. No amplification is claimed.
"""

import dataclasses
import math

import dp_accounting
import numpy as np

ADD_OR_REMOVE_ONE = "add_or_remove_one"
REPLACE_ONE = "replace_one"


@dataclasses.dataclass(frozen=True)
class BatchSelection:
  """The examples of one logical batch.

  Attributes:
    indices: int64 [P]: dataset indices (padded rows: 0).
    mask: bool [P]: True for real rows. P is a multiple of pad_multiple.
  """

  indices: np.ndarray
  mask: np.ndarray

  @property
  def num_real(self) -> int:
    return int(self.mask.sum())


def _check_sizes(num_examples, expected_batch_size, pad_multiple):
  for name, value in (("num_examples", num_examples),
                      ("expected_batch_size", expected_batch_size),
                      ("pad_multiple", pad_multiple)):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive int.")
  if expected_batch_size > num_examples:
    raise ValueError(
        f"expected_batch_size={expected_batch_size} exceeds the number of "
        f"training examples ({num_examples}): use a batch size <= "
        f"{num_examples}."
    )


def _padded(indices: np.ndarray, pad_multiple: int,
            min_size: int = 0) -> BatchSelection:
  """Pads to the smallest non-zero multiple of pad_multiple >= min_size."""
  size = len(indices)
  padded_size = max(1, math.ceil(max(size, min_size) / pad_multiple))
  padded_size *= pad_multiple
  out = np.zeros(padded_size, np.int64)
  out[:size] = indices
  mask = np.zeros(padded_size, bool)
  mask[:size] = True
  return BatchSelection(indices=out, mask=mask)


def _check_seed(seed: int | None) -> int | None:
  if seed is not None and (isinstance(seed, bool) or int(seed) != seed
                           or seed < 0):
    raise ValueError(f"seed={seed!r} must be a non-negative int or None.")
  return None if seed is None else int(seed)


def _rng(seed: int | None, update_step: int,
         stream: int) -> np.random.Generator:
  if seed is None:
    raise ValueError(
        "This sampler was made with seed=None (for accounting only); pass "
        "the run's secret seed (RunRandomness.sampler_seed()) to draw "
        "batches.")
  if int(update_step) != update_step or update_step < 0:
    raise ValueError(f"update_step={update_step!r} must be an int >= 0.")
  return np.random.default_rng([int(seed), int(stream), int(update_step)])


class PoissonSampler:
  """Poisson sampling: each example is in a batch independently with prob q.

  The guarantee of DP-SGD with this sampler (dp_event) is under add/remove
  of one example. With `max_batch_size`, a batch with more than that many
  examples is cut to a uniformly random subset of that size, padded size is
  then static (ceil(max_batch_size / pad_multiple) * pad_multiple), and the
  event is dp_accounting's TruncatedSubsampledGaussianDpEvent (PLD only).
  """

  neighboring_relation = ADD_OR_REMOVE_ONE

  def __init__(self, *, num_examples: int, expected_batch_size: int,
               seed: int | None, pad_multiple: int = 1,
               max_batch_size: int | None = None):
    _check_sizes(num_examples, expected_batch_size, pad_multiple)
    if max_batch_size is not None and not (
        int(max_batch_size) == max_batch_size
        and expected_batch_size <= max_batch_size <= num_examples):
      raise ValueError(
          f"max_batch_size={max_batch_size!r} must be an int between "
          f"expected_batch_size ({expected_batch_size}) and num_examples "
          f"({num_examples}), or None for no cap; a few standard deviations "
          "above the expected size keeps the accounting cost negligible."
      )
    self.num_examples = int(num_examples)
    self.expected_batch_size = int(expected_batch_size)
    self.seed = _check_seed(seed)
    self.pad_multiple = int(pad_multiple)
    self.max_batch_size = (None if max_batch_size is None
                           else int(max_batch_size))

  @property
  def sampling_rate(self) -> float:
    return self.expected_batch_size / self.num_examples

  def batch(self, update_step: int) -> BatchSelection:
    """The batch of `update_step`, a pure function of (seed, update_step)."""
    rng = _rng(self.seed, update_step, stream=0)
    # Binomial size, then a uniform subset of it: exactly Poisson sampling.
    size = int(rng.binomial(self.num_examples, self.sampling_rate))
    if self.max_batch_size is not None:
      size = min(size, self.max_batch_size)
    indices = np.sort(rng.choice(self.num_examples, size=size, replace=False))
    # With a cap the padded size is static; without, the smallest multiple.
    return _padded(indices, self.pad_multiple,
                   min_size=self.max_batch_size or 0)

  def dp_event(self, *, noise_multiplier: float,
               num_updates: int) -> dp_accounting.DpEvent:
    """The DpEvent of `num_updates` noisy updates with this sampler."""
    _check_event_args(noise_multiplier, num_updates)
    if self.max_batch_size is None:
      step = dp_accounting.PoissonSampledDpEvent(
          self.sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    else:
      step = dp_accounting.TruncatedSubsampledGaussianDpEvent(
          dataset_size=self.num_examples,
          sampling_probability=self.sampling_rate,
          truncated_batch_size=self.max_batch_size,
          noise_multiplier=noise_multiplier)
    return dp_accounting.SelfComposedDpEvent(step, int(num_updates))


class ShuffleSampler:
  """Fixed-size batches, epochs without replacement (reshuffled each epoch).

  `expected_batch_size` is the exact batch size here; each epoch has
  num_examples // expected_batch_size batches (the remainder of the
  permutation is skipped that epoch). See the module docstring for the
  accounting: replace-one adjacency, one Gaussian mechanism with noise
  multiplier sigma / 2 per epoch started, no amplification.
  """

  neighboring_relation = REPLACE_ONE

  def __init__(self, *, num_examples: int, expected_batch_size: int,
               seed: int | None, pad_multiple: int = 1):
    _check_sizes(num_examples, expected_batch_size, pad_multiple)
    self.num_examples = int(num_examples)
    self.expected_batch_size = int(expected_batch_size)
    self.seed = _check_seed(seed)
    self.pad_multiple = int(pad_multiple)

  @property
  def sampling_rate(self) -> float:
    return self.expected_batch_size / self.num_examples

  @property
  def updates_per_epoch(self) -> int:
    return self.num_examples // self.expected_batch_size

  def batch(self, update_step: int) -> BatchSelection:
    """The batch of `update_step`, a pure function of (seed, update_step)."""
    epoch, position = divmod(int(update_step), self.updates_per_epoch)
    permutation = _rng(self.seed, epoch, stream=1).permutation(
        self.num_examples)
    start = position * self.expected_batch_size
    indices = np.sort(permutation[start:start + self.expected_batch_size])
    return _padded(indices, self.pad_multiple)

  def dp_event(self, *, noise_multiplier: float,
               num_updates: int) -> dp_accounting.DpEvent:
    """The DpEvent of `num_updates` updates (replace-one adjacency)."""
    _check_event_args(noise_multiplier, num_updates)
    epochs = math.ceil(int(num_updates) / self.updates_per_epoch)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier / 2), epochs)


def _check_event_args(noise_multiplier, num_updates):
  if not float(noise_multiplier) >= 0:
    raise ValueError(f"noise_multiplier={noise_multiplier} must be >= 0.")
  if int(num_updates) != num_updates or num_updates < 0:
    raise ValueError(f"num_updates={num_updates!r} must be an int >= 0.")
