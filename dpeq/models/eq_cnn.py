"""An equivariant counterpart of Tramèr & Boneh's CNN for 28x28 images.

Two steerable convolutions replace the two convolutions of
dpeq.models.small_cnn (same tanh activations, no normalization), with the
width rule (`eq_common.num_fields`) turning their 16 and 32 channels into
fields; odd 5x5 kernels with "SAME" padding and 2x2 pools (instead of
Tramèr's 8x8 / 4x4 strided kernels, which have no centre pixel) keep the
grid symmetric:

  [disk mask (SO(2), O(2))]
  R2Conv 5x5 (trivial -> n1) -> tanh -> pool 2x2      28 -> 14
  R2Conv 5x5 (n1 -> n2)      -> tanh -> pool 2x2      14 -> 7
  group pooling (n2 invariant channels) -> adaptive 4x4 average pool
  -> flatten -> Linear(32) -> tanh -> Linear(num_classes)

tanh is pointwise on regular fields and a Fourier nonlinearity on spectral
ones; pools are max pools (regular) or anti-aliased averages (spectral). The
group-pooled map is exactly equivariant under the grid-preserving elements
when H and W are multiples of 4; the fully connected head, like Tramèr's,
sees the spatial layout. C4: 24,671 parameters for 10 classes (Tramèr's CNN:
26,010).
"""

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq import nn as eqnn
from dpeq.models import eq_common, layers


class EqCNN(hk.Module):
  """Equivariant small CNN; logits [B, num_classes]."""

  def __init__(
      self, *, num_classes: int, group: str = "C4", name: str | None = "eq_cnn"
  ):
    super().__init__(name=name)
    self.num_classes = num_classes
    self.group = eq_common.get_group(group, model="eq_cnn")
    self.widths = tuple(eq_common.num_fields(c, self.group) for c in (16, 32))

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Invariant feature map after group pooling: [B, H / 4, W / 4, n2]."""
    layers.check_images(images, model="eq_cnn")
    field_type = eqnn.FieldType.trivial(self.group, images.shape[-1])
    x = eq_common.mask_input(self.group, images)
    for index, count in enumerate(self.widths):
      out_type = eq_common.hidden_type(self.group, count)
      x = eqnn.R2Conv(field_type, out_type, 5, name=f"conv{index + 1}")(x)
      x = eq_common.nonlinearity(out_type, jnp.tanh, name=f"act{index + 1}")(x)
      x = eq_common.pool(out_type, x, name=f"pool{index + 1}")
      field_type = out_type
    return eq_common.group_pooling(field_type, name="group_pooling")(x)

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C] (28x28 intended)."""
    del is_training  # No dropout and no batch statistics.
    x = layers.adaptive_avg_pool(self.features(images), (4, 4))
    x = jnp.tanh(hk.Linear(32, name="fc1")(x.reshape(x.shape[0], -1)))
    return hk.Linear(self.num_classes, name=layers.CLASSIFIER_NAME)(x)


def eq_cnn(*, num_classes: int, group: str = "C4"):
  """Equivariant counterpart of Tramèr & Boneh's CNN, for `group`."""
  eq_common.get_group(group, model="eq_cnn")

  def forward(images, is_training=False):
    return EqCNN(num_classes=num_classes, group=group)(images, is_training)

  return forward
