"""Parameter counts of the dpeq models against closed formulas and papers.

Counts use jax.eval_shape on `init`, so no network is compiled or run.
"""

import math

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


# Equivariant models. A 3x3 kernel of a finite group has H = 8 ring harmonics
# (centre; ring 1 with j <= 3: cos/sin of j = 1..3 and the constant). By
# Frobenius reciprocity an equivariant map from any d-channel field into a
# regular field of a finite group K has d * H basis elements (whatever K),
# and a regular field holds one trivial irrep: one bias per output field.
HARMONICS_3X3 = 8
PAPER_TABLE4 = {  # Hölzl et al. Table 4, CIFAR-10, rounded to thousands.
    "C4": 258_000, "C8": 256_000, "C16": 244_000, "D4": 256_000,
    "D8": 244_000, "D16": 238_000, "SO2": 309_000,
}


def eq_conv(in_channels, out_fields, per_channel):
  return in_channels * out_fields * per_channel + out_fields


def so2_pair_count(m, n, ring_limits=(0, 2)):
  """Basis size psi_m -> psi_n of SO(2), summed over rings (escnn cutoff:
  centre j <= 0, outer ring j <= 2 for 3x3)."""
  total = 0
  for limit in ring_limits:
    if m == n == 0:
      total += 1
    elif min(m, n) == 0:
      total += 2 * (max(m, n) <= limit)
    else:
      total += 2 * (abs(m - n) <= limit) + 2 * (m + n <= limit)
  return total


def eq_resnet9_formula(group, layout=(16, 32, 64), num_classes=10):
  c1, c2, c3 = layout
  if group == "SO2":
    band = 3  # psi_0 .. psi_3: 7 channels per field
    n1, n2 = (max(1, int(c * math.sqrt(1.5) / band**2)) for c in (c1, c2))
    n3 = c3  # SO(2) -> trivial: the paper's last stage of c3 plain channels
    freqs = range(band + 1)
    field_size = 1 + 2 * band
    field_to_field = sum(so2_pair_count(m, n) for m in freqs for n in freqs)
    trivial_to_field = sum(so2_pair_count(0, n) for n in freqs)
    total = (3 * n1 * trivial_to_field + n1
             + n1 * n2 * field_to_field + n2
             + 2 * (n2 * n2 * field_to_field + n2)
             + n2 * n3 * field_to_field + n3)
    total += eq_conv(n3 * field_size, n3, HARMONICS_3X3)  # restricted conv4
    total += 2 * eq_conv(n3, n3, HARMONICS_3X3)
    return total + linear(4 * n3, num_classes)
  order = int(group[1:]) * (2 if group[0] == "D" else 1)
  sub = order // 2  # "halved"
  width = lambda c, o: max(1, int(c * math.sqrt(1.5 * o) / o))
  n1, n2, n3 = width(c1, order), width(c2, order), width(c3, sub)
  h = HARMONICS_3X3
  return (eq_conv(3, n1, h) + eq_conv(n1 * order, n2, h)
          + 2 * eq_conv(n2 * order, n2, h) + eq_conv(n2 * order, n3, h)
          + eq_conv(n3 * order, n3, h)  # restricted fields keep |G| channels
          + 2 * eq_conv(n3 * sub, n3, h) + linear(4 * n3, num_classes))


@pytest.mark.parametrize("group", sorted(PAPER_TABLE4))
def test_eq_resnet9_counts_match_formula_and_paper_table4(group):
  got = count_params("eq_resnet9", image_shape=(32, 32, 3), group=group,
                     layout=(16, 32, 64), restrict="halved")
  assert got == eq_resnet9_formula(group)
  assert abs(got - PAPER_TABLE4[group]) < 1000, got


def test_eq_resnet9_default_is_the_papers_d4_model():
  assert count_params("eq_resnet9", image_shape=(32, 32, 3)) == (
      eq_resnet9_formula("D4"))


@pytest.mark.parametrize("group", ["D1", "C4", "D4"])
def test_eq_resnet9_lean_keeps_resnet9_channels_with_a_gth_of_its_kernels(
    group):
  order = int(group[1:]) * (2 if group[0] == "D" else 1)
  channels = (16, 32, 64)
  n1, n2, n3 = (c // order for c in channels)  # regular fields, |G| channels
  h = HARMONICS_3X3
  expected = (eq_conv(3, n1, h) + eq_conv(n1 * order, n2, h)
              + 2 * eq_conv(n2 * order, n2, h) + eq_conv(n2 * order, n3, h)
              + 3 * eq_conv(n3 * order, n3, h) + linear(4 * n3, 10))
  got = count_params("eq_resnet9_lean", image_shape=(32, 32, 3), group=group,
                     group_pool=True)
  assert got == expected
  conventional = count_params("resnet9", image_shape=(32, 32, 3),
                              layout=channels)
  # Each conv has 8 / 9 of a 1 / |G| share of ResNet-9's kernel weights.
  assert got < conventional / order
  # Without group pooling the head sees the c3 channels, as ResNet-9's does.
  no_pool = count_params("eq_resnet9_lean", image_shape=(32, 32, 3),
                         group=group, group_pool=False)
  assert no_pool - got == 4 * (channels[2] - n3) * 10


def test_eq_resnet9_lean_refuses_channels_its_fields_cannot_carry():
  with pytest.raises(ValueError, match="c2=30 is not a multiple of the order 4"):
    dpeq.models.create("eq_resnet9_lean", num_classes=10, group="C4",
                       channels=(16, 30, 64))
  with pytest.raises(ValueError, match="finite group"):
    dpeq.models.create("eq_resnet9_lean", num_classes=10, group="SO2")


def test_eq_cnn_count_is_close_to_tramers():
  # 5x5 kernels: centre, ring 1 with j <= 3 and ring 2 with j <= 6.
  h = 1 + (1 + 2 * 3) + (1 + 2 * 6)
  n1, n2 = int(16 * math.sqrt(6) / 4), int(32 * math.sqrt(6) / 4)  # C4
  expected = (eq_conv(1, n1, h) + eq_conv(n1 * 4, n2, h)
              + linear(n2 * 4 * 4, 32) + linear(32, 10))
  got = count_params("eq_cnn", image_shape=(28, 28, 1), group="C4")
  assert got == expected
  assert abs(got - 26010) < 0.1 * 26010


def test_eq_tramer_cnn_c4_count_and_widths():
  h = 1 + (1 + 2 * 3) + (1 + 2 * 6)  # 5x5 harmonics, as for eq_cnn
  n1, n2 = 16 // 4, 32 // 4  # Tramer's 16 and 32 channels as C4 fields
  expected = (eq_conv(1, n1, h) + eq_conv(n1 * 4, n2, h)
              + linear(n2 * 4 * 4, 32) + linear(32, 10))
  got = count_params("eq_tramer_cnn", image_shape=(28, 28, 1), group="C4")
  assert got == expected
  # Without group pooling the head sees the 32 regular-field channels.
  no_pool = count_params("eq_tramer_cnn", image_shape=(28, 28, 1), group="C4",
                         group_pool=False)
  assert no_pool - got == (32 - n2) * 4 * 4 * 32
  assert got < 26010 / 3  # Tramer's CNN


def test_tramer_cifar10_cnn_count_matches_their_layout():
  convs = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
  expected = (sum(9 * a * b + b for a, b in convs) + linear(4 * 4 * 128, 128)
              + linear(128, 10))
  got = count_params("cnn_tramer_cifar10", image_shape=(32, 32, 3))
  assert got == expected == 550_570
