"""NF-ResNet-50: the normalizer-free ResNet De et al. (2022) train on ImageNet.

Brock et al. 2021 ("Characterizing signal propagation to close the
performance gap in unnormalized ResNets"): a pre-activation bottleneck ResNet
with no normalization layers at all. Every convolution uses scaled weight
standardization (dpeq.nn.wsconv.WSConv2D), activations are ReLUs scaled by
gamma = sqrt(2 / (1 - 1 / pi)) (unit second moment for unit Gaussian inputs),
and each residual unit computes

  x_{i+1} = x_i + alpha * skip_gain_i * f_i(x_i / beta_i),

with beta_i the analytically predicted standard deviation of x_i (reset at
each stage's first, projecting unit), alpha = 0.2 and a SkipInit gain
(scalar, init 0). Stem: 7x7 stride-2 conv with 64 channels and a 3x3 stride-2
max pool; stages of (3, 4, 6, 3) bottleneck units with output widths
(256, 512, 1024, 2048), bottleneck ratio 1/4 and strides (1, 2, 2, 2); head:
scaled ReLU -> global mean pool -> Linear (init N(0, 0.01^2)).

Not included: stochastic depth and dropout (the models here are deterministic
functions of (params, images); they need an RNG per example and De et al.'s
DP runs do not depend on them). 25,556,984 parameters for 1000 classes.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq.models import layers
from dpeq.nn.wsconv import WSConv2D

# Gain that makes relu(z) have unit second moment for z ~ N(0, 1).
RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_WIDTHS = (256, 512, 1024, 2048)
STAGE_STRIDES = (1, 2, 2, 2)


def scaled_relu(x: jax.Array) -> jax.Array:
  """ReLU times RELU_GAIN (variance preserving for unit Gaussian inputs)."""
  return jax.nn.relu(x) * RELU_GAIN


class NFBottleneck(hk.Module):
  """One normalizer-free pre-activation bottleneck unit."""

  def __init__(
      self,
      out_channels: int,
      *,
      stride: int,
      beta: float,
      alpha: float,
      name: str | None = None,
  ):
    super().__init__(name=name)
    self.out_channels = out_channels
    self.stride = stride
    self.beta = beta
    self.alpha = alpha

  def __call__(self, x: jax.Array) -> jax.Array:
    width = self.out_channels // 4
    out = scaled_relu(x) / self.beta
    shortcut = x
    if self.stride > 1 or x.shape[-1] != self.out_channels:
      shortcut = WSConv2D(
          self.out_channels, 1, stride=self.stride, name="conv_shortcut"
      )(out)
    out = WSConv2D(width, 1, name="conv0")(out)
    out = WSConv2D(width, 3, stride=self.stride, name="conv1")(scaled_relu(out))
    out = WSConv2D(self.out_channels, 1, name="conv2")(scaled_relu(out))
    skip_gain = hk.get_parameter("skip_gain", (), out.dtype, init=jnp.zeros)
    return shortcut + self.alpha * skip_gain * out


class NFResNet50(hk.Module):
  """NF-ResNet-50 for NHWC images; logits [B, num_classes]."""

  def __init__(
      self, *, num_classes: int, alpha: float = 0.2, name: str | None = "nf_res_net50"
  ):
    super().__init__(name=name)
    self.num_classes = num_classes
    self.alpha = alpha

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Pooled features before the classifier: [B, 2048]."""
    layers.check_images(images, model="nf_resnet50")
    x = WSConv2D(64, 7, stride=2, with_bias=False, name="stem_conv")(images)
    x = layers.max_pool_2d(x, window=3, stride=2, padding="SAME")
    expected_std = 1.0
    for stage, (depth, width, stride) in enumerate(
        zip(STAGE_DEPTHS, STAGE_WIDTHS, STAGE_STRIDES, strict=True)
    ):
      for unit in range(depth):
        x = NFBottleneck(
            width,
            stride=stride if unit == 0 else 1,
            beta=expected_std,
            alpha=self.alpha,
            name=f"stage{stage + 1}_unit{unit}",
        )(x)
        # A projecting unit's output variance restarts from its shortcut (1).
        if unit == 0:
          expected_std = 1.0
        expected_std = math.sqrt(expected_std**2 + self.alpha**2)
    return jnp.mean(scaled_relu(x), axis=(1, 2))

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C] (H, W >= 32 sensible)."""
    del is_training  # No dropout, stochastic depth or batch statistics.
    return hk.Linear(
        self.num_classes,
        w_init=hk.initializers.RandomNormal(0.01),
        name=layers.CLASSIFIER_NAME,
    )(self.features(images))


def nf_resnet50(*, num_classes: int):
  """NF-ResNet-50 (Brock et al. 2021) as used by De et al. on ImageNet."""

  def forward(images, is_training=False):
    return NFResNet50(num_classes=num_classes)(images, is_training)

  return forward
