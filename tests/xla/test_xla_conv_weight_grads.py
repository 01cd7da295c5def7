"""Per-tap conv weight gradients equal JAX's own, for every conv layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dpeq.xla import conv_weight_grads

# (input shape, kernel shape, strides, padding, dimension numbers, groups)
CASES = {
    "nhwc_same": ((2, 7, 6, 3), (3, 3, 3, 4), (1, 1), "SAME",
                  ("NHWC", "HWIO", "NHWC"), 1),
    "nhwc_stride2_valid": ((2, 7, 6, 3), (3, 2, 3, 4), (2, 2), "VALID",
                           ("NHWC", "HWIO", "NHWC"), 1),
    "nchw_asymmetric": ((2, 3, 7, 6), (4, 3, 3, 3), (2, 1),
                        ((1, 0), (2, 1)), ("NCHW", "OIHW", "NCHW"), 1),
    "one_by_one": ((2, 5, 5, 3), (1, 1, 3, 4), (2, 2), "SAME",
                   ("NHWC", "HWIO", "NHWC"), 1),
    "conv1d": ((2, 9, 3), (3, 3, 4), (1,), "SAME", ("NWC", "WIO", "NWC"), 1),
    "grouped_kept": ((2, 5, 5, 4), (3, 3, 2, 4), (1, 1), "SAME",
                     ("NHWC", "HWIO", "NHWC"), 2),
}


def _loss(case):
  _, _, strides, padding, dimension_numbers, groups = case

  @jax.jit  # Convolutions inside jitted sub-functions are reached too.
  def conv(x, w):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=dimension_numbers,
        feature_group_count=groups)

  def loss(params, x):
    y = jnp.tanh(conv(x, params["w"]))
    return jnp.sum(y * jnp.cos(y)), {"mean": jnp.mean(y)}

  return loss


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_and_per_example_gradients_are_unchanged(name):
  case = CASES[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=case[0]), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=case[1]), jnp.float32)}
  loss = _loss(case)
  fast = conv_weight_grads.with_tap_weight_grads(loss)

  @jax.jit
  def per_example_grads(params, x):
    """Per-example gradients (what DP-SGD uses) wrt params and input."""
    def one(f, xi):
      return jax.grad(lambda p, xi: f(p, xi[None]), argnums=(0, 1),
                      has_aux=True)(params, xi)
    return [jax.vmap(lambda xi, f=f: one(f, xi))(x) for f in (fast, loss)]

  (got, got_aux), (expected, expected_aux) = per_example_grads(params, x)
  for a, b in zip(jax.tree.leaves((got, got_aux)),
                  jax.tree.leaves((expected, expected_aux)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  value, _ = fast(params, x)  # Unbatched, outside any transformation.
  np.testing.assert_allclose(value, loss(params, x)[0], rtol=1e-6)


def test_plain_convolutions_are_replaced_and_grouped_ones_kept():
  def dot_products(name):  # Matrix products in the gradient's jaxpr.
    case = CASES[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=case[0]), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=case[1]), jnp.float32)}
    fast = conv_weight_grads.with_tap_weight_grads(_loss(case))
    text = str(jax.make_jaxpr(jax.grad(lambda p: fast(p, x)[0]))(params))
    return text.count("dot_general[")

  assert dot_products("nhwc_same") == 9  # One per tap of the 3x3 kernel.
  assert dot_products("grouped_kept") == 0  # JAX's own weight gradient.


def test_the_rewrite_is_used_only_where_it_was_tested(monkeypatch):
  assert conv_weight_grads.is_available("cpu") == (
      tuple(jax.__version_info__[:2]) in conv_weight_grads.TESTED_JAX_VERSIONS)
  assert not conv_weight_grads.is_available("gpu")
  # An untested jax: plain vmap_gradients (the rewrite is never entered).
  monkeypatch.setattr(conv_weight_grads, "TESTED_JAX_VERSIONS", ())
  monkeypatch.setattr(conv_weight_grads, "with_tap_weight_grads",
                      lambda fn: pytest.fail("rewrite used on untested jax"))
  params = {"w": jnp.ones((2, 3))}
  batch = {"x": jnp.ones((4, 1, 3))}
  loss = lambda p, v: (jnp.sum(v["x"] @ p["w"].T, axis=-1), ())
  result = conv_weight_grads.vmap_gradients(loss, params, batch)
  np.testing.assert_allclose(result.norms, np.full(4, np.sqrt(6.0)))
