"""Choices shared by the equivariant models (Hölzl et al. 2023).

One place for the rules that make the equivariant networks comparable across
groups: the width rule, the restriction of the last stage, and which field
type, nonlinearity, normalization and pooling each kind of group uses.

  finite C_N / D_N:  regular fields; pointwise nonlinearity; equivariant group
                     norm; 2x2 max pool; group pooling by max over the fibre.
  SO(2) / O(2):      band-limited spectral fields psi_0 + ... + psi_L (L = 3);
                     Fourier nonlinearity (16 rotations); i.i.d. instance
                     norm; anti-aliased average pool; group pooling by the
                     field norm; a soft disk mask on the input.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dpeq import groups
from dpeq import nn as eqnn

RESTRICTIONS = ("halved", "invariant", "none")
# Width-rule constant of Hölzl et al.: n = c * sqrt(1.5 |G|) / |G| fields.
WIDTH_CONSTANT = 1.5


def get_group(name: str, *, model: str) -> groups.Group:
  """The group `name`, or a ValueError listing the accepted names."""
  try:
    return groups.get_group(name)
  except ValueError as err:
    raise ValueError(
        f"{model}: unknown group {name!r}; use 'C<N>' or 'D<N>' (e.g. C4, D4, "
        "C8, D8, C16, D16), 'SO2' or 'O2'."
    ) from err


def num_fields(channels: int, group: groups.Group) -> int:
  """Hölzl et al.'s width rule: fields for a conventional width `channels`.

  Finite G: int(channels * sqrt(1.5 |G|) / |G|), so a regular-to-regular
  layer (n^2 |G| kernel coefficients per basis function) gets 1.5 times the
  channels^2 of the conventional layer. SO(2)/O(2): int(channels * sqrt(1.5)
  / L^2) with L the band limit (3), as in the paper's code. At least 1.
  """
  if group.is_finite:
    order = group.order
    count = int(channels * math.sqrt(WIDTH_CONSTANT * order) / order)
  else:
    count = int(channels * math.sqrt(WIDTH_CONSTANT) / group.max_frequency**2)
  return max(1, count)


@dataclasses.dataclass(frozen=True)
class Restriction:
  """How the last stage of a network is restricted.

  Attributes:
    subgroup: name of the subgroup the last stage is equivariant to, or None
      for no restriction.
    last_stage_fields: the last stage's number of fields.
  """

  subgroup: str | None
  last_stage_fields: int


def restriction(
    group: groups.Group, restrict: str, channels: int, *, model: str
) -> Restriction:
  """The subgroup and width of the last stage (`channels` conventional).

  "none": the full group, width rule of G. "invariant": the trivial group
  (the last stage is a plain CNN), `channels` fields as in the paper's code.
  "halved": C_N -> C_{N/2}, D_N -> D_{N/2} (same flip axis), width rule of
  the subgroup (N must be even); SO(2) -> trivial (as "invariant", the
  paper's SO(2) model) and O(2) -> D1 (the mirror only, width rule of an
  order-2 group; the paper's "reflection" restriction).
  """
  if restrict not in RESTRICTIONS:
    raise ValueError(
        f"{model}: restrict must be one of {RESTRICTIONS}, got {restrict!r}."
    )
  if restrict == "none":
    return Restriction(None, num_fields(channels, group))
  if restrict == "invariant" or group.name == "SO2":
    return Restriction("C1", channels)
  if group.name == "O2":
    sub = group.subgroup("D1")
    return Restriction(sub.name, num_fields(channels, sub))
  if group.rotation_order % 2:
    raise ValueError(
        f"{model}: restrict='halved' needs an even number of rotations, but "
        f"{group.name} has {group.rotation_order}; use 'invariant' or 'none'."
    )
  half = group.rotation_order // 2
  sub = group.subgroup(f"{'D' if group.has_flips else 'C'}{half}")
  return Restriction(sub.name, num_fields(channels, sub))


def hidden_type(group: groups.Group, count: int) -> eqnn.FieldType:
  """`count` hidden fields: regular (finite G) or spectral (SO(2), O(2))."""
  if group.is_finite:
    return eqnn.FieldType.regular(group, count)
  return eqnn.FieldType.irreps(group, count)


def paper_activation(field_type: eqnn.FieldType):
  """Hölzl et al.'s activation: Mish on permutation (regular, trivial)
  fields, ELU for spectral fields (applied as Fourier-ELU)."""
  if not field_type.fields_where("is_permutation", False):
    return jax.nn.mish
  return jax.nn.elu


def nonlinearity(field_type: eqnn.FieldType, fn, *, name: str):
  """Pointwise `fn` on permutation fields, else Fourier `fn` (16 samples)."""
  if not field_type.fields_where("is_permutation", False):
    return eqnn.PointwiseNonlinearity(field_type, fn, name=name)
  return eqnn.FourierNonlinearity(field_type, fn=fn, num_samples=16, name=name)


def norm(
    field_type: eqnn.FieldType, *, num_groups: int = 8, affine: bool = False,
    name: str,
):
  """Equivariant group norm for permutation fields, else i.i.d. instance norm."""
  if not field_type.fields_where("is_permutation", False):
    return eqnn.EquivariantGroupNorm(
        field_type, num_groups=num_groups, affine=affine, name=name
    )
  return eqnn.IIDInstanceNorm(field_type, affine=affine, name=name)


def pool(field_type: eqnn.FieldType, x: jax.Array, *, name: str) -> jax.Array:
  """Halves H and W: 2x2 max pool (permutation fields) or anti-aliased mean."""
  if not field_type.fields_where("is_permutation", False):
    return eqnn.max_pool(x, window=2)
  return eqnn.AntiAliasedAvgPool(field_type, stride=2, name=name)(x)


def group_pooling(field_type: eqnn.FieldType, *, name: str):
  """Invariant map per field: max over the fibre, or the norm for irreps."""
  mode = "max" if not field_type.fields_where("is_permutation", False) else "norm"
  return eqnn.GroupPooling(field_type, mode=mode, name=name)


def disk_mask(height: int, width: int, *, margin: float = 0.01) -> np.ndarray:
  """Soft disk mask [H, W, 1] for SO(2)/O(2) inputs (escnn's MaskModule).

  1 within r0 = (1 - margin) * c of the centre (c = (min(H, W) - 1) / 2),
  exp((r0^2 - r^2) / 4) outside: rotating the image by any angle keeps the
  corners (which would leave the grid) out of the features.
  """
  rows = np.arange(height) - (height - 1) / 2
  cols = np.arange(width) - (width - 1) / 2
  r2 = rows[:, None] ** 2 + cols[None, :] ** 2
  r0 = (1.0 - margin) * (min(height, width) - 1) / 2
  mask = np.where(r2 > r0**2, np.exp((r0**2 - r2) / 4.0), 1.0)
  return mask[:, :, None].astype(np.float32)


def mask_input(group: groups.Group, images: jax.Array) -> jax.Array:
  """Applies `disk_mask` for continuous groups; identity for finite ones."""
  if group.is_finite:
    return images
  height, width = images.shape[-3:-1]
  return images * jnp.asarray(disk_mask(height, width), images.dtype)
