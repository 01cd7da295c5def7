"""Small pieces shared by the dpeq models (pooling, head naming, checks)."""

import math

import haiku as hk
import jax
import jax.numpy as jnp

# Every model names its final linear layer like this, so that fine-tuning can
# find "the classifier" by name (see dpeq.models.finetune).
CLASSIFIER_NAME = "classifier"


def check_images(images: jax.Array, *, model: str) -> None:
  """Raises ValueError unless `images` is a float NHWC batch."""
  if images.ndim != 4:
    raise ValueError(
        f"{model} expects NHWC images of rank 4 [B, H, W, C], got shape "
        f"{images.shape}; add a batch axis for a single image."
    )
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"{model} expects float images (normalized), got dtype {images.dtype}; "
        "convert uint8 images with dpeq.data before calling the model."
    )


def pad_images(images: jax.Array, padding: int) -> jax.Array:
  """Zero-pads NHWC `images` by `padding` pixels on each spatial side.

  Zero is the mean pixel of normalized images; padding both sides equally
  keeps the grid's centre, so mirrored or rotated inputs stay mirrored or
  rotated.
  """
  if padding == 0:
    return images
  return jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                          (0, 0)))


def check_padding(padding, *, model: str) -> int:
  """Returns `padding` as int, or raises ValueError unless it is an int >= 0."""
  if isinstance(padding, bool) or int(padding) != padding or padding < 0:
    raise ValueError(
        f"{model}: input_padding must be an int >= 0 (pixels added on each "
        f"side), got {padding!r}.")
  return int(padding)


def check_positive_int(value, *, name: str) -> int:
  """Returns `value` as int, or raises ValueError if it is not a positive int."""
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}.")
  return int(value)


def check_wrn_depth(depth, *, model: str) -> int:
  """Returns a valid WRN depth (6 n + 4, n >= 1) or raises ValueError."""
  depth = check_positive_int(depth, name=f"{model} depth")
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(
        f"{model} depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), "
        f"got {depth}."
    )
  return depth


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """Average pool [B, H, W, C] to [B, *output_size, C] (adaptive windows).

  Window i along an axis of length n covers [floor(i n / m), ceil((i + 1) n / m))
  for m outputs, so windows tile the input (overlapping when m does not divide
  n) and the layout is symmetric under reversing the axis. When m divides n
  this is a plain non-overlapping average pool.
  """
  _, height, width, _ = x.shape
  out_h, out_w = output_size
  if out_h > height or out_w > width:
    raise ValueError(
        f"Cannot pool a {height}x{width} map to {out_h}x{out_w}; use larger "
        "input images."
    )

  def windows(n: int, m: int) -> list[tuple[int, int]]:
    return [(i * n // m, math.ceil((i + 1) * n / m)) for i in range(m)]

  rows = []
  for top, bottom in windows(height, out_h):
    cols = [
        jnp.mean(x[:, top:bottom, left:right, :], axis=(1, 2))
        for left, right in windows(width, out_w)
    ]
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


def max_pool_2d(
    x: jax.Array, *, window: int, stride: int, padding: str = "VALID"
) -> jax.Array:
  """Spatial max pool of NHWC maps (square window; channels untouched)."""
  return hk.max_pool(
      x, window_shape=(window, window, 1), strides=(stride, stride, 1),
      padding=padding,
  )
