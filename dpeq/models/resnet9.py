"""ResNet-9 (Klause et al. 2022) as the conventional baseline of Hölzl et al.

The same skeleton as the Equivariant-ResNet-9 (dpeq.models.eq_resnet9) with
plain scaled-WS convolutions; `layout` = (c1, c2, c3) channels:

  block(c1) ; block(c2, pool) ; res[block(c2), block(c2)] ; norm ;
  block(c3, pool) ; block(c3, pool) ; res[block(c3), block(c3)] ; norm ;
  adaptive 2x2 average pool ; flatten ; Linear(4 c3 -> classes)

where block(c) = 3x3 WSConv2D(c) -> Mish -> GroupNorm [-> 2x2 max pool], res
adds the two blocks' output to their input and "norm" is the extra affine-free
GroupNorm after each residual addition (Klause et al.'s ScaleNorm). Group norms
are affine-free with 8 groups (fewer when the channels are not divisible).
With the default layout (64, 128, 256) and 10 classes it has 2,447,946
parameters.
"""

import haiku as hk
import jax

from dpeq.models import layers
from dpeq.nn.wsconv import WSConv2D

DEFAULT_LAYOUT = (64, 128, 256)


def num_norm_groups(channels: int, preferred: int = 8) -> int:
  """`preferred` groups if they divide `channels`, else the largest divisor."""
  return max(g for g in range(1, preferred + 1) if channels % g == 0)


class ResNet9(hk.Module):
  """Conventional ResNet-9; logits [B, num_classes]."""

  def __init__(
      self,
      *,
      num_classes: int,
      layout: tuple[int, int, int] = DEFAULT_LAYOUT,
      name: str | None = "res_net9",
  ):
    super().__init__(name=name)
    self.num_classes = num_classes
    self.layout = tuple(layout)

  @staticmethod
  def _norm(x: jax.Array, name: str) -> jax.Array:
    groups = num_norm_groups(x.shape[-1])
    return hk.GroupNorm(
        groups, create_scale=False, create_offset=False, name=name
    )(x)

  @hk.transparent
  def _block(self, x: jax.Array, channels: int, *, pool: bool, name: str):
    x = WSConv2D(channels, 3, name=f"{name}_conv")(x)
    x = self._norm(jax.nn.mish(x), f"{name}_norm")
    if pool:
      x = layers.max_pool_2d(x, window=2, stride=2)
    return x

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Feature map before the head: [B, H / 8, W / 8, c3]."""
    layers.check_images(images, model="resnet9")
    c1, c2, c3 = self.layout
    x = self._block(images, c1, pool=False, name="conv1")
    x = self._block(x, c2, pool=True, name="conv2")
    y = self._block(x, c2, pool=False, name="res1a")
    x = self._norm(self._block(y, c2, pool=False, name="res1b") + x, "scale_norm1")
    x = self._block(x, c3, pool=True, name="conv3")
    x = self._block(x, c3, pool=True, name="conv4")
    y = self._block(x, c3, pool=False, name="res2a")
    return self._norm(self._block(y, c3, pool=False, name="res2b") + x, "scale_norm2")

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C], H, W >= 16."""
    del is_training  # No dropout and no batch statistics.
    x = layers.adaptive_avg_pool(self.features(images), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return hk.Linear(self.num_classes, name=layers.CLASSIFIER_NAME)(x)


def resnet9(*, num_classes: int, layout: tuple[int, int, int] = DEFAULT_LAYOUT,
            input_padding: int = 0):
  """Conventional ResNet-9 with channel `layout` (c1, c2, c3).

  `input_padding`: zeros added on each side of the images first (2 makes
  28x28 inputs 32x32, the grid of eq_resnet9_lean on Fashion-MNIST).
  """
  layout = check_layout(layout, model="resnet9")
  input_padding = layers.check_padding(input_padding, model="resnet9")

  def forward(images, is_training=False):
    layers.check_images(images, model="resnet9")
    images = layers.pad_images(images, input_padding)
    return ResNet9(num_classes=num_classes, layout=layout)(images, is_training)

  return forward


def check_layout(layout, *, model: str) -> tuple[int, int, int]:
  """Validates a 3-stage channel layout."""
  layout = tuple(layout)
  if len(layout) != 3:
    raise ValueError(
        f"{model} layout must have 3 entries (c1, c2, c3), got {layout!r}."
    )
  return tuple(
      layers.check_positive_int(c, name=f"{model} layout entry") for c in layout
  )
