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
   randomization), its null space brought to reduced row echelon form (a
   canonical basis of the space, independent of LAPACK's choice) and cached.
   SO(2) and O(2) use the rotation by 2 pi / M with M larger than twice every
   frequency involved, which forces equivariance under all rotations (a
   trigonometric polynomial of degree < M/2 that vanishes on M equally spaced
   angles vanishes everywhere).
3. The number of solutions is checked against the analytic count
   dim Hom_G(rho_in (x) T, rho_out) = mean_g chi_in(g) chi_T(g) chi_out(g)
   (Frobenius reciprocity; for SO(2)/O(2) the mean over a fine enough C_M/D_M
   is exact for band-limited characters).
4. The solutions are orthonormalized on the k x k grid with the symmetric
   (Loewdin) map B -> (B B^T)^-1/2 B: the unique orthonormal basis closest
   to the solved one. This is done once per irrep pair: kernel bases need
   orthogonal Q (every representation dpeq builds has one), so elements of
   different irrep pairs are orthogonal and Q_out K Q_in^-1 is an isometry.
   Orthonormal matters for DP: the coefficients are the parameters, DP-SGD
   adds isotropic noise to them, so an orthonormal basis makes that noise
   isotropic in kernel space too (and weight standardization on
   coefficients sees the Frobenius geometry of kernels). The same linear map
   is applied to the harmonic coefficients, so `SteerableBasis.evaluate`
   gives the returned elements as exact continuous functions.
5. Cast to float32 and cached: `kernel_basis` returns the same read-only
   array for the same (group, reps, kernel size, cutoff); the rings follow
   from the kernel size. Steps 2 and 4 are canonical (echelon form, matrix
   square root), so the basis is the same, up to rounding, on every machine.
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

  Element b is K_b(p) = Q_out [sum_h C_b[:, :, h] Y_h(p)] Q_in^-1 with C_b
  supported on one (output irrep, input irrep) block of the irreps bases.

  Attributes:
    group, in_rep, out_rep, kernel_size, cutoff: what it was built for.
    harmonics: the `RingHarmonics` the elements are written in.
    grid: float64 [num_basis, k, k, in, out] (HWIO per element), the elements
      sampled on the pixel grid; orthonormal in the Frobenius inner product.
    expected_size: the analytic count (equals num_basis).
  """

  def __init__(self, *, group, in_rep, out_rep, kernel_size, cutoff, harmonics,
               blocks, expected_size):
    self.group = group
    self.in_rep = in_rep
    self.out_rep = out_rep
    self.kernel_size = kernel_size
    self.cutoff = cutoff
    self.harmonics = harmonics
    self.expected_size = expected_size
    self._blocks = tuple(blocks)  # (out slice, in slice, C [n, d_o, d_i, H]).
    self.num_basis = sum(len(c) for _, _, c in self._blocks)
    k = kernel_size
    values = harmonics.evaluate(harmonics_lib.grid_points(k))
    values = values.reshape(-1, harmonics.size)
    self.grid = self._expand(values).reshape(
        self.num_basis, k, k, in_rep.size, out_rep.size
    )
    self.grid.setflags(write=False)

  def __repr__(self) -> str:
    return (
        f"SteerableBasis({self.group.name}: {self.in_rep.name} -> "
        f"{self.out_rep.name}, {self.kernel_size}x{self.kernel_size}, "
        f"{self.num_basis} elements)"
    )

  def _expand(self, values: np.ndarray) -> np.ndarray:
    """sum_h C_b Y_h in the reps' bases for harmonics values [M, H]: [B, M, i, o]."""
    q_out = self.out_rep.change_of_basis
    q_in_inv = self.in_rep.change_of_basis_inv
    out = np.empty((self.num_basis, len(values), self.in_rep.size, self.out_rep.size))
    start = 0
    for out_sl, in_sl, coeffs in self._blocks:
      part = np.tensordot(coeffs, values, axes=([3], [1]))  # [n, a, b, M]
      part = np.tensordot(part, q_in_inv[in_sl, :], axes=([2], [0]))  # [n, a, M, i]
      part = np.tensordot(part, q_out[:, out_sl], axes=([1], [1]))  # [n, M, i, o]
      out[start:start + len(coeffs)] = part
      start += len(coeffs)
    return out

  @functools.cached_property
  def coefficients(self) -> np.ndarray:
    """float64 [num_basis, out, in, H]: K_b(p) = sum_h coeffs[b, .., h] Y_h(p)."""
    dense = self._expand(np.eye(self.harmonics.size)).transpose(0, 3, 2, 1)
    dense = np.ascontiguousarray(dense)
    dense.setflags(write=False)
    return dense

  def evaluate(self, points: np.ndarray) -> np.ndarray:
    """The elements at arbitrary plane points [..., 2] (x, y).

    Returns:
      float64 [num_basis, ..., in, out]; on `grid_points(k)` this equals
      `grid`.
    """
    points = np.asarray(points, dtype=np.float64)
    values = self.harmonics.evaluate(points).reshape(-1, self.harmonics.size)
    dense = np.tensordot(self.coefficients, values, axes=([3], [1]))  # [b o i M]
    return dense.transpose(0, 3, 2, 1).reshape(
        (self.num_basis,) + points.shape[:-1] + (self.in_rep.size, self.out_rep.size)
    )


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


def _check_orthogonal(in_rep, out_rep) -> None:
  for label, rep in (("in_rep", in_rep), ("out_rep", out_rep)):
    q = rep.change_of_basis
    if not np.allclose(q.T @ q, np.eye(rep.size), atol=1e-10):
      raise ValueError(
          f"{label} {rep.name!r} has a non-orthogonal change_of_basis; kernel "
          "bases need orthogonal representations (as get_group, directsum and "
          "restrict build them)."
      )


def _constraint_elements(group: Group, max_total_frequency: int):
  """Elements whose equivariance implies equivariance under all of `group`."""
  if group.is_finite:
    return group.generators()
  steps = 2 * max_total_frequency + 1
  elements = [GroupElement(_TWO_PI / steps, 0)]
  if group.has_flips:
    elements.append(GroupElement(0.0, 1))
  return elements


@functools.cache
def _quadrature(group: Group, max_total_frequency: int) -> tuple[GroupElement, ...]:
  """Elements whose uniform mean integrates class functions of the group.

  All elements of a finite group; for SO(2)/O(2) the rotations by multiples
  of 2 pi / M (with flips for O(2)), M = 2 * max_total_frequency + 1, which
  is exact for trigonometric polynomials of degree <= max_total_frequency.
  """
  if group.is_finite:
    return tuple(group.elements())
  steps = 2 * max_total_frequency + 1
  flips = (0, 1) if group.has_flips else (0,)
  return tuple(
      GroupElement(_TWO_PI * k / steps, f) for f in flips for k in range(steps)
  )


def _quadrature_key(group: Group, max_total_frequency: int) -> int:
  return 0 if group.is_finite else max_total_frequency


@functools.cache
def _irrep_characters(group: Group, irrep: str, quadrature_key: int) -> np.ndarray:
  return np.array([
      np.trace(group.irrep_matrix(irrep, g))
      for g in _quadrature(group, quadrature_key)
  ])


def _harmonic_characters(frequency: int, elements) -> np.ndarray:
  """trace T_j(g): 1 for j = 0; 2 cos(j t) for rotations, 0 for mirrors."""
  if frequency == 0:
    return np.ones(len(elements))
  rotations = np.array([g.rotation for g in elements])
  flips = np.array([g.flip for g in elements], dtype=bool)
  return np.where(flips, 0.0, 2.0 * np.cos(frequency * rotations))


def _max_frequency(group: Group, rep: Representation) -> int:
  return max(group.irrep_spec(name).frequency for name in rep.irreps)


def _rep_characters(group: Group, rep: Representation, key: int) -> np.ndarray:
  return sum(_irrep_characters(group, name, key) for name in rep.irreps)


def _character_mean_to_int(mean: float) -> int:
  count = int(round(mean))
  if abs(mean - count) > 1e-6:
    raise AssertionError(f"non-integer character mean {mean}")
  return count


def expected_basis_size(
    *, group: Group, in_rep: Representation, out_rep: Representation,
    harmonics: harmonics_lib.RingHarmonics,
) -> int:
  """dim Hom_G(rho_in (x) T, rho_out) = mean_g chi_in chi_T chi_out (exact)."""
  top = max(b.frequency for b in harmonics.blocks)
  total = _max_frequency(group, in_rep) + _max_frequency(group, out_rep) + top
  key = _quadrature_key(group, total)
  elements = _quadrature(group, key)
  chi_t = sum(_harmonic_characters(b.frequency, elements) for b in harmonics.blocks)
  chi_in = _rep_characters(group, in_rep, key)
  chi_out = _rep_characters(group, out_rep, key)
  return _character_mean_to_int(np.mean(chi_in * chi_out * chi_t))


def _kron3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  return np.einsum("ij,kl,mn->ikmjln", a, b, c).reshape(
      a.shape[0] * b.shape[0] * c.shape[0], -1
  )


def _reduced_row_echelon(rows: np.ndarray) -> np.ndarray:
  """The reduced row echelon form of a full-rank [r, n] matrix.

  It depends only on the row space, not on the basis LAPACK returned for it,
  so the solved basis is the same on every machine (up to rounding): a
  checkpoint's coefficients mean the same kernels wherever the basis is
  rebuilt.
  """
  rows = np.array(rows, dtype=np.float64)
  pivot_row = 0
  for col in range(rows.shape[1]):
    if pivot_row == len(rows):
      break
    best = pivot_row + int(np.argmax(np.abs(rows[pivot_row:, col])))
    if abs(rows[best, col]) < 1e-6:
      continue
    rows[[pivot_row, best]] = rows[[best, pivot_row]]
    rows[pivot_row] /= rows[pivot_row, col]
    others = np.arange(len(rows)) != pivot_row
    rows[others] -= np.outer(rows[others, col], rows[pivot_row])
    rows[others, col] = 0.0
    pivot_row += 1
  if pivot_row != len(rows):
    raise AssertionError("null-space basis is not of full rank")
  rows[np.abs(rows) < 1e-13] = 0.0
  return rows


@functools.cache
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
        - _kron3(psi_out, psi_in_inv_t, np.eye(d_j))
    )
  if not rows:  # The trivial group: every C is equivariant.
    solutions = np.eye(dim)
  else:
    _, singular, vt = np.linalg.svd(np.concatenate(rows), full_matrices=True)
    rank = int(np.sum(singular > _NULL_TOL))
    solutions = vt[rank:]
  key = _quadrature_key(group, total)
  expected = _character_mean_to_int(np.mean(
      _irrep_characters(group, out_irrep, key)
      * _irrep_characters(group, in_irrep, key)
      * _harmonic_characters(frequency, _quadrature(group, key))
  ))
  if solutions.shape[0] != expected:
    raise AssertionError(
        f"{group.name}: {in_irrep} -> {out_irrep} at frequency {frequency} has "
        f"{solutions.shape[0]} solutions, expected {expected}"
    )
  solutions = _reduced_row_echelon(solutions).reshape(-1, d_out, d_in, d_j)
  solutions.setflags(write=False)
  return solutions


