"""Accounting: monotonicity, calibration, independent cross-checks, ledger."""

import logging
import math

import dp_accounting
import numpy as np
import pytest
from scipy import optimize, special, stats

from dpeq.privacy import accounting, sampling

DELTA = 1e-5
FAST = dict(value_discretization_interval=1e-3)  # PLD, ~5x faster.


def _rdp_closed_form(q, sigma, alpha):
  """RDP of order alpha (integer) of the Poisson-subsampled Gaussian:
  log(sum_k C(a,k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2))) / (a-1)."""
  k = np.arange(alpha + 1)
  log_terms = (special.gammaln(alpha + 1) - special.gammaln(k + 1)
               - special.gammaln(alpha - k + 1) + (alpha - k) * np.log1p(-q)
               + k * np.log(q) + (k * k - k) / (2 * sigma**2))
  return special.logsumexp(log_terms) / (alpha - 1)


def _epsilon_from_integer_rdp(q, sigma, steps, delta):
  """The improved RDP -> (eps, delta) conversion over integer orders."""
  best = math.inf
  for alpha in range(2, 257):
    rdp = steps * _rdp_closed_form(q, sigma, alpha)
    eps = (rdp + math.log1p(-1 / alpha)
           - (math.log(delta) + math.log(alpha)) / (alpha - 1))
    best = min(best, eps)
  return best


def _gaussian_epsilon(sigma, delta):
  """Exact epsilon of the Gaussian mechanism (sensitivity 1, std sigma):
  delta(eps) = Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps
  sigma) (Balle & Wang 2018), solved for eps."""
  def gap(eps):
    return (stats.norm.cdf(0.5 / sigma - eps * sigma)
            - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma)
            - delta)
  return optimize.brentq(gap, 0.0, 100.0, xtol=1e-12)


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 1.5, 500), (0.05, 3.0, 200)])
def test_rdp_matches_the_closed_form_of_the_sampled_gaussian(q, sigma, steps):
  ours = accounting.epsilon(noise_multiplier=sigma, sampling_rate=q,
                            steps=steps, delta=DELTA, accountant="rdp")
  independent = _epsilon_from_integer_rdp(q, sigma, steps, DELTA)
  # dp_accounting also tries fractional orders, so it may only be lower.
  assert independent * 0.97 <= ours <= independent * (1 + 1e-9)


def test_pld_matches_the_exact_gaussian_mechanism():
  # q = 1: T compositions of N(0, sigma^2) = one with sigma / sqrt(T).
  sigma, steps = 4.0, 16
  ours = accounting.epsilon(noise_multiplier=sigma, sampling_rate=1.0,
                            steps=steps, delta=DELTA)
  exact = _gaussian_epsilon(sigma / math.sqrt(steps), DELTA)
  assert exact <= ours <= exact * 1.005


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_epsilon_is_monotonic_in_sigma_and_steps(accountant):
  eps = lambda sigma, steps: accounting.epsilon(
      noise_multiplier=sigma, sampling_rate=0.01, steps=steps, delta=DELTA,
      accountant=accountant, **FAST)
  by_sigma = [eps(s, 300) for s in (1.0, 1.5, 2.0, 4.0, 8.0)]
  by_steps = [eps(2.0, t) for t in (1, 10, 100, 1000)]
  assert all(a > b for a, b in zip(by_sigma, by_sigma[1:], strict=False))
  assert all(a < b for a, b in zip(by_steps, by_steps[1:], strict=False))
  assert eps(2.0, 0) == 0.0


def test_rdp_is_looser_than_pld_in_the_usual_regime():
  for q, sigma, steps in [(0.01, 1.5, 500), (0.08, 3.0, 1000)]:
    kwargs = dict(noise_multiplier=sigma, sampling_rate=q, steps=steps,
                  delta=DELTA)
    pld = accounting.epsilon(**kwargs)
    rdp = accounting.epsilon(**kwargs, accountant="rdp")
    assert 0.6 * rdp < pld < rdp


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibration_round_trips(accountant):
  q, target = 0.02, 2.0
  sigma = accounting.calibrate_noise_multiplier(
      target_epsilon=target, sampling_rate=q, steps=300, delta=DELTA,
      accountant=accountant, **FAST)
  eps = lambda sigma, steps: accounting.epsilon(
      noise_multiplier=sigma, sampling_rate=q, steps=steps, delta=DELTA,
      accountant=accountant, **FAST)
  assert eps(sigma, 300) <= target
  assert eps(sigma, 300) == pytest.approx(target, rel=1e-4)
  steps = accounting.calibrate_steps(
      target_epsilon=target, noise_multiplier=sigma, sampling_rate=q,
      delta=DELTA, accountant=accountant, **FAST)
  # The LARGEST T within the budget: 300 fits, T + 1 does not.
  assert steps >= 300
  assert eps(sigma, steps) <= target < eps(sigma, steps + 1)


