"""Privacy accounting of DP-SGD on dp_accounting: epsilon and calibration.

The float-in/float-out functions are for Poisson-sampled Gaussian DP-SGD
under add/remove-one adjacency: T updates, each a Gaussian mechanism with
noise multiplier sigma on a Poisson sample of rate q, i.e. the DpEvent
SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T).
Other samplers give their own DpEvent (dpeq.privacy.sampling) for
`epsilon_of_event`, `calibrate_noise_multiplier_of_event`,
`calibrate_steps_of_event` and `PrivacyLedger`.

Two accountants: "pld" (privacy loss distributions, the default; tight up to
the discretization, which rounds pessimistically) and "rdp" (Renyi DP with
dp_accounting's improved RDP -> (epsilon, delta) conversion; looser, usually
by 5-10%). Both return upper bounds on the true epsilon.
"""

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import dp_accounting
from absl import logging as absl_logging
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant

from dpeq.privacy import noise

ACCOUNTANTS = ("pld", "rdp")
DEFAULT_VALUE_DISCRETIZATION_INTERVAL = 1e-4
# Above this, the noise would drown any signal: we call a target unreachable.
MAX_NOISE_MULTIPLIER = 1e3
# Below this, calibration stops searching (the target is met already).
MIN_NOISE_MULTIPLIER = 1e-2
MAX_STEPS = 10**8


