"""WideResNet-d-k as De et al. (2022) build it for DP-SGD on CIFAR.

Layout (Zagoruyko & Komodakis 2016, pre-activation, with De et al.'s changes):
a 3x3 stem with 16 channels, three stages of (d - 4) / 6 units with widths
16k, 32k, 64k (strides 1, 2, 2), and a head. Every unit is two
ReLU -> GroupNorm(16) -> scaled-WS conv 3x3 layers (activation BEFORE the
norm) plus a skip path; the first unit of each stage has its own
ReLU -> GroupNorm -> 1x1 scaled-WS conv (with the stage's stride) on the skip
path, the others use the identity. Head: ReLU -> GroupNorm -> global mean pool
-> Linear. Group norms have a learnable scale and offset; no batch statistics.
WRN-16-4 has 2,753,818 parameters and WRN-40-4 8,961,306 (10 classes; the
paper reports ~2.75M and ~8.96M).
"""

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq.models import layers
from dpeq.nn.wsconv import WSConv2D


class WideResNet(hk.Module):
  """WRN-d-k for NHWC images; logits [B, num_classes]."""

  def __init__(
      self,
      *,
      num_classes: int,
      depth: int = 16,
      width: int = 4,
      num_groups: int = 16,
      name: str | None = "wide_res_net",
  ):
    """Creates the network (arguments are validated by `wrn`)."""
    super().__init__(name=name)
    self.num_classes = num_classes
    self.units_per_stage = (depth - 4) // 6
    self.widths = (16 * width, 32 * width, 64 * width)
    self.num_groups = num_groups

  @hk.transparent
  def _norm(self, name: str) -> hk.GroupNorm:
    return hk.GroupNorm(self.num_groups, name=name)

  @hk.transparent
  def _stage(self, x: jax.Array, *, index: int, stride: int) -> jax.Array:
    width = self.widths[index]
    for unit in range(self.units_per_stage):
      prefix = f"stage{index + 1}_unit{unit}"
      unit_stride = stride if unit == 0 else 1
      if unit == 0:
        skip = self._norm(f"{prefix}_skip_norm")(jax.nn.relu(x))
        skip = WSConv2D(
            width, 1, stride=unit_stride, name=f"{prefix}_skip_conv"
        )(skip)
      else:
        skip = x
      for layer in range(2):
        x = self._norm(f"{prefix}_norm{layer}")(jax.nn.relu(x))
        x = WSConv2D(
            width, 3, stride=unit_stride if layer == 0 else 1,
            name=f"{prefix}_conv{layer}",
        )(x)
      x = x + skip
    return x

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Pooled features before the classifier: [B, 64 * width]."""
    layers.check_images(images, model="wrn")
    x = WSConv2D(16, 3, name="stem_conv")(images)
    for index, stride in enumerate((1, 2, 2)):
      x = self._stage(x, index=index, stride=stride)
    x = self._norm("final_norm")(jax.nn.relu(x))
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C] (no train/eval mode)."""
    del is_training  # No dropout and no batch statistics.
    return hk.Linear(
        self.num_classes,
        w_init=hk.initializers.VarianceScaling(1.0),
        name=layers.CLASSIFIER_NAME,
    )(self.features(images))


def wrn(*, num_classes: int, depth: int = 16, width: int = 4):
  """WRN-`depth`-`width` (De et al.); depth = 6 n + 4, e.g. 16, 28, 40."""
  depth = layers.check_wrn_depth(depth, model="wrn")
  width = layers.check_positive_int(width, name="wrn width")

  def forward(images, is_training=False):
    return WideResNet(num_classes=num_classes, depth=depth, width=width)(
        images, is_training
    )

  return forward
