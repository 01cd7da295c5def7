"""dpeq.privacy: everything the DP-SGD guarantee rests on.

  clipping           per-example clipped gradient SUM with its sensitivity.
  noise              the Gaussian privatizer (an optax transformation) and
                     its wide-tailed float32 sampler.
  randomness         the run's SECRET randomness (noise key, sampler seed).
  sampling           host-side Poisson / shuffled batches and their DpEvents.
  accounting         epsilon, calibration of sigma / steps / batch size, the
                     privacy ledger (dp_accounting, PLD or RDP).
  plan               the PrivacyPlan: the one object that owns every number
                     of the guarantee and makes sampler, privatizer, DpEvent
                     and ledger.
  ghost_clipping     the same norms and clipped sum without per-example
                     gradients (Bu et al.'s mixed ghost clipping, Haiku
                     models); ghost_layers holds its exact per-layer rules.
"""

from dpeq.privacy import (
                          accounting,
                          clipping,
                          ghost_clipping,
                          ghost_layers,
                          noise,
                          plan,
                          randomness,
                          sampling,
)

__all__ = ["accounting", "clipping", "ghost_clipping", "ghost_layers", "noise",
           "plan", "randomness", "sampling"]
