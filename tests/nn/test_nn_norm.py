"""EquivariantGroupNorm and IIDInstanceNorm: statistics, equivariance, errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq import groups
from dpeq.nn import EquivariantGroupNorm, FieldType, IIDInstanceNorm
from dpeq.nn.norm import resolve_num_groups
from dpeq.nn.testing import equivariance_error, random_params

EXACT = 1e-5


def _module(cls, field_type, **kwargs):
  return hk.without_apply_rng(
      hk.transform(lambda x: cls(field_type, name="norm", **kwargs)(x)))


@pytest.mark.parametrize(
    "num_fields,num_groups,expected",
    [(16, 8, 8), (40, 8, 8), (27, 8, 9), (39, 8, 3), (13, 8, 13), (6, 8, 6),
     (20, 8, 10), (12, 8, 6), (4, 2, 2), (221, 8, 13), (7, 8, 7), (60, 8, 6),
     (1, 8, 1)],
)
def test_group_count_is_the_closest_divisor(num_fields, num_groups, expected):
  # Hölzl et al.'s rule: the divisor of the field count closest to the asked
  # number of groups, the smaller on a tie (39: 3 and 13; 60: 6 and 10).
  assert resolve_num_groups(num_fields, num_groups) == expected
  divisors = [d for d in range(1, num_fields + 1) if num_fields % d == 0]
  best = min(abs(d - num_groups) for d in divisors)
  assert expected == min(d for d in divisors if abs(d - num_groups) == best)


@pytest.mark.parametrize("uniform", [False, True])
def test_group_norm_normalizes_groups_of_whole_fields(uniform):
  d4 = groups.get_group("D4")
  if uniform:  # Groups {2 regular fields} x 2: 16 channels each.
    field_type, bounds = FieldType.regular(d4, 4), ((0, 16), (16, 32))
  else:
    # Groups {2 scalars} and {2 regular fields}: 2 and 16 channels; splitting
    # the 18 channels evenly would cut a regular field in two.
    field_type = FieldType.trivial(d4, 2) + FieldType.regular(d4, 2)
    bounds = ((0, 2), (2, 18))
  size = field_type.size
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((3, 4, 4, size)) * rng.uniform(0.5, 3, size)
       + rng.uniform(-2, 2, size)).astype(np.float32)
  y = np.asarray(_module(EquivariantGroupNorm, field_type, num_groups=2).apply({}, x))
  expected = np.empty_like(x, dtype=np.float64)
  for start, end in bounds:
    part = x[..., start:end].astype(np.float64)
    mean = part.mean(axis=(1, 2, 3), keepdims=True)
    var = part.var(axis=(1, 2, 3), keepdims=True)
    expected[..., start:end] = (part - mean) / np.sqrt(var + 1e-5)
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_group_norm_is_equivariant(affine):
  d4 = groups.get_group("D4")
  field_type = FieldType.regular(d4, 4) + FieldType.trivial(d4, 4)
  model = _module(EquivariantGroupNorm, field_type, num_groups=2, affine=affine)
  x = np.random.default_rng(1).standard_normal((2, 6, 6, field_type.size))
  x = x.astype(np.float32)
  params = random_params(model.init, x)
  if affine:
    assert params["norm"]["scale"].shape == (8,)  # Per field.
    assert params["norm"]["offset"].shape == (8,)  # Per trivial component.
  for element in d4.elements():
    error = equivariance_error(
        lambda z: model.apply(params, z), field_type, field_type, x, element)
    assert error < EXACT


def test_group_norm_rejects_irrep_fields():
  with pytest.raises(ValueError, match="IIDInstanceNorm"):
    _module(EquivariantGroupNorm, FieldType.irreps("SO2", 2)).init(
        None, np.zeros((1, 3, 3, 14), np.float32))


def test_iid_instance_norm_normalizes_every_field():
  so2 = groups.get_group("SO2")
  field_type = FieldType.irreps(so2, 3)
  rng = np.random.default_rng(2)
  # Each field with its own scale and offsets.
  x = (rng.standard_normal((2, 5, 5, 3, 7)) * np.array([0.1, 1.0, 10.0])[:, None]
       + rng.uniform(-3, 3, (3, 7))).reshape(2, 5, 5, 21).astype(np.float32)
  y = np.asarray(_module(IIDInstanceNorm, field_type).apply({}, x), np.float64)
  fields = y.reshape(2, 5, 5, 3, 7)
  # Frequency-0 (trivial) channels are centered...
  np.testing.assert_allclose(fields[..., 0].mean(axis=(1, 2)), 0, atol=1e-5)
  # ... the others are not (their means are no invariant quantity) ...
  assert np.min(np.abs(fields[..., 1:].mean(axis=(1, 2)))) > 1e-2
  # ... and every field, not only the last one, is divided by the root of
  # the mean over its components of their Bessel-corrected spatial variance
  # (each around its own mean): a numpy reference of escnn's IIDBatchNorm2d
  # statistics, per example.
  inputs = x.reshape(2, 5, 5, 3, 7).astype(np.float64)
  v = inputs.var(axis=(1, 2), ddof=1).mean(axis=-1)  # [example, field]
  expected = inputs.copy()
  expected[..., 0] -= inputs[..., 0].mean(axis=(1, 2), keepdims=True)
  expected /= np.sqrt(v + 1e-5)[:, None, None, :, None]
  np.testing.assert_allclose(fields, expected, rtol=1e-4, atol=1e-5)
  # Not the uncentred second moment of the non-trivial components.
  uncentred = expected.copy()
  uncentred[..., 0] = 0
  assert np.abs(uncentred - fields * (uncentred != 0)).max() < 1e-4
  second_moment = np.mean(fields**2, axis=(1, 2, 4))
  assert np.max(np.abs(second_moment - 1)) > 1e-2


def test_iid_instance_norm_statistics_carry_no_gradient():
  so2 = groups.get_group("SO2")
  field_type = FieldType.irreps(so2, 1)
  model = _module(IIDInstanceNorm, field_type)
  x = np.random.default_rng(4).standard_normal((1, 4, 4, field_type.size))
  x = x.astype(np.float32)
  # With the statistics held fixed, y is linear in x: the Jacobian of
  # sum(y * w) is w scaled per field, with no term through mean or variance.
  w = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
  grad = jax.grad(lambda z: jnp.sum(model.apply({}, z) * w))(x)
  inputs = x.astype(np.float64).reshape(1, 4, 4, 1, field_type.size)
  v = inputs.var(axis=(1, 2), ddof=1).mean(axis=-1)
  np.testing.assert_allclose(grad, w / np.sqrt(v + 1e-5)[0, 0], rtol=1e-4)


@pytest.mark.parametrize("name", ["SO2", "D4"])
def test_iid_instance_norm_is_equivariant(name):
  group = groups.get_group(name)
  field_type = FieldType.irreps(group, 2)
  model = _module(IIDInstanceNorm, field_type, affine=True)
  x = np.random.default_rng(3).standard_normal((2, 6, 6, field_type.size))
  x = (x + 1.0).astype(np.float32)
  params = random_params(model.init, x)
  for element in group.grid_preserving_elements():
    error = equivariance_error(
        lambda z: model.apply(params, z), field_type, field_type, x, element)
    assert error < EXACT
  if not group.is_finite:  # Any rotation, acting on channels only.
    rho = field_type.representation_matrix(groups.GroupElement(0.3, 0))
    rho = rho.astype(np.float32)
    np.testing.assert_allclose(
        model.apply(params, x @ rho.T), model.apply(params, x) @ rho.T,
        atol=1e-5)
