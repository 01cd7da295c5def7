"""Irreps, regular representations, direct sums and restriction."""

import math

import numpy as np
import pytest
import scipy.linalg

from dpeq.groups import GroupElement, Representation, directsum, get_group

FINITE = ["C1", "C2", "C3", "C4", "C5", "C6", "C8", "C16", "D1", "D2", "D3", "D4",
          "D5", "D6", "D8", "D16"]


def _quadrature(group, steps=41):
  """All elements, or (for SO2/O2) a uniform grid exact for band-limited maps."""
  if group.is_finite:
    return group.elements()
  flips = (0, 1) if group.has_flips else (0,)
  return [GroupElement(2 * math.pi * k / steps, f) for f in flips for k in range(steps)]


def _sample(group, rng, count=5):
  if group.is_finite:
    elements = group.elements()
    return [elements[i] for i in rng.integers(len(elements), size=count)]
  flips = rng.integers(2, size=count) if group.has_flips else np.zeros(count, int)
  return [group.element(t, int(f)) for t, f in zip(rng.uniform(0, 7, count), flips,
                                                  strict=True)]


def _reps(group):
  reps = list(group.irreps()) + [group.trivial_representation()]
  if group.is_finite:
    reps.append(group.regular_representation())
  else:
    reps.append(directsum(*group.irreps()))
  return reps


@pytest.mark.parametrize("name", FINITE + ["SO2", "O2"])
def test_homomorphism(name):
  group = get_group(name)
  rng = np.random.default_rng(1)
  for rep in _reps(group):
    np.testing.assert_allclose(rep.matrix(group.identity), np.eye(rep.size), atol=1e-12)
    for a, b in zip(_sample(group, rng), _sample(group, rng), strict=True):
      np.testing.assert_allclose(
          rep.matrix(group.compose(a, b)), rep.matrix(a) @ rep.matrix(b), atol=1e-12
      )
      np.testing.assert_allclose(rep.matrix(a).T @ rep.matrix(a), np.eye(rep.size),
                                 atol=1e-12)  # Orthogonal.
      np.testing.assert_allclose(
          rep.matrix(a),
          rep.change_of_basis @ rep.irreps_matrix(a) @ rep.change_of_basis_inv,
          atol=1e-12,
      )


@pytest.mark.parametrize("name", FINITE + ["SO2", "O2"])
def test_irreps_are_irreducible_and_distinct(name):
  group = get_group(name)
  elements = _quadrature(group)
  irreps = group.irreps()
  for psi in irreps:
    # The commutant {X : psi(g) X = X psi(g)} is R (real type) or C (size-2
    # irreps of rotation groups, complex type): never more.
    d = psi.size
    system = np.concatenate([
        np.kron(psi.matrix(g), np.eye(d)) - np.kron(np.eye(d), psi.matrix(g).T)
        for g in elements
    ])
    commutant = d * d - np.linalg.matrix_rank(system, tol=1e-9)
    complex_type = d == 2 and not group.has_flips
    assert commutant == (2 if complex_type else 1), psi.name
  chars = np.array([[psi.character(g) for g in elements] for psi in irreps])
  inner = chars @ chars.T / len(elements)
  np.testing.assert_allclose(inner, np.diag(np.diag(inner)), atol=1e-9)
  if group.is_finite:  # Every irrep appears: sum of d^2 / dim(commutant) = |G|.
    total = sum(p.size**2 / (2 if p.size == 2 and not group.has_flips else 1)
                for p in irreps)
    assert total == group.order
  else:
    assert len(irreps) == group.max_frequency + 1 + int(group.has_flips)


@pytest.mark.parametrize("name", FINITE)
def test_regular_representation(name):
  group = get_group(name)
  regular = group.regular_representation()
  elements = group.elements()
  assert regular.size == group.order and regular.is_permutation
  q = regular.change_of_basis
  np.testing.assert_allclose(q.T @ q, np.eye(group.order), atol=1e-12)
  for g in elements:
    mat = regular.matrix(g)
    for h, x in enumerate(elements):  # rho(g) e_h = e_{g h}.
      expected = np.zeros(group.order)
      expected[group.index(group.compose(g, x))] = 1.0
      np.testing.assert_array_equal(mat[:, h], expected)
    trace = group.order if g == group.identity else 0.0
    assert regular.character(g) == pytest.approx(trace, abs=1e-9)


