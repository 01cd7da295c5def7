"""The privacy plan: the one object that owns every number of the guarantee.

    plan = PrivacyPlan(l2_clip_norm=1.0, expected_batch_size=256,
                       target_epsilon=3.0, delta=1e-5, num_updates=2000)
    plan = plan.calibrated(num_examples=60_000)   # sigma found, target checked
    sampler = plan.sampler(seed=secret.sampler_seed(), pad_multiple=64)
    privatizer = plan.privatizer(key=secret.noise_key())
    ledger = plan.ledger(noise_dimension=num_params)
    plan.epsilon(), plan.dp_event(), plan.to_dict()

The guarantee of a run made from a calibrated plan: T = `num_updates`
updates, each adds N(0, (sigma * sensitivity)^2) per coordinate to the sum of
per-example gradients clipped to `l2_clip_norm` (sensitivity C, or 1 with
`rescale_to_unit_norm`) over a batch drawn by `sampling` from `num_examples`
examples with expected size B = `expected_batch_size`, and divides by B.
That is (epsilon(), delta)-DP under the sampler's neighbouring relation
(add/remove one example for Poisson sampling), accounted by `accountant`;
the ledger adds the float32 noise sampler's cut tail to delta.

Everything is checked when the plan is built (`PlanError` names the field),
so a plan that exists is a plan that can run. Nothing here depends on the
model, the data pipeline or the backend.
"""

import dataclasses
import math
from typing import Any

import jax

from dpeq.privacy import accounting, noise, sampling

ACCOUNTANTS = accounting.ACCOUNTANTS
SAMPLINGS = ("poisson", "shuffle")
_SAMPLERS = {"poisson": sampling.PoissonSampler,
             "shuffle": sampling.ShuffleSampler}


