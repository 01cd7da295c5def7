"""Typed feature fields: which group acts on a tensor's channels, and how.

A `FieldType` is a group G and a list of representations, one per feature
field. An NHWC tensor of that type has `size` channels, the channels of field
i being `field_slices[i]`. The group acts on such a tensor `f` by moving the
pixel grid and mixing each field's channels:

    (g . f)(p) = rho(g) f(g^-1 p),

with plane coordinates p = (x, y), x = col - (W - 1) / 2, y = (H - 1) / 2 - row
(y points up, rotations are counter-clockwise), and g acting on p as in
`dpeq.groups.GroupElement`. The bookkeeping is numpy and runs once at init;
`transform` is the reference action used by the equivariance tests;
`apply_per_field` is the per-step helper of layers that act field by field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from dpeq import groups

_TOLERANCE = 1e-8
# Generic angles (radians) at which no band-limited frequency k >= 1 of an
# SO(2)/O(2) representation is fixed: used to probe infinite groups.
_GENERIC_ANGLES = (0.7, 2.1)


def _probe_elements(group) -> list:
  """Elements that generate `group` (all of them for finite groups).

  Finite groups: `group.elements()`. SO(2)/O(2): two rotations by generic
  angles (and their flipped versions for O(2)); for band-limited
  representations these fix exactly what the whole group fixes.
  """
  if group.is_finite:
    return list(group.elements())
  flips = (0, 1) if group.has_flips else (0,)
  return [
      groups.GroupElement(rotation=angle, flip=flip)
      for angle in _GENERIC_ANGLES
      for flip in flips
  ]


def _representation_matrices(rep) -> np.ndarray:
  """rho(g) for the probe elements of rep's group: float64 [E, d, d]."""
  return np.stack([rep.matrix(g) for g in _probe_elements(rep.group)])


def trivial_basis(rep) -> np.ndarray:
  """Orthonormal rows spanning the vectors that `rep` fixes: float64 [t, d].

  These are the components on which a bias (or a mean shift) may act without
  breaking equivariance: for a regular field one row, ones / sqrt(|G|); for a
  band-limited spectral field the frequency-0 channel. Rows are chosen
  deterministically (Gram-Schmidt over the projected coordinate axes), so
  fields made only of trivial irreps get the identity.
  """
  matrices = _representation_matrices(rep)
  constraint = (matrices - np.eye(rep.size)).reshape(-1, rep.size)
  _, singular, vh = np.linalg.svd(constraint)
  rank = int(np.sum(singular > _TOLERANCE))
  null = vh[rank:]
  projector = null.T @ null
  rows = []
  for column in projector.T:
    residual = column - sum((row @ column) * row for row in rows)
    norm = np.linalg.norm(residual)
    if norm > 1e-6:
      rows.append(residual / norm)
  return np.array(rows, dtype=np.float64).reshape(len(rows), rep.size)


def is_orthogonal(rep) -> bool:
  """Whether every rho(g) is orthogonal (norms of fields are invariant)."""
  matrices = _representation_matrices(rep)
  products = np.einsum("eij,ekj->eik", matrices, matrices)
  return bool(np.allclose(products, np.eye(rep.size), atol=1e-8))


def _as_group(group):
  if isinstance(group, str):
    return groups.get_group(group)
  return group


