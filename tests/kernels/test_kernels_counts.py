"""Basis dimensions against counts computed independently of the solver.

Closed forms (Frobenius reciprocity): with H the number of ring harmonics,
trivial -> regular and regular -> trivial have H elements, regular -> regular
|G| H, a G-regular field restricted to an index-2 subgroup S -> S-regular
|G| H. SO(2) irreps (m, n): the ring rule. Other pairs: the rank of the
group-averaging (Reynolds) projector on the harmonic coefficients.
"""

import math

import numpy as np
import pytest

from dpeq.groups import GroupElement, directsum, get_group
from dpeq.kernels import EscnnCutoff, LinearCutoff, kernel_basis, ring_harmonics

ALL_N = list(range(1, 17))


def _h(kernel_size, cutoff):
  return ring_harmonics(kernel_size, cutoff).size


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("family", ["C", "D"])
def test_regular_fields_closed_forms(family, kernel_size):
  num_harmonics = _h(kernel_size, LinearCutoff(3.0))
  assert num_harmonics == {3: 8, 5: 21}[kernel_size]
  for n in ALL_N:
    group = get_group(f"{family}{n}")
    regular, trivial = group.regular_representation(), group.trivial_representation()
    k = kernel_size
    assert kernel_basis(group=group, in_rep=trivial, out_rep=regular,
                        kernel_size=k).shape == (num_harmonics, k, k, 1, group.order)
    assert kernel_basis(group=group, in_rep=regular, out_rep=trivial,
                        kernel_size=k).shape[0] == num_harmonics
    # Invariant kernels: harmonics with n | j; a rotation fixes both of the
    # cos/sin pair, the mirror one of them.
    invariant = sum(
        (b.size if family == "C" else 1)
        for b in ring_harmonics(k, LinearCutoff(3.0)).blocks if b.frequency % n == 0
    )
    assert kernel_basis(group=group, in_rep=trivial, out_rep=trivial,
                        kernel_size=k).shape[0] == invariant
    if kernel_size == 3 or n <= 8:
      basis = kernel_basis(group=group, in_rep=regular, out_rep=regular, kernel_size=k)
      assert basis.shape == (group.order * num_harmonics, k, k, group.order,
                             group.order)


@pytest.mark.parametrize("name, sub_name", [("C4", "C2"), ("C8", "C4"), ("C16", "C8"),
                                            ("D4", "D2"), ("D8", "D4"), ("D4", "C4"),
                                            ("D16", "D8"), ("D2", "D1")])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_restricted_regular_to_subgroup_regular(name, sub_name, kernel_size):
  group = get_group(name)
  restricted = group.regular_representation().restrict(sub_name)
  sub = restricted.group
  num = kernel_basis(group=sub, in_rep=restricted, out_rep=sub.regular_representation(),
                     kernel_size=kernel_size).shape[0]
  assert num == group.order * _h(kernel_size, LinearCutoff(3.0))


@pytest.mark.parametrize("name", ["C4", "C8", "D4", "D8", "SO2", "O2"])
def test_pointwise_kernels_are_the_intertwiners(name):
  """1x1 kernels: only the centre (j = 0), so the basis spans the commutant
  Hom_G(rho_in, rho_out), whose dimension is the character inner product
  (|G| for regular -> regular; per irrep: 1 for real-type, 2 for SO(2)'s
  psi_k, k > 0)."""
  group = get_group(name)
  if group.is_finite:
    rep = group.regular_representation()
    expected = group.order
  else:
    rep = directsum(*group.irreps())
    expected = sum(1 if (i == 0 or name == "O2") else 2
                   for i in range(len(group.irreps())))
  basis = kernel_basis(group=group, in_rep=rep, out_rep=rep, kernel_size=1)
  assert basis.shape == (expected, 1, 1, rep.size, rep.size)
  # basis[b, 0, 0] is W [in, out] with K = W^T: rho_out K = K rho_in.
  weights = basis[:, 0, 0].astype(np.float64)
  elements = (group.elements() if group.is_finite else
              [group.element(0.7, f) for f in range(1 + group.has_flips)])
  for element in elements:
    m = rep.matrix(element)
    np.testing.assert_allclose(np.einsum("ij,bjk->bik", m.T, weights),
                               np.einsum("bij,jk->bik", weights, m.T), atol=1e-6)


