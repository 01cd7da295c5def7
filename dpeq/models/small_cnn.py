"""Tramèr & Boneh's end-to-end CNN for MNIST-like 28x28 images.

Tramèr & Boneh 2021 ("Differentially private learning needs better features
(or much more data)"), the CNN they train end to end with DP-SGD on MNIST and
Fashion-MNIST:

  conv 16 8x8 stride 2 (zero padding 3) -> tanh -> max pool 2x2 stride 1
  -> conv 32 4x4 stride 2 (no padding) -> tanh -> max pool 2x2 stride 1
  -> flatten -> Linear(32) -> tanh -> Linear(num_classes)

Plain convolutions with bias (no normalization). On 28x28x1 inputs the maps
are 14 -> 13 -> 5 -> 4 and the network has 26,010 parameters for 10 classes.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq.models import layers


class TramerCNN(hk.Module):
  """Tramèr & Boneh's CNN; logits [B, num_classes]."""

  def __init__(self, *, num_classes: int, name: str | None = "tramer_cnn"):
    super().__init__(name=name)
    self.num_classes = num_classes

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Hidden layer before the classifier: [B, 32]."""
    layers.check_images(images, model="cnn_tramer")
    pool = lambda x: layers.max_pool_2d(x, window=2, stride=1)
    x = hk.Conv2D(16, 8, stride=2, padding=((3, 3), (3, 3)), name="conv1")(images)
    x = pool(jnp.tanh(x))
    x = hk.Conv2D(32, 4, stride=2, padding="VALID", name="conv2")(x)
    x = pool(jnp.tanh(x))
    x = x.reshape(x.shape[0], -1)
    return jnp.tanh(hk.Linear(32, name="fc1")(x))

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C] (28x28 in the paper)."""
    del is_training  # No dropout and no batch statistics.
    return hk.Linear(self.num_classes, name=layers.CLASSIFIER_NAME)(
        self.features(images)
    )


def cnn_tramer(*, num_classes: int):
  """Tramèr & Boneh's end-to-end DP CNN for 28x28 images."""

  def forward(images, is_training=False):
    return TramerCNN(num_classes=num_classes)(images, is_training)

  return forward
