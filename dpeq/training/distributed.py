"""Devices of a run: multi-host start-up and the batch mesh.

One `Mesh` over all devices of all processes, with a single axis "batch".
Parameters and optimizer state are replicated over it; every micro-batch is
split along its leading axis (`dpeq.data.batching.batch_sharding`), so each
device computes the clipped gradients of its rows and XLA inserts the
cross-device sum. Every process computes the same batch selection (a pure
function of (seed, step)) and gathers only the rows its own devices hold
(`dpeq.data.batching.gather`).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def initialize(*, coordinator_address: str | None, num_processes: int,
               process_id: int) -> None:
  """Joins a multi-process run; a no-op without a coordinator address.

  Must run before anything touches the devices. CPU collectives across
  processes go through gloo.

  Args:
    coordinator_address: "host:port" of process 0, or None (single process).
    num_processes: the number of processes of the run.
    process_id: this process, in [0, num_processes).
  """
  if not coordinator_address or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def batch_mesh() -> Mesh:
  """A 1-D mesh named "batch" over every device of every process.

  Devices are in `jax.devices()` order (grouped by process), so each process
  holds a contiguous block of rows of a batch-sharded array.
  """
  return Mesh(np.array(jax.devices()), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def to_host(tree):
  """Fetches a pytree of replicated (or single-device) arrays to numpy.

  Works in multi-process runs, where only the local copy is addressable.
  """

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError("to_host needs replicated arrays; got sharding "
                         f"{x.sharding}.")
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)
