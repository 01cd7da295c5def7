"""Restrict: reinterpret a tensor's fields as fields of a subgroup."""

from __future__ import annotations

import haiku as hk
import jax

from dpeq.nn.field_type import FieldType


class Restrict(hk.Module):
  """Retypes fields of G as fields of a subgroup H; the data do not move.

  A G-equivariant map is also H-equivariant, and a G-field restricted to H
  keeps its channels (e.g. a D4-regular field is an 8-channel, non-irreducible
  representation of D2; an SO(2) field restricted to "trivial" is a stack of
  plain channels). Used to relax the symmetry of the last stage of a network
  (Hölzl et al.: C_N -> C_{N/2}, D_N -> D_{N/2}, SO(2) -> trivial).
  `out_type` is `field_type.restrict(subgroup_name)`; a name that is not a
  subgroup raises ValueError.
  """

  def __init__(
      self, field_type: FieldType, subgroup_name: str, *, name: str | None = None
  ):
    super().__init__(name=name)
    self.in_type = field_type
    self.out_type = field_type.restrict(subgroup_name)

  def __call__(self, x: jax.Array) -> jax.Array:
    self.in_type.check_input(x, layer="Restrict")
    return x