def _irrep_slices(group: Group, rep: Representation):
  out, start = [], 0
  for name in rep.irreps:
    size = group.irrep_size(name)
    out.append((name, slice(start, start + size)))
    start += size
  return out


def _lowdin(gram: np.ndarray) -> np.ndarray:
  """gram^-1/2 for a symmetric positive definite Gram matrix."""
  eigvals, eigvecs = np.linalg.eigh(gram)
  if eigvals[0] <= 1e-10 * eigvals[-1]:
    raise AssertionError("sampled basis is rank deficient on the grid")
  return (eigvecs / np.sqrt(eigvals)) @ eigvecs.T


@functools.cache
def _harmonic_gram(kernel_size: int, cutoff) -> np.ndarray:
  """<Y_h, Y_h'> summed over the pixel grid, float64 [H, H]."""
  harmonics = harmonics_lib.ring_harmonics(kernel_size, cutoff)
  values = harmonics.evaluate(harmonics_lib.grid_points(kernel_size))
  values = values.reshape(-1, harmonics.size)
  return values.T @ values


@functools.cache
def _irrep_pair_basis(group, out_irrep, in_irrep, kernel_size, cutoff):
  """Grid-orthonormal equivariant C [n, d_out, d_in, H] between two irreps."""
  harmonics = harmonics_lib.ring_harmonics(kernel_size, cutoff)
  d_out, d_in = group.irrep_size(out_irrep), group.irrep_size(in_irrep)
  elements = []
  for block in harmonics.blocks:
    h_sl = slice(block.offset, block.offset + block.size)
    for solution in _solve_block(group, out_irrep, in_irrep, block.frequency):
      coeff = np.zeros((d_out, d_in, harmonics.size))
      coeff[:, :, h_sl] = solution
      elements.append(coeff)
  if not elements:
    return np.zeros((0, d_out, d_in, harmonics.size))
  elements = np.stack(elements)
  gram = np.einsum(
      "boih,hk,coik->bc", elements, _harmonic_gram(kernel_size, cutoff), elements
  )
  out = np.tensordot(_lowdin(gram), elements, axes=1)
  out.setflags(write=False)
  return out


