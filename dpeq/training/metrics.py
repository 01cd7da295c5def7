"""Classification metrics and parameter sparsity, as pure jittable jnp functions.

Per-example functions return one value per row of `logits` (shape [B]); the
dataset-level metrics are masked means of them, so padded rows (mask False)
never count. Expected calibration error is not a mean of per-example values:
`calibration_bins` returns additive per-bin sums that can be accumulated over
batches and turned into the ECE by `expected_calibration_error_from_bins`.

Conventions (stated once, used everywhere in dpeq):
- Prediction = argmax of the logits; top-k membership uses `jax.lax.top_k`, so
  ties go to the lower class index (as argmax does): constant logits give
  exactly one "correct" class, never all of them.
- Brier score of one example = sum over the C classes of (p_c - y_c)^2 with
  p = softmax(logits) and y the one-hot label (range [0, 2]; 0 is perfect);
  the dataset score is its mean over examples.
- ECE: confidence = max_c p_c; 15 equal-width bins ((i-1)/15, i/15] on (0, 1];
  ECE = sum_b (n_b / n) * |accuracy_b - mean confidence_b| (Guo et al. 2017).
- l0-eps sparsity of a pytree: the fraction of all its coordinates x with
  |x| <= eps (Hölzl et al. 2023, Fig. 3), for several eps at once.
"""

from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

DEFAULT_NUM_BINS = 15


def _check_logits_labels(logits: chex.Array, labels: chex.Array) -> None:
  if logits.ndim != 2:
    raise ValueError(
        f"logits must have shape [batch, num_classes]; got shape {logits.shape}."
    )
  if labels.shape != logits.shape[:1]:
    raise ValueError(
        "labels must be integer class indices of shape [batch] matching logits "
        f"{logits.shape}; got shape {labels.shape}."
    )


def masked_mean(values: chex.Array, mask: chex.Array | None = None) -> chex.Array:
  """Mean of `values` [B] over rows where `mask` [B] is True (all if None).

  An all-False mask gives 0 (no division by zero).
  """
  values = jnp.asarray(values, jnp.float32)
  if mask is None:
    return jnp.mean(values)
  weights = jnp.asarray(mask, jnp.float32)
  if weights.shape != values.shape:
    raise ValueError(
        f"mask must have shape {values.shape} like the values; got {weights.shape}."
    )
  total = jnp.sum(jnp.where(weights > 0, values, 0.0))
  return total / jnp.maximum(jnp.sum(weights), 1.0)


def top_k_correct(logits: chex.Array, labels: chex.Array, *, k: int = 1) -> chex.Array:
  """Whether the label is among the k highest logits: float32 [B] of 0/1.

  Args:
    logits: float [B, C].
    labels: int [B], class indices in [0, C).
    k: static int in [1, C]; ties are broken towards the lower class index.
  """
  _check_logits_labels(logits, labels)
  num_classes = logits.shape[-1]
  if not 1 <= k <= num_classes:
    raise ValueError(f"k must be in [1, num_classes={num_classes}]; got k={k}.")
  _, top_indices = jax.lax.top_k(logits, k)
  hits = jnp.any(top_indices == labels[:, None], axis=-1)
  return hits.astype(jnp.float32)


def cross_entropy(logits: chex.Array, labels: chex.Array) -> chex.Array:
  """Softmax cross-entropy in nats per example: float32 [B]."""
  _check_logits_labels(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
  )


def brier(logits: chex.Array, labels: chex.Array) -> chex.Array:
  """Per-example Brier score sum_c (softmax_c - onehot_c)^2: float32 [B]."""
  _check_logits_labels(logits, labels)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  return jnp.sum(jnp.square(probs - onehot), axis=-1)


def top_k_accuracy(
    logits: chex.Array,
    labels: chex.Array,
    *,
    k: int = 1,
    mask: chex.Array | None = None,
) -> chex.Array:
  """Fraction of (unmasked) examples whose label is in the top k: scalar."""
  return masked_mean(top_k_correct(logits, labels, k=k), mask)


