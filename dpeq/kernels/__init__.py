"""dpeq.kernels."""
