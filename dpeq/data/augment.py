"""On-device augmentation: K random views per example, from keys (pure JAX).

Every view k of every example b draws its own random integers (entry [b, k]
of one `jax.random.bits` draw from the batch key):
  * a crop: reflect-pad by `crop_padding` pixels (mirror without repeating
    the edge) and cut an H x W window at an offset uniform over the
    (2p + 1)^2 positions;
  * a horizontal flip (mirror x -> -x) with probability 1/2;
  * optionally a vertical flip with probability 1/2;
  * optionally a rotation by a multiple of 90 degrees, uniform (square images).
The operations act in that order on uint8 pixels, which are then mapped to
[0, 1] and standardised per channel: (x / 255 - mean) / std, in float32.
With `view0_identity` (Hölzl et al.), view 0 of every example is the
un-augmented, normalised image, and views 1..K-1 are random.

Everything is batched with vmap (crops are `lax.dynamic_slice`), so it jits,
runs inside the per-micro-batch update, and shards along the batch axis: the
keys of example b depend only on the batch key and b, never on the device
layout.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation multiplicity and the random transformations of each view.

  Attributes:
    num_views: K, views per example (augmentation multiplicity), >= 1.
    crop_padding: reflect-pad width in pixels before the random crop back to
      the original size; 0 turns cropping off.
    random_flip: random horizontal flip (left-right mirror).
    vertical_flip: random vertical flip (up-down mirror).
    random_rot90: random rotation by 0, 90, 180 or 270 degrees (square
      images only).
    view0_identity: view 0 is the un-augmented image (Hölzl et al.).
  """

  num_views: int = 1
  crop_padding: int = 0
  random_flip: bool = False
  vertical_flip: bool = False
  random_rot90: bool = False
  view0_identity: bool = False

  def __post_init__(self):
    for name in ("num_views", "crop_padding"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"AugmentConfig.{name}={value!r} must be an int.")
    if self.num_views < 1:
      raise ValueError(f"AugmentConfig.num_views={self.num_views} must be >= 1.")
    if self.crop_padding < 0:
      raise ValueError(
          f"AugmentConfig.crop_padding={self.crop_padding} must be >= 0 (0 = off)."
      )
    for name in ("random_flip", "vertical_flip", "random_rot90",
                 "view0_identity"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"AugmentConfig.{name} must be True or False.")

  @property
  def is_identity(self) -> bool:
    """Whether every view is the plain (normalised) image."""
    return not (self.crop_padding or self.random_flip or self.vertical_flip
                or self.random_rot90)


def _channel_vector(values, name: str, channels: int) -> np.ndarray:
  array = np.asarray(values, np.float32).reshape(-1)
  if array.size == 1:
    array = np.repeat(array, channels)
  if array.size != channels:
    raise ValueError(
        f"{name} has {array.size} values but the images have {channels} "
        f"channels: pass one value or {channels}."
    )
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name}={values!r} must be finite.")
  if name == "std" and not np.all(array > 0):
    raise ValueError(f"std={values!r} must be positive in every channel.")
  return array


def _draw_bounds(config: AugmentConfig) -> np.ndarray:
  """Exclusive upper bounds of the integers one view draws: crop dy, crop dx,
  horizontal flip, vertical flip, quarter turns."""
  side = 2 * config.crop_padding + 1
  return np.asarray([side, side, 2, 2, 4], np.int32)


def _augment_one(padded: jax.Array, draws: jax.Array, *, config: AugmentConfig,
                 height: int, width: int) -> jax.Array:
  """One view of one reflect-padded image [H + 2p, W + 2p, C].

  `draws` int32 [5] holds the view's random integers (see `_draw_bounds`).
  """
  image = padded
  if config.crop_padding:
    image = jax.lax.dynamic_slice(
        padded, (draws[0], draws[1], 0), (height, width, padded.shape[-1]))
  if config.random_flip:
    image = jnp.where(draws[2] == 1, image[:, ::-1], image)
  if config.vertical_flip:
    image = jnp.where(draws[3] == 1, image[::-1], image)
  if config.random_rot90:
    image = jnp.stack([jnp.rot90(image, k) for k in range(4)])[draws[4]]
  return image


