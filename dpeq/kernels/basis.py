"""Steerable kernel bases: K(g p) = rho_out(g) K(p) rho_in(g)^-1.

Construction (numpy, float64, once per (group, reps, size, cutoff)):

1. Write K(p) = sum_h C[:, :, h] Y_h(p) in the ring harmonics Y_h of
   `dpeq.kernels.harmonics`, on which every g acts exactly: Y(g p) = T(g) Y(p).
   K is equivariant iff C T(g) = rho_out(g) C rho_in(g)^-1 (per harmonic) for
   the generators g of the group. This holds in harmonic space, so it is
   exact for every group, also for C8, C16 and SO(2), whose rotations do not
   map the pixel grid to itself.
2. With rho = Q blockdiag(psi) Q^-1, the constraint splits into tiny
   independent problems, one per (output irrep, input irrep, harmonic
   frequency j); each is solved by a deterministic SVD (LAPACK, no
   randomization) and cached. SO(2) and O(2) use the rotation by 2 pi / M with
   M larger than twice every frequency involved, which forces equivariance
   under all rotations (a trigonometric polynomial of degree < M/2 that
   vanishes on M equally spaced angles vanishes everywhere).
3. The number of solutions is checked against the analytic count
   dim Hom_G(rho_in (x) T, rho_out) = mean_g chi_in(g) chi_T(g) chi_out(g)
   (Frobenius reciprocity; for SO(2)/O(2) the mean over a fine enough C_M/D_M
   is exact for band-limited characters).
4. The solutions are sampled on the k x k grid and orthonormalized there
   with the symmetric (Loewdin) map B -> (B B^T)^-1/2 B: the unique
   orthonormal basis closest to the solved one, independent of how the
   SVDs chose their null-space bases up to an orthogonal mixing. Orthonormal
   matters for DP: the coefficients are the parameters, DP-SGD adds isotropic
   noise to them, so an orthonormal basis makes that noise isotropic in
   kernel space too (and weight standardization on coefficients sees the
   Frobenius geometry of kernels). The same linear map is applied to the
   harmonic coefficients, so `SteerableBasis.evaluate` gives the returned
   elements as exact continuous functions.
"""

import functools
import math

import numpy as np

from dpeq.groups import Group, GroupElement, Representation
from dpeq.kernels import harmonics as harmonics_lib

_NULL_TOL = 1e-8
_TWO_PI = 2.0 * math.pi


class SteerableBasis:
  """A solved basis in float64, for one (group, in_rep, out_rep, size, cutoff).

  Attributes:
    group, in_rep, out_rep, kernel_size, cutoff: what it was built for.
    harmonics: the `RingHarmonics` the elements are written in.
    coefficients: float64 [num_basis, out, in, H]: element b is
      K_b(p) = sum_h coefficients[b, :, :, h] Y_h(p) ([out, in] at p).
    grid: float64 [num_basis, k, k, in, out] (HWIO per element), the elements
      sampled on the pixel grid; orthonormal in the Frobenius inner product.
    expected_size: the analytic count (equals num_basis).
  """

  def __init__(self, *, group, in_rep, out_rep, kernel_size, cutoff, harmonics,
               coefficients, grid, expected_size):
    self.group = group
    self.in_rep = in_rep
    self.out_rep = out_rep
    self.kernel_size = kernel_size
    self.cutoff = cutoff
    self.harmonics = harmonics
    self.coefficients = coefficients
    self.grid = grid
    self.expected_size = expected_size
    for array in (coefficients, grid):
      array.setflags(write=False)

  @property
  def num_basis(self) -> int:
    return self.coefficients.shape[0]

  def __repr__(self) -> str:
    return (
        f"SteerableBasis({self.group.name}: {self.in_rep.name} -> "
        f"{self.out_rep.name}, {self.kernel_size}x{self.kernel_size}, "
        f"{self.num_basis} elements)"
    )

  def evaluate(self, points: np.ndarray) -> np.ndarray:
    """The elements at arbitrary plane points [..., 2] (x, y).

    Returns:
      float64 [num_basis, ..., in, out]; on `grid_points(k)` this equals
      `grid`.
    """
    values = self.harmonics.evaluate(points)
    return np.einsum("boih,...h->b...io", self.coefficients, values)


def _check_inputs(group, in_rep, out_rep, kernel_size) -> None:
  if not isinstance(group, Group):
    raise ValueError(
        f"group must be a dpeq.groups.Group (get_group(name)), got {group!r}."
    )
  for label, rep in (("in_rep", in_rep), ("out_rep", out_rep)):
    if not isinstance(rep, Representation):
      raise ValueError(f"{label} must be a Representation, got {rep!r}.")
    if rep.group != group:
      raise ValueError(
          f"{label} {rep.name!r} is a representation of {rep.group.name}, not of "
          f"{group.name}: build it from the same group (restrict it first if it "
          "belongs to a larger group)."
      )
  harmonics_lib.check_kernel_size(kernel_size)


