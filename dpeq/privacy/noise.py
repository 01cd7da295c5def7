"""The Gaussian privatizer: noise on the clipped sum, then the mean.

Formal guarantee: if the input of `update` is a sum whose L2 sensitivity
under add/remove of one example is at most `sensitivity`, one call is the
Gaussian mechanism with noise multiplier `noise_multiplier` (std
noise_multiplier * sensitivity per coordinate). Dividing by the fixed,
data-independent `expected_batch_size` is post-processing. The accountant
(dpeq.privacy.accounting) turns this plus the sampling into (epsilon, delta).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


class PrivatizerState(NamedTuple):
  """State of the Gaussian privatizer.

  Attributes:
    key: the PRNG key of the run (the same on every device).
    update_step: int32 []: how many noisy updates were drawn so far; the
      noise of update t uses fold_in(key, t).
  """

  key: jax.Array
  update_step: jax.Array


def gaussian_privatizer(
    *,
    noise_multiplier: float,
    sensitivity: float,
    expected_batch_size: int,
    key: jax.Array,
) -> optax.GradientTransformation:
  """Adds N(0, (noise_multiplier * sensitivity)^2) noise, then averages.

  `update(grad_sum, state)` returns
  (grad_sum + noise) / expected_batch_size, where every coordinate of
  `noise` is an independent N(0, (noise_multiplier * sensitivity)^2) draw
  from fold_in(state.key, state.update_step). Dividing by the EXPECTED (not
  the realised) batch size keeps the divisor data independent.

  Args:
    noise_multiplier: sigma >= 0 (0 adds no noise: only for explicitly
      non-private training; dpeq.training.update.DpSgdConfig enforces that).
    sensitivity: L2 sensitivity of the input sum (ClippedGradSum.sensitivity).
    expected_batch_size: the divisor, e.g. q * n for Poisson sampling.
    key: PRNG key stored in the state; the same key gives the same noise.

  Returns:
    An optax GradientTransformation whose state is a PrivatizerState.
  """
  noise_multiplier = float(noise_multiplier)
  sensitivity = float(sensitivity)
  if not noise_multiplier >= 0 or noise_multiplier == float("inf"):
    raise ValueError(
        f"noise_multiplier={noise_multiplier} must be a finite number >= 0.")
  if not sensitivity > 0 or sensitivity == float("inf"):
    raise ValueError(
        f"sensitivity={sensitivity} must be a finite number > 0: pass "
        "ClippedGradSum.sensitivity.")
  if int(expected_batch_size) != expected_batch_size or expected_batch_size < 1:
    raise ValueError(
        f"expected_batch_size={expected_batch_size} must be a positive int.")
  std = noise_multiplier * sensitivity

  def init_fn(params):
    del params
    return PrivatizerState(key=key, update_step=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    step_key = jax.random.fold_in(state.key, state.update_step)
    leaves, treedef = jax.tree.flatten(updates)
    if std == 0.0:
      noised = [g / expected_batch_size for g in leaves]
    else:
      # One flat draw, split per leaf: the same distribution as a draw per
      # leaf, and XLA:CPU compiles it ~13x faster for a many-leaf model.
      sizes = [g.size for g in leaves]
      flat = jax.random.normal(step_key, (sum(sizes),), jnp.float32)
      pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
      noised = [
          (g + std * piece.reshape(g.shape).astype(g.dtype))
          / expected_batch_size
          for g, piece in zip(leaves, pieces, strict=True)
      ]
    new_state = PrivatizerState(key=state.key,
                                update_step=state.update_step + 1)
    return jax.tree.unflatten(treedef, noised), new_state

  return optax.GradientTransformation(init_fn, update_fn)
