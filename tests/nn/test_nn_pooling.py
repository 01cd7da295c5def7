"""Spatial pools, group pooling, the invariant head and Restrict."""

import math

import haiku as hk
import numpy as np
import pytest

from dpeq import groups
from dpeq.nn import (
    AntiAliasedAvgPool,
    FieldType,
    GroupPooling,
    InvariantHead,
    R2Conv,
    Restrict,
    avg_pool,
    max_pool,
)
from dpeq.nn.pooling import gaussian_taps
from dpeq.nn.testing import equivariance_error, random_params

EXACT = 1e-5


def _module(build):
  return hk.without_apply_rng(hk.transform(lambda x: build()(x)))


def test_spatial_pools_are_equivariant_on_even_grids():
  d4 = groups.get_group("D4")
  field_type = FieldType.regular(d4, 1) + FieldType.trivial(d4, 1)
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 9)).astype(np.float32)
  blocks = x.reshape(2, 4, 2, 4, 2, 9)
  np.testing.assert_allclose(max_pool(x), blocks.max(axis=(2, 4)))
  np.testing.assert_allclose(avg_pool(x), blocks.mean(axis=(2, 4)), rtol=1e-6)
  anti_aliased = _module(lambda: AntiAliasedAvgPool(field_type))
  for pool in (max_pool, avg_pool, lambda z: anti_aliased.apply({}, z)):
    for element in d4.elements():
      assert equivariance_error(pool, field_type, field_type, x, element) < EXACT


def test_anti_aliased_pool_is_a_centred_gaussian_average():
  taps = gaussian_taps(sigma=0.66, stride=2)
  assert taps.shape == (6,) and taps.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(taps, taps[::-1])
  field_type = FieldType.irreps("SO2", 1)
  pool = _module(lambda: AntiAliasedAvgPool(field_type))
  # Constants survive away from the (zero-padded) border.
  ones = np.ones((1, 12, 12, 7), np.float32)
  np.testing.assert_allclose(pool.apply({}, ones)[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
  # A narrow Gaussian tends to the 2x2 average: same output grid.
  x = np.random.default_rng(1).standard_normal((1, 8, 8, 7)).astype(np.float32)
  narrow = _module(lambda: AntiAliasedAvgPool(field_type, sigma=0.1))
  np.testing.assert_allclose(narrow.apply({}, x), avg_pool(x), atol=1e-6)
  # Wider Gaussian: a linear smoothing, different from the box average.
  assert not np.allclose(pool.apply({}, x), avg_pool(x), atol=1e-2)
  for element in groups.get_group("SO2").grid_preserving_elements():
    error = equivariance_error(
        lambda z: pool.apply({}, z), field_type, field_type, x, element)
    assert error < EXACT
  with pytest.raises(ValueError, match="multiple of stride"):
    pool.apply({}, np.zeros((1, 9, 9, 7), np.float32))


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_group_pooling_gives_invariant_scalars(mode):
  d4 = groups.get_group("D4")
  field_type = FieldType.trivial(d4, 1) + FieldType.regular(d4, 2)
  model = _module(lambda: GroupPooling(field_type, mode=mode))
  x = np.random.default_rng(2).standard_normal((1, 4, 4, 17)).astype(np.float32)
  y = np.asarray(model.apply({}, x))
  reduce = np.max if mode == "max" else np.mean
  expected = np.stack([x[..., 0], reduce(x[..., 1:9], axis=-1),
                       reduce(x[..., 9:], axis=-1)], axis=-1)
  np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
  out_type = FieldType.trivial(d4, 3)
  for element in d4.elements():
    error = equivariance_error(
        lambda z: model.apply({}, z), field_type, out_type, x, element)
    assert error < EXACT


def test_group_pooling_of_irrep_fields_uses_norms():
  so2 = groups.get_group("SO2")
  field_type = FieldType.irreps(so2, 2)
  model = _module(lambda: GroupPooling(field_type, mode="norm"))
  x = np.random.default_rng(3).standard_normal((1, 3, 3, 14)).astype(np.float32)
  rho = field_type.representation_matrix(groups.GroupElement(1.1, 0))
  np.testing.assert_allclose(
      model.apply({}, x @ rho.T.astype(np.float32)), model.apply({}, x), rtol=1e-5)
  np.testing.assert_allclose(
      model.apply({}, x), np.linalg.norm(x.reshape(1, 3, 3, 2, 7), axis=-1),
      rtol=1e-6)
  with pytest.raises(ValueError, match="mode='norm'"):
    _module(lambda: GroupPooling(field_type, mode="max")).init(None, x)


def test_invariant_head_logits_are_invariant():
  d4 = groups.get_group("D4")
  field_type = FieldType.regular(d4, 3)
  model = _module(lambda: InvariantHead(field_type, num_classes=5))
  x = np.random.default_rng(4).standard_normal((2, 6, 6, 24)).astype(np.float32)
  params = random_params(model.init, x)
  logits = np.asarray(model.apply(params, x))
  assert logits.shape == (2, 5)
  for element in d4.elements():
    transformed = model.apply(params, field_type.transform(x, element))
    np.testing.assert_allclose(transformed, logits, rtol=1e-5, atol=1e-6)


def test_restrict_relaxes_the_symmetry_without_moving_data():
  d4 = groups.get_group("D4")
  field_type = FieldType.regular(d4, 1)

  def build(x):
    restrict = Restrict(field_type, "D2")
    assert restrict.out_type.group == groups.get_group("D2")
    y = restrict(x)
    assert y is x  # No data movement.
    return R2Conv(restrict.out_type, restrict.out_type)(y)

  model = hk.without_apply_rng(hk.transform(build))
  x = np.random.default_rng(5).standard_normal((1, 7, 7, 8)).astype(np.float32)
  params = random_params(model.init, x)
  apply = lambda z: model.apply(params, z)
  d2_type = field_type.restrict("D2")
  for element in d2_type.group.elements():
    assert equivariance_error(apply, d2_type, d2_type, x, element) < EXACT
  # A D2 layer has more freedom than a D4 one: no longer D4-equivariant.
  quarter_turn = groups.GroupElement(math.pi / 2, 0)
  assert equivariance_error(apply, field_type, field_type, x, quarter_turn) > 1e-2
  with pytest.raises(ValueError, match="not a subgroup"):
    hk.transform(lambda: Restrict(field_type, "C8")).init(None)
