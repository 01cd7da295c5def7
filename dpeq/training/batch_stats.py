"""Statistics of the NON-noised batch: diagnostics, not covered by epsilon.

Each micro-step returns additive statistics of its rows
(`micro_batch_stats`), merged with the clipped sums (`merge`); after the
update, `diagnostics` turns them and the update's "nonprivate/" metrics into
the training record's diagnostics (logged under "nonprivate/", left out of
release/). They are for the person running the experiment: they read the
data without noise.
"""

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from dpeq.training import run_log as run_logging

NON_PRIVATE = run_logging.NON_PRIVATE_PREFIX


def micro_batch_stats(clipped, mask) -> dict[str, Any]:
  """Additive statistics of one micro-batch's ClippedGradSum (scalars)."""
  norms = clipped.per_example_norms
  finite = mask & jnp.isfinite(norms)
  return {
      "loss_sum": jnp.sum(jnp.where(mask, clipped.aux["loss"], 0.0)),
      "correct_sum": jnp.sum(jnp.where(mask, clipped.aux["correct"], 0.0)),
      "norm_sq_sum": jnp.sum(jnp.where(finite, jnp.square(norms), 0.0)),
      "norm_min": jnp.min(jnp.where(finite, norms, jnp.inf)),
  }


def merge(a, b):
  """Merges two (clipped totals, statistics) of disjoint micro-batches."""
  (clipped_a, stats_a), (clipped_b, stats_b) = a, b
  stats = {k: (jnp.minimum if k == "norm_min" else jnp.add)(stats_a[k],
                                                            stats_b[k])
           for k in stats_a}
  return clipped_a.merge(clipped_b), stats


def diagnostics(clipped, stats: Mapping[str, Any],
                update_metrics: Mapping[str, Any], *, noise_dimension: int,
                expected_batch_size: int) -> dict[str, float]:
  """The training record's non-private diagnostics of one update (host).

  Args:
    clipped: the update's merged ClippedGradSum totals (on the host).
    stats: its merged `micro_batch_stats`.
    update_metrics: the metrics of the update's `apply` (on the host).
    noise_dimension: the number of noised coordinates.
    expected_batch_size: B, the divisor of the noisy sum.
  """
  count = max(int(clipped.num_examples), 1)
  finite = max(int(clipped.num_examples - clipped.num_nonfinite), 1)
  batch = {k[len(NON_PRIVATE):]: v for k, v in update_metrics.items()
           if k.startswith(NON_PRIVATE)}
  mean_norm = float(batch["mean_grad_norm"])
  variance = max(float(stats["norm_sq_sum"]) / finite - mean_norm ** 2, 0.0)
  noise_norm = float(update_metrics["noise_std"]) * math.sqrt(noise_dimension)
  clipped_sum_norm = float(batch["clipped_grad_norm"]) * expected_batch_size
  return {
      "loss": float(stats["loss_sum"]) / count,
      "train_accuracy": float(stats["correct_sum"]) / count,
      "batch_size": int(clipped.num_examples),
      "num_nonfinite": int(clipped.num_nonfinite),
      "grad_norm_mean": mean_norm,
      "grad_norm_std": math.sqrt(variance),
      "grad_norm_min": float(stats["norm_min"]),
      "grad_norm_max": float(batch["max_grad_norm"]),
      "fraction_clipped": float(batch["fraction_clipped"]),
      # ||clipped sum|| / E||noise|| (E||noise|| ~ sigma C sqrt(d)).
      "signal_to_noise": (clipped_sum_norm / noise_norm if noise_norm
                          else math.inf),
      "clipped_grad_norm": float(batch["clipped_grad_norm"]),
  }