class FieldType:
  """A group and the representation of each of a tensor's feature fields.

  Attributes:
    group: the `dpeq.groups.Group` acting on the fields.
    reps: tuple of `dpeq.groups.Representation`, one per field, in channel
      order.
    size: number of channels (sum of the representations' sizes).
    num_fields: number of fields.
    field_sizes: tuple of each field's number of channels.
    field_slices: tuple of each field's channel slice.
    trivial_basis: float64 [num_trivial, size]; orthonormal rows, each inside
      one field, spanning the channel vectors that the group fixes (where a
      bias or a shift may act).
    trivial_fields: int [num_trivial]; the field of each row of
      `trivial_basis`.

  Two field types are equal when their groups and representations are (names
  of representations are labels and do not matter). Field types are
  immutable and hashable; `+` concatenates two types of the same group.
  `group` may be given by name ("D4"; SO2/O2 then with max_frequency 3).
  """

  def __init__(self, group, reps: Sequence):
    group = _as_group(group)
    reps = tuple(reps)
    if not reps:
      raise ValueError(f"A FieldType of {group.name} needs at least one field.")
    for index, rep in enumerate(reps):
      if rep.group != group:
        raise ValueError(
            f"Field {index} has representation {rep.name!r} of group "
            f"{rep.group.name}, but the FieldType's group is {group.name}: "
            "build the representation from the same group (or restrict it)."
        )
    self._group = group
    self._reps = reps

  # Constructors ---------------------------------------------------------

  @classmethod
  def trivial(cls, group, num_fields: int) -> FieldType:
    """`num_fields` invariant scalar fields (e.g. the RGB input: 3)."""
    group = _as_group(group)
    _check_count(num_fields)
    return cls(group, [group.trivial_representation()] * num_fields)

  @classmethod
  def regular(cls, group, num_fields: int) -> FieldType:
    """`num_fields` regular fields (|G| channels each) of a finite group."""
    group = _as_group(group)
    _check_count(num_fields)
    if not group.is_finite:
      raise ValueError(
          f"{group.name} is infinite and has no regular representation: use "
          "FieldType.irreps(group, n) for band-limited spectral fields."
      )
    return cls(group, [group.regular_representation()] * num_fields)

  @classmethod
  def irreps(cls, group, num_fields: int) -> FieldType:
    """`num_fields` fields, each the direct sum of all of G's irreps once.

    For SO(2)/O(2) these are the band-limited "spectral regular" fields
    psi_0 + ... + psi_L (L = the group's max_frequency; 7 channels for SO(2),
    L = 3).
    """
    group = _as_group(group)
    _check_count(num_fields)
    field = groups.directsum(*group.irreps())
    return cls(group, [field] * num_fields)

  # Bookkeeping ----------------------------------------------------------

  @property
  def group(self):
    return self._group

  @property
  def reps(self) -> tuple:
    return self._reps

  @property
  def num_fields(self) -> int:
    return len(self._reps)

  @functools.cached_property
  def field_sizes(self) -> tuple[int, ...]:
    return tuple(int(rep.size) for rep in self._reps)

  @property
  def size(self) -> int:
    return sum(self.field_sizes)

  @functools.cached_property
  def field_slices(self) -> tuple[slice, ...]:
    ends = np.cumsum(self.field_sizes)
    return tuple(
        slice(int(end - size), int(end))
        for end, size in zip(ends, self.field_sizes, strict=True)
    )

  @functools.cached_property
  def _per_rep(self) -> dict:
    """Properties computed once per distinct representation name."""
    info = {}
    for rep in self._reps:
      if rep not in info:
        info[rep] = {
            "trivial_basis": trivial_basis(rep),
            "is_permutation": rep.is_permutation,
            "is_orthogonal": is_orthogonal(rep),
        }
    return info

  @functools.cached_property
  def trivial_basis(self) -> np.ndarray:
    rows = []
    for rep, field in zip(self._reps, self.field_slices, strict=True):
      for row in self._per_rep[rep]["trivial_basis"]:
        full = np.zeros(self.size)
        full[field] = row
        rows.append(full)
    return np.array(rows, dtype=np.float64).reshape(len(rows), self.size)

  @functools.cached_property
  def trivial_fields(self) -> np.ndarray:
    counts = [
        len(self._per_rep[rep]["trivial_basis"]) for rep in self._reps
    ]
    return np.repeat(np.arange(self.num_fields), counts)

  @property
  def num_trivial(self) -> int:
    return int(self.trivial_basis.shape[0])

  def fields_where(self, prop: str, value: bool = False) -> list[int]:
    """Indices of fields whose representation has `prop` equal to `value`.

    `prop` is "is_permutation" or "is_orthogonal".
    """
    return [
        index
        for index, rep in enumerate(self._reps)
        if self._per_rep[rep][prop] == value
    ]

  def require(self, prop: str, *, layer: str, hint: str) -> None:
    """Raises ValueError naming the fields whose representation lacks `prop`."""
    bad = self.fields_where(prop, False)
    if bad:
      names = sorted({self._reps[i].name for i in bad})
      raise ValueError(
          f"{layer} needs fields whose representations satisfy {prop}, but "
          f"fields {bad[:8]}{'...' if len(bad) > 8 else ''} of {self} have "
          f"representation(s) {names}: {hint}"
      )

  def check_input(self, x, *, layer: str) -> None:
    """Raises ValueError unless x is [..., H, W, size]."""
    shape = np.shape(x)
    if len(shape) < 3:
      raise ValueError(
          f"{layer} expects an array [..., H, W, C] of {self}, got shape "
          f"{shape}."
      )
    if shape[-1] != self.size:
      raise ValueError(
          f"{layer}: the input has {shape[-1]} channels but its field type "
          f"{self} has {self.size}; pass a tensor of that type (or build the "
          "layer with the field type of its input)."
      )

  # Operations ----------------------------------------------------------

  def restrict(self, subgroup_name: str) -> FieldType:
    """The same channels seen as fields of a subgroup (no data movement)."""
    subgroup = self._group.subgroup(subgroup_name)
    return FieldType(subgroup, [rep.restrict(subgroup_name) for rep in self._reps])

  def representation_matrix(self, element) -> np.ndarray:
    """rho(element) of the whole type, block-diagonal: float64 [size, size]."""
    matrix = np.zeros((self.size, self.size))
    for rep, field in zip(self._reps, self.field_slices, strict=True):
      matrix[field, field] = rep.matrix(element)
    return matrix

  def transform(self, x, element):
    """Acts with `element` on x [..., H, W, size]: (g.x)(p) = rho(g) x(g^-1 p).

    Exact (an index permutation of the pixel grid) when the element maps the
    grid onto itself: multiples of 90 degrees on square images, flips, and
    180 degrees on any image; the result then has x's array type (numpy or
    JAX). Any other element is approximate: the grid is resampled with a cubic
    spline (scipy.ndimage.map_coordinates, order 3, mode "grid-constant":
    zero outside the image), so only smooth, oversampled inputs away from the
    border transform faithfully; the result is a numpy array. For
    equivariance tests.
    """
    self.check_input(x, layer="FieldType.transform")
    height, width = np.shape(x)[-3:-1]
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    points = np.stack([cols - (width - 1) / 2, (height - 1) / 2 - rows])
    # Source of each output pixel: g^-1 p, with g^-1 = matrix^T (orthogonal).
    source = np.einsum("ji,jhw->ihw", element.matrix(), points)
    source_cols = source[0] + (width - 1) / 2
    source_rows = (height - 1) / 2 - source[1]
    rho = self.representation_matrix(element)
    exact_rows, exact_cols = np.rint(source_rows), np.rint(source_cols)
    on_grid = (
        np.allclose(source_rows, exact_rows, atol=1e-6)
        and np.allclose(source_cols, exact_cols, atol=1e-6)
        and exact_rows.min() >= 0
        and exact_rows.max() <= height - 1
        and exact_cols.min() >= 0
        and exact_cols.max() <= width - 1
    )
    if on_grid:
      moved = x[..., exact_rows.astype(int), exact_cols.astype(int), :]
      return moved @ rho.T.astype(moved.dtype)
    values = np.asarray(x, dtype=np.float64)
    flat = values.reshape(-1, height, width, self.size)
    moved = np.stack([
        np.stack(
            [
                scipy.ndimage.map_coordinates(
                    image[..., channel],
                    [source_rows, source_cols],
                    order=3,
                    mode="grid-constant",
                    cval=0.0,
                )
                for channel in range(self.size)
            ],
            axis=-1,
        )
        for image in flat
    ]).reshape(values.shape)
    return (moved @ rho.T).astype(np.asarray(x).dtype)

  # Python protocol -------------------------------------------------------

  def __add__(self, other: FieldType) -> FieldType:
    if not isinstance(other, FieldType):
      return NotImplemented
    if other.group != self.group:
      raise ValueError(
          f"Cannot concatenate {self} and {other}: different groups."
      )
    return FieldType(self._group, self._reps + other.reps)

  def _key(self):
    return (self._group, self._reps)

  def __eq__(self, other) -> bool:
    return isinstance(other, FieldType) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __len__(self) -> int:
    return self.num_fields

  def __repr__(self) -> str:
    runs = []
    for rep in self._reps:
      if runs and runs[-1][0] == rep.name:
        runs[-1][1] += 1
      else:
        runs.append([rep.name, 1])
    body = ", ".join(f"{count} x {name}" for name, count in runs)
    return f"FieldType({self._group.name}: {body}; {self.size} channels)"


