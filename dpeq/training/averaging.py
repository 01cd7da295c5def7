"""Parameter averaging: EMA with De et al.'s warm-up, and Polyak averaging.

Averages are post-processing of the (private) parameter sequence, so they
cost no privacy. They update once per OPTIMIZER update (in
dpeq.training.update's `apply`), never per micro-batch.

EMA with decay mu, after the update with 0-based index t:
    mu_t = min(mu, (1 + t) / (10 + t)),
    ema <- mu_t * ema + (1 - mu_t) * params.
Polyak: the running mean of the parameters after updates 0..t.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

POLYAK = "polyak"


def ema_name(decay: float) -> str:
  """The averages key of an EMA, e.g. "ema_0.999"."""
  return f"ema_{float(decay)!r}"


def ema_decay(decay: float, update_index: jax.Array) -> jax.Array:
  """De et al.'s warm-up: min(decay, (1 + t) / (10 + t)) for 0-based t."""
  t = jnp.asarray(update_index, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


@dataclasses.dataclass(frozen=True)
class ParamAverager:
  """Several EMAs and/or a Polyak average of the parameters.

  Attributes:
    ema_decays: decays in (0, 1), e.g. (0.999,).
    polyak: whether to keep the running mean too.
  """

  ema_decays: tuple[float, ...] = ()
  polyak: bool = False

  def __post_init__(self):
    decays = tuple(float(d) for d in self.ema_decays)
    for decay in decays:
      if not 0 < decay < 1:
        raise ValueError(
            f"EMA decay {decay} must be in (0, 1), e.g. 0.999.")
    if len(set(decays)) != len(decays):
      raise ValueError(f"ema_decays={decays} has duplicates.")
    object.__setattr__(self, "ema_decays", decays)

  @property
  def names(self) -> tuple[str, ...]:
    return (tuple(ema_name(d) for d in self.ema_decays)
            + ((POLYAK,) if self.polyak else ()))

  def init(self, params: PyTree) -> dict[str, PyTree]:
    """Every average starts at the initial params."""
    return {name: jax.tree.map(jnp.asarray, params) for name in self.names}

  def update(self, averages: dict[str, PyTree], params: PyTree, *,
             update_index: jax.Array) -> dict[str, PyTree]:
    """Folds in `params`, the result of the update with 0-based index t.

    Args:
      averages: the current averages (from `init` or `update`).
      params: parameters after update t.
      update_index: int t >= 0 (TrainState.update_step before it advances).

    Returns:
      The new averages (same keys).
    """
    new = {}
    for decay in self.ema_decays:
      mu = ema_decay(decay, update_index)
      new[ema_name(decay)] = jax.tree.map(
          lambda a, p, mu=mu: (mu * a + (1 - mu) * p).astype(a.dtype),
          averages[ema_name(decay)], params)
    if self.polyak:
      weight = 1.0 / (jnp.asarray(update_index, jnp.float32) + 1.0)
      new[POLYAK] = jax.tree.map(
          lambda a, p: (a + weight * (p - a)).astype(a.dtype),
          averages[POLYAK], params)
    return new