def _constraint_elements(group: Group, max_total_frequency: int):
  """Elements whose equivariance implies equivariance under all of `group`."""
  if group.is_finite:
    return group.generators()
  steps = 2 * max_total_frequency + 1
  elements = [GroupElement(_TWO_PI / steps, 0)]
  if group.has_flips:
    elements.append(GroupElement(0.0, 1))
  return elements


def _quadrature_elements(group: Group, max_total_frequency: int):
  """Elements whose uniform mean integrates band-limited class functions."""
  if group.is_finite:
    return group.elements()
  steps = 2 * max_total_frequency + 1
  flips = (0, 1) if group.has_flips else (0,)
  return [GroupElement(_TWO_PI * k / steps, f) for f in flips for k in range(steps)]


def _max_frequency(group: Group, rep: Representation) -> int:
  return max(group.irrep_spec(name).frequency for name in rep.irreps)


def expected_basis_size(
    *, group: Group, in_rep: Representation, out_rep: Representation,
    harmonics: harmonics_lib.RingHarmonics,
) -> int:
  """dim Hom_G(rho_in (x) T, rho_out) = mean_g chi_in chi_T chi_out (exact)."""
  top = max(b.frequency for b in harmonics.blocks)
  total = _max_frequency(group, in_rep) + _max_frequency(group, out_rep) + top
  elements = _quadrature_elements(group, total)
  mean = np.mean([
      in_rep.character(g) * out_rep.character(g) * harmonics.character(g)
      for g in elements
  ])
  count = int(round(mean))
  if abs(mean - count) > 1e-6:
    raise AssertionError(f"non-integer character mean {mean}")
  return count


@functools.lru_cache(maxsize=None)
def _solve_block(group: Group, out_irrep: str, in_irrep: str, frequency: int):
  """Equivariant C [n, d_out, d_in, d_j] between two irreps for frequency j."""
  d_out = group.irrep_size(out_irrep)
  d_in = group.irrep_size(in_irrep)
  block = harmonics_lib.HarmonicBlock(0, 1.0, 1.0, frequency, 0)
  d_j = block.size
  dim = d_out * d_in * d_j
  total = (
      group.irrep_spec(out_irrep).frequency
      + group.irrep_spec(in_irrep).frequency
      + frequency
  )
  rows = []
  for g in _constraint_elements(group, total):
    psi_out = group.irrep_matrix(out_irrep, g)
    psi_in_inv_t = np.linalg.inv(group.irrep_matrix(in_irrep, g)).T
    rows.append(
        np.kron(np.eye(d_out * d_in), block.action(g).T)
        - np.kron(np.kron(psi_out, psi_in_inv_t), np.eye(d_j))
    )
  if not rows:  # The trivial group: every C is equivariant.
    solutions = np.eye(dim)
  else:
    _, singular, vt = np.linalg.svd(np.concatenate(rows), full_matrices=True)
    rank = int(np.sum(singular > _NULL_TOL))
    solutions = vt[rank:]
  expected = int(round(np.mean([
      np.trace(group.irrep_matrix(out_irrep, g))
      * np.trace(group.irrep_matrix(in_irrep, g))
      * np.trace(block.action(g))
      for g in _quadrature_elements(group, total)
  ])))
  if solutions.shape[0] != expected:
    raise AssertionError(
        f"{group.name}: {in_irrep} -> {out_irrep} at frequency {frequency} has "
        f"{solutions.shape[0]} solutions, expected {expected}"
    )
  # A deterministic sign: the largest entry of each solution is positive.
  signs = np.sign(solutions[np.arange(len(solutions)),
                            np.argmax(np.abs(solutions), axis=1)])
  solutions = solutions * signs[:, None]
  solutions = solutions.reshape(-1, d_out, d_in, d_j)
  solutions.setflags(write=False)
  return solutions


def _irrep_slices(group: Group, rep: Representation):
  out, start = [], 0
  for name in rep.irreps:
    size = group.irrep_size(name)
    out.append((name, slice(start, start + size)))
    start += size
  return out


