"""dpeq.privacy: everything the DP-SGD guarantee rests on.

  clipping           per-example clipped gradient SUM with its sensitivity.
  noise              the Gaussian privatizer (an optax transformation).
  sampling           host-side Poisson / shuffled batches and their DpEvents.
  accounting         epsilon, calibration of sigma / steps / batch size, the
                     privacy ledger (dp_accounting, PLD or RDP).
  conv_weight_grads  fast per-example conv weight gradients (XLA:CPU).
"""

from dpeq.privacy import accounting, clipping, conv_weight_grads, noise, sampling

__all__ = ["accounting", "clipping", "conv_weight_grads", "noise", "sampling"]
