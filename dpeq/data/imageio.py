"""Decoding image files and bringing them to one size (host side, numpy).

Pillow (a dependency of matplotlib) decodes and resizes; without it,
TensorFlow does. Either way the result is uint8 [H, W, C].
"""

import concurrent.futures
import os
from collections.abc import Sequence

import numpy as np

try:
  from PIL import Image as _pil_image
except ImportError:  # pragma: no cover - Pillow ships with matplotlib.
  _pil_image = None


def decode(path: str | os.PathLike, *, channels: int) -> np.ndarray:
  """Decodes one image file to uint8 [H, W, channels] (1: gray, 3: RGB)."""
  if channels not in (1, 3):
    raise ValueError(f"channels={channels} must be 1 or 3.")
  if _pil_image is not None:
    with _pil_image.open(path) as image:
      array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[..., None] if channels == 1 else array
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  data = tf.io.read_file(str(path))
  return tf.io.decode_image(data, channels=channels, expand_animations=False).numpy()


def resize_center_crop(image: np.ndarray, *, size: int) -> np.ndarray:
  """Resizes the shorter side to `size` (bilinear, antialiased), centre-crops.

  Args:
    image: uint8 [H, W, C] with C in (1, 3).
    size: output side length in pixels.

  Returns:
    uint8 [size, size, C]; the input itself when it already has that shape.
  """
  height, width, channels = image.shape
  if (height, width) == (size, size):
    return image
  scale = size / min(height, width)
  new_height = max(size, round(height * scale))
  new_width = max(size, round(width * scale))
  if (new_height, new_width) != (height, width):
    if _pil_image is not None:
      pil = _pil_image.fromarray(image[..., 0] if channels == 1 else image)
      pil = pil.resize((new_width, new_height), _pil_image.BILINEAR,
                       reducing_gap=None)
      image = np.asarray(pil).reshape(new_height, new_width, channels)
    else:  # pragma: no cover - Pillow ships with matplotlib.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      resized = tf.image.resize(image, (new_height, new_width),
                                method="bilinear", antialias=True)
      image = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
  top = (new_height - size) // 2
  left = (new_width - size) // 2
  return np.ascontiguousarray(image[top:top + size, left:left + size])


def decode_many(paths: Sequence[str | os.PathLike], *,
                image_shape: tuple[int, int, int],
                num_threads: int | None = None) -> np.ndarray:
  """Decodes, resizes and centre-crops files to uint8 [N, *image_shape].

  Decoding runs on a thread pool (Pillow releases the GIL while decoding).
  """
  height, width, channels = image_shape
  if height != width:
    raise ValueError(f"image_shape={image_shape} must be square.")
  out = np.empty((len(paths), *image_shape), np.uint8)

  def work(i):
    out[i] = resize_center_crop(decode(paths[i], channels=channels), size=height)

  workers = num_threads or min(16, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for _ in pool.map(work, range(len(paths)), chunksize=64):
      pass
  return out
