"""dpeq: differentially private training of equivariant CNNs in JAX/Haiku.

Layers (each imports only from the ones above it):
  dpeq.groups   numpy group theory (C_N, D_N, SO(2), O(2)).
  dpeq.kernels  numpy steerable kernel bases.
  dpeq.nn       Haiku modules over typed feature fields.
  dpeq.models   networks and the model registry.
  dpeq.privacy  clipping, noise, sampling, accounting (the DP guarantee).
  dpeq.data     datasets as arrays and on-device augmentation.
  dpeq.training the update, averaging, optimizers, loop, checkpoints, report.
"""

__version__ = "0.1.0"