def _so2_ring_rule(m, n, max_frequencies):
  total = 0
  for j_max in max_frequencies:
    if m == 0 and n == 0:
      total += 1
    elif m == 0 or n == 0:
      total += 2 * (max(m, n) <= j_max)
    else:
      total += 2 * (abs(m - n) <= j_max) + 2 * (m + n <= j_max)
  return total


@pytest.mark.parametrize("kernel_size, ring_limits", [(3, [0, 2]), (5, [0, 2, 2])])
def test_so2_ring_rule(kernel_size, ring_limits):
  group = get_group("SO2", max_frequency=3)
  cutoff = EscnnCutoff(float(kernel_size // 2))
  assert [max(b.frequency for b in ring_harmonics(kernel_size, cutoff).blocks
              if b.ring == r) for r in range(len(ring_limits))] == ring_limits
  irreps = group.irreps()
  for m, psi_out in enumerate(irreps):
    for n, psi_in in enumerate(irreps):
      basis = kernel_basis(group=group, in_rep=psi_in, out_rep=psi_out,
                           kernel_size=kernel_size)
      assert basis.shape[0] == _so2_ring_rule(m, n, ring_limits), (m, n)
  spectral = directsum(*irreps)
  assert kernel_basis(group=group, in_rep=spectral, out_rep=spectral,
                      kernel_size=kernel_size).shape[0] == sum(
                          _so2_ring_rule(m, n, ring_limits)
                          for m in range(4) for n in range(4))


def _reynolds_rank(group, in_rep, out_rep, kernel_size, cutoff):
  """Rank of mean_g [C -> rho_out(g)^-1 (C T(g)) rho_in(g)] on C in R^{o x i x H}."""
  harmonics = ring_harmonics(kernel_size, cutoff)
  if group.is_finite:
    elements = group.elements()
  else:  # Exact for the band-limited maps involved (frequencies < 30).
    flips = (0, 1) if group.has_flips else (0,)
    elements = [GroupElement(2 * math.pi * k / 61, f) for f in flips for k in range(61)]
  projector = np.mean([
      np.kron(np.kron(np.linalg.inv(out_rep.matrix(g)), in_rep.matrix(g).T),
              harmonics.action(g).T)
      for g in elements
  ], axis=0)
  np.testing.assert_allclose(projector @ projector, projector, atol=1e-10)
  return np.linalg.matrix_rank(projector, tol=1e-8)


@pytest.mark.parametrize("name, kernel_size", [
    ("C2", 3), ("C3", 5), ("C4", 5), ("C5", 3), ("C6", 5), ("C8", 5), ("C16", 3),
    ("D1", 5), ("D2", 3), ("D3", 5), ("D4", 5), ("D6", 3), ("D8", 5), ("D16", 3),
    ("SO2", 5), ("O2", 3), ("O2", 5),
])
def test_irrep_pairs_match_the_reynolds_rank(name, kernel_size):
  group = get_group(name, max_frequency=3)
  cutoff = LinearCutoff(3.0) if group.is_finite else EscnnCutoff(kernel_size // 2)
  irreps = group.irreps()
  for psi_out in irreps:
    for psi_in in irreps:
      num = kernel_basis(group=group, in_rep=psi_in, out_rep=psi_out,
                         kernel_size=kernel_size).shape[0]
      assert num == _reynolds_rank(group, psi_in, psi_out, kernel_size, cutoff), (
          psi_in.name, psi_out.name)
