"""The kernel identity K(g p) = rho_out(g) K(p) rho_in(g)^-1 and orthonormality."""

import math

import numpy as np
import pytest

from dpeq.groups import GroupElement, directsum, get_group
from dpeq.kernels import grid_points, kernel_basis, steerable_basis


def _field(group):
  if group.is_finite:
    return group.regular_representation()
  return directsum(*group.irreps())


def _pairs(group):
  """(in, out) pairs: trivial/regular (or spectral) and a two-irrep sum."""
  field, trivial = _field(group), group.trivial_representation()
  irreps = group.irreps()
  mixed = directsum(irreps[-1], irreps[min(1, len(irreps) - 1)])
  return [(trivial, field), (field, field), (field, trivial), (mixed, field),
          (field, mixed)]


def _elements(group, rng):
  """Generators (equivariance under them implies it for all) and a sample."""
  if group.is_finite:
    elements = group.elements()
    sample = [elements[i] for i in rng.choice(len(elements), size=3)]
    return group.generators() + sample
  flips = (0, 1) if group.has_flips else (0,)
  return [GroupElement(t, f) for f in flips for t in rng.uniform(0, 2 * math.pi, 4)]


def _apply(basis_values, in_rep, out_rep, element):
  """rho_out K rho_in^-1 for values [B, P, in, out] (K as [out, in] is the .T)."""
  in_inverse = np.linalg.inv(in_rep.matrix(element))
  return in_inverse.T @ basis_values @ out_rep.matrix(element).T


@pytest.mark.parametrize("name, kernel_size", [
    ("C1", 3), ("C3", 5), ("C4", 3), ("C8", 3), ("C8", 5), ("C16", 3), ("D1", 3),
    ("D4", 5), ("D5", 3), ("D8", 3), ("D16", 3), ("SO2", 3), ("SO2", 5),
    ("O2", 3), ("O2", 7),
])
def test_kernel_identity_at_continuous_points(name, kernel_size):
  group = get_group(name)
  rng = np.random.default_rng(0)
  points = rng.normal(scale=kernel_size / 3, size=(7, 2))
  for in_rep, out_rep in _pairs(group):
    basis = steerable_basis(group=group, in_rep=in_rep, out_rep=out_rep,
                            kernel_size=kernel_size)
    values = basis.evaluate(points)
    assert values.shape == (basis.num_basis, 7, in_rep.size, out_rep.size)
    assert np.abs(values).max() > 1e-3
    for element in _elements(group, rng):
      moved = basis.evaluate(element.act(points))
      error = np.abs(moved - _apply(values, in_rep, out_rep, element)).max()
      assert error <= 1e-10, (in_rep.name, out_rep.name, element, error)


@pytest.mark.parametrize("name, kernel_size", [
    ("C2", 3), ("C4", 5), ("C8", 3), ("D2", 3), ("D4", 3), ("D4", 7), ("D8", 5),
    ("SO2", 5), ("O2", 3),
])
def test_kernel_identity_on_the_grid(name, kernel_size):
  group = get_group(name)
  k = kernel_size
  coords = grid_points(k).reshape(-1, 2)
  for in_rep, out_rep in _pairs(group):
    basis = steerable_basis(group=group, in_rep=in_rep, out_rep=out_rep,
                            kernel_size=k)
    sampled = kernel_basis(group=group, in_rep=in_rep, out_rep=out_rep, kernel_size=k)
    assert sampled.dtype == np.float32
    np.testing.assert_allclose(sampled, basis.grid, atol=1e-6)
    np.testing.assert_allclose(basis.evaluate(grid_points(k)), basis.grid, atol=1e-12)
    flat = basis.grid.reshape(basis.num_basis, k * k, in_rep.size, out_rep.size)
    for element in group.grid_preserving_elements():
      moved = element.act(coords)  # Grid index of g p for every grid point p.
      cols = np.round(moved[:, 0] + (k - 1) / 2).astype(int)
      rows = np.round((k - 1) / 2 - moved[:, 1]).astype(int)
      expected = _apply(flat, in_rep, out_rep, element)
      assert np.abs(flat[:, rows * k + cols] - expected).max() <= 1e-12
      flat32 = sampled.reshape(flat.shape).astype(np.float64)
      expected32 = _apply(flat32, in_rep, out_rep, element)
      assert np.abs(flat32[:, rows * k + cols] - expected32).max() <= 1e-6


@pytest.mark.parametrize("name", ["C4", "D8", "SO2", "O2"])
def test_orthonormal_on_the_grid(name):
  group = get_group(name)
  for in_rep, out_rep in _pairs(group):
    for k in (3, 5):
      sampled = kernel_basis(group=group, in_rep=in_rep, out_rep=out_rep,
                             kernel_size=k)
      flat = sampled.reshape(len(sampled), -1).astype(np.float64)
      np.testing.assert_allclose(flat @ flat.T, np.eye(len(flat)), atol=1e-5)


def test_restricted_field_basis_is_equivariant_for_the_subgroup():
  group = get_group("D8")
  restricted = group.regular_representation().restrict("D4")
  sub = restricted.group
  out_rep = sub.regular_representation()
  basis = steerable_basis(group=sub, in_rep=restricted, out_rep=out_rep,
                          kernel_size=3)
  points = np.random.default_rng(2).normal(size=(7, 2))
  values = basis.evaluate(points)
  for element in sub.elements():
    np.testing.assert_allclose(basis.evaluate(element.act(points)),
                               _apply(values, restricted, out_rep, element), atol=1e-10)
  # The 45 degree rotation is not in D4: D4 admits more invariant kernels.
  trivial, sub_trivial = group.trivial_representation(), sub.trivial_representation()
  assert len(kernel_basis(group=group, in_rep=trivial, out_rep=trivial,
                          kernel_size=5)) < len(
      kernel_basis(group=sub, in_rep=sub_trivial, out_rep=sub_trivial, kernel_size=5))
