"""The one micro-batching path: a logical batch as consecutive micro-batches.

A logical batch (the sampler's padded selection) is cut into micro-batches of
`micro_batch_size` rows PER DEVICE, i.e. `micro_batch_size * num_devices`
rows per micro-step; that is the only meaning of `micro_batch_size` in dpeq
(config.training.micro_batch_size). Each micro-batch's clipped sum is
computed by the caller's `micro_step` and the results are merged in order
(dpeq.privacy.clipping.ClippedGradSum.merge: sums of disjoint rows add, so
the logical batch's clipped sum, hence the guarantee, does not depend on how
it is cut, up to float32 summation order). Micro-steps never touch the
update step, the noise, the averages or the ledger: only the ONE `apply`
after the last micro-batch does.

    batching = MicroBatching(micro_batch_size=64, num_devices=8)
    sampler = plan.sampler(seed=..., pad_multiple=batching.rows_per_step)
    total = batching.accumulate(sampler.batch(step), micro_step=...,
                                merge=...)
    state, metrics = apply(state, total)
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from dpeq.privacy.sampling import BatchSelection

Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MicroBatching:
  """How a logical batch is cut into micro-batches.

  Attributes:
    micro_batch_size: rows per device per micro-step (>= 1).
    num_devices: devices the rows of a micro-step are split over (>= 1).
  """

  micro_batch_size: int
  num_devices: int = 1

  def __post_init__(self):
    for name in ("micro_batch_size", "num_devices"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")

  @property
  def rows_per_step(self) -> int:
    """Rows of one micro-step over all devices: what the sampler pads to."""
    return self.micro_batch_size * self.num_devices

  def split(self, selection: BatchSelection) -> Iterator[BatchSelection]:
    """The micro-batches of `selection`, rows in order.

    Raises:
      ValueError: when the selection is not padded to a multiple of
        `rows_per_step` (sample with pad_multiple=rows_per_step).
    """
    rows, size = len(selection.indices), self.rows_per_step
    if rows % size or len(selection.mask) != rows:
      raise ValueError(
          f"a selection of {rows} rows (mask {len(selection.mask)}) cannot be "
          f"cut into micro-batches of {size} rows: sample with "
          f"pad_multiple={size} (micro_batch_size x num_devices).")
    for start in range(0, rows, size):
      yield BatchSelection(indices=selection.indices[start:start + size],
                           mask=selection.mask[start:start + size])

  def accumulate(self, selection: BatchSelection, *,
                 micro_step: Callable[[int, BatchSelection], Result],
                 merge: Callable[[Result, Result], Result]) -> Result:
    """Runs `micro_step(index, micro_batch)` on each micro-batch and merges
    the results in order (`merge(total, result)`).

    `micro_step` gathers its rows, puts them on the devices and computes
    their clipped sum (augmentation key folded with `index`); `merge` is
    ClippedGradSum.merge or a jitted function that calls it.
    """
    total: Any = None
    for index, part in enumerate(self.split(selection)):
      result = micro_step(index, part)
      total = result if total is None else merge(total, result)
    if total is None:
      raise ValueError("an empty selection has no micro-batches.")
    return total
