"""Scalar ring harmonics on the plane: the function space of kernel bases.

A kernel of size k lives on the k x k pixel grid with plane coordinates
x = col - (k-1)/2, y = (k-1)/2 - row. It is written in the scalar functions

  Y_(r_i, j, c)(p) = exp(-(|p| - r_i)^2 / (2 s_i^2)) * cos(j phi)   (c = 0)
  Y_(r_i, j, s)(p) = exp(-(|p| - r_i)^2 / (2 s_i^2)) * sin(j phi)   (j > 0)

with phi the angle of p, rings r_i = 0, 1, ..., (k-1)//2, widths s_i = 0.6
(inner rings), 0.4 (outermost ring), 0.005 (the ring at r = 0, a centre
delta), and the frequencies j allowed by a band limit `cutoff(r_i, j)`. At
the origin every j > 0 function is 0, and on the ring r = 0 only j = 0 is
used (the others would vanish). Group elements act on this space linearly
and exactly: Y(g p) = T(g) Y(p), with T(rotation t) a rotation by j t on each
(cos, sin) pair and T(F) = (-1)^j diag(1, -1) for the mirror x -> -x.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np

from dpeq.groups import Group, GroupElement

SUPPORTED_KERNEL_SIZES = (1, 3, 5, 7)

Cutoff = Callable[[float, int], bool]


@dataclasses.dataclass(frozen=True)
class LinearCutoff:
  """Keeps frequencies j <= factor * r (the paper's band limit, factor 3)."""

  factor: float = 3.0

  def __call__(self, radius: float, frequency: int) -> bool:
    return frequency <= self.factor * radius + 1e-9


@dataclasses.dataclass(frozen=True)
class EscnnCutoff:
  """escnn's default band limit for R2Conv (its `frequencies_cutoff=-1`).

  j <= 0 at r = 0; j <= min(2 r, 2) on the outermost ring (r = max_radius);
  j <= min(2 r, 2 r - (r + 1) % 2) on the other rings. For a 3x3 kernel:
  ring 1 keeps j <= 2.
  """

  max_radius: float

  def __call__(self, radius: float, frequency: int) -> bool:
    if radius == 0:
      limit = 0
    elif radius == self.max_radius:
      limit = min(2 * radius, 2)
    else:
      limit = min(2 * radius, 2 * radius - (radius + 1) % 2)
    return frequency <= limit + 1e-9


def default_cutoff(group: Group, kernel_size: int) -> Cutoff:
  """The paper's j <= 3 r for C_N/D_N; escnn's default for SO(2)/O(2)."""
  if group.is_finite:
    return LinearCutoff(3.0)
  return EscnnCutoff(float((kernel_size - 1) // 2))


def check_kernel_size(kernel_size) -> None:
  if (
      not isinstance(kernel_size, (int, np.integer))
      or isinstance(kernel_size, bool)
      or kernel_size not in SUPPORTED_KERNEL_SIZES
  ):
    raise ValueError(
        f"kernel_size must be one of {SUPPORTED_KERNEL_SIZES}, got {kernel_size!r}."
    )


def grid_points(kernel_size: int) -> np.ndarray:
  """Plane coordinates of the pixel grid, float64 [k, k, 2] as (x, y).

  Index [row, col] holds x = col - (k-1)/2, y = (k-1)/2 - row.
  """
  check_kernel_size(kernel_size)
  half = (kernel_size - 1) / 2
  rows, cols = np.meshgrid(
      np.arange(kernel_size), np.arange(kernel_size), indexing="ij"
  )
  return np.stack([cols - half, half - rows], axis=-1).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class HarmonicBlock:
  """One (ring, frequency) block: 1 function (j = 0) or a (cos, sin) pair."""

  ring: int
  radius: float
  sigma: float
  frequency: int
  offset: int  # Index of its first function in the full list.

  @property
  def size(self) -> int:
    return 1 if self.frequency == 0 else 2

  def action(self, element: GroupElement) -> np.ndarray:
    """T restricted to this block: Y_block(g p) = T @ Y_block(p)."""
    if self.frequency == 0:
      return np.eye(1)
    j = self.frequency
    angle = j * element.rotation
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    if element.flip:
      rot = rot @ np.diag([1.0, -1.0]) * (-1.0) ** j
    return rot


class RingHarmonics:
  """The band-limited scalar functions Y_h for one kernel size and cutoff.

  Attributes:
    kernel_size: k.
    blocks: the `HarmonicBlock`s, ring by ring, frequency by frequency.
    size: H, the number of scalar functions.
  """

  def __init__(self, kernel_size: int, cutoff: Cutoff):
    check_kernel_size(kernel_size)
    if not callable(cutoff):
      raise ValueError(
          f"cutoff must be a predicate (ring radius, frequency) -> bool, got "
          f"{cutoff!r}."
      )
    num_rings = (kernel_size - 1) // 2 + 1
    radii = [float(r) for r in range(num_rings)]
    sigmas = [0.6] * (num_rings - 1) + [0.4]
    sigmas[0] = 0.005  # The ring at r = 0 is a centre delta.
    blocks, offset = [], 0
    max_frequency = 2 * kernel_size  # Far beyond what a k x k grid resolves.
    for ring, (radius, sigma) in enumerate(zip(radii, sigmas, strict=True)):
      top = 0 if radius == 0 else max_frequency
      for j in range(top + 1):
        if j > 0 and not cutoff(radius, j):
          continue
        if j == 0 and radius > 0 and not cutoff(radius, 0):
          continue
        blocks.append(HarmonicBlock(ring, radius, sigma, j, offset))
        offset += 1 if j == 0 else 2
      if radius > 0 and cutoff(radius, max_frequency + 1):
        raise ValueError(
            f"cutoff {cutoff!r} keeps frequency {max_frequency + 1} on ring "
            f"{radius}: a {kernel_size}x{kernel_size} grid cannot resolve it; "
            "bound the frequency."
        )
    self.kernel_size = kernel_size
    self.cutoff = cutoff
    self.blocks = tuple(blocks)
    self.size = offset

  def evaluate(self, points: np.ndarray) -> np.ndarray:
    """Y_h at plane points [..., 2] (x, y); float64 [..., H]."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (2,):
      raise ValueError(f"points must end in an axis of size 2, got {points.shape}.")
    radius = np.hypot(points[..., 0], points[..., 1])
    angle = np.arctan2(points[..., 1], points[..., 0])
    at_origin = radius < 1e-12
    columns = []
    for block in self.blocks:
      profile = np.exp(-((radius - block.radius) ** 2) / (2 * block.sigma**2))
      if block.frequency == 0:
        columns.append(profile)
      else:
        j = block.frequency
        profile = np.where(at_origin, 0.0, profile)
        columns.append(profile * np.cos(j * angle))
        columns.append(profile * np.sin(j * angle))
    return np.stack(columns, axis=-1)

  def action(self, element: GroupElement) -> np.ndarray:
    """T(g), float64 [H, H]: Y(g p) = T(g) @ Y(p) for every point p."""
    out = np.zeros((self.size, self.size))
    for block in self.blocks:
      sl = slice(block.offset, block.offset + block.size)
      out[sl, sl] = block.action(element)
    return out

  def character(self, element: GroupElement) -> float:
    """trace T(g)."""
    return float(sum(np.trace(block.action(element)) for block in self.blocks))


@functools.lru_cache(maxsize=64)
def ring_harmonics(kernel_size: int, cutoff: Cutoff) -> RingHarmonics:
  """Cached `RingHarmonics`, checked to be independent on the pixel grid.

  Raises:
    ValueError: if the sampled functions are linearly dependent on the grid
      (the cutoff keeps frequencies the grid aliases); lower the cutoff.
  """
  harmonics = RingHarmonics(kernel_size, cutoff)
  sampled = harmonics.evaluate(grid_points(kernel_size)).reshape(-1, harmonics.size)
  singular = np.linalg.svd(sampled, compute_uv=False)
  if harmonics.size > sampled.shape[0] or singular[-1] < 1e-6 * singular[0]:
    raise ValueError(
        f"cutoff {cutoff!r} keeps {harmonics.size} ring harmonics but the "
        f"{kernel_size}x{kernel_size} grid resolves only "
        f"{int(np.sum(singular >= 1e-6 * singular[0]))} of them (aliasing); "
        "use a lower cutoff."
    )
  return harmonics