@functools.lru_cache(maxsize=512)
def _build(group, in_rep, out_rep, kernel_size, cutoff) -> SteerableBasis:
  harmonics = harmonics_lib.ring_harmonics(kernel_size, cutoff)
  expected = expected_basis_size(
      group=group, in_rep=in_rep, out_rep=out_rep, harmonics=harmonics
  )
  irrep_coefficients = []
  in_slices = _irrep_slices(group, in_rep)
  for out_name, out_sl in _irrep_slices(group, out_rep):
    for in_name, in_sl in in_slices:
      for block in harmonics.blocks:
        solutions = _solve_block(group, out_name, in_name, block.frequency)
        h_sl = slice(block.offset, block.offset + block.size)
        for solution in solutions:
          coeff = np.zeros((out_rep.size, in_rep.size, harmonics.size))
          coeff[out_sl, in_sl, h_sl] = solution
          irrep_coefficients.append(coeff)
  k = kernel_size
  if len(irrep_coefficients) != expected:
    raise AssertionError(
        f"{group.name}: {in_rep.name} -> {out_rep.name} has "
        f"{len(irrep_coefficients)} basis elements, expected {expected}"
    )
  if not irrep_coefficients:
    empty = np.zeros((0, out_rep.size, in_rep.size, harmonics.size))
    return SteerableBasis(
        group=group, in_rep=in_rep, out_rep=out_rep, kernel_size=k,
        cutoff=cutoff, harmonics=harmonics, coefficients=empty,
        grid=np.zeros((0, k, k, in_rep.size, out_rep.size)),
        expected_size=expected,
    )
  # Back from the irreps bases: K = Q_out K~ Q_in^-1.
  coefficients = np.einsum(
      "po,boih,iq->bpqh",
      out_rep.change_of_basis,
      np.stack(irrep_coefficients),
      in_rep.change_of_basis_inv,
      optimize=True,
  )
  grid_values = harmonics.evaluate(harmonics_lib.grid_points(k))  # [k, k, H]
  grid = np.einsum("boih,rch->brcio", coefficients, grid_values, optimize=True)
  flat = grid.reshape(grid.shape[0], -1)
  eigvals, eigvecs = np.linalg.eigh(flat @ flat.T)
  if eigvals[0] <= 1e-10 * eigvals[-1]:
    raise AssertionError("sampled basis is rank deficient on the grid")
  lowdin = (eigvecs / np.sqrt(eigvals)) @ eigvecs.T
  coefficients = np.tensordot(lowdin, coefficients, axes=1)
  grid = (lowdin @ flat).reshape(grid.shape)
  return SteerableBasis(
      group=group, in_rep=in_rep, out_rep=out_rep, kernel_size=k,
      cutoff=cutoff, harmonics=harmonics, coefficients=coefficients,
      grid=grid, expected_size=expected,
  )


def steerable_basis(
    *,
    group: Group,
    in_rep: Representation,
    out_rep: Representation,
    kernel_size: int,
    cutoff: harmonics_lib.Cutoff | None = None,
) -> SteerableBasis:
  """The float64 `SteerableBasis` behind `kernel_basis` (cached).

  Args: as `kernel_basis`.
  """
  _check_inputs(group, in_rep, out_rep, kernel_size)
  if cutoff is None:
    cutoff = harmonics_lib.default_cutoff(group, kernel_size)
  return _build(group, in_rep, out_rep, kernel_size, cutoff)


@functools.lru_cache(maxsize=512)
def _float32_grid(group, in_rep, out_rep, kernel_size, cutoff) -> np.ndarray:
  grid = _build(group, in_rep, out_rep, kernel_size, cutoff).grid
  out = grid.astype(np.float32)
  out.setflags(write=False)
  return out


def kernel_basis(
    *,
    group: Group,
    in_rep: Representation,
    out_rep: Representation,
    kernel_size: int,
    cutoff: harmonics_lib.Cutoff | None = None,
) -> np.ndarray:
  """The basis of equivariant kernels sampled on the k x k grid.

  Every K = sum_b w_b basis[b] (any real w) satisfies
  K(g p) = rho_out(g) K(p) rho_in(g)^-1 for all g in `group` as a continuous
  function (so exactly on the grid for grid-preserving g), and every such
  kernel in the band-limited ring-harmonic space is one of them. The elements
  are orthonormal on the grid (sum over k, k, in, out of b_i * b_j = delta).

  Args:
    group: a `Group` from `get_group`.
    in_rep: representation of `group` on the input channels of one field.
    out_rep: representation of `group` on the output channels of one field.
    kernel_size: 3, 5 or 7.
    cutoff: band limit, a predicate (ring radius, frequency) -> bool; None
      for the default (`LinearCutoff(3)`, j <= 3 r, for C_N/D_N; escnn's
      default `EscnnCutoff` for SO2/O2). Caching is by value for these
      dataclasses and by identity for other callables.

  Returns:
    float32 [num_basis, k, k, in_rep.size, out_rep.size] (HWIO per element),
    read-only and cached; num_basis may be 0.

  Raises:
    ValueError: if a rep is not of `group`, the kernel size is unsupported,
      or the cutoff keeps frequencies the grid cannot resolve.
  """
  _check_inputs(group, in_rep, out_rep, kernel_size)
  if cutoff is None:
    cutoff = harmonics_lib.default_cutoff(group, kernel_size)
  return _float32_grid(group, in_rep, out_rep, kernel_size, cutoff)