def make_views(key: jax.Array, images: jax.Array, *, config: AugmentConfig,
               mean: Sequence[float] | float, std: Sequence[float] | float
               ) -> jax.Array:
  """K normalised views of every image.

  Args:
    key: a PRNG key; the views are a pure function of (key, images).
    images: uint8 [B, H, W, C] (other integer or float dtypes are taken to be
      in [0, 255] units as well).
    config: what each view does.
    mean: per-channel mean in [0, 1] units (C values, or one for all).
    std: per-channel standard deviation, like `mean`.

  Returns:
    float32 [B, K, H, W, C] with K = config.num_views.
  """
  if not isinstance(config, AugmentConfig):
    raise ValueError(f"config must be an AugmentConfig; got {type(config)}.")
  if images.ndim != 4:
    raise ValueError(f"images must be [B, H, W, C]; got shape {images.shape}.")
  batch, height, width, channels = images.shape
  mean = _channel_vector(mean, "mean", channels)
  std = _channel_vector(std, "std", channels)
  pad = config.crop_padding
  if pad and (pad >= height or pad >= width):
    raise ValueError(
        f"crop_padding={pad} must be smaller than the image size "
        f"{height}x{width} (reflect padding cannot exceed it)."
    )
  if config.random_rot90 and height != width:
    raise ValueError(
        f"random_rot90 needs square images; got {height}x{width}.")

  num_views = config.num_views
  num_random = num_views - 1 if config.view0_identity else num_views
  if num_random and not config.is_identity:
    # One counter-based draw for the whole batch: row b is example b's
    # randomness (what a per-example key would give), whatever the batch's
    # sharding; a single threefry call also keeps compile time low on CPU.
    # `bits % bound` is uniform up to a relative bias below bound / 2^32.
    bounds = _draw_bounds(config)
    bits = jax.random.bits(key, (batch, num_views, len(bounds)), jnp.uint32)
    draws = (bits % jnp.asarray(bounds, jnp.uint32)).astype(jnp.int32)
    if config.view0_identity:
      draws = draws[:, 1:]
    padded = images
    if pad:
      padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                       mode="reflect")

    def per_example(image, example_draws):
      return jax.vmap(lambda d: _augment_one(
          image, d, config=config, height=height, width=width))(example_draws)

    random_views = jax.vmap(per_example)(padded, draws)
  else:
    random_views = jnp.broadcast_to(images[:, None],
                                    (batch, num_random, height, width, channels))
  if config.view0_identity:
    views = jnp.concatenate([images[:, None], random_views], axis=1)
  else:
    views = random_views
  scale = jnp.asarray(1.0 / (255.0 * std), jnp.float32)
  shift = jnp.asarray(mean / std, jnp.float32)
  return views.astype(jnp.float32) * scale - shift


def views_fn(config: AugmentConfig, mean: Sequence[float] | float,
             std: Sequence[float] | float) -> Callable[[jax.Array, Batch], Batch]:
  """A `views_fn` for `dpeq.training.update.make_private_update`.

  Args:
    config: the augmentation.
    mean: per-channel mean in [0, 1] units (e.g. `DatasetInfo.mean`).
    std: per-channel standard deviation (e.g. `DatasetInfo.std`).

  Returns:
    f(key, batch) mapping a raw batch {"images": uint8 [B, H, W, C],
    "labels": int32 [B]} to views {"images": float32 [B, K, H, W, C],
    "labels": int32 [B, K]}; any other leaf [B, ...] is broadcast to
    [B, K, ...] like the labels. The draws depend on the key and the row
    position only, so callers pass a fresh key per micro-batch and update
    step (e.g. `jax.random.fold_in(step_key, micro_batch_index)`).
  """
  if not isinstance(config, AugmentConfig):
    raise ValueError(f"config must be an AugmentConfig; got {type(config)}.")
  mean = tuple(np.asarray(mean, np.float64).reshape(-1).tolist())
  std = tuple(np.asarray(std, np.float64).reshape(-1).tolist())

  def fn(key: jax.Array, batch: Batch) -> Batch:
    if "images" not in batch:
      raise ValueError(f"batch must hold 'images'; got keys {sorted(batch)}.")
    num_views = config.num_views
    out = {}
    for name, value in batch.items():
      if name == "images":
        out[name] = make_views(key, value, config=config, mean=mean, std=std)
      else:
        value = jnp.asarray(value)
        out[name] = jnp.broadcast_to(
            value[:, None], (value.shape[0], num_views, *value.shape[1:]))
    return out

  return fn
