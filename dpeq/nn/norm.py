"""Equivariant normalization without batch statistics (DP-compatible).

Both layers normalize each example on its own, so per-example gradients stay
per example. Statistics are taken over whole fields, never over part of a
field's channels, which is what keeps them invariant.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from dpeq.nn.field_type import FieldType

_EPS = 1e-5


def resolve_num_groups(num_fields: int, num_groups: int) -> int:
  """The number of field groups that EquivariantGroupNorm actually uses.

  `num_groups` when it divides `num_fields`. Otherwise (the fallback of
  Hölzl et al.): the largest divisor g <= num_groups of `num_fields` that
  leaves more than 3 fields per group, else 1. E.g. 16 fields -> 8 groups,
  27 -> 3, 39 -> 3, 13 -> 1, 6 -> 1.
  """
  if num_groups < 1:
    raise ValueError(f"num_groups must be a positive int, got {num_groups!r}.")
  if num_fields % num_groups == 0:
    return num_groups
  for groups in range(min(num_groups, num_fields), 0, -1):
    if num_fields % groups == 0 and num_fields // groups > 3:
      return groups
  return 1


def _affine(field_type: FieldType, y: jax.Array) -> jax.Array:
  """Per-field scale ("scale" [num_fields], init 1) and trivial shift.

  The shift ("offset" [num_trivial], init 0) acts along
  `field_type.trivial_basis`, i.e. only on the trivial components.
  """
  scale = hk.get_parameter(
      "scale", (field_type.num_fields,), jnp.float32, init=jnp.ones
  )
  channel_field = np.repeat(np.arange(field_type.num_fields), field_type.field_sizes)
  y = y * scale[channel_field].astype(y.dtype)
  if field_type.num_trivial:
    offset = hk.get_parameter(
        "offset", (field_type.num_trivial,), jnp.float32, init=jnp.zeros
    )
    basis = jnp.asarray(field_type.trivial_basis, jnp.float32)
    y = y + (offset @ basis).astype(y.dtype)
  return y


class EquivariantGroupNorm(hk.Module):
  """Group norm over groups of whole permutation fields (regular, trivial).

  The fields are split in `resolve_num_groups(num_fields, num_groups)`
  contiguous groups of equally many fields; each example's group g is
  normalized with the mean and (biased) variance over its fields' channels
  and all pixels:  y = (x - mean_g) / sqrt(var_g + 1e-5). A field is never
  split between groups. Equivariant for permutation representations, whose
  channel mean and variance are invariant; for irrep (spectral) fields it is
  not: use IIDInstanceNorm. Optional affine: a scale per field and a shift on
  the trivial components (the paper's layers are affine-free).
  """

  def __init__(
      self,
      field_type: FieldType,
      *,
      num_groups: int = 8,
      affine: bool = False,
      name: str | None = None,
  ):
    super().__init__(name=name)
    field_type.require(
        "is_permutation",
        layer="EquivariantGroupNorm",
        hint="use IIDInstanceNorm for irrep (spectral) fields.",
    )
    self.in_type = self.out_type = field_type
    self.num_groups = resolve_num_groups(field_type.num_fields, num_groups)
    self.affine = bool(affine)
    per_group = field_type.num_fields // self.num_groups
    starts = [field_type.field_slices[g * per_group].start
              for g in range(self.num_groups)]
    self._bounds = list(zip(starts, starts[1:] + [field_type.size], strict=True))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes x [..., H, W, C] per example; same shape."""
    self.in_type.check_input(x, layer="EquivariantGroupNorm")
    widths = {end - start for start, end in self._bounds}
    if len(widths) == 1:  # Equal group widths: one reshape.
      grouped = x.reshape(x.shape[:-1] + (self.num_groups, -1))
      mean = jnp.mean(grouped, axis=(-4, -3, -1), keepdims=True)
      var = jnp.var(grouped, axis=(-4, -3, -1), keepdims=True)
      y = ((grouped - mean) * jax.lax.rsqrt(var + _EPS)).reshape(x.shape)
    else:
      parts = []
      for start, end in self._bounds:
        part = x[..., start:end]
        mean = jnp.mean(part, axis=(-3, -2, -1), keepdims=True)
        var = jnp.var(part, axis=(-3, -2, -1), keepdims=True)
        parts.append((part - mean) * jax.lax.rsqrt(var + _EPS))
      y = jnp.concatenate(parts, axis=-1)
    return _affine(self.in_type, y) if self.affine else y


class IIDInstanceNorm(hk.Module):
  """Instance norm for fields of any orthogonal representation (irreps).

  Per example and field f: subtract the spatial mean of the field's trivial
  components only (the projection of the mean onto `trivial_basis`), then
  divide by sqrt(v_f + 1e-5), where v_f is one scalar per field: the mean over
  the field's components of their spatial second moment after that
  centering (the spatial variance for trivial components; non-trivial
  components are not centered, their mean being no invariant quantity).
  Both statistics are invariant under orthogonal rho(g), so the layer is
  equivariant. This is the intended maths of Hölzl et al.; their code
  normalized only the last field of each type. Optional affine as in
  EquivariantGroupNorm.
  """

  def __init__(
      self,
      field_type: FieldType,
      *,
      affine: bool = False,
      name: str | None = None,
  ):
    super().__init__(name=name)
    field_type.require(
        "is_orthogonal",
        layer="IIDInstanceNorm",
        hint="its statistics are only invariant for orthogonal representations.",
    )
    self.in_type = self.out_type = field_type
    self.affine = bool(affine)
    basis = field_type.trivial_basis
    self._trivial_projector = (basis.T @ basis).astype(np.float32)
    # Channel -> field averaging matrix [C, F] (1 / size of the field).
    sizes = np.asarray(field_type.field_sizes)
    channel_field = np.repeat(np.arange(field_type.num_fields), sizes)
    averaging = np.zeros((field_type.size, field_type.num_fields), np.float32)
    averaging[np.arange(field_type.size), channel_field] = 1.0 / sizes[channel_field]
    self._averaging = averaging
    self._channel_field = channel_field

  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalizes x [..., H, W, C] per example and field; same shape."""
    self.in_type.check_input(x, layer="IIDInstanceNorm")
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
    y = x - mean @ jnp.asarray(self._trivial_projector, x.dtype)
    second_moment = jnp.mean(jnp.square(y), axis=(-3, -2), keepdims=True)
    field_var = second_moment @ jnp.asarray(self._averaging, x.dtype)
    y = y * jax.lax.rsqrt(field_var + _EPS)[..., self._channel_field]
    return _affine(self.in_type, y) if self.affine else y
