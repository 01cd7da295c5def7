"""The planar groups C_N, D_N, SO(2) and O(2) and their real irreps.

Every group here is a subgroup of O(2) acting on the plane through
`GroupElement` (p -> R(rotation) F^flip p, F = diag(-1, 1)); a subgroup uses
the same elements, so restriction never relabels anything.

Real irreps, named by how they act (t the rotation angle, f the flip bit):
  groups without flips ("C<N>", "SO2"): "psi_k" for frequency k;
    size 1 (k = 0, or k = N/2 for even N): cos(k t);
    size 2: R(k t), the rotation by k t.
  groups with flips ("D<N>", "O2"): "psi_s,k";
    size 1 (k = 0 or k = N/2): cos(k t) * (-1)^(s f);
    size 2 (s = 1, 0 < k < N/2): R(k t) @ F^f.
SO(2) and O(2) keep the frequencies k <= max_frequency (band limit).
"""

import dataclasses
import functools
import math
import re

import numpy as np

from dpeq.groups.elements import MIRROR, GroupElement, rotation_matrix
from dpeq.groups.representation import Representation

_TWO_PI = 2.0 * math.pi
_NAME_FORMS = '"C<N>" or "D<N>" with N >= 1 (e.g. "C1", "C4", "D8"), "SO2", "O2"'
_SUBGROUP_FORMS = '"C<M>", "D<M>", "SO2" or "trivial"'
_MEMBERSHIP_TOL = 1e-9
# Conjugating R(-a) to R(a) while commuting with F: diag(1, -1).
_SWAP_SIGN = np.diag([1.0, -1.0])


@dataclasses.dataclass(frozen=True)
class IrrepSpec:
  """What an irrep does: see the module docstring for the formulas."""

  name: str
  flip_sign: int
  frequency: int
  size: int


def _irrep_name(has_flips: bool, flip_sign: int, frequency: int) -> str:
  return f"psi_{flip_sign},{frequency}" if has_flips else f"psi_{frequency}"


