"""Spatial pooling, group pooling (invariant features) and an invariant head.

Spatial pools act on every channel alike. Averages are linear per channel and
commute with any rho(g); the max commutes only with permutations, so
`max_pool` is for trivial/regular (permutation) fields. On a pixel grid the
pooled grid is symmetric, and rot90/flips commute exactly, when H and W are
multiples of the stride (e.g. 32 -> 16 -> 8 -> 4 with 2x2 windows).
"""

from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpeq.nn.field_type import FieldType, apply_per_field


def _window_args(window: int, stride: int | None) -> tuple[tuple, tuple]:
  stride = window if stride is None else stride
  return (window, window, 1), (stride, stride, 1)


def max_pool(
    x: jax.Array, *, window: int = 2, stride: int | None = None,
    padding: str = "VALID",
) -> jax.Array:
  """Per-channel max over window x window patches of x [..., H, W, C].

  Equivariant for permutation fields only (trivial, regular). `stride`
  defaults to `window`.
  """
  window_shape, strides = _window_args(window, stride)
  return hk.max_pool(x, window_shape=window_shape, strides=strides, padding=padding)


def avg_pool(
    x: jax.Array, *, window: int = 2, stride: int | None = None,
    padding: str = "VALID",
) -> jax.Array:
  """Per-channel mean over window x window patches of x [..., H, W, C].

  Linear per channel: equivariant for any field type. `stride` defaults to
  `window`.
  """
  window_shape, strides = _window_args(window, stride)
  return hk.avg_pool(x, window_shape=window_shape, strides=strides, padding=padding)


def gaussian_taps(*, sigma: float, stride: int) -> np.ndarray:
  """1-D anti-aliasing weights of AntiAliasedAvgPool, float64 [K], sum 1.

  Taps at integer offsets around the centre of a block of `stride` pixels:
  d = j - (K - 1) / 2 for j < K = 2 R + stride, R = round(3 sigma) (the radius
  of escnn's Gaussian, 2 for sigma = 0.66), weights exp(-d^2 / (2 sigma^2)).
  """
  radius = int(round(3 * sigma))
  size = 2 * radius + stride
  offsets = np.arange(size) - (size - 1) / 2
  taps = np.exp(-(offsets**2) / (2 * sigma**2))
  return taps / taps.sum()


class AntiAliasedAvgPool(hk.Module):
  """Gaussian blur then subsampling by `stride`, per channel (escnn-style).

  Output pixel (i, j) is the Gaussian-weighted (sigma 0.66 by default) mean
  of the input around the centre of input block [s i, s i + s) x [s j, s j + s)
  (zeros outside the image); the weights are `gaussian_taps` along each axis.
  Linear per channel, so equivariant for any field type.

  Difference to escnn's PointwiseAvgPoolAntialiased2D (a 5x5 Gaussian
  centred on every s-th pixel): that grid of centres is off the image centre
  by half a pixel on even-sized inputs, which breaks rot90/flip equivariance.
  Centring the Gaussian on each s x s block (a 6x6 support for s = 2) keeps
  the output grid of the s x s pools and makes rot90/flips commute exactly;
  H and W must therefore be multiples of `stride`.
  """

  def __init__(
      self,
      field_type: FieldType,
      *,
      sigma: float = 0.66,
      stride: int = 2,
      name: str | None = None,
  ):
    super().__init__(name=name)
    if not sigma > 0:
      raise ValueError(f"AntiAliasedAvgPool: sigma must be > 0, got {sigma!r}.")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
      raise ValueError(
          f"AntiAliasedAvgPool: stride must be a positive int, got {stride!r}."
      )
    self.in_type = self.out_type = field_type
    self.sigma = float(sigma)
    self.stride = int(stride)
    self._taps = gaussian_taps(sigma=self.sigma, stride=self.stride)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Pools x [..., H, W, C] -> [..., H / stride, W / stride, C]."""
    self.in_type.check_input(x, layer="AntiAliasedAvgPool")
    height, width, channels = x.shape[-3:]
    if height % self.stride or width % self.stride:
      raise ValueError(
          f"AntiAliasedAvgPool: the input is {height}x{width}, not a multiple "
          f"of stride {self.stride}; crop or pad it so the pooled grid stays "
          "centred."
      )
    size = self._taps.size
    pad = (size - self.stride) // 2
    kernel = np.outer(self._taps, self._taps).astype(np.float32)
    kernel = np.broadcast_to(kernel[:, :, None, None], (size, size, 1, channels))
    images = x.reshape((-1, height, width, channels))
    y = lax.conv_general_dilated(
        images,
        jnp.asarray(kernel, x.dtype),
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )
    return y.reshape(x.shape[:-3] + y.shape[1:])


_GROUP_POOL_MODES = ("max", "mean", "norm")


class GroupPooling(hk.Module):
  """Reduces each field to one invariant scalar per pixel.

  mode "max" / "mean": max / mean over the field's channels, invariant for
  permutation fields (trivial, regular); mode "norm": the field's Euclidean
  norm, invariant for any orthogonal field (irreps). The output type is
  `num_fields` trivial fields: `out_type`.
  """

  def __init__(
      self, field_type: FieldType, *, mode: str = "max", name: str | None = None
  ):
    super().__init__(name=name)
    if mode not in _GROUP_POOL_MODES:
      raise ValueError(
          f"GroupPooling: mode must be one of {_GROUP_POOL_MODES}, got {mode!r}."
      )
    if mode == "norm":
      field_type.require(
          "is_orthogonal", layer="GroupPooling(mode='norm')",
          hint="norms are only invariant for orthogonal fields.",
      )
    else:
      field_type.require(
          "is_permutation", layer=f"GroupPooling(mode={mode!r})",
          hint="use mode='norm' for irrep (spectral) fields.",
      )
    self.in_type = field_type
    self.out_type = FieldType.trivial(field_type.group, field_type.num_fields)
    self.mode = mode

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., H, W, in_type.size] -> [..., H, W, num_fields]."""
    self.in_type.check_input(x, layer="GroupPooling")
    reduce = {
        "max": lambda fields: jnp.max(fields, axis=-1),
        "mean": lambda fields: jnp.mean(fields, axis=-1),
        "norm": lambda fields: jnp.sqrt(jnp.sum(jnp.square(fields), axis=-1)),
    }[self.mode]
    return apply_per_field(self.in_type, x, lambda rep, fields: reduce(fields))


class InvariantHead(hk.Module):
  """Invariant classifier: GroupPooling, global average over pixels, Linear.

  Logits [..., num_classes] are exactly invariant under every element that
  maps the grid onto itself (both pooling steps are invariant). The linear
  layer has a bias and is named "classifier", like the final layer of every
  dpeq.models network (dpeq.models.finetune finds heads by that name).
  """

  def __init__(
      self,
      field_type: FieldType,
      *,
      num_classes: int,
      mode: str = "max",
      name: str | None = None,
  ):
    super().__init__(name=name)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
      raise ValueError(
          f"InvariantHead: num_classes must be a positive int, got {num_classes!r}."
      )
    self.in_type = field_type
    self.num_classes = int(num_classes)
    self.mode = mode
    self._pool = GroupPooling(field_type, mode=mode, name="group_pooling")

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., H, W, in_type.size] -> logits [..., num_classes]."""
    invariant = jnp.mean(self._pool(x), axis=(-3, -2))
    fan_in = self.in_type.num_fields
    return hk.Linear(
        self.num_classes,
        w_init=hk.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(fan_in)),
        name="classifier",
    )(invariant)
