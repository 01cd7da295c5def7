"""dpeq.groups: the planar groups C_N, D_N, SO(2), O(2) in numpy.

Elements, composition, action on the plane, real irreps (band-limited for
SO(2)/O(2)), regular representations, direct sums, change of basis and
restriction to subgroups. Pure maths at init time; nothing here runs per step.

  group = get_group("D4")
  regular = group.regular_representation()        # 8 channels, permutations
  sub = regular.restrict("D2")                     # same 8 channels, of D2
  field = directsum(*get_group("SO2").irreps())    # psi_0 + ... + psi_3

Beyond docs/interfaces.md (additions only, nothing differs): `Group.element`,
`contains`, `check_element`, `index`, `generators`, `grid_preserving_elements`,
`irrep`, `irrep_specs`/`irrep_spec`/`irrep_size`/`irrep_matrix`,
`restrict_irrep`, `regular_restriction_permutation`; `Representation.
change_of_basis_inv`, `irreps_matrix`, `character`, `is_permutation`;
`GroupElement.matrix()` and `.act(points)`; `directsum(..., name=None)`.
Subgroups accept any divisor M ("C<M>", "D<M>"), not only N/2, and
O2 -> "SO2".
"""

from dpeq.groups.elements import GroupElement
from dpeq.groups.group import Group, IrrepSpec, get_group
from dpeq.groups.representation import Representation, directsum

__all__ = [
    "Group",
    "GroupElement",
    "IrrepSpec",
    "Representation",
    "directsum",
    "get_group",
]
