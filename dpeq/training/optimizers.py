"""Validated optimizers and learning-rate schedules over optax.

The optimizer consumes the privatized mean gradient (dpeq.privacy.noise), so
everything here is post-processing and costs no privacy. Weight decay is
always decoupled (Loshchilov & Hutter): the decay term lr * wd * params is
added to the update, never to the gradient (so it never passes through
clipping or momentum).
"""

import math
from collections.abc import Sequence

import optax

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "lamb")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise")


def available() -> tuple[str, ...]:
  """The optimizer names `make_optimizer` accepts."""
  return OPTIMIZERS


def _check_unit_interval(name: str, value: float) -> None:
  if not 0 <= value < 1:
    raise ValueError(f"{name}={value} must lie in [0, 1).")


def make_schedule(
    *, name: str = "constant", learning_rate: float, num_updates: int | None,
    warmup_updates: int = 0, boundaries: Sequence[int] = (),
    scales: Sequence[float] = (),
) -> optax.Schedule:
  """A learning-rate schedule over optimizer updates.

  Args:
    name: "constant"; "cosine" (from learning_rate to 0 over num_updates);
      "warmup_cosine" (linear from 0 over warmup_updates, then cosine to 0 at
      num_updates); "piecewise" (multiply by scales[i] at boundaries[i]).
    learning_rate: the peak (initial) learning rate, > 0.
    num_updates: total optimizer updates T (needed by the cosine schedules).
    warmup_updates: only for "warmup_cosine": 0 < warmup_updates <
      num_updates.
    boundaries: for "piecewise": increasing update counts > 0.
    scales: for "piecewise": factors > 0, one per boundary.

  Returns:
    An optax schedule: update count -> learning rate.
  """
  if name not in SCHEDULES:
    raise ValueError(f"Schedule {name!r} is not one of {SCHEDULES}.")
  if not learning_rate > 0 or math.isinf(learning_rate):
    raise ValueError(f"learning_rate={learning_rate} must be finite and > 0.")
  if warmup_updates and name != "warmup_cosine":
    raise ValueError(
        f"warmup_updates={warmup_updates} is only used by the "
        "'warmup_cosine' schedule: use that, or set warmup_updates=0.")
  if (boundaries or scales) and name != "piecewise":
    raise ValueError(
        "boundaries / scales are only used by the 'piecewise' schedule.")
  if name in ("cosine", "warmup_cosine") and (
      num_updates is None or num_updates < 1):
    raise ValueError(
        f"The {name!r} schedule needs num_updates >= 1; got {num_updates}.")
  if name == "constant":
    return optax.constant_schedule(learning_rate)
  if name == "cosine":
    return optax.cosine_decay_schedule(learning_rate, num_updates)
  if name == "warmup_cosine":
    if not 0 < warmup_updates < num_updates:
      raise ValueError(
          f"warmup_updates={warmup_updates} must lie in (0, num_updates="
          f"{num_updates}).")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_updates,
        decay_steps=num_updates)
  boundaries, scales = tuple(boundaries), tuple(scales)
  if not boundaries or len(boundaries) != len(scales):
    raise ValueError(
        f"The piecewise schedule needs as many scales {scales} as "
        f"boundaries {boundaries}, at least one.")
  if list(boundaries) != sorted(set(boundaries)) or boundaries[0] <= 0:
    raise ValueError(
        f"boundaries={boundaries} must be strictly increasing update counts "
        "> 0.")
  if any(not s > 0 for s in scales):
    raise ValueError(f"scales={scales} must all be > 0.")
  return optax.piecewise_constant_schedule(
      learning_rate, dict(zip(boundaries, scales, strict=True)))


def make_optimizer(
    *, name: str, learning_rate: float | optax.Schedule, momentum: float = 0.0,
    nesterov: bool = False, weight_decay: float = 0.0, b1: float = 0.9,
    b2: float = 0.999, eps: float = 1e-8,
) -> optax.GradientTransformation:
  """An optax optimizer by name, with decoupled weight decay.

  Args:
    name: one of OPTIMIZERS. "adamw" is Adam with decoupled weight decay
      ("adam" has none); "sgd" and "nadam" also accept a decoupled
      weight_decay; "lamb" applies it inside its trust ratio.
    learning_rate: a float > 0 or an optax schedule (see make_schedule).
    momentum: heavy-ball momentum in [0, 1), "sgd" only (0: plain SGD).
    nesterov: Nesterov momentum, "sgd" only, needs momentum > 0.
    weight_decay: decoupled decay coefficient >= 0 (the step subtracts
      lr * weight_decay * params).
    b1, b2, eps: moment decays and epsilon of the Adam family and LAMB.

  Returns:
    An optax GradientTransformation.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"Optimizer {name!r} is not one of {OPTIMIZERS}.")
  if not callable(learning_rate) and (
      not learning_rate > 0 or math.isinf(learning_rate)):
    raise ValueError(
        f"learning_rate={learning_rate} must be finite and > 0, or a "
        "schedule.")
  _check_unit_interval("momentum", momentum)
  _check_unit_interval("b1", b1)
  _check_unit_interval("b2", b2)
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
  if not eps > 0:
    raise ValueError(f"eps={eps} must be > 0.")
  if name != "sgd" and (momentum or nesterov):
    raise ValueError(
        f"momentum / nesterov are SGD options; {name!r} uses b1 instead.")
  if nesterov and not momentum:
    raise ValueError("nesterov=True needs momentum > 0.")
  if name == "adam" and weight_decay:
    raise ValueError(
        "'adam' has no weight decay: use 'adamw' for decoupled weight decay.")

  if name == "lamb":
    return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps,
                      weight_decay=weight_decay)
  if name in ("adam", "adamw"):
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay)
  if name == "nadam":
    return optax.nadamw(learning_rate, b1=b1, b2=b2, eps=eps,
                        weight_decay=weight_decay)
  return optax.chain(
      optax.trace(decay=momentum, nesterov=nesterov) if momentum
      else optax.identity(),
      optax.add_decayed_weights(weight_decay) if weight_decay
      else optax.identity(),
      optax.scale_by_learning_rate(learning_rate),
  )