def mean_cross_entropy(
    logits: chex.Array, labels: chex.Array, *, mask: chex.Array | None = None
) -> chex.Array:
  """Mean softmax cross-entropy (nats) over unmasked examples: scalar."""
  return masked_mean(cross_entropy(logits, labels), mask)


def brier_score(
    logits: chex.Array, labels: chex.Array, *, mask: chex.Array | None = None
) -> chex.Array:
  """Mean over unmasked examples of the per-example Brier score: scalar."""
  return masked_mean(brier(logits, labels), mask)


class CalibrationBins(NamedTuple):
  """Additive per-bin sums for the ECE; each field is float32 [num_bins].

  Sums of two `CalibrationBins` (over disjoint example sets) are the bins of
  the union, so they accumulate over evaluation batches.
  """

  count: chex.Array
  confidence_sum: chex.Array
  correct_sum: chex.Array


def calibration_bins(
    logits: chex.Array,
    labels: chex.Array,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    mask: chex.Array | None = None,
) -> CalibrationBins:
  """Per-bin example counts, confidence sums and correct-prediction sums.

  Bin b (0-based) holds the examples with confidence in (b/M, (b+1)/M] for
  M = num_bins equal-width bins; masked rows are left out.
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be a positive int; got {num_bins}.")
  correct = top_k_correct(logits, labels, k=1)
  confidence = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), -1)
  index = jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1
  index = jnp.clip(index, 0, num_bins - 1)
  keep = (
      jnp.ones(confidence.shape, bool) if mask is None else jnp.asarray(mask, bool)
  )
  # Zeroing masked rows first keeps a non-finite padded row out of the sums.
  confidence = jnp.where(keep, confidence, 0.0)
  correct = jnp.where(keep, correct, 0.0)
  onehot = jax.nn.one_hot(index, num_bins, dtype=jnp.float32) * keep[:, None]
  return CalibrationBins(
      count=jnp.sum(onehot, axis=0),
      confidence_sum=confidence @ onehot,
      correct_sum=correct @ onehot,
  )


def expected_calibration_error_from_bins(bins: CalibrationBins) -> chex.Array:
  """ECE = sum_b |correct_sum_b - confidence_sum_b| / total count: scalar."""
  total = jnp.maximum(jnp.sum(bins.count), 1.0)
  return jnp.sum(jnp.abs(bins.correct_sum - bins.confidence_sum)) / total


def expected_calibration_error(
    logits: chex.Array,
    labels: chex.Array,
    *,
    num_bins: int = DEFAULT_NUM_BINS,
    mask: chex.Array | None = None,
) -> chex.Array:
  """Expected calibration error over unmasked examples (equal-width bins)."""
  return expected_calibration_error_from_bins(
      calibration_bins(logits, labels, num_bins=num_bins, mask=mask)
  )


def l0_sparsity(tree: chex.ArrayTree, *, eps: Sequence[float]) -> chex.Array:
  """Fraction of the tree's coordinates x with |x| <= eps, for each eps.

  Args:
    tree: a pytree of float arrays (parameters or a privatized gradient).
    eps: thresholds (non-negative), e.g. (1e-4, 1e-3, 1e-2).

  Returns:
    float32 [len(eps)]: entry i is #{x : |x| <= eps[i]} / #coordinates.
  """
  thresholds = jnp.asarray(eps, jnp.float32)
  if thresholds.ndim != 1 or thresholds.shape[0] == 0:
    raise ValueError(f"eps must be a non-empty sequence of floats; got {eps!r}.")
  leaves = jax.tree_util.tree_leaves(tree)
  num_coordinates = sum(leaf.size for leaf in leaves)
  if num_coordinates == 0:
    raise ValueError("l0_sparsity needs a pytree with at least one coordinate.")
  counts = jnp.zeros(thresholds.shape, jnp.int32)
  for leaf in leaves:
    magnitudes = jnp.abs(jnp.ravel(leaf)).astype(jnp.float32)
    below = magnitudes[:, None] <= thresholds[None, :]
    counts = counts + jnp.sum(below, axis=0, dtype=jnp.int32)
  return counts.astype(jnp.float32) / num_coordinates