@dataclasses.dataclass(frozen=True)
class Group:
  """A planar group: C_N, D_N (finite), SO(2) or O(2) (band-limited irreps).

  Build with `get_group`. Hashable and compared by value.

  Attributes:
    name: "C<N>", "D<N>", "SO2" or "O2".
    rotation_order: N for C_N and D_N, None for SO(2) and O(2).
    has_flips: whether the mirror x -> -x belongs to the group.
    max_frequency: the band limit L of the irreps of SO(2)/O(2); None for
      finite groups (all their irreps are used).
  """

  name: str
  rotation_order: int | None
  has_flips: bool
  max_frequency: int | None = None

  # ---------------------------------------------------------------- basics
  @property
  def is_finite(self) -> bool:
    return self.rotation_order is not None

  @property
  def order(self) -> int | None:
    """Number of elements (N for C_N, 2N for D_N), None for SO2/O2."""
    if self.rotation_order is None:
      return None
    return self.rotation_order * (2 if self.has_flips else 1)

  @property
  def identity(self) -> GroupElement:
    return GroupElement(0.0, 0)

  def _rotation_index(self, rotation: float) -> int:
    n = self.rotation_order
    return int(round(rotation * n / _TWO_PI)) % n

  def contains(self, element: GroupElement) -> bool:
    """Whether `element` (a map of the plane) belongs to this group."""
    if not isinstance(element, GroupElement):
      return False
    if element.flip and not self.has_flips:
      return False
    if self.is_finite:
      steps = element.rotation * self.rotation_order / _TWO_PI
      return abs(steps - round(steps)) < _MEMBERSHIP_TOL
    return True

  def check_element(self, element: GroupElement) -> None:
    """Raises ValueError unless `element` belongs to this group."""
    if not isinstance(element, GroupElement):
      raise ValueError(
          f"Expected a GroupElement of {self.name}, got {type(element).__name__}."
      )
    if not self.contains(element):
      allowed = (
          f"rotations by multiples of 2*pi/{self.rotation_order}"
          if self.is_finite
          else "any rotation"
      )
      allowed += " and flips" if self.has_flips else ", no flip"
      raise ValueError(
          f"{element} is not an element of {self.name} ({allowed}); restrict "
          "the representation or use an element of this group."
      )

  def element(self, rotation: float, flip: int = 0) -> GroupElement:
    """The element R(rotation) F^flip, checked and snapped to the group."""
    element = GroupElement(rotation, flip)
    self.check_element(element)
    return self._canonical(element.rotation, element.flip)

  def _canonical(self, rotation: float, flip: int) -> GroupElement:
    if self.is_finite:
      k = self._rotation_index(rotation)
      return GroupElement(_TWO_PI * k / self.rotation_order, flip)
    return GroupElement(rotation, flip)

  def elements(self) -> list[GroupElement]:
    """All elements of a finite group: the N rotations, then the N flipped."""
    if not self.is_finite:
      raise ValueError(f"{self.name} is infinite: it has no list of elements.")
    n = self.rotation_order
    flips = (0, 1) if self.has_flips else (0,)
    return [GroupElement(_TWO_PI * k / n, f) for f in flips for k in range(n)]

  def index(self, element: GroupElement) -> int:
    """Position of `element` in `elements()` (finite groups)."""
    if not self.is_finite:
      raise ValueError(f"{self.name} is infinite: its elements have no index.")
    self.check_element(element)
    return self._rotation_index(element.rotation) + (
        self.rotation_order * element.flip
    )

  def compose(self, a: GroupElement, b: GroupElement) -> GroupElement:
    """The element a.b (apply b first, then a)."""
    self.check_element(a)
    self.check_element(b)
    sign = -1.0 if a.flip else 1.0
    return self._canonical(a.rotation + sign * b.rotation, a.flip ^ b.flip)

  def inverse(self, a: GroupElement) -> GroupElement:
    self.check_element(a)
    if a.flip:  # Every reflection is an involution.
      return a
    return self._canonical(-a.rotation, 0)

  def generators(self) -> list[GroupElement]:
    """Generators of a finite group (empty for C1)."""
    if not self.is_finite:
      raise ValueError(f"{self.name} is infinite: it has no finite generators.")
    gens = []
    if self.rotation_order > 1:
      gens.append(GroupElement(_TWO_PI / self.rotation_order, 0))
    if self.has_flips:
      gens.append(GroupElement(0.0, 1))
    return gens

  def grid_preserving_elements(self) -> list[GroupElement]:
    """The elements that map the square pixel grid onto itself.

    Those are the rotations by multiples of pi/2, with or without flip.
    """
    flips = (0, 1) if self.has_flips else (0,)
    candidates = [GroupElement(k * math.pi / 2, f) for f in flips for k in range(4)]
    return [self._canonical(e.rotation, e.flip) for e in candidates if self.contains(e)]

  # ---------------------------------------------------------------- irreps
  def irrep_specs(self) -> tuple[IrrepSpec, ...]:
    """The irreps as `IrrepSpec`s, in the order of `irreps()`."""
    return _irrep_specs(self)

  def irrep_spec(self, name: str) -> IrrepSpec:
    specs = _irrep_spec_map(self)
    if name not in specs:
      raise ValueError(
          f"{self.name} has no irrep {name!r}; its irreps are {sorted(specs)}."
      )
    return specs[name]

  def irrep_size(self, name: str) -> int:
    return self.irrep_spec(name).size

  def irrep_is_trivial(self, name: str) -> bool:
    spec = self.irrep_spec(name)
    return spec.size == 1 and spec.frequency == 0 and spec.flip_sign == 0

  def irrep_matrix(self, name: str, element: GroupElement) -> np.ndarray:
    """psi(element) for the irrep `name`, float64 [size, size]."""
    spec = self.irrep_spec(name)
    self.check_element(element)
    if self.is_finite:
      n = self.rotation_order
      steps = (spec.frequency * self._rotation_index(element.rotation)) % n
      angle = _TWO_PI * steps / n
    else:
      steps = None
      angle = spec.frequency * element.rotation
    if spec.size == 1:
      if steps is not None:  # cos(k t) is exactly +-1 here.
        value = 1.0 if steps == 0 else -1.0
      else:
        value = math.cos(angle)
      if spec.flip_sign and element.flip:
        value = -value
      return np.array([[value]])
    mat = rotation_matrix(angle)
    return mat @ MIRROR if element.flip else mat

  def irreps(self) -> list[Representation]:
    """The irreps (band-limited to max_frequency for SO2/O2)."""
    return [self.irrep(spec.name) for spec in self.irrep_specs()]

  def irrep(self, name: str) -> Representation:
    self.irrep_spec(name)
    return Representation(name=name, group=self, irreps=[name])

  def trivial_representation(self) -> Representation:
    return Representation(
        name="trivial", group=self, irreps=[self.irrep_specs()[0].name]
    )

  def regular_representation(self) -> Representation:
    """rho(g) e_h = e_{g h} on |G| channels ordered as `elements()`."""
    return _regular_representation(self)

  # ---------------------------------------------------------- subgroups
  def subgroup(self, name: str) -> "Group":
    """The subgroup named `name` (same elements as maps of the plane).

    Accepted: "trivial" or "C1"; "C<M>" with M dividing N (C_N, D_N) or any
    M (SO2, O2); "D<M>" with M dividing N (D_N) or any M (O2), same flip
    axis; "SO2" (from SO2, O2); the group's own name.

    Raises:
      ValueError: if `name` is not a subgroup of this group.
    """
    if name == "trivial":
      name = "C1"
    if name == self.name:
      return self
    try:
      sub = get_group(name, max_frequency=self.max_frequency or 0)
    except ValueError as err:
      raise ValueError(
          f"Unknown subgroup name {name!r} for {self.name}; use {_SUBGROUP_FORMS}."
      ) from err
    ok = sub.has_flips <= self.has_flips
    if sub.is_finite and self.is_finite:
      ok = ok and self.rotation_order % sub.rotation_order == 0
    elif not sub.is_finite:
      ok = ok and not self.is_finite
    if not ok:
      raise ValueError(f"{name} is not a subgroup of {self.name}.")
    if not sub.is_finite:
      sub = get_group(name, max_frequency=self.max_frequency)
    return sub

  def restrict_irrep(
      self, name: str, subgroup: "Group"
  ) -> tuple[list[str], np.ndarray]:
    """How the irrep `name` decomposes on a subgroup.

    Returns:
      (irreps of `subgroup`, P) with psi(h) = P blockdiag(irreps(h)) P^-1 for
      every h in `subgroup`; P is orthogonal, [size, size].
    """
    spec = self.irrep_spec(name)
    if subgroup != self.subgroup(subgroup.name):
      raise ValueError(f"{subgroup.name} is not a subgroup of {self.name}.")
    m = subgroup.rotation_order
    k = spec.frequency % m if m is not None else spec.frequency
    flips = subgroup.has_flips

    def sub_name(flip_sign, frequency):
      return _irrep_name(flips, flip_sign if flips else 0, frequency)

    if spec.size == 1:
      if k not in (0, (m or 0) / 2):
        raise AssertionError(f"size-1 irrep {name} with frequency {k} on {m}")
      return [sub_name(spec.flip_sign, k)], np.eye(1)
    if m is not None and 2 * k > m:  # Frequency folds to m - k, reversed.
      return [sub_name(1, m - k)], _SWAP_SIGN.copy()
    if k == 0 or (m is not None and 2 * k == m):
      # R(k t) = +-1 on the subgroup; e_x flips sign under F, e_y does not.
      return [sub_name(1, k), sub_name(0, k)], np.eye(2)
    return [sub_name(1, k)], np.eye(2)

  def regular_restriction_permutation(self, subgroup_name: str) -> np.ndarray:
    """Reorders the regular representation into copies of the subgroup's.

    For H = subgroup(subgroup_name) of index c, returns `perm` (int [|G|])
    such that, for every h in H,
      rho_G(h)[perm][:, perm] == blockdiag(rho_H(h), ..., rho_H(h))  (c copies)
    with rho_H the regular representation of H: channel j * |H| + i holds
    element h_i x_j of G (h_i in H's element order, x_j a coset
    representative).
    """
    if not self.is_finite:
      raise ValueError(f"{self.name} is infinite: it has no regular representation.")
    sub = self.subgroup(subgroup_name)
    remaining = list(range(self.order))
    perm = []
    elements = self.elements()
    while remaining:
      x = elements[remaining[0]]
      coset = [self.index(self.compose(h, x)) for h in sub.elements()]
      perm.extend(coset)
      remaining = [i for i in remaining if i not in coset]
    return np.array(perm, dtype=np.int64)


