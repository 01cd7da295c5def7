"""The trivial group, determinism, caching, band limits and bad inputs."""

import numpy as np
import pytest

from dpeq import kernels
from dpeq.groups import Representation, directsum, get_group
from dpeq.kernels import (
    EscnnCutoff,
    LinearCutoff,
    grid_points,
    kernel_basis,
    ring_harmonics,
)


def _span_projector(vectors):
  q, _ = np.linalg.qr(vectors.T)
  return q @ q.T


@pytest.mark.parametrize("kernel_size, cutoff", [
    (3, None), (5, None), (7, None), (3, LinearCutoff(2.0)), (5, EscnnCutoff(2.0)),
])
def test_trivial_group_spans_every_band_limited_kernel(kernel_size, cutoff):
  group = get_group("C1")
  in_rep = directsum(*[group.trivial_representation()] * 2)
  out_rep = directsum(*[group.trivial_representation()] * 3)
  k = kernel_size
  basis = kernel_basis(group=group, in_rep=in_rep, out_rep=out_rep, kernel_size=k,
                       cutoff=cutoff)
  harmonics = ring_harmonics(k, cutoff or LinearCutoff(3.0))
  assert basis.shape == (harmonics.size * 6, k, k, 2, 3)
  # An ordinary convolution restricted to the band limit: every kernel
  # Y_h(p) E_io and nothing else.
  values = harmonics.evaluate(grid_points(k))  # [k, k, H]
  reference = np.einsum("rch,ij,op->hiorcjp", values, np.eye(2), np.eye(3))
  reference = reference.reshape(harmonics.size * 6, -1)
  ours = basis.reshape(len(basis), -1).astype(np.float64)
  np.testing.assert_allclose(_span_projector(ours), _span_projector(reference),
                             atol=1e-5)


def test_default_band_limits():
  c4, so2 = get_group("C4"), get_group("SO2")
  assert kernels.default_cutoff(c4, 3) == LinearCutoff(3.0)
  assert kernels.default_cutoff(so2, 5) == EscnnCutoff(2.0)
  paper_3x3 = ring_harmonics(3, LinearCutoff(3.0))
  assert [(b.ring, b.frequency) for b in paper_3x3.blocks] == [
      (0, 0), (1, 0), (1, 1), (1, 2), (1, 3)]
  escnn_3x3 = ring_harmonics(3, EscnnCutoff(1.0))
  assert [(b.ring, b.frequency) for b in escnn_3x3.blocks] == [
      (0, 0), (1, 0), (1, 1), (1, 2)]
  trivial = so2.trivial_representation()
  assert len(kernel_basis(group=so2, in_rep=trivial, out_rep=trivial,
                          kernel_size=3)) == 2  # Radial profiles of both rings.


def test_deterministic_and_cached():
  group = get_group("D4")
  rep = group.regular_representation()
  first = kernel_basis(group=group, in_rep=rep, out_rep=rep, kernel_size=3)
  assert kernel_basis(group=group, in_rep=rep, out_rep=rep, kernel_size=3) is first
  assert not first.flags.writeable
  copy = np.array(first)
  kernels.clear_cache()
  rebuilt = kernel_basis(group=group, in_rep=group.regular_representation(),
                         out_rep=group.regular_representation(), kernel_size=3)
  assert rebuilt is not first
  np.testing.assert_array_equal(rebuilt, copy)


def test_empty_basis_has_the_right_shape():
  group = get_group("C4")
  basis = kernel_basis(group=group, in_rep=group.trivial_representation(),
                       out_rep=group.irrep("psi_2"), kernel_size=3,
                       cutoff=LinearCutoff(1.0))
  assert basis.shape == (0, 3, 3, 1, 1)


def test_bad_inputs_name_the_problem():
  c4, d4 = get_group("C4"), get_group("D4")
  reg = c4.regular_representation()
  for size in (0, 2, 4, 9, "3", 3.0):
    with pytest.raises(ValueError, match="kernel_size must be one of"):
      kernel_basis(group=c4, in_rep=reg, out_rep=reg, kernel_size=size)
  with pytest.raises(ValueError, match="in_rep 'regular' is a representation of D4"):
    kernel_basis(group=c4, in_rep=d4.regular_representation(), out_rep=reg,
                 kernel_size=3)
  with pytest.raises(ValueError, match="out_rep 'regular|C2'"):
    kernel_basis(group=c4, in_rep=reg, out_rep=reg.restrict("C2"), kernel_size=3)
  with pytest.raises(ValueError, match="group must be"):
    kernel_basis(group="C4", in_rep=reg, out_rep=reg, kernel_size=3)
  with pytest.raises(ValueError, match="must be a Representation"):
    kernel_basis(group=c4, in_rep=np.eye(4), out_rep=reg, kernel_size=3)
  with pytest.raises(ValueError, match="grid resolves only"):
    kernel_basis(group=c4, in_rep=reg, out_rep=reg, kernel_size=3,
                 cutoff=LinearCutoff(4.0))
  with pytest.raises(ValueError, match="predicate"):
    kernel_basis(group=c4, in_rep=reg, out_rep=reg, kernel_size=3, cutoff=3)
  with pytest.raises(ValueError, match="cannot resolve"):
    kernel_basis(group=c4, in_rep=reg, out_rep=reg, kernel_size=3,
                 cutoff=lambda radius, frequency: True)
  skewed = Representation(name="skewed", group=c4, irreps=["psi_0", "psi_0"],
                          change_of_basis=np.array([[1.0, 1.0], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="non-orthogonal"):
    kernel_basis(group=c4, in_rep=skewed, out_rep=reg, kernel_size=3)


def test_solved_basis_does_not_depend_on_the_null_space_basis_lapack_returns():
  from dpeq.kernels import basis as basis_lib  # The canonicalization step.

  rng = np.random.default_rng(3)
  group = get_group("C8")
  solutions = basis_lib._solve_block(group, "psi_1", "psi_2", 3)
  rows = solutions.reshape(len(solutions), -1)
  assert len(rows) == 2
  for _ in range(3):
    mixed = rng.normal(size=(2, 2)) @ rows  # Another basis of the same space.
    np.testing.assert_allclose(basis_lib._reduced_row_echelon(mixed), rows,
                               atol=1e-12)
