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

  The rule of Hölzl et al.'s code: the divisor of `num_fields` closest to
  `num_groups` (`num_groups` itself when it divides), the smaller one on a
  tie. E.g. for 8 groups: 16 fields -> 8, 27 -> 9, 39 -> 3 (3 and 13 tie),
  221 -> 13, 13 -> 13, 6 -> 6, 7 -> 7.
  """
  if num_groups < 1 or num_fields < 1:
    raise ValueError(
        f"num_groups={num_groups!r} and num_fields={num_fields!r} must be "
        "positive ints.")
  smaller = min(num_groups, num_fields)
  while num_fields % smaller:
    smaller -= 1
  if num_groups >= num_fields:  # no divisor above: the field count itself
    return smaller
  larger = num_groups
  while num_fields % larger:
    larger += 1
  return larger if larger - num_groups < num_groups - smaller else smaller


def _affine(field_type: FieldType, y: jax.Array) -> jax.Array:
  """Per-field scale ("scale" [num_fields], init 1) and trivial shift.

  The shift ("offset" [num_trivial], init 0) acts along
  `field_type.trivial_basis`, i.e. only on the trivial components.
  """
  params = {"scale": hk.get_parameter(
      "scale", (field_type.num_fields,), jnp.float32, init=jnp.ones)}
  if field_type.num_trivial:
    params["offset"] = hk.get_parameter(
        "offset", (field_type.num_trivial,), jnp.float32, init=jnp.zeros)
  return apply_affine(field_type, params, y)


def apply_affine(field_type: FieldType, params, y: jax.Array) -> jax.Array:
  """The equivariant affine map of `_affine` as a pure function of params.

  `params`: {"scale": [num_fields]} and, when the type has trivial
  components, {"offset": [num_trivial]}; y [..., field_type.size].
  """
  channel_field = np.repeat(np.arange(field_type.num_fields),
                            field_type.field_sizes)
  y = y * params["scale"][channel_field].astype(y.dtype)
  if "offset" in params:
    basis = jnp.asarray(field_type.trivial_basis, jnp.float32)
    y = y + (params["offset"] @ basis).astype(y.dtype)
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
  components only (the projection of the mean onto `trivial_basis`; the
  mean of a non-trivial component is no invariant quantity), then divide
  every component by sqrt(v_f + 1e-5), where v_f is one scalar per field:
  the mean over the field's components of their spatial variance, each
  component centred on its OWN spatial mean, with Bessel's correction
  (1 / (H W - 1)). v_f is the trace of the field's spatial covariance over
  its dimension, invariant under orthogonal rho(g), so the layer is
  equivariant. As escnn's IIDBatchNorm2d and Hölzl et al.'s layer, no
  gradient flows through the mean and v_f (jax.lax.stop_gradient). (Their
  code normalized only the last field of each type: a bug, not the method.)
  Optional affine as in EquivariantGroupNorm.
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
    height, width = x.shape[-3], x.shape[-2]
    if height * width < 2:
      raise ValueError(
          f"IIDInstanceNorm needs at least 2 spatial positions for a "
          f"variance; got {height}x{width}.")
    mean = jax.lax.stop_gradient(jnp.mean(x, axis=(-3, -2), keepdims=True))
    variance = jnp.sum(jnp.square(x - mean), axis=(-3, -2), keepdims=True)
    variance = jax.lax.stop_gradient(variance / (height * width - 1))
    field_var = variance @ jnp.asarray(self._averaging, x.dtype)
    y = x - mean @ jnp.asarray(self._trivial_projector, x.dtype)
    y = y * jax.lax.rsqrt(field_var + _EPS)[..., self._channel_field]
    return _affine(self.in_type, y) if self.affine else y
