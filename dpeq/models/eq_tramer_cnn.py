"""Tramèr & Boneh's CNN made equivariant at Tramèr's cost per example.

Rationale (experiments/results/fashion_mnist_ablation.md: Fashion-MNIST,
eps 3, every arm the same CPU budget, validation accuracy): under DP-SGD on a
CPU, accuracy is bought with updates, and updates with per-example gradients
per second. dpeq.models.eq_cnn follows Hölzl et al.'s width rule, which makes
its maps 2.3x (layer 1) to 4.8x (layer 2) as wide as Tramèr's: ~6x slower
per example, 61 updates at the budget, 71.6%. This model keeps Tramèr's
widths instead (16 and 32 channels as 16 / |G| and 32 / |G| regular fields),
so its convolutions cost what Tramèr's cost while the kernel constraint
shrinks their parameters |G|-fold. What the ablation found:
  - rotations cost accuracy on Fashion-MNIST (upright clothes): C4 77.0%,
    D4 75.9%, the mirror alone (D1) 80.4%, against Tramèr's CNN 85.2% at its
    batch 2048;
  - group pooling before the head costs C4 5 points (82.0% without); for D1
    at batch 512 it costs nothing (85.4% with, 85.5% without);
  - the equivariant network wants more, noisier updates: D1 at expected
    batch 512 reaches 85.4% (256: 83.5%), while Tramèr's CNN drops from
    85.2% (2048) to 84.3% (512). Fewer parameters, less noise per update.
The default is therefore the mirror group D1 (Fashion-MNIST's own symmetry)
with group pooling: 14,122 parameters (Tramèr's CNN: 26,010).

  R2Conv 5x5 "SAME" (trivial -> 16 / |G| regular) -> tanh -> max pool 2x2
                                                              28 -> 14
  max pool 2x2 stride 1                                       14 -> 13
  R2Conv 5x5 stride 2 "VALID" (-> 32 / |G| regular) -> tanh    13 -> 5
  max pool 2x2 stride 1                                        5 -> 4
  group pooling (max over each field) -> flatten (4 x 4 x 32 / |G|)
  -> Linear(32) -> tanh -> Linear(num_classes)

Tramèr's 8x8 / 4x4 strided kernels have no centre pixel; the odd kernels,
stride-1 pools and the 13 -> 5 strided step (its sampled positions 2..10 are
symmetric about 6) keep every map's grid symmetric, so the network is exactly
equivariant under the 90-degree rotations (and flips, for D_N) up to group
pooling, whenever H / 2 is even (28x28, 32x32). The head, like Tramèr's,
sees the spatial layout: the logits are not invariant.

Parameters for 10 classes and 28x28x1 inputs: D1 14,122; C4 7,242; D4
3,802. For 32x32x3 inputs (maps 32 -> 16 -> 15 -> 6 -> 5) the head grows to
5 x 5 x 32 / |G| inputs.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq import nn as eqnn
from dpeq.models import eq_common, layers

# Tramèr & Boneh's channel counts, kept as regular-field channels.
DEFAULT_CHANNELS = (16, 32)
_ACTIVATIONS = {"tanh": jnp.tanh, "elu": jax.nn.elu, "relu": jax.nn.relu}


def _check(group, channels, activation, *, model: str):
  group = eq_common.get_group(group, model=model)
  if not group.is_finite:
    raise ValueError(
        f"{model}: needs a finite group (C_N or D_N) for its regular fields "
        f"and max pools, got {group.name}; use eq_cnn for SO2 / O2."
    )
  if (not isinstance(channels, (tuple, list)) or len(channels) != 2
      or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
             for c in channels)):
    raise ValueError(
        f"{model}: channels must be two positive ints (conventional widths of "
        f"the two convolutions), got {channels!r}."
    )
  for c in channels:
    if c % group.order:
      raise ValueError(
          f"{model}: channels {tuple(channels)} must be multiples of "
          f"|{group.name}| = {group.order} (each regular field has "
          f"{group.order} channels)."
      )
  if activation not in _ACTIVATIONS:
    raise ValueError(
        f"{model}: activation must be one of {sorted(_ACTIVATIONS)}, got "
        f"{activation!r}."
    )
  return group


class EqTramerCNN(hk.Module):
  """Equivariant Tramèr CNN at Tramèr's width; logits [B, num_classes]."""

  def __init__(
      self, *, num_classes: int, group: str = "D1",
      channels: tuple[int, int] = DEFAULT_CHANNELS, activation: str = "tanh",
      group_pool: bool = True, name: str | None = "eq_tramer_cnn",
  ):
    super().__init__(name=name)
    self.num_classes = num_classes
    self.group = _check(group, channels, activation, model="eq_tramer_cnn")
    self.fields = tuple(c // self.group.order for c in channels)
    self.activation = _ACTIVATIONS[activation]
    self.group_pool = group_pool

  @hk.transparent
  def features(self, images: jax.Array) -> jax.Array:
    """Feature map before the head: [B, H/2 - 3... , n2] (4x4 for 28x28)."""
    layers.check_images(images, model="eq_tramer_cnn")
    height, width = images.shape[-3:-1]
    if height % 4 or width % 4 or min(height, width) < 16:
      raise ValueError(
          f"eq_tramer_cnn: image height and width must be multiples of 4 for "
          f"a grid-symmetric stride-2 step, and at least 16 (smaller maps "
          f"vanish before the head), got {height}x{width}; crop, pad or "
          "resize the images (e.g. 28x28, 32x32)."
      )
    act = self.activation
    in_type = eqnn.FieldType.trivial(self.group, images.shape[-1])
    type1 = eqnn.FieldType.regular(self.group, self.fields[0])
    type2 = eqnn.FieldType.regular(self.group, self.fields[1])
    x = eqnn.R2Conv(in_type, type1, 5, name="conv1")(images)
    x = eqnn.max_pool(act(x), window=2)
    x = eqnn.max_pool(x, window=2, stride=1)
    x = eqnn.R2Conv(type1, type2, 5, stride=2, padding="VALID", name="conv2")(x)
    x = eqnn.max_pool(act(x), window=2, stride=1)
    if self.group_pool:
      x = eqnn.GroupPooling(type2, mode="max", name="group_pooling")(x)
    return x

  def __call__(self, images: jax.Array, is_training: bool = False) -> jax.Array:
    """Logits [B, num_classes] for images [B, H, W, C]."""
    del is_training  # No dropout and no batch statistics.
    x = self.features(images)
    x = self.activation(hk.Linear(32, name="fc1")(x.reshape(x.shape[0], -1)))
    return hk.Linear(self.num_classes, name=layers.CLASSIFIER_NAME)(x)


def eq_tramer_cnn(
    *, num_classes: int, group: str = "D1",
    channels: tuple[int, int] = DEFAULT_CHANNELS, activation: str = "tanh",
    group_pool: bool = True,
):
  """Tramèr & Boneh's CNN, `group`-equivariant at Tramèr's widths.

  Args:
    num_classes: number of logits.
    group: a finite group, "C<N>" or "D<N>" (D1: the horizontal mirror, the
      default; C4 and D4 keep the grid too).
    channels: conventional widths of the two convolutions; each must be a
      multiple of |G| (the fields are regular).
    activation: "tanh" (Tramèr's, the default), "elu" or "relu".
    group_pool: max over each field before the head (|G| times fewer head
      parameters); False feeds the regular fields to the head.
  """
  channels = tuple(channels) if isinstance(channels, list) else channels
  _check(group, channels, activation, model="eq_tramer_cnn")

  def forward(images, is_training=False):
    return EqTramerCNN(
        num_classes=num_classes, group=group, channels=channels,
        activation=activation, group_pool=group_pool,
    )(images, is_training)

  return forward
