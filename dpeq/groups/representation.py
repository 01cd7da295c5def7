"""Real orthogonal representations given by irreps and a change of basis."""

from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg

from dpeq.groups.elements import GroupElement


class Representation:
  """A finite-dimensional real representation rho of a planar group.

  rho(g) = Q @ blockdiag(psi_1(g), ..., psi_m(g)) @ Q^-1 with the irreps
  psi_i of `group` named in `irreps` (repeats allowed) and Q the
  `change_of_basis`. Every representation dpeq builds has an orthogonal Q.
  Representations compare (and hash) by group, irreps and change of basis;
  the name is only a label.

  Attributes:
    name: a label, e.g. "regular", "psi_1,1", "regular|C2".
    group: the `Group` it represents.
    size: the dimension (number of channels of one field).
    irreps: names of the irreps of `group` in the block diagonal, in order.
    change_of_basis: Q, float64 [size, size].
    change_of_basis_inv: Q^-1, float64 [size, size].
  """

  def __init__(
      self,
      *,
      name: str,
      group,
      irreps: Sequence[str],
      change_of_basis: np.ndarray | None = None,
      matrix_fn: Callable[[GroupElement], np.ndarray] | None = None,
  ):
    """Builds a representation.

    Args:
      name: a label.
      group: the `Group` it represents.
      irreps: names of irreps of `group`, in block order.
      change_of_basis: Q, [size, size]; identity if None.
      matrix_fn: optional exact evaluation of rho(g) (e.g. permutation
        matrices of a regular representation); it must agree with
        Q blockdiag(irreps) Q^-1, which is what is used otherwise.
    """
    irreps = tuple(irreps)
    if not irreps:
      raise ValueError(f"Representation {name!r} needs at least one irrep.")
    size = sum(group.irrep_size(irrep) for irrep in irreps)
    if change_of_basis is None:
      change_of_basis = np.eye(size)
    change_of_basis = np.array(change_of_basis, dtype=np.float64)
    if change_of_basis.shape != (size, size):
      raise ValueError(
          f"Representation {name!r}: change_of_basis has shape "
          f"{change_of_basis.shape} but its irreps {irreps} have total size "
          f"{size}."
      )
    change_of_basis.setflags(write=False)
    inverse = np.linalg.inv(change_of_basis)
    inverse.setflags(write=False)
    self.name = name
    self.group = group
    self.size = size
    self.irreps = irreps
    self.change_of_basis = change_of_basis
    self.change_of_basis_inv = inverse
    self._matrix_fn = matrix_fn
    self._key = (group, irreps, change_of_basis.tobytes())

  def __repr__(self) -> str:
    return f"Representation({self.name!r} of {self.group.name}, size={self.size})"

  def __eq__(self, other) -> bool:
    return isinstance(other, Representation) and self._key == other._key

  def __hash__(self) -> int:
    return hash(self._key)

  @property
  def is_trivial(self) -> bool:
    """True iff rho(g) is the identity for every g."""
    return all(self.group.irrep_is_trivial(irrep) for irrep in self.irreps)

  def irreps_matrix(self, element: GroupElement) -> np.ndarray:
    """blockdiag(psi_1(g), ..., psi_m(g)), float64 [size, size]."""
    self.group.check_element(element)
    blocks = [self.group.irrep_matrix(irrep, element) for irrep in self.irreps]
    return scipy.linalg.block_diag(*blocks)

  def matrix(self, element: GroupElement) -> np.ndarray:
    """rho(element), float64 [size, size]."""
    self.group.check_element(element)
    if self._matrix_fn is not None:
      return np.array(self._matrix_fn(element), dtype=np.float64)
    return self.change_of_basis @ self.irreps_matrix(element) @ (
        self.change_of_basis_inv
    )

  def character(self, element: GroupElement) -> float:
    """The trace of rho(element)."""
    return float(np.trace(self.irreps_matrix(element)))

  @property
  def is_permutation(self) -> bool:
    """True iff every rho(g) is a permutation matrix (finite groups only).

    Pointwise nonlinearities commute with exactly these representations.
    """
    if not self.group.is_finite:
      return self.is_trivial
    for element in self.group.elements():
      mat = self.matrix(element)
      if not (
          np.allclose(np.abs(mat).sum(axis=0), 1.0, atol=1e-9)
          and np.allclose(np.abs(mat).sum(axis=1), 1.0, atol=1e-9)
          and np.all(mat > -1e-9)
      ):
        return False
    return True

  def restrict(self, subgroup_name: str) -> "Representation":
    """The same linear maps seen as a representation of a subgroup.

    The size is unchanged; the irreps are those of the subgroup and the
    change of basis absorbs how each irrep of the group decomposes.

    Args:
      subgroup_name: a name accepted by `self.group.subgroup`.

    Returns:
      A `Representation` of `self.group.subgroup(subgroup_name)` with
      rho_H(h) == rho(h) for every h in the subgroup.
    """
    subgroup = self.group.subgroup(subgroup_name)
    names, blocks = [], []
    for irrep in self.irreps:
      sub_irreps, basis = self.group.restrict_irrep(irrep, subgroup)
      names.extend(sub_irreps)
      blocks.append(basis)
    change = self.change_of_basis @ scipy.linalg.block_diag(*blocks)
    name = self.name if subgroup == self.group else f"{self.name}|{subgroup.name}"
    return Representation(
        name=name,
        group=subgroup,
        irreps=names,
        change_of_basis=change,
        matrix_fn=self._matrix_fn,
    )


def directsum(*reps: Representation, name: str | None = None) -> Representation:
  """The direct sum rho_1 + ... + rho_n (block diagonal, in order).

  Args:
    *reps: representations of one group.
    name: a label; defaults to the names joined by "+".

  Returns:
    A `Representation` whose irreps are the concatenated irreps and whose
    change of basis is blockdiag(Q_1, ..., Q_n).
  """
  if not reps:
    raise ValueError("directsum needs at least one representation.")
  for rep in reps:
    if not isinstance(rep, Representation):
      raise ValueError(f"directsum takes Representations, got {type(rep).__name__}.")
  group = reps[0].group
  for rep in reps[1:]:
    if rep.group != group:
      raise ValueError(
          f"directsum of representations of different groups: {reps[0].name!r} "
          f"is of {group.name} but {rep.name!r} is of {rep.group.name}."
      )
  exact = all(rep._matrix_fn is not None for rep in reps)  # pylint: disable=protected-access

  def matrix_fn(element):
    return scipy.linalg.block_diag(*(rep.matrix(element) for rep in reps))

  return Representation(
      name=name if name is not None else "+".join(rep.name for rep in reps),
      group=group,
      irreps=[irrep for rep in reps for irrep in rep.irreps],
      change_of_basis=scipy.linalg.block_diag(*(rep.change_of_basis for rep in reps)),
      matrix_fn=matrix_fn if exact else None,
  )
