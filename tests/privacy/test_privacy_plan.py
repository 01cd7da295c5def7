"""The PrivacyPlan: validation, calibration and what it makes, against
independent accountants and a statistical test of the noise it adds."""

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import stats

from dpeq.privacy import accounting, sampling
from dpeq.privacy.plan import PlanError, PrivacyPlan

N, B, DELTA = 20_000, 200, 1e-5


def _plan(**kwargs):
  args = dict(l2_clip_norm=1.0, expected_batch_size=B, noise_multiplier=1.2,
              num_updates=300, delta=DELTA)
  args.update(kwargs)
  return PrivacyPlan(**args)


@pytest.mark.parametrize("kwargs,field", [
    (dict(l2_clip_norm=0.0), "l2_clip_norm"),
    (dict(l2_clip_norm=math.inf), "l2_clip_norm"),
    (dict(l2_clip_norm=math.nan), "l2_clip_norm"),
    (dict(noise_multiplier=0.0), "noise_multiplier"),
    (dict(noise_multiplier=math.inf), "noise_multiplier"),
    (dict(noise_multiplier=1.0, non_private=True), "noise_multiplier"),
    (dict(non_private=True, noise_multiplier=None, num_updates=None),
     "num_updates"),
    (dict(noise_multiplier=None, num_updates=None, target_epsilon=1.0),
     "noise_multiplier"),
    (dict(noise_multiplier=None), "target_epsilon"),
    (dict(target_epsilon=-1.0), "target_epsilon"),
    (dict(delta=1.0), "delta"),
    (dict(expected_batch_size=0), "expected_batch_size"),
    (dict(expected_batch_size=True), "expected_batch_size"),
    (dict(num_updates=0), "num_updates"),
    (dict(num_examples=B - 1), "expected_batch_size"),
    (dict(sampling="fixed"), "sampling"),
    (dict(accountant="moments"), "accountant"),
    (dict(rescale_to_unit_norm=1), "rescale_to_unit_norm"),
])
def test_bad_numbers_are_refused_naming_the_field(kwargs, field):
  with pytest.raises(PlanError) as info:
    _plan(**kwargs)
  assert info.value.field == field


def test_sensitivity_and_noise_std_follow_the_clip_norm_or_rescaling():
  plan = _plan(l2_clip_norm=0.5, noise_multiplier=2.0)
  assert plan.sensitivity == 0.5 and plan.noise_std == 1.0
  assert plan.noise_std_of_mean == pytest.approx(1.0 / B)
  rescaled = _plan(l2_clip_norm=0.5, noise_multiplier=2.0,
                   rescale_to_unit_norm=True)
  assert rescaled.sensitivity == 1.0 and rescaled.noise_std == 2.0
  non_private = _plan(noise_multiplier=None, non_private=True)
  assert non_private.noise_multiplier == 0.0
  assert non_private.calibrated(num_examples=N).epsilon() == math.inf


def _independent_rdp_epsilon(sigma, q, steps):
  """Epsilon straight from dp_accounting (not through dpeq.accounting)."""
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(sigma)), steps)
  return accountant.get_epsilon(DELTA)


def test_calibrated_sigma_is_the_smallest_within_the_target():
  plan = _plan(noise_multiplier=None, target_epsilon=2.0, accountant="rdp"
               ).calibrated(num_examples=N)
  sigma = plan.noise_multiplier
  assert plan.is_calibrated and plan.sampling_rate == B / N
  assert _independent_rdp_epsilon(sigma, B / N, 300) <= 2.0 * (1 + 1e-6)
  assert _independent_rdp_epsilon(0.98 * sigma, B / N, 300) > 2.0
  assert plan.epsilon() == pytest.approx(
      _independent_rdp_epsilon(sigma, B / N, 300), rel=1e-9)


def test_calibrated_updates_are_the_most_within_the_target():
  plan = _plan(num_updates=None, target_epsilon=1.5, accountant="rdp"
               ).calibrated(num_examples=N)
  steps = plan.num_updates
  assert _independent_rdp_epsilon(1.2, B / N, steps) <= 1.5
  assert _independent_rdp_epsilon(1.2, B / N, steps + 1) > 1.5


def test_a_target_that_is_exceeded_or_unreachable_is_refused():
  with pytest.raises(PlanError, match="is exceeded") as info:
    _plan(noise_multiplier=0.5, target_epsilon=0.5).calibrated(num_examples=N)
  assert info.value.field == "target_epsilon"
  with pytest.raises(PlanError, match="cannot be met"):
    _plan(noise_multiplier=None, target_epsilon=1e-6,
          num_updates=10**6).calibrated(num_examples=N)
  with pytest.raises(PlanError, match="exceeds the 100"):
    _plan().calibrated(num_examples=100)


def test_uncalibrated_plans_say_what_is_missing():
  plan = _plan()
  with pytest.raises(ValueError, match="calibrated"):
    plan.sampler(seed=0)
  with pytest.raises(ValueError, match="calibrated"):
    _plan(noise_multiplier=None, target_epsilon=1.0).privatizer(
        key=jax.random.key(0))


def test_sampler_event_and_ledger_are_the_plans():
  plan = _plan().calibrated(num_examples=N)
  sampler = plan.sampler(seed=3, pad_multiple=8)
  assert isinstance(sampler, sampling.PoissonSampler)
  assert sampler.sampling_rate == B / N and len(sampler.batch(0).mask) % 8 == 0
  assert plan.dp_event() == sampling.PoissonSampler(
      num_examples=N, expected_batch_size=B, seed=None).dp_event(
          noise_multiplier=1.2, num_updates=300)
  ledger = plan.ledger(noise_dimension=1000, num_updates=300)
  assert ledger.epsilon() == pytest.approx(plan.epsilon(), rel=1e-7)
  assert plan.epsilon(num_updates=0) == 0.0
  shuffled = _plan(sampling="shuffle").calibrated(num_examples=N)
  assert isinstance(shuffled.sampler(seed=None), sampling.ShuffleSampler)
  # Fixed-size shuffled batches are accounted with their own, weaker event.
  assert shuffled.epsilon() > plan.epsilon()
  assert shuffled.epsilon() == accounting.epsilon_of_event(
      shuffled.dp_event(), delta=DELTA)
  values = plan.to_dict()
  assert values["noise_std"] == 1.2 and values["sensitivity"] == 1.0
  assert values["sampling_rate"] == B / N and values["num_examples"] == N


def test_the_privatizer_adds_the_plans_noise_to_the_mean():
  plan = _plan(l2_clip_norm=0.5, noise_multiplier=3.0)
  grads = {"w": jnp.zeros(50_000)}
  privatizer = plan.privatizer(key=jax.random.key(0))
  noisy, _ = privatizer.update(grads, privatizer.init(grads))
  draws = np.asarray(noisy["w"], np.float64)
  std = plan.noise_std_of_mean  # sigma * C / B
  assert std == pytest.approx(3.0 * 0.5 / B)
  assert stats.kstest(draws, stats.norm(scale=std).cdf).pvalue > 1e-3
  # The test has the power to see a 10% error in the scale (e.g. a
  # division by a realised instead of the expected batch size).
  assert stats.kstest(draws, stats.norm(scale=std * 1.1).cdf).pvalue < 1e-6
