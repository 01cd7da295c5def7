"""dpeq.kernels: steerable kernel bases for planar convolutions (numpy).

`kernel_basis(group=..., in_rep=..., out_rep=..., kernel_size=...)` returns
the float32 [num_basis, k, k, in, out] basis (orthonormal on the grid, cached)
that dpeq.nn.R2Conv expands its coefficients with. `steerable_basis` gives
the float64 object behind it, whose `evaluate(points)` evaluates the same
elements at arbitrary continuous points. See `dpeq.kernels.basis` for the
construction and `dpeq.kernels.harmonics` for the ring harmonics and band
limits.
"""

from dpeq.kernels.basis import (
    SteerableBasis,
    clear_cache,
    expected_basis_size,
    kernel_basis,
    steerable_basis,
)
from dpeq.kernels.harmonics import (
    SUPPORTED_KERNEL_SIZES,
    EscnnCutoff,
    LinearCutoff,
    RingHarmonics,
    default_cutoff,
    grid_points,
    ring_harmonics,
)

__all__ = [
    "SUPPORTED_KERNEL_SIZES",
    "EscnnCutoff",
    "LinearCutoff",
    "RingHarmonics",
    "SteerableBasis",
    "clear_cache",
    "default_cutoff",
    "expected_basis_size",
    "grid_points",
    "kernel_basis",
    "ring_harmonics",
    "steerable_basis",
]
