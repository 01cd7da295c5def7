"""Evaluation of a classifier over a whole in-memory dataset.

`evaluate` walks an `ArrayDataset` (uint8 images [N, H, W, C], int32 labels
[N]) in fixed-size batches. The last, partial batch is padded with zero rows
and a mask, so every batch has the same shape, the jitted statistics compile
once per (model, batch shape), and every example is counted exactly once.
Images are normalized by `dpeq.data.augment.make_views` with the identity
augmentation, i.e. exactly as training views are (uint8 -> [0, 1] ->
per-channel (x - mean) / std).

Per batch the device returns additive sums (correct counts, summed losses,
calibration bins); the host adds them in float64, so the metrics are those of
the full dataset, not averages of batch averages.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpeq.data import augment, batching
from dpeq.training import metrics

ApplyFn = Callable[[Any, jax.Array], jax.Array]
TOP_K = 5


_IDENTITY = augment.AugmentConfig()  # one un-augmented view


def _batch_sums(apply_fn, mean, std, params, images, labels, mask):
  """Additive statistics of one padded batch (see module docstring)."""
  views = augment.make_views(
      jax.random.key(0), images, config=_IDENTITY, mean=mean, std=std
  )  # no randomness is drawn for the identity view
  logits = apply_fn(params, views[:, 0])
  if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
    raise ValueError(
        f"apply_fn must return logits [batch={images.shape[0]}, num_classes]; "
        f"got shape {logits.shape}."
    )
  weights = mask.astype(jnp.float32)
  k = min(TOP_K, logits.shape[-1])

  def masked_sum(values):
    return jnp.sum(jnp.where(mask, values, 0.0))

  return {
      "count": jnp.sum(weights),
      "top1": masked_sum(metrics.top_k_correct(logits, labels, k=1)),
      "top5": masked_sum(metrics.top_k_correct(logits, labels, k=k)),
      "loss": masked_sum(metrics.cross_entropy(logits, labels)),
      "brier": masked_sum(metrics.brier(logits, labels)),
      "bins": metrics.calibration_bins(logits, labels, mask=mask),
  }


@functools.lru_cache(maxsize=64)
def _jitted_batch_sums(
    apply_fn: ApplyFn, mean: tuple[float, ...], std: tuple[float, ...], out_sharding
) -> Callable[..., Any]:
  """One jitted function per (model, normalization, output sharding).

  jit itself then caches one executable per batch shape.
  """
  return jax.jit(
      functools.partial(_batch_sums, apply_fn, mean, std), out_shardings=out_sharding
  )


def _batch_multiple(sharding: jax.sharding.Sharding | None, example_shape) -> int:
  """How many ways the sharding splits the batch axis (1 without sharding)."""
  if sharding is None:
    return 1
  probe = (sharding.num_devices * 1024, *example_shape)
  return probe[0] // sharding.shard_shape(probe)[0]


def _put(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  if sharding is None:
    return jax.tree_util.tree_map(jnp.asarray, batch)
  # Every host holds the whole batch and passes on only its own rows.
  rows = batching.local_rows(len(batch["mask"]), sharding)
  return batching.to_devices({k: v[rows] for k, v in batch.items()}, sharding)


def evaluate(
    apply_fn: ApplyFn,
    params: Any,
    dataset: Any,
    *,
    batch_size: int,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    sharding: jax.sharding.NamedSharding | None = None,
) -> dict[str, float | int]:
  """Top-1/top-5 accuracy, loss, Brier score and ECE over a whole dataset.

  Args:
    apply_fn: `apply_fn(params, images) -> logits [B, num_classes]` with
      images float32 [B, H, W, C] (e.g. a `dpeq.models.create(...).apply`,
      whose `is_training` defaults to False). Pass the same function object on
      every call so the compiled statistics are reused.
    params: the parameters to evaluate (last, EMA or Polyak).
    dataset: an `ArrayDataset` with `images` uint8 [N, H, W, C] and `labels`
      int [N].
    batch_size: examples per evaluation batch (fixed; the last batch is padded
      and masked). With `sharding`, it must split evenly over the devices.
    mean: per-channel mean of the [0, 1] images (a scalar or C values).
    std: per-channel standard deviation (positive), like `mean`.
    sharding: optional `NamedSharding` for the batch axis of the images (e.g.
      `NamedSharding(mesh, P("batch"))`); params are then replicated over
      its mesh. Every host passes the full dataset and feeds its own devices.

  Returns:
    A dict of python numbers: `top1`, `top5` (accuracy in [0, 1]; top-5 is
    top-min(5, C)), `loss` (mean cross-entropy in nats), `brier` (mean of the
    per-example sum over classes of squared probability errors, in [0, 2]),
    `ece` (15 equal-width bins, in [0, 1]) and `num_examples`.
  """
  images = np.asarray(dataset.images)
  labels = np.asarray(dataset.labels)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(
        "dataset.images must be uint8 [N, H, W, C]; got "
        f"{images.dtype} {images.shape}."
    )
  num_examples = images.shape[0]
  if labels.shape != (num_examples,):
    raise ValueError(
        f"dataset.labels must have shape [{num_examples}]; got {labels.shape}."
    )
  if num_examples == 0:
    raise ValueError("cannot evaluate on an empty dataset; check the eval split.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
    raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive int; got {batch_size}.")
  # Checks mean / std (finite, positive std, one value or one per channel).
  augment.make_views(
      jax.random.key(0), images[:1], config=_IDENTITY, mean=mean, std=std
  )
  mean = tuple(np.asarray(mean, np.float64).reshape(-1).tolist())
  std = tuple(np.asarray(std, np.float64).reshape(-1).tolist())

  multiple = _batch_multiple(sharding, images.shape[1:])
  if batch_size % multiple:
    raise ValueError(
        f"batch_size={batch_size} must be a multiple of the {multiple} devices "
        "the sharding splits the batch over; change the eval batch size."
    )
  # Small datasets need no more padding than one device-multiple.
  batch_size = min(batch_size, -(-num_examples // multiple) * multiple)

  out_sharding = None
  if sharding is not None:
    replicated = jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec()
    )
    params = jax.device_put(params, replicated)
    out_sharding = replicated
  batch_sums = _jitted_batch_sums(apply_fn, mean, std, out_sharding)

  per_batch = []
  for start in range(0, num_examples, batch_size):
    stop = min(start + batch_size, num_examples)
    size = stop - start
    batch_images, batch_labels = images[start:stop], labels[start:stop]
    if size < batch_size:  # the last batch: pad with zero rows, masked out
      batch_images = np.concatenate(
          [batch_images, np.zeros((batch_size - size, *images.shape[1:]), np.uint8)]
      )
      batch_labels = np.concatenate(
          [batch_labels, np.zeros((batch_size - size,), labels.dtype)]
      )
    mask = np.arange(batch_size) < size
    batch = _put(
        {"images": batch_images, "labels": batch_labels, "mask": mask}, sharding
    )
    per_batch.append(
        batch_sums(params, batch["images"], batch["labels"], batch["mask"])
    )

  host = jax.device_get(per_batch)
  totals = jax.tree_util.tree_map(
      lambda *xs: np.sum(np.asarray(xs, np.float64), axis=0), *host
  )
  count = float(totals["count"])
  if int(round(count)) != num_examples:
    raise AssertionError(
        f"evaluation counted {count} examples instead of {num_examples}."
    )
  ece = metrics.expected_calibration_error_from_bins(totals["bins"])
  return {
      "top1": float(totals["top1"] / count),
      "top5": float(totals["top5"] / count),
      "loss": float(totals["loss"] / count),
      "brier": float(totals["brier"] / count),
      "ece": float(ece),
      "num_examples": num_examples,
  }