def test_trivial_and_directsum():
  group = get_group("D4")
  trivial = group.trivial_representation()
  assert trivial.is_trivial and trivial.size == 1
  assert not group.regular_representation().is_trivial
  assert directsum(trivial, trivial).is_trivial
  parts = [group.regular_representation(), group.irrep("psi_1,1"), trivial]
  total = directsum(*parts)
  assert total.size == 11 and total.irreps == sum((p.irreps for p in parts), ())
  for g in group.elements():
    np.testing.assert_allclose(
        total.matrix(g), scipy.linalg.block_diag(*(p.matrix(g) for p in parts)),
        atol=1e-12,
    )
  assert total == directsum(*parts) and hash(total) == hash(directsum(*parts))
  assert get_group("SO2").irreps()[0].is_trivial
  assert get_group("D4").regular_representation().is_permutation
  assert not directsum(*get_group("C4").irreps()).is_permutation


RESTRICTIONS = [
    ("C8", "C4"), ("C8", "C2"), ("C16", "C8"), ("C6", "C3"), ("D8", "D4"),
    ("D8", "C8"), ("D8", "C4"), ("D4", "D2"), ("D2", "D1"), ("D4", "D1"),
    ("D6", "D3"), ("D16", "D8"), ("C4", "trivial"), ("D4", "trivial"),
    ("SO2", "C4"), ("SO2", "C8"), ("SO2", "C3"), ("SO2", "trivial"),
    ("O2", "D4"), ("O2", "C8"), ("O2", "SO2"), ("O2", "D3"), ("O2", "C1"),
]


@pytest.mark.parametrize("name, sub_name", RESTRICTIONS)
def test_restriction_keeps_the_maps(name, sub_name):
  group = get_group(name)
  for rep in _reps(group):
    restricted = rep.restrict(sub_name)
    sub = restricted.group
    assert sub == group.subgroup(sub_name) and restricted.size == rep.size
    for h in _quadrature(sub, steps=13):
      np.testing.assert_allclose(restricted.matrix(h), rep.matrix(h), atol=1e-12)
      np.testing.assert_allclose(
          restricted.change_of_basis @ restricted.irreps_matrix(h)
          @ restricted.change_of_basis_inv,
          rep.matrix(h), atol=1e-12,
      )


@pytest.mark.parametrize("name, sub_name", [("D8", "D4"), ("C8", "C4"), ("D4", "C4"),
                                            ("D4", "D2"), ("C16", "C8"), ("C8", "C2")])
def test_restricted_regular_is_copies_of_the_subgroup_regular(name, sub_name):
  group = get_group(name)
  sub = group.subgroup(sub_name)
  regular, sub_regular = group.regular_representation(), sub.regular_representation()
  perm = group.regular_restriction_permutation(sub_name)
  copies = group.order // sub.order
  assert sorted(perm) == list(range(group.order))
  for h in sub.elements():
    np.testing.assert_array_equal(
        regular.matrix(h)[perm][:, perm],
        scipy.linalg.block_diag(*[sub_regular.matrix(h)] * copies),
    )
  restricted = regular.restrict(sub_name)
  assert sorted(restricted.irreps) == sorted(sub_regular.irreps * copies)


def test_bad_subgroups_and_elements():
  d4 = get_group("D4")
  for bad in ["C3", "D8", "SO2", "O2", "C8"]:
    with pytest.raises(ValueError, match=f"{bad} is not a subgroup of D4"):
      d4.subgroup(bad)
  with pytest.raises(ValueError, match="not a subgroup of C4"):
    get_group("C4").subgroup("D2")
  with pytest.raises(ValueError, match="not a subgroup of SO2"):
    get_group("SO2").subgroup("D4")
  with pytest.raises(ValueError, match="Unknown subgroup"):
    d4.subgroup("foo")
  with pytest.raises(ValueError, match="not a subgroup of D4"):
    d4.regular_representation().restrict("C3")
  with pytest.raises(ValueError, match="no regular representation"):
    get_group("SO2").regular_representation()
  with pytest.raises(ValueError, match="no irrep"):
    d4.irrep("psi_3")
  with pytest.raises(ValueError, match="not an element of C2"):
    get_group("C4").regular_representation().restrict("C2").matrix(
        GroupElement(math.pi / 2)
    )
  with pytest.raises(ValueError, match="different groups"):
    directsum(d4.trivial_representation(), get_group("C4").trivial_representation())
  with pytest.raises(ValueError, match="total size"):
    Representation(name="x", group=d4, irreps=["psi_1,1"], change_of_basis=np.eye(3))
