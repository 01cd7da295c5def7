"""Helpers to check equivariance of dpeq.nn layers and models (tests, notebooks).

  error = equivariance_error(f, in_type, out_type, x, element)

compares f(g . x) with g . f(x) for a function f of NHWC arrays (e.g. a
`hk.Transformed.apply` with its params bound). For grid-preserving elements
(`Group.grid_preserving_elements()`) the action is an exact permutation of
pixels and the error of an equivariant float32 stack is ~1e-6; for other
rotations use smooth, oversampled inputs (`smooth_random_field`) and compare
inside a disk (`disk_mask`), where the spline-interpolated rotation of the
images is faithful.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import scipy.ndimage

from dpeq.nn.field_type import FieldType


def random_params(init_fn: Callable, *args, seed: int = 0, scale: float = 0.3):
  """Params with the structure of `init_fn(rng, *args)`, filled from numpy.

  Avoids compiling JAX's random number generators (seconds on a busy CPU) in
  tests: the shapes come from `jax.eval_shape`, the values are i.i.d.
  N(0, scale^2) (float32), biases and scales included, so that every
  parameter, including biases, is non-zero.
  """
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes
  )


def equivariance_error(
    fn: Callable,
    in_type: FieldType,
    out_type: FieldType,
    x,
    element,
    *,
    mask: np.ndarray | None = None,
) -> float:
  """max |fn(g . x) - g . fn(x)| / max |g . fn(x)| (over `mask` if given).

  Args:
    fn: maps arrays of `in_type` [..., H, W, C_in] to arrays of `out_type`.
    in_type, out_type: the field types of fn's input and output.
    x: input array.
    element: a `GroupElement` of both types' groups.
    mask: optional bool [H', W'] of output pixels to compare.
  """
  transformed_first = np.asarray(fn(in_type.transform(x, element)))
  transformed_after = np.asarray(out_type.transform(np.asarray(fn(x)), element))
  if mask is not None:
    transformed_first = transformed_first[..., mask, :]
    transformed_after = transformed_after[..., mask, :]
  scale = np.max(np.abs(transformed_after))
  if scale == 0:
    raise ValueError("equivariance_error: fn(x) is zero; use another input.")
  return float(np.max(np.abs(transformed_first - transformed_after)) / scale)


def disk_mask(size: int, radius: float) -> np.ndarray:
  """bool [size, size]: pixels within `radius` of the image centre."""
  coords = np.arange(size) - (size - 1) / 2
  return coords[:, None] ** 2 + coords[None, :] ** 2 <= radius**2


def smooth_random_field(
    shape: tuple[int, ...], *, smoothness: float = 2.0, seed: int = 0
) -> np.ndarray:
  """Smooth, oversampled random images [..., H, W, C] that vanish at the rim.

  White noise blurred with a Gaussian of `smoothness` pixels over H and W,
  normalized to unit standard deviation and multiplied by a smooth disk
  window (1 inside 0.55 of the half-width, cosine fall-off to 0 at 0.9), so
  that rotating it by any angle (with interpolation) stays inside the grid.
  float32.
  """
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal(shape)
  sigma = [0.0] * len(shape)
  sigma[-3] = sigma[-2] = smoothness
  field = scipy.ndimage.gaussian_filter(noise, sigma, mode="wrap")
  field /= field.std()
  height, width = shape[-3:-1]
  rows = np.arange(height) - (height - 1) / 2
  cols = np.arange(width) - (width - 1) / 2
  half_width = (min(height, width) - 1) / 2
  radius = np.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2) / half_width
  window = np.clip((0.9 - radius) / 0.35, 0.0, 1.0)
  window = 0.5 - 0.5 * np.cos(np.pi * window)
  return (field * window[:, :, None]).astype(np.float32)
