"""One-run empirical privacy audit of a DP-SGD engine.

`audit(...)` trains with m canaries (each inserted by an independent fair
coin flip), scores every canary, and turns the scores of the inserted and
the held-out canaries into empirical lower bounds on epsilon with
jax_privacy.auditing.CanaryScoreAuditor:

  one-run          Steinke, Nasr & Jagielski 2023 ("Privacy auditing with
                   one (1) training run"): valid for the m canaries of ONE
                   run, which are not independent trials.
  Clopper-Pearson  the classic bound (Jagielski et al. 2020, Nasr et al.
                   2021); strictly it presumes independent trials (one
                   canary per run), so with m canaries in one run it is a
                   heuristic, reported beside the one-run bound.

Both hold with probability >= 1 - significance; when a canary kind has
several score families each gets significance / (number of families)
(Bonferroni) and the largest bound is reported. An empirical epsilon above
the theoretical one means the engine does not give the guarantee it claims
(or the audit's significance event happened).

The engine is `make_engine(loss_fn=..., optimizer=..., config=...)` (by
default dpeq.training.update.make_private_update); the theoretical epsilon
is that of the CLAIMED DpSgdConfig (its noise multiplier, the Poisson rate
expected_batch_size / n over the n examples actually trained on, the number
of updates), from dpeq.privacy.accounting.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax_privacy import auditing

from dpeq.audit import canaries as canaries_lib
from dpeq.privacy import accounting
from dpeq.privacy.sampling import PoissonSampler
from dpeq.training import metrics
from dpeq.training import update as update_lib

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class AuditResult:
  """Empirical and theoretical epsilon of one audited run.

  Attributes:
    kind: the canary kind ("gradient" or "input").
    num_canaries / num_included: m, and how many the coin flips inserted.
    significance: the failure probability of the bounds (1 - confidence).
    delta: the delta of every epsilon here.
    theoretical_epsilon: the accountant's epsilon of the claimed config.
    epsilon_one_run: Steinke et al.'s bound (max over score families).
    epsilon_clopper_pearson: the Clopper-Pearson bound (max over families).
    by_score: score family -> {"one_run", "clopper_pearson", "auroc"}.
    num_updates / sampling_rate / noise_multiplier: the claimed run.
  """

  kind: str
  num_canaries: int
  num_included: int
  significance: float
  delta: float
  theoretical_epsilon: float
  epsilon_one_run: float
  epsilon_clopper_pearson: float
  by_score: Mapping[str, Mapping[str, float]]
  num_updates: int
  sampling_rate: float
  noise_multiplier: float

  @property
  def violated(self) -> bool:
    """True when an empirical bound exceeds the theoretical epsilon."""
    return max(self.epsilon_one_run,
               self.epsilon_clopper_pearson) > self.theoretical_epsilon

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["by_score"] = {k: dict(v) for k, v in self.by_score.items()}
    out["violated"] = self.violated
    return out


def bounds(in_scores: np.ndarray, out_scores: np.ndarray, *,
           significance: float, delta: float) -> dict[str, float]:
  """Empirical epsilon lower bounds and AUROC of one score family."""
  auditor = auditing.CanaryScoreAuditor(in_scores, out_scores)
  return {
      "one_run": float(auditor.epsilon_one_run(significance, delta)),
      "clopper_pearson": float(
          auditor.epsilon_clopper_pearson(significance, delta)),
      "auroc": float(auditor.attack_auroc()),
  }


def _check_data(images, labels) -> int:
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(
        f"audit: images must be [n, H, W, C] and labels [n]; got "
        f"{images.shape} and {labels.shape}.")
  if images.dtype != np.float32 or not np.all(np.isfinite(images)):
    raise ValueError(
        "audit: images must be finite float32 in the model's input units "
        f"(standardised); got dtype {images.dtype}.")
  return images.shape[0]


def audit(
    *,
    apply_fn: ApplyFn,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    canaries: canaries_lib.CanarySet,
    config: update_lib.DpSgdConfig,
    optimizer: optax.GradientTransformation,
    num_updates: int,
    delta: float,
    seed: int,
    significance: float = 0.05,
    make_engine: Callable[..., update_lib.PrivateUpdate] = (
        update_lib.make_private_update),
) -> AuditResult:
  """Trains with `canaries` inserted and bounds epsilon from their scores.

  Args:
    apply_fn: `apply_fn(params, images) -> logits`.
    params: the initial parameters.
    images / labels: the real training examples, float32 [n, H, W, C]
      standardised, int [n].
    canaries: from dpeq.audit.canaries (their coin flips decide which are
      inserted).
    config: the CLAIMED DP-SGD config (clip norm, noise multiplier, expected
      batch size, micro-batch size); the theoretical epsilon is its.
    optimizer: the optax optimizer of the run.
    num_updates: T.
    delta: the delta of every reported epsilon.
    seed: seeds the Poisson sampler and the noise (an audit is a test: its
      randomness need not be secret).
    significance: failure probability of the empirical bounds.
    make_engine: builds the engine under audit (tests pass broken ones).

  Returns:
    The AuditResult.
  """
  num_real = _check_data(images, labels)
  included = np.flatnonzero(canaries.included)
  canary_ids = np.concatenate([np.full(num_real, canaries_lib.NOT_A_CANARY),
                               included]).astype(np.int32)
  if canaries.kind == "gradient":
    shape = images.shape[1:]
    all_images = np.concatenate(
        [images, np.zeros((included.size, *shape), np.float32)])
    all_labels = np.concatenate([labels, np.zeros(included.size, labels.dtype)])
  elif canaries.kind == "input":
    all_images = np.concatenate([images, canaries.images[included]])
    all_labels = np.concatenate([labels, canaries.labels[included]])
  else:
    raise ValueError(f"audit: unknown canary kind {canaries.kind!r}.")
  num_examples = all_images.shape[0]

  def loss_fn(p, views):
    logits = apply_fn(p, views["images"])
    return metrics.cross_entropy(logits, views["labels"]), {}

  if canaries.kind == "gradient":
    loss_fn = canaries_lib.with_gradient_canaries(loss_fn, canaries)
  engine = make_engine(loss_fn=loss_fn, optimizer=optimizer, config=config)
  micro = config.micro_batch_size or 1
  sampler = PoissonSampler(num_examples=num_examples,
                           expected_batch_size=config.expected_batch_size,
                           seed=seed, pad_multiple=micro)
  state = engine.init(params, key=jax.random.key(seed))
  step = jax.jit(lambda s, b, m: engine.update(s, b, m, key=jax.random.key(0)))

  trajectory = []
  if canaries.kind == "gradient":
    trajectory.append(canaries_lib.flat_coordinates(state.params,
                                                    canaries.coordinates))
  for t in range(num_updates):
    selection = sampler.batch(t)
    rows = selection.indices
    batch = {"images": all_images[rows], "labels": all_labels[rows],
             canaries_lib.CANARY_FIELD: canary_ids[rows]}
    state, _ = step(state, batch, jnp.asarray(selection.mask))
    if canaries.kind == "gradient":
      trajectory.append(canaries_lib.flat_coordinates(state.params,
                                                      canaries.coordinates))

  if canaries.kind == "gradient":
    trajectory = np.stack(trajectory)
    scores = {"displacement": canaries_lib.displacement_scores(trajectory),
              "spread": canaries_lib.spread_scores(trajectory)}
  else:
    def losses(p):
      logits = apply_fn(p, jnp.asarray(canaries.images))
      return np.asarray(metrics.cross_entropy(
          logits, jnp.asarray(canaries.labels)), np.float64)
    scores = {"loss_drop": losses(params) - losses(state.params)}

  per_family = significance / len(scores)
  by_score = {name: bounds(values[canaries.included],
                           values[~canaries.included],
                           significance=per_family, delta=delta)
              for name, values in scores.items()}
  sampling_rate = sampler.sampling_rate
  theoretical = accounting.epsilon(
      noise_multiplier=config.noise_multiplier, sampling_rate=sampling_rate,
      steps=num_updates, delta=delta)
  return AuditResult(
      kind=canaries.kind, num_canaries=canaries.num_canaries,
      num_included=canaries.num_included, significance=significance,
      delta=delta, theoretical_epsilon=float(theoretical),
      epsilon_one_run=max(b["one_run"] for b in by_score.values()),
      epsilon_clopper_pearson=max(b["clopper_pearson"]
                                  for b in by_score.values()),
      by_score=by_score, num_updates=num_updates,
      sampling_rate=sampling_rate,
      noise_multiplier=float(config.noise_multiplier))