@functools.lru_cache(maxsize=64)  # float64 grids and coefficients: larger.
def _build(group, in_rep, out_rep, kernel_size, cutoff) -> SteerableBasis:
  _check_orthogonal(in_rep, out_rep)
  harmonics = harmonics_lib.ring_harmonics(kernel_size, cutoff)
  expected = expected_basis_size(
      group=group, in_rep=in_rep, out_rep=out_rep, harmonics=harmonics
  )
  # Solved and orthonormalized per irrep pair; mapping back from the irreps
  # bases, K = Q_out K~ Q_in^-1, is an isometry since both Q are orthogonal,
  # and elements of different irrep pairs are orthogonal.
  blocks = []
  in_slices = _irrep_slices(group, in_rep)
  for out_name, out_sl in _irrep_slices(group, out_rep):
    for in_name, in_sl in in_slices:
      pair = _irrep_pair_basis(group, out_name, in_name, kernel_size, cutoff)
      if len(pair):
        blocks.append((out_sl, in_sl, pair))
  num_basis = sum(len(pair) for _, _, pair in blocks)
  if num_basis != expected:
    raise AssertionError(
        f"{group.name}: {in_rep.name} -> {out_rep.name} has {num_basis} basis "
        f"elements, expected {expected}"
    )
  return SteerableBasis(
      group=group, in_rep=in_rep, out_rep=out_rep, kernel_size=kernel_size,
      cutoff=cutoff, harmonics=harmonics, blocks=blocks, expected_size=expected,
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
    kernel_size: 1, 3, 5 or 7 (1: the pointwise intertwiners, e.g. skips).
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


def clear_cache() -> None:
  """Forgets every cached basis and solve (for cold-start timings and tests)."""
  for cached in (_build, _float32_grid, _irrep_pair_basis, _solve_block,
                 _harmonic_gram, _irrep_characters, _quadrature,
                 harmonics_lib.ring_harmonics):
    cached.cache_clear()
