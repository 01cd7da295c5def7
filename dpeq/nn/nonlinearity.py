"""Equivariant nonlinearities for permutation fields and for irrep fields."""

from __future__ import annotations

import math
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from dpeq import groups
from dpeq.nn.field_type import FieldType, apply_per_field, field_runs

Activation = Callable[[jax.Array], jax.Array]


class PointwiseNonlinearity(hk.Module):
  """fn applied to every channel: equivariant for permutation fields only.

  Valid for trivial, regular and restricted-regular (quotient) fields, whose
  rho(g) permute channels and hence commute with any elementwise fn (ReLU,
  ELU, jax.nn.mish, ...). Irrep fields raise: use FourierNonlinearity or
  NormNonlinearity.
  """

  def __init__(self, field_type: FieldType, fn: Activation, *, name=None):
    super().__init__(name=name)
    if not callable(fn):
      raise ValueError(f"PointwiseNonlinearity: fn must be callable, got {fn!r}.")
    field_type.require(
        "is_permutation",
        layer="PointwiseNonlinearity",
        hint="use FourierNonlinearity or NormNonlinearity for irrep fields.",
    )
    self.in_type = self.out_type = field_type
    self.fn = fn

  def __call__(self, x: jax.Array) -> jax.Array:
    self.in_type.check_input(x, layer="PointwiseNonlinearity")
    return self.fn(x)


def _probe_vector(rep) -> np.ndarray:
  """The vector e whose orbit rho(g) e reads a field as a function on G.

  In irrep coordinates, the m-th occurrence of an irrep of size d in `rep` is
  probed along its m-th axis, scaled by sqrt(d / rep.size): e = Q [..]. For a
  regular field this is the channel of the identity element, so the samples
  are the channels themselves.
  """
  parts, seen = [], {}
  for irrep in rep.irreps:
    size = rep.group.irrep_size(irrep)
    occurrence = seen.get(irrep, 0)
    seen[irrep] = occurrence + 1
    part = np.zeros(size)
    part[occurrence % size] = math.sqrt(size / rep.size)
    parts.append(part)
  return rep.change_of_basis @ np.concatenate(parts)