def field_runs(field_type: FieldType) -> list[tuple]:
  """Maximal runs of consecutive fields with one representation.

  Returns [(rep, first_channel, num_fields)] covering all channels in order;
  a run's channels reshape to [..., num_fields, rep.size].
  """
  runs = []
  for rep, field in zip(field_type.reps, field_type.field_slices, strict=True):
    if runs and runs[-1][0] == rep:
      runs[-1][2] += 1
    else:
      runs.append([rep, field.start, 1])
  return [tuple(run) for run in runs]


def apply_per_field(
    field_type: FieldType, x: jax.Array, fn: Callable[[object, jax.Array], jax.Array]
) -> jax.Array:
  """Applies fn(rep, fields [..., n, rep.size]) -> [..., n, d'] run by run.

  The results are flattened back to channels and concatenated in order.
  """
  outputs = []
  for rep, start, count in field_runs(field_type):
    fields = x[..., start : start + count * rep.size]
    fields = fields.reshape(x.shape[:-1] + (count, rep.size))
    result = fn(rep, fields)
    outputs.append(result.reshape(x.shape[:-1] + (-1,)))
  return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


def _check_count(num_fields) -> None:
  if not isinstance(num_fields, (int, np.integer)) or num_fields < 1:
    raise ValueError(f"num_fields must be a positive int, got {num_fields!r}.")
