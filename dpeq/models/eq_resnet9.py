"""Equivariant-ResNet-9 (Hölzl et al. 2023) for any planar group.

The ResNet-9 skeleton (dpeq.models.resnet9) with steerable convolutions.
Widths are numbers of fields given by the width rule
(`eq_common.num_fields`) applied to the conventional layout (c1, c2, c3);
the last stage (from conv3 on) uses the width of the restricted subgroup:

  [disk mask (SO(2), O(2))]
  block(t0 -> n1) ; block(n1 -> n2, pool) ; res[block(n2), block(n2)] ; norm
  block(n2 -> n3, pool) ; restrict G -> H ; block(n3 -> n3 of H, pool)
  res[block(n3), block(n3)] ; norm ; group pooling (n3 invariant channels)
  adaptive 2x2 average pool ; flatten ; Linear(4 n3 -> classes)

block = R2Conv 3x3 (bias, weight standardization on its coefficients) ->
nonlinearity (Mish; Fourier ELU for spectral fields) -> affine-free norm
(equivariant group norm with 8 groups; i.i.d. instance norm for spectral
fields) [-> pool: 2x2 max; anti-aliased average for spectral fields]; "norm"
after a residual addition is the same affine-free norm. Restriction keeps
the channels and retypes them as fields of the subgroup (Restrict).

The features before the head (group pooling) are exactly equivariant under
the grid-preserving elements of the surviving subgroup when H and W are
multiples of 8. Default = the paper's CIFAR-10 model: D4, layout (16, 32, 64),
"halved" (255,675 parameters for 10 classes).
"""

import haiku as hk
import jax

from dpeq import nn as eqnn
from dpeq.models import eq_common, layers
from dpeq.models.resnet9 import check_layout

DEFAULT_LAYOUT = (16, 32, 64)


class EqResNet9(hk.Module):
  """Equivariant-ResNet-9; logits [B, num_classes]."""

  def __init__(
      self,
      *,
      num_classes: int,
      group: str = "D4",
      layout: tuple[int, int, int] = DEFAULT_LAYOUT,
      restrict: str = "halved",
      fields: tuple[int, int, int] | None = None,
      group_pool: bool = True,
      weight_standardization: str = "layer",
      name: str | None = "eq_res_net9",
  ):
    """See the module docstring. For designs such as
    dpeq.models.eq_resnet9_lean: `fields` = (n1, n2, n3) replaces the width
    rule (n3 counts fields of the last stage's group; None, the paper's
    model: the width rule), and `group_pool=False` gives the head the last
    stage's channels instead of one invariant per field, and
    `weight_standardization="scaled"` replaces the paper's per-layer
    standardization by dpeq.nn.R2Conv's scaled one."""
    super().__init__(name=name)
    self.group_pool = group_pool
    self.weight_standardization = weight_standardization
    self.num_classes = num_classes
    self.group = eq_common.get_group(group, model="eq_resnet9")
    c1, c2, c3 = layout
    self.restriction = eq_common.restriction(
        self.group, restrict, c3, model="eq_resnet9"
    )
    if fields is None:
      fields = (
          eq_common.num_fields(c1, self.group),
          eq_common.num_fields(c2, self.group),
          self.restriction.last_stage_fields,
      )
    self.widths = tuple(fields)

  @hk.transparent
  def _block(self, x, in_type, out_type, *, pool: bool, name: str):
    x = eqnn.R2Conv(
        in_type, out_type, 3,
        weight_standardization=self.weight_standardization,
        name=f"{name}_conv")(x)
    x = eq_common.nonlinearity(out_type, eq_common.paper_activation(out_type),
                               name=f"{name}_act")(x)
    x = eq_common.norm(out_type, name=f"{name}_norm")(x)
    if pool:
      x = eq_common.pool(out_type, x, name=f"{name}_pool")
    return x

  @hk.transparent
  def _residual(self, x, field_type, *, name: str):
    y = self._block(x, field_type, field_type, pool=False, name=f"{name}a")
    y = self._block(y, field_type, field_type, pool=False, name=f"{name}b")
    return eq_common.norm(field_type, name=f"{name}_scale_norm")(x + y)

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Feature map before the head: [B, H / 8, W / 8, n3] invariants (n3
    |H| channels of the last stage's fields without group pooling)."""
    layers.check_images(images, model="eq_resnet9")
    group = self.group
    n1, n2, n3 = self.widths
    t0 = eqnn.FieldType.trivial(group, images.shape[-1])
    t1 = eq_common.hidden_type(group, n1)
    t2 = eq_common.hidden_type(group, n2)
    t3 = eq_common.hidden_type(group, n3)
    x = eq_common.mask_input(group, images)
    x = self._block(x, t0, t1, pool=False, name="conv1")
    x = self._block(x, t1, t2, pool=True, name="conv2")
    x = self._residual(x, t2, name="res1")
    x = self._block(x, t2, t3, pool=True, name="conv3")
    if self.restriction.subgroup is None:
      t4_in, t4 = t3, t3
    else:
      restrict = eqnn.Restrict(t3, self.restriction.subgroup, name="restrict")
      x = restrict(x)
      t4_in = restrict.out_type
      t4 = eq_common.hidden_type(t4_in.group, n3)
    x = self._block(x, t4_in, t4, pool=True, name="conv4")
    x = self._residual(x, t4, name="res2")
    if not self.group_pool:
      return x
    return eq_common.group_pooling(t4, name="group_pooling")(x)

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C], H, W >= 16."""
    del is_training  # No dropout and no batch statistics.
    x = layers.adaptive_avg_pool(self.features(images), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return hk.Linear(self.num_classes, name=layers.CLASSIFIER_NAME)(x)


def eq_resnet9(
    *,
    num_classes: int,
    group: str = "D4",
    layout: tuple[int, int, int] = DEFAULT_LAYOUT,
    restrict: str = "halved",
):
  """Equivariant-ResNet-9 of `group` ("C4", "D4", ..., "SO2", "O2")."""
  layout = check_layout(layout, model="eq_resnet9")
  group_obj = eq_common.get_group(group, model="eq_resnet9")
  eq_common.restriction(group_obj, restrict, layout[2], model="eq_resnet9")

  def forward(images, is_training=False):
    return EqResNet9(
        num_classes=num_classes, group=group, layout=layout, restrict=restrict
    )(images, is_training)

  return forward