class PlanError(ValueError):
  """A number of the plan cannot be used; `field` names it."""

  def __init__(self, field: str, value: Any, fix: str):
    super().__init__(f"{field}={value!r}: {fix}")
    self.field = field
    self.value = value
    self.fix = fix


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _finite_positive(value: Any) -> bool:
  return _is_number(value) and 0 < value < math.inf


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
  """Every number a DP-SGD guarantee depends on.

  Attributes:
    l2_clip_norm: C, finite and > 0: each example's gradient is clipped to
      L2 norm <= C (in the units of the gradient).
    expected_batch_size: B >= 1: the sampler's expected batch size (q * n
      for Poisson sampling) and the divisor of the noisy sum.
    noise_multiplier: sigma > 0: the noise std is sigma * sensitivity on the
      clipped sum; None: calibrated to `target_epsilon` by `calibrated`.
      Non-private plans have 0.
    target_epsilon: the epsilon (at `delta`) the run must not exceed; None:
      accept what `noise_multiplier` and `num_updates` spend.
    delta: in (0, 1), the delta epsilon is accounted at (well below 1/n).
    num_updates: T >= 1 noisy updates (not micro-steps); None: calibrated.
    num_examples: n, the number of examples the sampler draws from; None
      until `calibrated(num_examples=n)`.
    rescale_to_unit_norm: De et al.: clipped gradients are divided by C, so
      the sensitivity is 1 (the learning rate absorbs C).
    sampling: "poisson" (rate q = B / n, add/remove adjacency) or "shuffle"
      (fixed-size batches of a shuffled epoch, replace-one adjacency; its
      own, weaker event).
    accountant: "pld" (default, tight) or "rdp".
    non_private: train without noise on purpose (sigma 0, epsilon inf).
  """

  l2_clip_norm: float
  expected_batch_size: int
  noise_multiplier: float | None = None
  target_epsilon: float | None = None
  delta: float = 1e-5
  num_updates: int | None = None
  num_examples: int | None = None
  rescale_to_unit_norm: bool = False
  sampling: str = "poisson"
  accountant: str = "pld"
  non_private: bool = False

  def __post_init__(self):
    if not _finite_positive(self.l2_clip_norm):
      raise PlanError("l2_clip_norm", self.l2_clip_norm,
                      "must be a finite number > 0 (the per-example gradient "
                      "clip norm; De et al. use 1.0).")
    for name in ("rescale_to_unit_norm", "non_private"):
      if not isinstance(getattr(self, name), bool):
        raise PlanError(name, getattr(self, name), "must be True or False.")
    if self.sampling not in SAMPLINGS:
      raise PlanError("sampling", self.sampling,
                      f"must be one of {', '.join(map(repr, SAMPLINGS))}.")
    if self.accountant not in ACCOUNTANTS:
      raise PlanError("accountant", self.accountant,
                      f"must be one of {', '.join(map(repr, ACCOUNTANTS))}.")
    if not _is_int(self.expected_batch_size) or self.expected_batch_size < 1:
      raise PlanError("expected_batch_size", self.expected_batch_size,
                      "must be a positive integer.")
    if self.num_updates is not None and (
        not _is_int(self.num_updates) or self.num_updates < 1):
      raise PlanError("num_updates", self.num_updates,
                      "must be a positive integer, or None to calibrate it.")
    if self.num_examples is not None:
      if not _is_int(self.num_examples) or self.num_examples < 1:
        raise PlanError("num_examples", self.num_examples,
                        "must be a positive integer (the training set size).")
      if self.expected_batch_size > self.num_examples:
        raise PlanError("expected_batch_size", self.expected_batch_size,
                        f"exceeds the {self.num_examples} training examples; "
                        "use a batch size of at most the dataset size.")
    if not _is_number(self.delta) or not 0 < self.delta < 1:
      raise PlanError("delta", self.delta,
                      "must lie strictly between 0 and 1 (typically well "
                      "below 1 / number of training examples).")
    sigma, eps = self.noise_multiplier, self.target_epsilon
    if self.non_private:
      if sigma not in (None, 0, 0.0):
        raise PlanError("noise_multiplier", sigma,
                        "must be None or 0 when non_private=True (no noise "
                        "is added).")
      if self.num_updates is None:
        raise PlanError("num_updates", None,
                        "must be set when non_private=True (there is no "
                        "privacy budget to derive it from).")
      object.__setattr__(self, "noise_multiplier", 0.0)
      return
    if sigma is not None and not _finite_positive(sigma):
      raise PlanError("noise_multiplier", sigma,
                      "must be a finite number > 0 for a private run; set it "
                      "to None to calibrate it from target_epsilon, or set "
                      "non_private=True to train without noise.")
    if eps is not None and not _finite_positive(eps):
      raise PlanError("target_epsilon", eps,
                      "must be a positive, finite number.")
    if sigma is None and self.num_updates is None:
      raise PlanError("noise_multiplier", None,
                      "and num_updates=None: set one of them; the other is "
                      "calibrated to target_epsilon.")
    if eps is None and (sigma is None or self.num_updates is None):
      raise PlanError("target_epsilon", None,
                      "is needed to calibrate noise_multiplier or "
                      "num_updates; set it, or set both of those explicitly.")
    if sigma is not None:
      object.__setattr__(self, "noise_multiplier", float(sigma))

  # --- the numbers the mechanism uses

  @property
  def sensitivity(self) -> float:
    """L2 sensitivity of the clipped SUM to adding or removing one example:
    C, or 1 with rescale_to_unit_norm."""
    return 1.0 if self.rescale_to_unit_norm else float(self.l2_clip_norm)

  @property
  def noise_std(self) -> float:
    """Std of the Gaussian noise per coordinate of the clipped sum."""
    self._require_sigma()
    return self.noise_multiplier * self.sensitivity

  @property
  def noise_std_of_mean(self) -> float:
    """Std per coordinate of the noise on the mean (sum / B) the optimizer
    receives."""
    return self.noise_std / self.expected_batch_size

  @property
  def is_calibrated(self) -> bool:
    """Whether n, sigma and T are all known (every method then works)."""
    return (self.num_examples is not None and self.noise_multiplier is not None
            and self.num_updates is not None)

  @property
  def sampling_rate(self) -> float:
    """q = B / n."""
    self._require("num_examples")
    return self.expected_batch_size / self.num_examples

  # --- calibration

  def calibrated(self, *, num_examples: int) -> "PrivacyPlan":
    """The plan for `num_examples` training examples with sigma and T known.

    Fills whichever of noise_multiplier (the smallest sigma within
    target_epsilon after T updates) and num_updates (the largest T within
    target_epsilon at sigma) is None, then checks that the whole run stays
    within target_epsilon.

    Raises:
      PlanError: for a batch larger than the data, or a target that cannot
        be met (field "target_epsilon").
    """
    plan = dataclasses.replace(self, num_examples=num_examples)
    if plan.non_private:
      return plan
    try:
      if plan.noise_multiplier is None:
        plan = dataclasses.replace(
            plan, noise_multiplier=float(plan._calibrate_noise_multiplier()))
      elif plan.num_updates is None:
        plan = dataclasses.replace(
            plan, num_updates=int(plan._calibrate_num_updates()))
    except ValueError as e:
      raise PlanError("target_epsilon", plan.target_epsilon,
                      f"cannot be met: {e}") from None
    if plan.target_epsilon is not None:
      spent = plan.epsilon()
      if spent > plan.target_epsilon * (1 + 1e-6):
        raise PlanError(
            "target_epsilon", plan.target_epsilon,
            f"is exceeded: noise_multiplier={plan.noise_multiplier} for "
            f"{plan.num_updates} updates spends epsilon={spent:.4g}; set "
            "num_updates=None (or noise_multiplier=None) to calibrate, or "
            "set target_epsilon=None to accept it.")
    return plan

  def _calibrate_noise_multiplier(self) -> float:
    if self.sampling == "poisson":
      return accounting.calibrate_noise_multiplier(
          target_epsilon=self.target_epsilon, sampling_rate=self.sampling_rate,
          steps=self.num_updates, delta=self.delta, accountant=self.accountant)
    sampler = self.sampler(seed=None)
    return accounting.calibrate_noise_multiplier_of_event(
        lambda sigma: sampler.dp_event(noise_multiplier=sigma,
                                       num_updates=self.num_updates),
        target_epsilon=self.target_epsilon, delta=self.delta,
        accountant=self.accountant)

  def _calibrate_num_updates(self) -> int:
    if self.sampling == "poisson":
      return accounting.calibrate_steps(
          target_epsilon=self.target_epsilon,
          noise_multiplier=self.noise_multiplier,
          sampling_rate=self.sampling_rate, delta=self.delta,
          accountant=self.accountant)
    # Shuffling: epsilon grows per epoch started, so T ends on an epoch.
    sampler = self.sampler(seed=None)
    return accounting.calibrate_steps_of_event(
        lambda steps: sampler.dp_event(noise_multiplier=self.noise_multiplier,
                                       num_updates=steps),
        target_epsilon=self.target_epsilon, delta=self.delta,
        accountant=self.accountant)

  # --- what the run is made of

  def sampler(self, *, seed: int | None, pad_multiple: int = 1):
    """The batch sampler (dpeq.privacy.sampling) of `sampling` over n.

    `seed`: the run's SECRET sampler seed, or None for a sampler that only
    describes its DpEvent. Its DpEvent is the one this plan accounts.
    """
    self._require("num_examples")
    return _SAMPLERS[self.sampling](
        num_examples=self.num_examples,
        expected_batch_size=self.expected_batch_size, seed=seed,
        pad_multiple=pad_multiple)

  def privatizer(self, *, key: jax.Array):
    """The optax transformation that adds N(0, noise_std^2) per coordinate
    to the clipped sum and divides by B (dpeq.privacy.noise)."""
    self._require_sigma()
    return noise.gaussian_mean_privatizer(
        noise_multiplier=self.noise_multiplier, sensitivity=self.sensitivity,
        expected_batch_size=self.expected_batch_size, key=key)

  def dp_event(self, *, num_updates: int | None = None):
    """The dp_accounting DpEvent of `num_updates` (default T) updates."""
    self._require_sigma()
    steps = self.num_updates if num_updates is None else num_updates
    return self.sampler(seed=None).dp_event(
        noise_multiplier=self.noise_multiplier, num_updates=steps)

  def epsilon(self, *, num_updates: int | None = None) -> float:
    """Epsilon at `delta` after `num_updates` (default T) updates; inf when
    non-private."""
    if self.non_private:
      return math.inf
    steps = self.num_updates if num_updates is None else num_updates
    if steps is None:
      self._require("num_updates")
    if steps == 0:
      return 0.0
    return accounting.epsilon_of_event(
        self.dp_event(num_updates=steps), delta=self.delta,
        accountant=self.accountant)

  def ledger(self, *, noise_dimension: int, num_updates: int = 0):
    """A PrivacyLedger of this plan at `num_updates` recorded updates, with
    `noise_dimension` noised coordinates per update (the number of
    trainable parameters)."""
    self._require_sigma()
    return accounting.PrivacyLedger(
        sampler=self.sampler(seed=None),
        noise_multiplier=self.noise_multiplier, delta=self.delta,
        noise_dimension=noise_dimension, accountant=self.accountant,
        num_updates=num_updates)

  def to_dict(self) -> dict[str, Any]:
    """The plan's numbers and the ones derived from them (for privacy.json
    and report.md, which read them from here instead of re-deriving them)."""
    values = dataclasses.asdict(self)
    if self.noise_multiplier is not None:
      values["sensitivity"] = self.sensitivity
      values["noise_std"] = self.noise_std
      values["noise_std_of_mean"] = self.noise_std_of_mean
    if self.num_examples is not None:
      values["sampling_rate"] = self.sampling_rate
    return values

  # ---

  def _require(self, field: str) -> None:
    if getattr(self, field) is None:
      raise ValueError(
          f"PrivacyPlan.{field} is not known yet: call "
          "plan.calibrated(num_examples=n) first.")

  def _require_sigma(self) -> None:
    self._require("noise_multiplier")
