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

The engine is `make_engine(loss_fn=..., optimizer=..., plan=...)` (by
default dpeq.training.update.make_private_update); the theoretical epsilon
is that of the CLAIMED PrivacyPlan (its noise multiplier, the Poisson rate
expected_batch_size / n over the n examples actually trained on, its number
of updates and delta). The logical batches go through the runner's one
micro-batching path (dpeq.training.micro_batching).
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
from dpeq.privacy.plan import PrivacyPlan
from dpeq.training import metrics
from dpeq.training import update as update_lib
from dpeq.training.micro_batching import MicroBatching

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
    plan: PrivacyPlan,
    optimizer: optax.GradientTransformation,
    seed: int,
    micro_batch_size: int = 64,
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
    plan: the CLAIMED PrivacyPlan (clip norm, noise multiplier, expected
      batch size, updates T, delta, Poisson sampling); its num_examples is
      set here to the examples trained on (real + inserted canaries). The
      theoretical epsilon is its.
    optimizer: the optax optimizer of the run.
    seed: seeds the Poisson sampler and the noise (an audit is a test: its
      randomness need not be secret).
    micro_batch_size: rows per micro-step (config.training.micro_batch_size
      on one device).
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
  if plan.sampling != "poisson" or plan.num_updates is None:
    raise ValueError(
        "audit: the claimed plan must use Poisson sampling and set "
        f"num_updates (got sampling={plan.sampling!r}, num_updates="
        f"{plan.num_updates}).")
  plan = dataclasses.replace(plan, num_examples=num_examples)
  engine = make_engine(loss_fn=loss_fn, optimizer=optimizer, plan=plan)
  batching = MicroBatching(micro_batch_size=micro_batch_size)
  sampler = plan.sampler(seed=seed, pad_multiple=batching.rows_per_step)
  state = engine.init(params, key=jax.random.key(seed))
  clipped = jax.jit(lambda p, b, m, i: engine.clipped_grads(
      p, b, m, key=jax.random.fold_in(jax.random.key(0), i)).totals())
  merge = jax.jit(lambda a, b: a.merge(b))
  apply = jax.jit(engine.apply)

  def micro_step(index, part):
    rows = part.indices
    batch = {"images": all_images[rows], "labels": all_labels[rows],
             canaries_lib.CANARY_FIELD: canary_ids[rows]}
    return clipped(state.params, batch, jnp.asarray(part.mask),
                   np.int32(index))

  trajectory = []
  if canaries.kind == "gradient":
    trajectory.append(canaries_lib.flat_coordinates(state.params,
                                                    canaries.coordinates))
  for t in range(plan.num_updates):
    state, _ = apply(state, batching.accumulate(
        sampler.batch(t), micro_step=micro_step, merge=merge))
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
                           significance=per_family, delta=plan.delta)
              for name, values in scores.items()}
  return AuditResult(
      kind=canaries.kind, num_canaries=canaries.num_canaries,
      num_included=canaries.num_included, significance=significance,
      delta=plan.delta, theoretical_epsilon=float(plan.epsilon()),
      epsilon_one_run=max(b["one_run"] for b in by_score.values()),
      epsilon_clopper_pearson=max(b["clopper_pearson"]
                                  for b in by_score.values()),
      by_score=by_score, num_updates=plan.num_updates,
      sampling_rate=plan.sampling_rate,
      noise_multiplier=float(plan.noise_multiplier))
