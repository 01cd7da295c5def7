"""Ghost clipping equals vmap on the equivariant models (see helpers_ghost).

R2Conv is clipped in its coefficients: the per-example kernel gradient is
pulled back through the basis expansion, so the norms compared here are
those of the gradients in the parameters.
"""

import helpers_ghost
import pytest


@pytest.mark.parametrize("case,num_views", [
    pair for pair in helpers_ghost.PAIRS if pair[0].startswith("eq_")])
def test_ghost_norms_and_clipped_sum_equal_vmap(case, num_views):
  helpers_ghost.check_ghost_equals_vmap(case, num_views)
