"""Tests for dpeq.nn.wsconv (De et al.'s scaled weight standardization)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq.nn.testing import random_params
from dpeq.nn.wsconv import WSConv2D, scaled_standardize


def _naive_standardize(w, gain, eps):
  """Per output channel, in float64 with explicit loops."""
  w = np.asarray(w, np.float64)
  out = np.empty_like(w)
  for o in range(w.shape[-1]):
    column = w[..., o]
    fan_in = column.size
    mean = column.sum() / fan_in
    var = ((column - mean) ** 2).sum() / fan_in
    out[..., o] = gain[o] * (column - mean) / np.sqrt(max(var * fan_in, eps))
  return out


def _naive_conv_same(x, kernel, stride):
  """NHWC x HWIO cross-correlation with TF "SAME" padding, by loops."""
  b, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  out_h, out_w = -(-h // stride), -(-w // stride)
  pad_h = max((out_h - 1) * stride + kh - h, 0)
  pad_w = max((out_w - 1) * stride + kw - w, 0)
  padded = np.zeros((b, h + pad_h, w + pad_w, cin))
  padded[:, pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w] = x
  out = np.zeros((b, out_h, out_w, cout))
  for i in range(out_h):
    for j in range(out_w):
      patch = padded[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
      out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
  return out


def test_scaled_standardize_matches_naive_and_normalizes():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 3, 4, 5)) * 3.0 + 1.5
  gain = rng.uniform(0.5, 2.0, size=5)
  got = np.asarray(scaled_standardize(jnp.asarray(w, jnp.float32),
                                      gain=jnp.asarray(gain, jnp.float32)))
  np.testing.assert_allclose(got, _naive_standardize(w, gain, 1e-4), rtol=1e-5,
                             atol=1e-6)
  # Zero mean and squared norm gain^2 per output channel.
  np.testing.assert_allclose(got.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose((got**2).sum(axis=(0, 1, 2)), gain**2, rtol=1e-5)


def test_constant_kernel_is_floored_not_nan():
  w = jnp.full((1, 1, 2, 3), 0.7)
  gain = jnp.ones(3)
  out, grad = jax.jit(jax.value_and_grad(
      lambda w: jnp.sum(scaled_standardize(w, gain=gain) ** 2)))(w)
  assert out == 0.0
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.fixture(scope="module")
def conv_model():
  model = hk.without_apply_rng(hk.transform(
      lambda x: WSConv2D(5, 3, stride=2, name="conv")(x)))
  return hk.Transformed(init=model.init, apply=jax.jit(model.apply))


def test_wsconv_initial_parameters(conv_model):
  x = jnp.zeros((1, 7, 6, 4))
  params = jax.jit(conv_model.init)(jax.random.key(0), x)["conv"]
  assert set(params) == {"w", "gain", "bias"}
  assert params["w"].shape == (3, 3, 4, 5)
  np.testing.assert_array_equal(np.asarray(params["gain"]), np.ones(5))
  np.testing.assert_array_equal(np.asarray(params["bias"]), np.zeros(5))
  assert np.std(np.asarray(params["w"])) > 0


def test_wsconv_matches_naive_convolution(conv_model):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 7, 6, 4)).astype(np.float32)
  params = random_params(conv_model.init, x, seed=1, scale=1.0)
  p = params["conv"]
  kernel = _naive_standardize(p["w"], np.asarray(p["gain"]), 1e-4)
  expected = _naive_conv_same(x.astype(np.float64), kernel, 2) + np.asarray(
      p["bias"])
  got = conv_model.apply(params, x)
  assert got.shape == (2, 4, 3, 5)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_wsconv_is_invariant_to_affine_rescaling_of_raw_weights(conv_model):
  x = np.random.default_rng(2).normal(size=(1, 5, 5, 3)).astype(np.float32)
  params = random_params(conv_model.init, x, seed=3)
  rescaled = hk.data_structures.to_mutable_dict(params)
  rescaled["conv"]["w"] = 4.0 * params["conv"]["w"] - 0.3
  np.testing.assert_allclose(
      np.asarray(conv_model.apply(params, x)),
      np.asarray(conv_model.apply(rescaled, x)), rtol=1e-4, atol=1e-5)


def test_wsconv_without_bias_and_bad_arguments():
  model = hk.without_apply_rng(hk.transform(
      lambda x: WSConv2D(2, (1, 3), with_bias=False, name="c")(x)))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
  assert set(params["c"]) == {"w", "gain"}
  assert params["c"]["w"].shape == (1, 3, 3, 2)
  with pytest.raises(ValueError, match="rank 4"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((4, 4, 3)))
  for kwargs in ({"padding": "same"}, {"kernel_shape": 0}, {"stride": (1, 2, 3)}):
    bad = hk.transform(lambda x, kw=kwargs: WSConv2D(2, **kw)(x))
    with pytest.raises(ValueError):
      jax.eval_shape(bad.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