class _DropNonConvergence(logging.Filter):
  """Drops dp_accounting's 'failed to converge' warnings (RDP orders that
  fail to converge are excluded from the minimum: harmless, and noisy)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "failed to converge" not in str(record.msg)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  logger = absl_logging.get_absl_logger()
  log_filter = _DropNonConvergence()
  logger.addFilter(log_filter)
  try:
    yield
  finally:
    logger.removeFilter(log_filter)


def _check_delta(delta: float) -> float:
  delta = float(delta)
  if not 0 < delta < 1:
    raise ValueError(
        f"delta={delta} must be in (0, 1); use delta < 1/num_examples, "
        "e.g. 1e-5 for CIFAR-10."
    )
  return delta


def _check_accountant(accountant: str) -> str:
  if accountant not in ACCOUNTANTS:
    raise ValueError(
        f"accountant={accountant!r} is not one of {ACCOUNTANTS}.")
  return accountant


def _check_positive(name: str, value: float) -> float:
  value = float(value)
  if not value > 0 or math.isinf(value):
    raise ValueError(f"{name}={value} must be a finite number > 0.")
  return value


def _check_rate(sampling_rate: float) -> float:
  sampling_rate = float(sampling_rate)
  if not 0 < sampling_rate <= 1:
    raise ValueError(
        f"sampling_rate={sampling_rate} must be in (0, 1]: it is "
        "expected_batch_size / num_examples."
    )
  return sampling_rate


def _check_steps(steps: int) -> int:
  if isinstance(steps, bool) or int(steps) != steps or steps < 0:
    raise ValueError(f"steps={steps!r} must be an int >= 0.")
  return int(steps)


def warn_if_delta_too_large(delta: float, num_examples: int) -> None:
  """Warns when delta >= 1/n (then "leak one example" would satisfy it)."""
  if delta >= 1.0 / num_examples:
    warnings.warn(
        f"delta={delta} is >= 1/num_examples = {1.0 / num_examples:.3g}: a "
        "mechanism that publishes one random example is (0, delta)-DP at "
        "this delta. Use delta well below 1/num_examples.",
        stacklevel=2,
    )


def make_accountant(
    accountant: str = "pld", *,
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> dp_accounting.PrivacyAccountant:
  """A fresh dp_accounting accountant (add/remove-one adjacency)."""
  _check_accountant(accountant)
  if accountant == "pld":
    _check_positive("value_discretization_interval",
                    value_discretization_interval)
    return pld_privacy_accountant.PLDAccountant(
        value_discretization_interval=value_discretization_interval)
  return rdp_privacy_accountant.RdpAccountant()


def dp_sgd_event(*, noise_multiplier: float, sampling_rate: float,
                 steps: int) -> dp_accounting.DpEvent:
  """The DpEvent of Poisson-sampled Gaussian DP-SGD."""
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
      steps)


def epsilon_of_event(
    event: dp_accounting.DpEvent, *, delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
  """Epsilon at `delta` of any DpEvent (inf for a non-private one).

  With "pld", a composition of plain Gaussian mechanisms (e.g. the shuffle
  sampler's event) is answered exactly by the analytic Gaussian mechanism
  (Balle & Wang 2018) at the combined noise multiplier (sum_i sigma_i^-2)^-1/2:
  tighter than a PLD, and instant where a PLD at small sigma would exhaust
  memory.

  Raises:
    ValueError: if `delta` is not in (0, 1), or the accountant does not
      support the event (e.g. a truncated Poisson event with "rdp").
  """
  delta = _check_delta(delta)
  acc = make_accountant(
      accountant, value_discretization_interval=value_discretization_interval)
  if not acc.supports(event):
    raise ValueError(
        f"The {accountant!r} accountant does not support {event}; use "
        f"the other accountant ({ACCOUNTANTS})."
    )
  if accountant == "pld":
    inverse_variance = _gaussian_inverse_variance(event)
    if inverse_variance is not None:
      if inverse_variance == 0:
        return 0.0
      if math.isinf(inverse_variance):
        return math.inf
      sigma = inverse_variance ** -0.5
      # brentq's tolerance, added so that the value stays an upper bound.
      return float(dp_accounting.get_epsilon_gaussian(sigma, delta)) + 1e-11
  with _quiet():
    return float(acc.compose(event).get_epsilon(delta))


def _gaussian_inverse_variance(event: dp_accounting.DpEvent) -> float | None:
  """sum_i sigma_i^-2 over an event made of Gaussian mechanisms only, else
  None (any sampling, or any other mechanism)."""
  if isinstance(event, dp_accounting.NoOpDpEvent):
    return 0.0
  if isinstance(event, dp_accounting.GaussianDpEvent):
    sigma = event.noise_multiplier
    return math.inf if sigma == 0 else sigma ** -2.0
  if isinstance(event, dp_accounting.SelfComposedDpEvent):
    inner = _gaussian_inverse_variance(event.event)
    return None if inner is None else (
        0.0 if event.count == 0 else inner * event.count)
  if isinstance(event, dp_accounting.ComposedDpEvent):
    parts = [_gaussian_inverse_variance(e) for e in event.events]
    return None if any(p is None for p in parts) else sum(parts)
  return None


def epsilon(
    *, noise_multiplier: float, sampling_rate: float, steps: int,
    delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
  """Epsilon of `steps` updates of Poisson-sampled Gaussian DP-SGD.

  Args:
    noise_multiplier: sigma >= 0 (noise std / sensitivity); 0 gives inf.
    sampling_rate: q = expected_batch_size / num_examples, in (0, 1].
    steps: T >= 0 optimizer updates (0 gives 0).
    delta: in (0, 1).
    accountant: "pld" or "rdp".
    value_discretization_interval: PLD discretization (1e-3 is ~5x faster
      and agrees to ~3 decimals).

  Returns:
    An epsilon such that the T updates are (epsilon, delta)-DP under
    add/remove of one example.
  """
  noise_multiplier = float(noise_multiplier)
  if not noise_multiplier >= 0:
    raise ValueError(f"noise_multiplier={noise_multiplier} must be >= 0.")
  _check_delta(delta)
  _check_accountant(accountant)
  sampling_rate = _check_rate(sampling_rate)
  steps = _check_steps(steps)
  if steps == 0:
    return 0.0
  if noise_multiplier == 0:
    return math.inf
  return epsilon_of_event(
      dp_sgd_event(noise_multiplier=noise_multiplier,
                   sampling_rate=sampling_rate, steps=steps),
      delta=delta, accountant=accountant,
      value_discretization_interval=value_discretization_interval)


def calibrate_noise_multiplier(
    *, target_epsilon: float, sampling_rate: float, steps: int,
    delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
  """The smallest sigma (to 1e-6) with epsilon(sigma) <= target_epsilon.

  The returned sigma always satisfies epsilon(sigma) <= target_epsilon. With
  "pld", the (fast) RDP answer brackets the search: PLD is slow at small
  sigma, and PLD's sigma is at most RDP's in practice (checked, not assumed).

  Raises:
    ValueError: on bad inputs, or if even sigma = MAX_NOISE_MULTIPLIER
      exceeds the target (then lower the steps or the sampling rate, or raise
      the target epsilon).
  """
  target_epsilon = _check_positive("target_epsilon", target_epsilon)
  _check_delta(delta)
  _check_accountant(accountant)
  sampling_rate = _check_rate(sampling_rate)
  steps = _check_steps(steps)
  if steps == 0:
    raise ValueError("steps=0 needs no noise: use steps >= 1.")

  def within(sigma: float, acc: str) -> bool:
    return epsilon(
        noise_multiplier=sigma, sampling_rate=sampling_rate, steps=steps,
        delta=delta, accountant=acc,
        value_discretization_interval=value_discretization_interval,
    ) <= target_epsilon

  def search(acc: str, lower: float, upper: float) -> float:
    with _quiet():
      return float(dp_accounting.calibrate_dp_mechanism(
          lambda: make_accountant(
              acc, value_discretization_interval=value_discretization_interval),
          lambda sigma: dp_sgd_event(noise_multiplier=sigma,
                                     sampling_rate=sampling_rate, steps=steps),
          target_epsilon, delta,
          bracket_interval=dp_accounting.ExplicitBracketInterval(lower, upper),
      ))

  if not within(MAX_NOISE_MULTIPLIER, accountant):
    raise ValueError(
        f"target_epsilon={target_epsilon} needs a noise multiplier above "
        f"{MAX_NOISE_MULTIPLIER} at {steps} steps and sampling rate "
        f"{sampling_rate}: use fewer steps, a smaller batch or a larger "
        "target_epsilon."
    )
  if within(MIN_NOISE_MULTIPLIER, "rdp"):
    return MIN_NOISE_MULTIPLIER
  sigma = search("rdp", MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER)
  if accountant == "rdp":
    return sigma
  upper = sigma
  while not within(upper, "pld"):
    upper = min(upper * 1.25, MAX_NOISE_MULTIPLIER)
  lower = upper * 0.8
  while within(lower, "pld"):
    upper, lower = lower, lower * 0.8
  return search("pld", lower, upper)


def _largest_int(within: Callable[[int], bool], guess: int,
                 limit: int) -> int:
  """The largest x in [1, limit] with within(x), for a monotone `within`
  (true up to some point, then false) with within(1) true."""
  if within(guess):
    lower, step = guess, 1
    while lower + step <= limit and within(lower + step):
      lower += step
      step *= 2
    upper = min(limit + 1, lower + step)
  else:
    lower, upper = 1, guess
  while upper - lower > 1:
    middle = (lower + upper) // 2
    if within(middle):
      lower = middle
    else:
      upper = middle
  return lower


def calibrate_steps(
    *, target_epsilon: float, noise_multiplier: float, sampling_rate: float,
    delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> int:
  """The LARGEST number of updates T with epsilon(T) <= target_epsilon.

  Rounding T up would overshoot the budget; this never does.

  Raises:
    ValueError: on bad inputs, or if a single update already exceeds the
      target (raise the noise multiplier or lower the sampling rate).
  """
  target_epsilon = _check_positive("target_epsilon", target_epsilon)
  noise_multiplier = _check_positive("noise_multiplier", noise_multiplier)
  _check_delta(delta)
  _check_accountant(accountant)
  sampling_rate = _check_rate(sampling_rate)

  def within(steps: int, acc: str = accountant) -> bool:
    return epsilon(
        noise_multiplier=noise_multiplier, sampling_rate=sampling_rate,
        steps=steps, delta=delta, accountant=acc,
        value_discretization_interval=value_discretization_interval,
    ) <= target_epsilon

  if not within(1):
    raise ValueError(
        f"One update at noise_multiplier={noise_multiplier} and sampling "
        f"rate {sampling_rate} already exceeds target_epsilon="
        f"{target_epsilon}: raise the noise multiplier or the target."
    )
  # The fast RDP answer is the starting guess of the PLD search.
  guess = 1
  if accountant == "pld" and within(1, "rdp"):
    guess = _largest_int(lambda t: within(t, "rdp"), 1, MAX_STEPS)
  return _largest_int(within, guess, MAX_STEPS)


def calibrate_batch_size(
    *, target_epsilon: float, noise_multiplier: float, num_examples: int,
    steps: int, delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> int:
  """The LARGEST expected batch size B with epsilon(q = B / n) <= target.

  Raises:
    ValueError: on bad inputs, or if even B = 1 exceeds the target.
  """
  target_epsilon = _check_positive("target_epsilon", target_epsilon)
  noise_multiplier = _check_positive("noise_multiplier", noise_multiplier)
  _check_delta(delta)
  _check_accountant(accountant)
  steps = _check_steps(steps)
  if isinstance(num_examples, bool) or int(num_examples) != num_examples or (
      num_examples < 1):
    raise ValueError(f"num_examples={num_examples!r} must be a positive int.")
  num_examples = int(num_examples)
  warn_if_delta_too_large(delta, num_examples)

  def within(batch_size: int, acc: str = accountant) -> bool:
    return epsilon(
        noise_multiplier=noise_multiplier,
        sampling_rate=batch_size / num_examples, steps=steps, delta=delta,
        accountant=acc,
        value_discretization_interval=value_discretization_interval,
    ) <= target_epsilon

  if not within(1):
    raise ValueError(
        f"Even an expected batch of 1 (of {num_examples}) exceeds "
        f"target_epsilon={target_epsilon} at {steps} steps and "
        f"noise_multiplier={noise_multiplier}: use fewer steps or more noise."
    )
  guess = 1
  if accountant == "pld" and within(1, "rdp"):
    guess = _largest_int(lambda b: within(b, "rdp"), 1, num_examples)
  return _largest_int(within, guess, num_examples)


def calibrate_noise_multiplier_of_event(
    make_event: Callable[[float], dp_accounting.DpEvent], *,
    target_epsilon: float, delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> float:
  """The smallest sigma (to 1e-6 relative) with epsilon(make_event(sigma))
  <= target_epsilon, for any sampler, e.g.
  `lambda s: sampler.dp_event(noise_multiplier=s, num_updates=T)`.

  Raises:
    ValueError: on bad inputs, or if sigma = MAX_NOISE_MULTIPLIER does not
      reach the target.
  """
  within = _meets_target(
      make_event, target_epsilon=target_epsilon, delta=delta,
      accountant=accountant,
      value_discretization_interval=value_discretization_interval)

  if not within(MAX_NOISE_MULTIPLIER):
    raise ValueError(
        f"target_epsilon={target_epsilon} needs a noise multiplier above "
        f"{MAX_NOISE_MULTIPLIER}: use fewer updates, a smaller batch or a "
        "larger target_epsilon.")
  # Bisection in log(sigma) from the top: `upper` always meets the target.
  lower, upper = MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER
  if within(lower):
    return lower
  while upper / lower > 1 + 1e-6:
    middle = math.sqrt(lower * upper)
    if within(middle):
      upper = middle
    else:
      lower = middle
  return upper


def _meets_target(make_event, *, target_epsilon, delta, accountant,
                  value_discretization_interval) -> Callable[[Any], bool]:
  """Predicate x -> epsilon(make_event(x)) <= target_epsilon (inputs checked).

  Raises:
    ValueError: on a non-positive target_epsilon, a bad delta or accountant.
  """
  target_epsilon = _check_positive("target_epsilon", target_epsilon)
  _check_delta(delta)
  _check_accountant(accountant)

  def within(x) -> bool:
    return epsilon_of_event(
        make_event(x), delta=delta, accountant=accountant,
        value_discretization_interval=value_discretization_interval,
    ) <= target_epsilon

  return within


def calibrate_steps_of_event(
    make_event: Callable[[int], dp_accounting.DpEvent], *,
    target_epsilon: float, delta: float, accountant: str = "pld",
    value_discretization_interval: float = DEFAULT_VALUE_DISCRETIZATION_INTERVAL,
) -> int:
  """The LARGEST T with epsilon(make_event(T)) <= target_epsilon, for any
  sampler, e.g. `lambda t: sampler.dp_event(noise_multiplier=s,
  num_updates=t)` (for ShuffleSampler this ends on an epoch boundary).

  Raises:
    ValueError: on bad inputs, or if one update exceeds the target.
  """
  within = _meets_target(
      make_event, target_epsilon=target_epsilon, delta=delta,
      accountant=accountant,
      value_discretization_interval=value_discretization_interval)

  if not within(1):
    raise ValueError(
        f"One update already exceeds target_epsilon={target_epsilon}: "
        "raise the noise multiplier or the target.")
  return _largest_int(within, 1, MAX_STEPS)


class PrivacyLedger:
  """Epsilon spent by a run, after any number of updates.

  Holds the sampler (anything with `dp_event(noise_multiplier=,
  num_updates=)`, `num_examples` and `neighboring_relation`, e.g.
  dpeq.privacy.sampling.PoissonSampler), the noise multiplier and delta.
  `epsilon()` is computed for the current number of updates (memoized per
  exact count, so it is never stale). For Poisson sampling with PLD it is
  incremental: the one-update PLD is built once, and the PLD of the newest
  count is kept and composed with the updates recorded since (one
  composition per logged step instead of a T-fold self-composition; both
  are pessimistic discretisations of the same event, and they agree with
  X).

  Two deltas: `delta` is the one epsilon is accounted at (ideal Gaussian
  noise); `total_delta()` adds what the float32 sampler's cut tail costs
  over `noise_dimension` noised coordinates per update
  (dpeq.privacy.noise.noise_tail_delta). The run is
  (epsilon(), total_delta())-DP; that pair is what `to_dict` reports.
  """

  def __init__(self, *, sampler, noise_multiplier: float, delta: float,
               noise_dimension: int, accountant: str = "pld",
               num_updates: int = 0,
               value_discretization_interval: float = (
                   DEFAULT_VALUE_DISCRETIZATION_INTERVAL)):
    self.delta = _check_delta(delta)
    if (isinstance(noise_dimension, bool) or int(noise_dimension)
        != noise_dimension or noise_dimension < 1):
      raise ValueError(
          f"noise_dimension={noise_dimension!r} must be a positive int: the "
          "number of noised coordinates (parameters) per update.")
    self.noise_dimension = int(noise_dimension)
    self.accountant = _check_accountant(accountant)
    self.noise_multiplier = float(noise_multiplier)
    if not self.noise_multiplier >= 0:
      raise ValueError(
          f"noise_multiplier={noise_multiplier} must be >= 0.")
    self.sampler = sampler
    self.value_discretization_interval = value_discretization_interval
    self.num_updates = _check_steps(num_updates)
    self._cache: dict[int, float] = {}
    self._single_step = None
    self._composed = None  # (count, PLD of `count` updates), newest count
    warn_if_delta_too_large(self.delta, sampler.num_examples)

  def record(self, num_updates: int = 1) -> None:
    """Records `num_updates` more noisy updates."""
    self.num_updates += _check_steps(num_updates)

  def _step_pld(self):
    """The PLD of ONE update (built once: ~0.7 s), or None when the
    sampler's step is not a Poisson-sampled Gaussian or the accountant is
    RDP. The T-update PLD is then its self-composition, exactly as
    dp_accounting's PLDAccountant composes the same event."""
    if self._single_step is None:
      step = self.sampler.dp_event(noise_multiplier=self.noise_multiplier,
                                   num_updates=1).event
      single = False
      if (self.accountant == "pld"
          and isinstance(step, dp_accounting.PoissonSampledDpEvent)
          and isinstance(step.event, dp_accounting.GaussianDpEvent)):
        single = pld_lib.from_gaussian_mechanism(
            standard_deviation=step.event.noise_multiplier,
            value_discretization_interval=self.value_discretization_interval,
            sampling_prob=step.sampling_probability)
      self._single_step = single
    return self._single_step or None

  def epsilon_at(self, num_updates: int) -> float:
    """Epsilon (at self.delta) after `num_updates` updates."""
    num_updates = _check_steps(num_updates)
    if num_updates not in self._cache:
      if num_updates == 0:
        value = 0.0
      elif self.noise_multiplier == 0:
        value = math.inf
      elif self._step_pld() is not None:
        with _quiet():
          value = float(self._composed_pld(num_updates).get_epsilon_for_delta(
              self.delta))
      else:
        value = epsilon_of_event(
            self.sampler.dp_event(noise_multiplier=self.noise_multiplier,
                                  num_updates=num_updates),
            delta=self.delta, accountant=self.accountant,
            value_discretization_interval=self.value_discretization_interval)
      self._cache[num_updates] = value
    return self._cache[num_updates]

  def _composed_pld(self, num_updates: int):
    """The PLD of `num_updates` Poisson-sampled Gaussian updates, composed
    onto the newest one already built when that is not more."""
    step = self._step_pld()
    count, pld = self._composed or (0, None)
    if pld is None or num_updates < count:
      count, pld = 0, pld_lib.identity(
          value_discretization_interval=self.value_discretization_interval)
    if num_updates > count:
      more = num_updates - count
      pld = pld.compose(step if more == 1 else step.self_compose(more))
    if num_updates >= (self._composed or (0, None))[0]:
      self._composed = (num_updates, pld)
    return pld

  def epsilon(self) -> float:
    """Epsilon spent after the updates recorded so far."""
    return self.epsilon_at(self.num_updates)

  def noise_tail_delta(self) -> float:
    """What the sampler's cut tail adds to delta after the recorded updates."""
    if self.noise_multiplier == 0:
      return 0.0
    return noise.noise_tail_delta(
        epsilon=self.epsilon(), num_updates=self.num_updates,
        dimension=self.noise_dimension)

  def total_delta(self) -> float:
    """The delta the run is DP at: `delta` plus the sampler's cut tail."""
    return self.delta + self.noise_tail_delta()

  def to_dict(self) -> dict:
    """A JSON-able summary (e.g. for privacy.json): (epsilon, delta) is the
    guarantee, delta including the noise sampler's cut tail."""
    return {
        "epsilon": self.epsilon(),
        "delta": self.total_delta(),
        "accountant_delta": self.delta,
        "noise_tail_delta": self.noise_tail_delta(),
        "noise_dimension": self.noise_dimension,
        "num_updates": self.num_updates,
        "noise_multiplier": self.noise_multiplier,
        "sampling": type(self.sampler).__name__,
        "sampling_rate": self.sampler.sampling_rate,
        "num_examples": self.sampler.num_examples,
        "neighboring_relation": self.sampler.neighboring_relation,
        "accountant": self.accountant,
    }