@functools.cache
def _irrep_specs(group: Group) -> tuple[IrrepSpec, ...]:
  flips = group.has_flips
  n = group.rotation_order
  specs = [IrrepSpec(_irrep_name(flips, 0, 0), 0, 0, 1)]
  if flips:
    specs.append(IrrepSpec(_irrep_name(flips, 1, 0), 1, 0, 1))
  top = (n - 1) // 2 if n is not None else group.max_frequency
  for k in range(1, top + 1):
    specs.append(IrrepSpec(_irrep_name(flips, 1 if flips else 0, k), int(flips), k, 2))
  if n is not None and n % 2 == 0:
    specs.append(IrrepSpec(_irrep_name(flips, 0, n // 2), 0, n // 2, 1))
    if flips:
      specs.append(IrrepSpec(_irrep_name(flips, 1, n // 2), 1, n // 2, 1))
  return tuple(specs)


@functools.cache
def _irrep_spec_map(group: Group) -> dict[str, IrrepSpec]:
  return {spec.name: spec for spec in _irrep_specs(group)}


@functools.cache
def _regular_representation(group: Group) -> Representation:
  if not group.is_finite:
    raise ValueError(
        f"{group.name} is infinite: it has no regular representation; use its "
        "band-limited irreps instead."
    )
  elements = group.elements()
  order = len(elements)
  # Column (psi, a, j) is x -> psi(x)[a, j]: rho(g) maps it to
  # sum_b psi(g)[b, a] (psi, b, j), one copy of psi per used j. Irreps of
  # size 2 of C_N are of complex type: one copy (j = 0) suffices.
  names, columns = [], []
  for spec in group.irrep_specs():
    mats = np.stack([group.irrep_matrix(spec.name, x) for x in elements])
    copies = spec.size if (group.has_flips or spec.size == 1) else 1
    for j in range(copies):
      names.append(spec.name)
      for a in range(spec.size):
        columns.append(mats[:, a, j])
  q = np.stack(columns, axis=1)
  q /= np.linalg.norm(q, axis=0, keepdims=True)
  if q.shape != (order, order) or not np.allclose(q.T @ q, np.eye(order), atol=1e-10):
    raise AssertionError(f"regular representation of {group.name} is not orthogonal")

  def permutation(element):
    mat = np.zeros((order, order))
    for h, x in enumerate(elements):
      mat[group.index(group.compose(element, x)), h] = 1.0
    return mat

  return Representation(
      name="regular",
      group=group,
      irreps=names,
      change_of_basis=q,
      matrix_fn=permutation,
  )


@functools.cache
def get_group(name: str, *, max_frequency: int = 3) -> Group:
  """The group named `name`.

  Args:
    name: "C<N>" or "D<N>" (N >= 1; "C1" is the trivial group, "D1" the
      single mirror), "SO2" or "O2".
    max_frequency: band limit L of the irreps of SO2/O2 (psi_0 .. psi_L);
      ignored for finite groups.

  Returns:
    The `Group`.

  Raises:
    ValueError: for an unknown name or a negative max_frequency.
  """
  if not isinstance(name, str):
    raise ValueError(f"Group names are strings ({_NAME_FORMS}), got {name!r}.")
  if name in ("SO2", "O2"):
    if not isinstance(max_frequency, (int, np.integer)) or max_frequency < 0:
      raise ValueError(
          f"max_frequency of {name} must be an integer >= 0, got {max_frequency!r}."
      )
    return Group(name, None, name == "O2", int(max_frequency))
  match = re.fullmatch(r"([CD])([1-9][0-9]*)", name)
  if match is None:
    raise ValueError(f"Unknown group {name!r}; use {_NAME_FORMS}.")
  return Group(name, int(match.group(2)), match.group(1) == "D", None)