def fourier_sampling(rep, *, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
  """Sampling and reconstruction matrices of a field as a function on G.

  A field value x is read as the band-limited function f(g) = <rho(g) e, x>
  on the group (e: see `_probe_vector`; the mean of f^2 over the group is the
  mean of x^2 over the field's channels, so samples have the scale of
  channels). Its samples at g_1..g_S are A x with A[i] = (rho(g_i) e)^T; x is
  recovered as pinv(A) @ samples. On a regular field of a finite group the
  samples are the channels: the layer is then the pointwise nonlinearity.
  The sample points are all elements of a finite group, and for SO(2)/O(2)
  the `num_samples` rotations by 2 pi i / num_samples (and as many flipped
  elements for O(2)). Since the sample points form a group, rho(h) permutes
  the samples for every h among them, and sampling, any elementwise fn and
  reconstruction commute with it.

  Returns:
    (A float64 [S, d], pinv(A) float64 [d, S]).

  Raises:
    ValueError: if the field is not determined by its samples (an irrep
      repeated in one field, or too few samples for its frequencies).
  """
  group = rep.group
  if group.is_finite:
    elements = group.elements()
  else:
    flips = (0, 1) if group.has_flips else (0,)
    elements = [
        groups.GroupElement(2 * math.pi * i / num_samples, flip)
        for flip in flips
        for i in range(num_samples)
    ]
  probe = _probe_vector(rep)
  sampling = np.stack([rep.matrix(g) @ probe for g in elements])
  if np.linalg.matrix_rank(sampling, tol=1e-8) < rep.size:
    raise ValueError(
        f"FourierNonlinearity: a field of representation {rep.name!r} "
        f"(irreps {list(rep.irreps)}) is not determined by its {len(elements)} "
        "samples on the group; use fields with every irrep at most once (or "
        "at most its size times; e.g. FieldType.irreps) and num_samples > "
        "2 * max frequency."
    )
  return sampling, np.linalg.pinv(sampling)


class FourierNonlinearity(hk.Module):
  """fn applied to the samples of each field seen as a function on G.

  For band-limited irrep fields (e.g. FieldType.irreps of SO(2): psi_0 + ... +
  psi_3): samples = A x at `num_samples` equally spaced rotations (O(2): also
  the flipped ones; finite groups: all |G| elements, `num_samples` unused),
  y = pinv(A) fn(samples) (see `fourier_sampling`; samples have the scale of
  the field's channels). Exactly equivariant for the rotations by multiples
  of 2 pi / num_samples; approximately (aliasing of fn's higher frequencies)
  for other angles, ~1% for ELU at 16 samples. On regular fields of a finite
  group it equals PointwiseNonlinearity. Fields must be orthogonal
  representations whose irreps each appear at most (their size) times.
  """

  def __init__(
      self,
      field_type: FieldType,
      *,
      fn: Activation = jax.nn.elu,
      num_samples: int = 16,
      name: str | None = None,
  ):
    super().__init__(name=name)
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
      raise ValueError(
          f"FourierNonlinearity: num_samples must be a positive int, got "
          f"{num_samples!r}."
      )
    field_type.require(
        "is_orthogonal",
        layer="FourierNonlinearity",
        hint="its reconstruction is only equivariant for orthogonal fields.",
    )
    self.in_type = self.out_type = field_type
    self.fn = fn
    self.num_samples = int(num_samples)
    self._matrices = {
        rep: tuple(
            m.astype(np.float32) for m in fourier_sampling(rep, num_samples=num_samples)
        )
        for rep, _, _ in field_runs(field_type)
    }

  def __call__(self, x: jax.Array) -> jax.Array:
    self.in_type.check_input(x, layer="FourierNonlinearity")

    def one_run(rep, fields):
      sampling, reconstruction = self._matrices[rep]
      samples = jnp.einsum("...d,sd->...s", fields, jnp.asarray(sampling, x.dtype))
      return jnp.einsum(
          "...s,ds->...d", self.fn(samples), jnp.asarray(reconstruction, x.dtype)
      )

    return apply_per_field(self.in_type, x, one_run)


class NormNonlinearity(hk.Module):
  """Gates each field by a function of its norm: x * fn(|x| - b) / |x|.

  |x| (the field's Euclidean norm, per pixel) is invariant under orthogonal
  rho(g), so scaling the field by a function of it is equivariant for any
  orthogonal field, irreps included. `b` ("bias" [num_fields], init 0) is
  learned per field when `bias` is set; with fn = relu fields whose norm is
  below b are switched off. |x| is computed as sqrt(|x|^2 + 1e-12) so the
  gradient at x = 0 stays finite.
  """

  def __init__(
      self,
      field_type: FieldType,
      *,
      fn: Activation = jax.nn.relu,
      bias: bool = True,
      name: str | None = None,
  ):
    super().__init__(name=name)
    field_type.require(
        "is_orthogonal",
        layer="NormNonlinearity",
        hint="field norms are only invariant for orthogonal representations.",
    )
    self.in_type = self.out_type = field_type
    self.fn = fn
    self.with_bias = bool(bias)

  def __call__(self, x: jax.Array) -> jax.Array:
    self.in_type.check_input(x, layer="NormNonlinearity")
    num_fields = self.in_type.num_fields
    if self.with_bias:
      bias = hk.get_parameter("bias", (num_fields,), jnp.float32, init=jnp.zeros)
    else:
      bias = jnp.zeros((num_fields,), jnp.float32)
    outputs, field = [], 0
    for rep, start, count in field_runs(self.in_type):
      fields = x[..., start : start + count * rep.size]
      fields = fields.reshape(x.shape[:-1] + (count, rep.size))
      norm = jnp.sqrt(jnp.sum(jnp.square(fields), axis=-1, keepdims=True) + 1e-12)
      gate = self.fn(norm - bias[field : field + count, None].astype(x.dtype)) / norm
      outputs.append((fields * gate).reshape(x.shape[:-1] + (-1,)))
      field += count
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
