"""Tramèr & Boneh's end-to-end CNNs (28x28 and CIFAR-10's 32x32 images).

Tramèr & Boneh 2021 ("Differentially private learning needs better features
(or much more data)"), the CNN they train end to end with DP-SGD on MNIST and
Fashion-MNIST:

  conv 16 8x8 stride 2 (zero padding 3) -> tanh -> max pool 2x2 stride 1
  -> conv 32 4x4 stride 2 (no padding) -> tanh -> max pool 2x2 stride 1
  -> flatten -> Linear(32) -> tanh -> Linear(num_classes)

Plain convolutions with bias (no normalization). On 28x28x1 inputs the maps
are 14 -> 13 -> 5 -> 4 and the network has 26,010 parameters for 10 classes.
(Their code pads the first convolution by 2, giving 13 -> 12 -> 5 -> 4 and
the same count; dpeq's recorded runs use 3.)

Their CIFAR-10 CNN (`cnn_tramer_cifar10`, after Papernot et al.'s tempered
sigmoid networks), 3x3 convolutions with padding 1 and tanh throughout:

  conv 32 -> conv 32 -> max pool 2x2 -> conv 64 -> conv 64 -> max pool 2x2
  -> conv 128 -> conv 128 -> max pool 2x2 -> flatten (4 x 4 x 128)
  -> Linear(128) -> tanh -> Linear(num_classes)

550,570 parameters for 32x32x3 inputs and 10 classes (they report 59.2% at
epsilon 3 with DP-SGD).
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


class TramerCifarCNN(hk.Module):
  """Tramèr & Boneh's CIFAR-10 CNN; logits [B, num_classes]."""

  # Channels of the 3x3 convolutions; "M" is a 2x2 max pool of stride 2.
  LAYOUT = (32, 32, "M", 64, 64, "M", 128, 128, "M")

  def __init__(self, *, num_classes: int, name: str | None = "tramer_cifar_cnn"):
    super().__init__(name=name)
    self.num_classes = num_classes

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Hidden layer before the classifier: [B, 128]."""
    layers.check_images(images, model="cnn_tramer_cifar10")
    x = images
    for index, item in enumerate(self.LAYOUT):
      if item == "M":
        x = layers.max_pool_2d(x, window=2, stride=2)
      else:
        x = jnp.tanh(hk.Conv2D(item, 3, padding="SAME", name=f"conv{index}")(x))
    x = x.reshape(x.shape[0], -1)
    return jnp.tanh(hk.Linear(128, name="fc1")(x))

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C] (32x32x3 in the paper)."""
    del is_training  # No dropout and no batch statistics.
    return hk.Linear(self.num_classes, name=layers.CLASSIFIER_NAME)(
        self.features(images)
    )


def cnn_tramer_cifar10(*, num_classes: int):
  """Tramèr & Boneh's end-to-end DP CNN for 32x32 colour images."""

  def forward(images, is_training=False):
    return TramerCifarCNN(num_classes=num_classes)(images, is_training)

  return forward
