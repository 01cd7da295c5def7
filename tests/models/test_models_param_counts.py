"""Parameter counts of the dpeq models against closed formulas and papers.

Counts use jax.eval_shape on `init`, so no network is compiled or run.
"""

import jax
import jax.numpy as jnp
import pytest

import dpeq.models


def count_params(name, *, image_shape, num_classes=10, **kwargs):
  model = dpeq.models.create(name, num_classes=num_classes, **kwargs)
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  return sum(leaf.size for leaf in jax.tree.leaves(shapes))


def ws_conv(k, c_in, c_out, bias=True):
  """Raw kernel + per-channel gain (+ bias)."""
  return k * k * c_in * c_out + c_out + (c_out if bias else 0)


def linear(c_in, c_out):
  return c_in * c_out + c_out


def wrn_formula(depth, width, num_classes=10, in_channels=3):
  group_norm = lambda c: 2 * c  # scale and offset
  n = (depth - 4) // 6
  total = ws_conv(3, in_channels, 16)
  c_in = 16
  for w in (16 * width, 32 * width, 64 * width):
    total += group_norm(c_in) + ws_conv(1, c_in, w)  # skip path
    total += group_norm(c_in) + ws_conv(3, c_in, w) + group_norm(w) + ws_conv(3, w, w)
    total += (n - 1) * 2 * (group_norm(w) + ws_conv(3, w, w))
    c_in = w
  return total + group_norm(c_in) + linear(c_in, num_classes)


@pytest.mark.parametrize(
    "depth,width,published", [(16, 4, 2.75e6), (40, 4, 8.96e6)])
def test_wrn_counts_match_formula_and_de_et_al(depth, width, published):
  got = count_params("wrn", image_shape=(32, 32, 3), depth=depth, width=width)
  assert got == wrn_formula(depth, width)
  # De et al. report the counts to three significant digits.
  assert abs(got - published) <= 0.005e6, got


def test_wrn_28_10_count_matches_formula():
  got = count_params("wrn", image_shape=(32, 32, 3), depth=28, width=10)
  assert got == wrn_formula(28, 10)
  assert abs(got - 36.5e6) < 0.1e6  # the usual "36.5M" of WRN-28-10


def test_resnet9_count_matches_formula():
  c1, c2, c3 = 64, 128, 256
  expected = (
      ws_conv(3, 3, c1) + ws_conv(3, c1, c2) + 2 * ws_conv(3, c2, c2)
      + ws_conv(3, c2, c3) + ws_conv(3, c3, c3) + 2 * ws_conv(3, c3, c3)
      + linear(4 * c3, 10))  # affine-free norms; 2x2 pooled head
  assert count_params("resnet9", image_shape=(32, 32, 3)) == expected
  assert count_params(
      "resnet9", image_shape=(32, 32, 3), layout=(8, 16, 24)) == (
          ws_conv(3, 3, 8) + ws_conv(3, 8, 16) + 2 * ws_conv(3, 16, 16)
          + ws_conv(3, 16, 24) + 3 * ws_conv(3, 24, 24) + linear(96, 10))


def test_cnn_tramer_count_is_the_papers_26010():
  expected = (8 * 8 * 1 * 16 + 16) + (4 * 4 * 16 * 32 + 32) + linear(
      32 * 4 * 4, 32) + linear(32, 10)
  assert expected == 26010
  assert count_params("cnn_tramer", image_shape=(28, 28, 1)) == expected


def test_nf_resnet50_count():
  # Bottleneck ResNet-50 convolutions (He et al. 2016), each scaled-WS with a
  # gain and bias (the stem without bias), a scalar skip gain per unit.
  total = 7 * 7 * 3 * 64 + 64
  c_in = 64
  for depth, width in zip((3, 4, 6, 3), (256, 512, 1024, 2048), strict=True):
    for unit in range(depth):
      mid = width // 4
      total += ws_conv(1, c_in, mid) + ws_conv(3, mid, mid) + ws_conv(1, mid, width)
      total += 1  # skip gain
      if unit == 0:
        total += ws_conv(1, c_in, width)
      c_in = width
  total += linear(2048, 1000)
  got = count_params("nf_resnet50", image_shape=(64, 64, 3), num_classes=1000)
  assert got == total
  # torchvision's ResNet-50 has 25,557,032 parameters; NF-ResNet-50 swaps the
  # batch-norm scale/offset for WS gains and conv biases: within 0.1%.
  assert abs(got - 25_557_032) < 0.001 * 25_557_032
