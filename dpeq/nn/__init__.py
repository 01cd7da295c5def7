"""dpeq.nn: Haiku modules over typed feature fields (equivariant layers).

A `FieldType` says how a group acts on a tensor's channels; every module takes
the field type of its input, exposes `in_type` / `out_type`, and commutes with
the group action (exactly for the elements that map the pixel grid onto
itself). No module keeps batch statistics, so per-example gradients (DP-SGD)
stay per example.

  d4 = FieldType.regular("D4", 8)
  x = R2Conv(FieldType.trivial("D4", 3), d4)(images)     # the only params:
  x = PointwiseNonlinearity(d4, jax.nn.mish)(x)          # basis coefficients
  x = EquivariantGroupNorm(d4, num_groups=8)(x)
  x = max_pool(x)
  logits = InvariantHead(d4, num_classes=10)(x)

Beyond docs/interfaces.md (additions only): R2Conv(dilation=...),
R2Conv.kernel(), IIDInstanceNorm(affine=...), NormNonlinearity, Restrict,
InvariantHead, resolve_num_groups, FieldType.trivial_basis/field_slices/
representation_matrix and `+`.
"""

from dpeq.nn.conv import R2Conv
from dpeq.nn.field_type import FieldType
from dpeq.nn.nonlinearity import (
    FourierNonlinearity,
    NormNonlinearity,
    PointwiseNonlinearity,
)
from dpeq.nn.norm import EquivariantGroupNorm, IIDInstanceNorm, resolve_num_groups
from dpeq.nn.pooling import (
    AntiAliasedAvgPool,
    GroupPooling,
    InvariantHead,
    avg_pool,
    max_pool,
)
from dpeq.nn.restrict import Restrict
from dpeq.nn.wsconv import WSConv2D

__all__ = [
    "AntiAliasedAvgPool",
    "EquivariantGroupNorm",
    "FieldType",
    "FourierNonlinearity",
    "GroupPooling",
    "IIDInstanceNorm",
    "InvariantHead",
    "NormNonlinearity",
    "PointwiseNonlinearity",
    "R2Conv",
    "Restrict",
    "WSConv2D",
    "avg_pool",
    "max_pool",
    "resolve_num_groups",
]