def test_calibrate_batch_size_is_the_largest_within_budget():
  kwargs = dict(noise_multiplier=2.0, steps=300, delta=DELTA, accountant="rdp")
  batch = accounting.calibrate_batch_size(target_epsilon=2.0,
                                          num_examples=10_000, **kwargs)
  eps = lambda b: accounting.epsilon(sampling_rate=b / 10_000, **kwargs)
  assert eps(batch) <= 2.0 < eps(batch + 1)


def test_ledger_reports_the_epsilon_of_the_updates_so_far():
  sampler = sampling.PoissonSampler(num_examples=50_000,
                                    expected_batch_size=500, seed=0)
  ledger = accounting.PrivacyLedger(sampler=sampler, noise_multiplier=2.0,
                                    delta=DELTA, noise_dimension=10**6,
                                    **FAST)
  assert ledger.epsilon() == 0.0
  previous = 0.0
  for _ in range(3):
    ledger.record()
    now = ledger.epsilon()
    assert now > previous  # Never stale.
    # Incremental composition: the same event's epsilon up to ~1e-9.
    assert now == pytest.approx(accounting.epsilon(
        noise_multiplier=2.0, sampling_rate=0.01, steps=ledger.num_updates,
        delta=DELTA, **FAST), rel=1e-7)
    previous = now
  ledger.record(97)
  assert ledger.num_updates == 100
  summary = ledger.to_dict()
  assert summary["epsilon"] == ledger.epsilon_at(100)
  assert summary["neighboring_relation"] == "add_or_remove_one"
  # The reported delta adds the float32 sampler's cut tail to the
  # accountant's: (1 + e^eps) * T * ceil(d / 2) * 2^-96.
  tail = (1 + math.exp(ledger.epsilon())) * 100 * 500_000 * 2.0 ** -96
  assert summary["noise_tail_delta"] == pytest.approx(tail)
  assert summary["delta"] == DELTA + summary["noise_tail_delta"] > DELTA
  assert summary["accountant_delta"] == DELTA
  resumed = accounting.PrivacyLedger(sampler=sampler, noise_multiplier=2.0,
                                     delta=DELTA, noise_dimension=10**6,
                                     num_updates=100, **FAST)
  assert resumed.epsilon() == pytest.approx(ledger.epsilon(), rel=1e-7)


def test_ledger_composes_incrementally_and_matches_the_accountant(
    monkeypatch):
  sampler = sampling.PoissonSampler(num_examples=60_000,
                                    expected_batch_size=256, seed=None)
  ledger = accounting.PrivacyLedger(sampler=sampler, noise_multiplier=1.1,
                                    delta=DELTA, noise_dimension=10, **FAST)
  ledger.record(30)
  ledger.epsilon()
  # From here on, each logged step is ONE composition with the one-update
  # PLD: a T-fold self-composition would fail.
  step_pld = ledger._step_pld()
  monkeypatch.setattr(type(step_pld), "self_compose", lambda *a, **k: (
      pytest.fail("self_compose called: the ledger is not incremental")))
  for _ in range(20):
    ledger.record()
    ledger.epsilon()
  monkeypatch.undo()
  assert ledger.epsilon() == pytest.approx(accounting.epsilon_of_event(
      sampler.dp_event(noise_multiplier=1.1, num_updates=50), delta=DELTA,
      **FAST), rel=1e-7)


def test_delta_not_below_one_over_n_warns():
  sampler = sampling.PoissonSampler(num_examples=1000, expected_batch_size=10,
                                    seed=0)
  with pytest.warns(UserWarning, match="1/num_examples"):
    accounting.PrivacyLedger(sampler=sampler, noise_multiplier=1.0,
                             delta=1e-3, noise_dimension=10)


def test_failed_to_converge_warnings_are_silenced(caplog):
  kwargs = dict(noise_multiplier=0.3, sampling_rate=0.5, steps=1, delta=DELTA)
  with caplog.at_level(logging.WARNING):
    accounting.epsilon(**kwargs, accountant="rdp")
  assert "failed to converge" not in caplog.text
  # (dp_accounting itself does warn here, so the check above means something.)
  with caplog.at_level(logging.WARNING):
    accounting.make_accountant("rdp").compose(
        accounting.dp_sgd_event(**{k: v for k, v in kwargs.items()
                                   if k != "delta"})).get_epsilon(DELTA)
  assert "failed to converge" in caplog.text


