"""Equivariant WideResNet: De et al.'s WRN-d-k with steerable layers.

The layout of dpeq.models.wrn (Hölzl et al.'s Eq-WRN-40-1 is depth 40,
width 1) with every layer replaced by its equivariant counterpart; widths
16k, 32k, 64k (stem 16) become numbers of fields by the width rule
(`eq_common.num_fields`):

  [disk mask (SO(2), O(2))] ; R2Conv 3x3 stem (trivial -> n0 fields)
  3 stages of (d - 4) / 6 pre-activation units:
    nonlinearity -> norm [-> pool] -> R2Conv 3x3 -> nonlinearity -> norm
    -> R2Conv 3x3, plus the skip path (first unit of a stage: nonlinearity
    -> norm [-> pool] -> R2Conv 1x1 (the pointwise intertwiners, as the
    conventional WRN's 1x1 skip); other units: identity)
  head: nonlinearity -> norm -> group pooling -> global mean -> Linear

Nonlinearity: ReLU on regular fields (as De et al.), Fourier ELU on spectral
fields; norm: equivariant group norm (16 groups, with the fallback of
`dpeq.nn.resolve_num_groups`) or i.i.d. instance norm, both affine as De et
al.'s GroupNorm; every R2Conv has a bias and weight standardization on its
coefficients. Difference to the conventional WRN: the stride-2 convolutions
of stages 2 and 3 are a 2x2 average pool followed by a stride-1 convolution,
because a stride-2 convolution on an even grid does not commute with
rotations by 90 degrees (its samples are not centred), while the pool does.
Features before the head are exactly invariant to the grid-preserving
elements of the group when H and W are multiples of 4.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq import nn as eqnn
from dpeq.models import eq_common, layers

# The projection on the skip path of a stage's first unit: 1x1, as De et al.
SKIP_KERNEL_SIZE = 1


class EqWideResNet(hk.Module):
  """Equivariant WRN-d-k; logits [B, num_classes]."""

  def __init__(
      self,
      *,
      num_classes: int,
      group: str = "D4",
      depth: int = 40,
      width: int = 1,
      name: str | None = "eq_wide_res_net",
  ):
    super().__init__(name=name)
    self.num_classes = num_classes
    self.group = eq_common.get_group(group, model="eq_wrn")
    self.units_per_stage = (depth - 4) // 6
    self.stem_fields = eq_common.num_fields(16, self.group)
    self.widths = tuple(
        eq_common.num_fields(c * width, self.group) for c in (16, 32, 64)
    )

  @hk.transparent
  def _pre_activation(self, x, field_type, *, name: str):
    fn = jax.nn.relu if field_type.group.is_finite else jax.nn.elu
    x = eq_common.nonlinearity(field_type, fn, name=f"{name}_act")(x)
    norm = eq_common.norm(
        field_type, num_groups=16, affine=True, name=f"{name}_norm"
    )
    return norm(x)

  @hk.transparent
  def _stage(self, x, in_type, *, index: int, downsample: bool):
    out_type = eq_common.hidden_type(self.group, self.widths[index])
    for unit in range(self.units_per_stage):
      prefix = f"stage{index + 1}_unit{unit}"
      unit_in = in_type if unit == 0 else out_type
      if unit == 0:
        skip = self._pre_activation(x, unit_in, name=f"{prefix}_skip")
        if downsample:
          skip = eqnn.avg_pool(skip, window=2)
        skip = eqnn.R2Conv(
            unit_in, out_type, SKIP_KERNEL_SIZE, weight_standardization=True,
            name=f"{prefix}_skip_conv",
        )(skip)
      else:
        skip = x
      y = self._pre_activation(x, unit_in, name=f"{prefix}_0")
      if unit == 0 and downsample:
        y = eqnn.avg_pool(y, window=2)
      y = eqnn.R2Conv(
          unit_in, out_type, 3, weight_standardization=True, name=f"{prefix}_conv0"
      )(y)
      y = self._pre_activation(y, out_type, name=f"{prefix}_1")
      y = eqnn.R2Conv(
          out_type, out_type, 3, weight_standardization=True, name=f"{prefix}_conv1"
      )(y)
      x = skip + y
    return x, out_type

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Invariant features before the classifier: [B, n3]."""
    layers.check_images(images, model="eq_wrn")
    in_type = eqnn.FieldType.trivial(self.group, images.shape[-1])
    stem_type = eq_common.hidden_type(self.group, self.stem_fields)
    x = eq_common.mask_input(self.group, images)
    x = eqnn.R2Conv(
        in_type, stem_type, 3, weight_standardization=True, name="stem_conv"
    )(x)
    field_type = stem_type
    for index in range(3):
      x, field_type = self._stage(
          x, field_type, index=index, downsample=index > 0
      )
    x = self._pre_activation(x, field_type, name="final")
    x = eq_common.group_pooling(field_type, name="group_pooling")(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C]."""
    del is_training  # No dropout and no batch statistics.
    return hk.Linear(
        self.num_classes,
        w_init=hk.initializers.VarianceScaling(1.0),
        name=layers.CLASSIFIER_NAME,
    )(self.features(images))


def eq_wrn(*, num_classes: int, group: str = "D4", depth: int = 40, width: int = 1):
  """Equivariant WRN-`depth`-`width` of `group` (Eq-WRN-40-1: depth 40, width 1)."""
  depth = layers.check_wrn_depth(depth, model="eq_wrn")
  width = layers.check_positive_int(width, name="eq_wrn width")
  eq_common.get_group(group, model="eq_wrn")

  def forward(images, is_training=False):
    return EqWideResNet(
        num_classes=num_classes, group=group, depth=depth, width=width
    )(images, is_training)

  return forward
