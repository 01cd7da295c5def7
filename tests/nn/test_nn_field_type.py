"""FieldType: bookkeeping, the group action on NHWC arrays, restriction."""

import math

import numpy as np
import pytest

from dpeq import groups
from dpeq.nn import FieldType

GRID_GROUPS = ("C1", "C2", "C4", "D1", "D2", "D4")


def test_sizes_and_slices_of_a_mixed_type():
  d4 = groups.get_group("D4")
  field_type = FieldType.trivial(d4, 2) + FieldType.regular(d4, 3)
  assert field_type.size == 2 + 3 * 8
  assert field_type.num_fields == len(field_type) == 5
  assert field_type.field_sizes == (1, 1, 8, 8, 8)
  assert field_type.field_slices[3] == slice(10, 18)
  assert FieldType.irreps("SO2", 2).size == 2 * 7  # psi_0 + psi_1..3
  assert FieldType.irreps("O2", 1).size == 1 + 1 + 3 * 2
  assert field_type == FieldType(d4, list(field_type.reps))
  assert field_type != FieldType.regular(d4, 3)


@pytest.mark.parametrize("name", ["C4", "D4", "C8", "SO2", "O2", "D1"])
def test_trivial_basis_spans_exactly_the_fixed_vectors(name):
  group = groups.get_group(name)
  reps = [group.trivial_representation(), *group.irreps()]
  if group.is_finite:
    reps.append(group.regular_representation())
  field_type = FieldType(group, reps)
  basis = field_type.trivial_basis
  np.testing.assert_allclose(basis @ basis.T, np.eye(len(basis)), atol=1e-12)
  # One row per trivial irrep in the decomposition of each field.
  num_trivial = sum(
      sum(group.irrep_is_trivial(irrep) for irrep in rep.irreps) for rep in reps
  )
  assert len(basis) == num_trivial
  elements = (
      group.elements() if group.is_finite
      else [groups.GroupElement(t, f) for t in (0.3, 1.0, 2.5) for f in
            ((0, 1) if group.has_flips else (0,))]
  )
  for element in elements:
    rho = field_type.representation_matrix(element)
    np.testing.assert_allclose(basis @ rho.T, basis, atol=1e-10)
  # Each row lives inside one field.
  for row, field in zip(basis, field_type.trivial_fields, strict=True):
    outside = np.delete(row, np.arange(field_type.size)[field_type.field_slices[field]])
    assert np.all(outside == 0)


def test_trivial_basis_of_a_regular_field_is_the_normalized_ones():
  basis = FieldType.regular("C8", 1).trivial_basis
  np.testing.assert_allclose(np.abs(basis), np.full((1, 8), 1 / math.sqrt(8)))
  spectral = FieldType.irreps("SO2", 1).trivial_basis
  np.testing.assert_allclose(np.abs(spectral), np.eye(7)[:1], atol=1e-12)


def test_rot90_and_flip_match_numpy_on_scalar_images():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
  scalars = FieldType.trivial("D4", 3)
  # Counter-clockwise by 90 degrees in (x, y) with y up is np.rot90.
  rotated = scalars.transform(x, groups.GroupElement(math.pi / 2, 0))
  np.testing.assert_array_equal(rotated, np.rot90(x, k=1, axes=(1, 2)))
  # The mirror x -> -x is a horizontal image flip.
  flipped = scalars.transform(x, groups.GroupElement(0.0, 1))
  np.testing.assert_array_equal(flipped, x[:, :, ::-1])


@pytest.mark.parametrize("name", GRID_GROUPS)
def test_transform_is_a_group_action(name):
  group = groups.get_group(name)
  field_type = FieldType.regular(group, 1) + FieldType.irreps(group, 1)
  x = np.random.default_rng(1).standard_normal((1, 4, 4, field_type.size))
  for a in group.elements():
    for b in group.elements():
      composed = field_type.transform(x, group.compose(a, b))
      sequential = field_type.transform(field_type.transform(x, b), a)
      np.testing.assert_allclose(composed, sequential, atol=1e-12)


def test_transform_by_a_continuous_angle_is_an_interpolated_action():
  so2 = groups.get_group("SO2")
  field_type = FieldType.irreps(so2, 1)
  yy, xx = np.mgrid[-12:13, -12:13].astype(float)
  blob = np.exp(-((xx - 2) ** 2 + (yy + 1) ** 2) / 12.0)  # ~0 at the rim
  x = (blob[None, :, :, None] * np.arange(1, 8)).astype(np.float64)
  half = field_type.transform(x, groups.GroupElement(0.35, 0))
  twice = field_type.transform(half, groups.GroupElement(0.35, 0))
  direct = field_type.transform(x, groups.GroupElement(0.7, 0))
  assert np.max(np.abs(twice - direct)) < 2e-3 * np.max(np.abs(direct))


def test_restrict_keeps_channels_and_changes_the_group():
  d4 = groups.get_group("D4")
  field_type = FieldType.regular(d4, 2)
  restricted = field_type.restrict("D2")
  assert restricted.group == groups.get_group("D2")
  assert restricted.size == field_type.size
  for element in restricted.group.elements():
    np.testing.assert_array_equal(
        restricted.representation_matrix(element),
        field_type.representation_matrix(element),
    )
  # A restricted D4-regular field fixes two directions of C2... and of D2: 2.
  assert restricted.num_trivial == 2 * 2
  so2_trivial = FieldType.irreps("SO2", 1).restrict("trivial")
  assert so2_trivial.num_trivial == 7
  with pytest.raises(ValueError, match="not a subgroup"):
    FieldType.regular("C4", 1).restrict("C8")


def test_bad_field_types_raise_clear_errors():
  with pytest.raises(ValueError, match="no regular representation"):
    FieldType.regular("SO2", 1)
  c4, d4 = groups.get_group("C4"), groups.get_group("D4")
  with pytest.raises(ValueError, match="D4"):
    FieldType(c4, [d4.regular_representation()])
  with pytest.raises(ValueError, match="num_fields"):
    FieldType.trivial(c4, 0)
  with pytest.raises(ValueError, match="has 5 channels.*has 4"):
    FieldType.regular(c4, 1).transform(np.zeros((1, 3, 3, 5)), c4.identity)
  with pytest.raises(ValueError, match="different groups"):
    FieldType.regular(c4, 1) + FieldType.regular(d4, 1)