@pytest.mark.parametrize("kwargs,match", [
    (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
    (dict(sampling_rate=0.0), "sampling_rate"),
    (dict(accountant="moments"), "accountant"),
    (dict(steps=-1), "steps"),
])
def test_bad_epsilon_inputs_are_rejected(kwargs, match):
  args = dict(noise_multiplier=1.0, sampling_rate=0.01, steps=10, delta=DELTA)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    accounting.epsilon(**args)


def test_bad_or_unreachable_targets_are_rejected():
  base = dict(sampling_rate=0.01, delta=DELTA, accountant="rdp")
  for target in (0.0, -1.0):
    with pytest.raises(ValueError, match="target_epsilon"):
      accounting.calibrate_noise_multiplier(target_epsilon=target, steps=10,
                                            **base)
  with pytest.raises(ValueError, match="noise multiplier above"):
    accounting.calibrate_noise_multiplier(target_epsilon=1e-6,
                                          steps=10**7, **base)
  with pytest.raises(ValueError, match="already exceeds"):
    accounting.calibrate_steps(target_epsilon=0.01, noise_multiplier=0.3,
                               **base)
  with pytest.raises(ValueError, match="delta"):
    accounting.calibrate_steps(target_epsilon=1.0, noise_multiplier=1.0,
                               sampling_rate=0.01, delta=2.0)


def test_sigma_zero_means_no_privacy():
  assert accounting.epsilon(noise_multiplier=0.0, sampling_rate=0.1, steps=1,
                            delta=DELTA) == math.inf
  assert isinstance(accounting.dp_sgd_event(
      noise_multiplier=1.0, sampling_rate=0.1, steps=3),
      dp_accounting.SelfComposedDpEvent)


def test_gaussian_compositions_are_exact_and_fast_with_pld():
  # The shuffle sampler's event: Gaussian mechanisms only, no sampling.
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(2.0),
                                     dp_accounting.GaussianDpEvent(2.0)]), 4)
  ours = accounting.epsilon_of_event(event, delta=DELTA)
  assert ours == pytest.approx(_gaussian_epsilon(2.0 / math.sqrt(8), DELTA),
                               rel=1e-7)
  # dp_accounting's own PLD agrees (it is pessimistic by the discretization).
  pld = accounting.make_accountant("pld").compose(event).get_epsilon(DELTA)
  assert ours <= pld <= ours * 1.001
  # Tiny sigma (a calibration bracket end) is instant, not a huge PLD.
  tiny = dp_accounting.SelfComposedDpEvent(
      dp_accounting.GaussianDpEvent(0.005), 3)
  assert accounting.epsilon_of_event(tiny, delta=DELTA) > 1e3


def test_calibration_for_any_sampler():
  shuffle = sampling.ShuffleSampler(num_examples=1000, expected_batch_size=100,
                                    seed=0)
  sigma = accounting.calibrate_noise_multiplier_of_event(
      lambda s: shuffle.dp_event(noise_multiplier=s, num_updates=30),
      target_epsilon=4.0, delta=DELTA)
  eps = lambda s, t: accounting.epsilon_of_event(
      shuffle.dp_event(noise_multiplier=s, num_updates=t), delta=DELTA)
  assert eps(sigma, 30) <= 4.0 < eps(sigma * (1 - 1e-5), 30)
  steps = accounting.calibrate_steps_of_event(
      lambda t: shuffle.dp_event(noise_multiplier=sigma, num_updates=t),
      target_epsilon=4.0, delta=DELTA)
  assert steps == 30  # Three whole epochs of 10 updates, not one more.
  # On the Poisson event it agrees with the specialised calibration.
  poisson = sampling.PoissonSampler(num_examples=1000, expected_batch_size=20,
                                    seed=0)
  generic = accounting.calibrate_steps_of_event(
      lambda t: poisson.dp_event(noise_multiplier=2.0, num_updates=t),
      target_epsilon=2.0, delta=DELTA, accountant="rdp")
  assert generic == accounting.calibrate_steps(
      target_epsilon=2.0, noise_multiplier=2.0, sampling_rate=0.02,
      delta=DELTA, accountant="rdp")


@pytest.mark.parametrize("max_batch_size", [None, 700])
def test_ledger_reuses_one_update_pld_and_equals_the_accountant(max_batch_size):
  sampler = sampling.PoissonSampler(num_examples=60_000,
                                    expected_batch_size=512, seed=None,
                                    max_batch_size=max_batch_size)
  ledger = accounting.PrivacyLedger(sampler=sampler, noise_multiplier=0.9,
                                    delta=DELTA, noise_dimension=10, **FAST)
  for steps in (1, 25, 400, 2400):
    expected = accounting.epsilon_of_event(
        sampler.dp_event(noise_multiplier=0.9, num_updates=steps),
        delta=DELTA, **FAST)
    assert ledger.epsilon_at(steps) == pytest.approx(expected, rel=1e-7), steps
  # The cached one-update PLD is used for Poisson sampling only.
  assert (ledger._step_pld() is None) == (max_batch_size is not None)
