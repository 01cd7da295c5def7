"""Devices of a run: multi-host start-up, the batch mesh, sharded batches.

One `Mesh` over all devices of all processes, with a single axis "batch".
Parameters and optimizer state are replicated over it; every micro-batch is
split along its leading axis, so each device computes the clipped gradients
of its rows and XLA inserts the cross-device sum. Every process computes the
same batch selection (a pure function of (seed, step)) and gathers only the
rows its own devices hold.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def initialize(*, coordinator_address: str | None, num_processes: int,
               process_id: int) -> None:
  """Joins a multi-process run; a no-op without a coordinator address.

  Must run before anything touches the devices. On CPU the cross-process
  collectives go through gloo.

  Args:
    coordinator_address: "host:port" of process 0, or None (single process).
    num_processes: the number of processes of the run.
    process_id: this process, in [0, num_processes).
  """
  if not coordinator_address:
    return
  if jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def batch_mesh() -> Mesh:
  """A 1-D mesh named "batch" over every device of every process."""
  return Mesh(np.array(jax.devices()), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (example) axis over `mesh`."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def put_replicated(tree, mesh: Mesh):
  """Places a pytree of host values identical on every process, replicated.

  Works in multi-process runs, where `jax.device_put` of host data to
  non-addressable devices is not allowed.
  """
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])

  return jax.tree.map(put, tree)


def gather_rows(images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                mask: np.ndarray, sharding: NamedSharding):
  """The raw micro-batch of `indices`, sharded, gathered per device.

  Each process reads from `images` / `labels` only the rows that its own
  devices hold, so a host never gathers the whole global batch.

  Args:
    images: uint8 [N, H, W, C], the whole training set (every process).
    labels: int32 [N].
    indices: int64 [G]: dataset rows of this micro-batch (G divisible by
      the number of devices); padded rows carry any valid index.
    mask: bool [G]: True for real rows.
    sharding: batch-sharded NamedSharding.

  Returns:
    ({"images": uint8 [G, H, W, C], "labels": int32 [G]}, mask bool [G]) as
    global jax Arrays.
  """
  size = len(indices)

  def rows(index):
    return indices[index[0]]

  batch = {
      "images": jax.make_array_from_callback(
          (size, *images.shape[1:]), sharding,
          lambda index: images[rows(index)]),
      "labels": jax.make_array_from_callback(
          (size,), sharding, lambda index: labels[rows(index)]),
  }
  device_mask = jax.make_array_from_callback(
      (size,), sharding, lambda index: mask[index[0]])
  return batch, device_mask


def to_host(tree):
  """Fetches a pytree of replicated (or single-device) arrays to numpy."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError("to_host needs replicated arrays; got sharding "
                         f"{x.sharding}.")
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)
