"""Elements of the planar groups: a rotation angle and an optional mirror."""

import dataclasses
import math

import numpy as np

_TWO_PI = 2.0 * math.pi

# The mirror F = diag(-1, 1): x -> -x, a horizontal image flip.
MIRROR = np.diag([-1.0, 1.0])


def rotation_matrix(angle: float) -> np.ndarray:
  """The counter-clockwise rotation of the plane by `angle` radians, [2, 2]."""
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c, -s], [s, c]])


@dataclasses.dataclass(frozen=True)
class GroupElement:
  """The map p -> R(rotation) @ F^flip @ p of the plane, F = diag(-1, 1).

  Every group of dpeq.groups (C_N, D_N, SO(2), O(2)) is a subgroup of O(2)
  and names its elements this way, so an element means the same geometric map
  in a group and in all of its subgroups.

  Attributes:
    rotation: angle in radians, counter-clockwise in (x, y); normalized to
      [0, 2 pi).
    flip: 1 if the mirror x -> -x is applied (before the rotation), else 0.
  """

  rotation: float
  flip: int = 0

  def __post_init__(self):
    if self.flip not in (0, 1):
      raise ValueError(f"GroupElement.flip must be 0 or 1, got {self.flip!r}.")
    rotation = float(self.rotation)
    if not math.isfinite(rotation):
      raise ValueError(f"GroupElement.rotation must be finite, got {rotation}.")
    rotation = math.fmod(rotation, _TWO_PI)
    if rotation < 0.0:
      rotation += _TWO_PI
    if rotation >= _TWO_PI:  # fmod of a tiny negative number.
      rotation = 0.0
    object.__setattr__(self, "rotation", rotation)
    object.__setattr__(self, "flip", int(self.flip))

  def matrix(self) -> np.ndarray:
    """The 2x2 float64 matrix R(rotation) @ F^flip acting on (x, y)."""
    rot = rotation_matrix(self.rotation)
    return rot @ MIRROR if self.flip else rot

  def act(self, points: np.ndarray) -> np.ndarray:
    """Applies the element to plane points [..., 2] (x, y); returns [..., 2]."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (2,):
      raise ValueError(
          f"points must have a trailing axis of size 2 (x, y), got {points.shape}."
      )
    return points @ self.matrix().T
