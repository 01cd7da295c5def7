"""From a sampler's selection to device arrays sharded along the batch axis.

  selection (indices int64 [P], mask bool [P], from dpeq.privacy.sampling;
             micro-batches of it from dpeq.training.micro_batching)
    -> gather(dataset, selection)        raw numpy batch, rows in order
    -> to_devices(batch, sharding)       jax.Arrays sharded along rows

Padded rows (mask False) gather example 0; the mask, not the data, makes
them contribute nothing. On several hosts each process gathers only the rows
its devices hold (`local_rows`), and `to_devices` assembles the global array
with `jax.make_array_from_process_local_data`.
"""

from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dpeq.data.datasets import ArrayDataset


class Selection(Protocol):
  """What `gather` reads (e.g. dpeq.privacy.sampling.BatchSelection)."""

  indices: np.ndarray
  mask: np.ndarray


def batch_sharding(mesh: Mesh, axis: str = "batch") -> NamedSharding:
  """Rows split over the mesh axis `axis`, trailing dimensions replicated."""
  if axis not in mesh.axis_names:
    raise ValueError(f"mesh has axes {mesh.axis_names}; no axis {axis!r}.")
  return NamedSharding(mesh, PartitionSpec(axis))


def _num_row_shards(sharding: jax.sharding.Sharding) -> int:
  """Into how many distinct row blocks `sharding` splits a batch."""
  probe = (len(sharding.device_set),)  # Divisible by any mesh axis size.
  return len({(index[0].start, index[0].stop)
              for index in sharding.devices_indices_map(probe).values()})


def local_rows(num_rows: int, sharding: jax.sharding.Sharding | None) -> slice:
  """The rows of a [num_rows, ...] batch that this process's devices hold.

  All rows on a single host (or with sharding None); on several hosts the
  contiguous block of rows of this process's shards.
  """
  if sharding is None or jax.process_count() == 1:
    return slice(0, num_rows)
  slices = sharding.addressable_devices_indices_map((num_rows,)).values()
  bounds = sorted({(s[0].start or 0, num_rows if s[0].stop is None else s[0].stop)
                   for s in slices})
  start, stop = bounds[0][0], bounds[-1][1]
  if sum(b - a for a, b in bounds) != stop - start:
    raise ValueError(
        "This process's devices hold non-contiguous rows of the batch: order "
        "the mesh devices by process (e.g. jax.devices()).")
  return slice(start, stop)


def gather(dataset: ArrayDataset, selection: Selection, *,
           sharding: jax.sharding.Sharding | None = None) -> dict[str, np.ndarray]:
  """The raw batch of a selection, in selection order.

  Args:
    dataset: the training split in memory.
    selection: indices int [P] into the dataset and mask bool [P].
    sharding: on several hosts, the batch sharding; only this process's rows
      (`local_rows`) are gathered. None or one host: all P rows.

  Returns:
    {"images": uint8 [P', H, W, C], "labels": int32 [P']} (numpy), P' = P on
    one host.
  """
  indices = np.asarray(selection.indices)
  mask = np.asarray(selection.mask)
  if indices.ndim != 1 or mask.shape != indices.shape:
    raise ValueError(f"selection.indices {indices.shape} and selection.mask "
                     f"{mask.shape} must be 1-D of equal length.")
  if not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f"selection.indices must be integers; got {indices.dtype}.")
  if indices.size and (indices.min() < 0 or indices.max() >= len(dataset)):
    raise ValueError(
        f"selection.indices span [{indices.min()}, {indices.max()}] but the "
        f"dataset has {len(dataset)} examples: sample with "
        f"num_examples={len(dataset)}.")
  rows = indices[local_rows(len(indices), sharding)]
  return {"images": np.take(dataset.images, rows, axis=0),
          "labels": np.take(dataset.labels, rows, axis=0)}


def to_devices(batch: Any, sharding: jax.sharding.Sharding) -> Any:
  """Puts a pytree of numpy arrays [rows, ...] on devices, split along rows.

  Args:
    batch: pytree of arrays with a common leading (row) axis; on several
      hosts, this process's rows only (see `gather`, `local_rows`).
    sharding: e.g. `batch_sharding(mesh)`; the global row count must be a
      multiple of the number of row shards.

  Returns:
    The same pytree of global jax.Arrays with `sharding`.
  """
  leaves = jax.tree_util.tree_leaves(batch)
  if not leaves:
    return batch
  num_rows = len(leaves[0])
  if any(len(leaf) != num_rows for leaf in leaves):
    raise ValueError("Every leaf of the batch needs the same number of rows; "
                     f"got {[np.shape(leaf) for leaf in leaves]}.")
  if jax.process_count() == 1:
    shards = _num_row_shards(sharding)
    if num_rows % shards:
      raise ValueError(
          f"{num_rows} rows do not split evenly over {shards} devices: pad "
          f"batches to a multiple of {shards} (sampler pad_multiple).")
    return jax.device_put(batch, sharding)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)
