"""The private update: make the training of any Haiku model DP-SGD.

    plan = PrivacyPlan(l2_clip_norm=1.0, noise_multiplier=3.0,
                       expected_batch_size=256, num_updates=1000,
                       ).calibrated(num_examples=n)   # dpeq.privacy.plan
    private = make_private_update(loss_fn=loss_fn, optimizer=optax.sgd(2.0),
                                  plan=plan)
    secret = RunRandomness.from_os_entropy()      # dpeq.privacy.randomness
    state = private.init(params, key=secret.noise_key())   # state is secret
    sampler = plan.sampler(seed=secret.sampler_seed())
    selection = sampler.batch(int(state.update_step))      # host, numpy
    state, metrics = jax.jit(private.update)(
        state, batch, selection.mask,
        key=jax.random.fold_in(secret.augmentation_key(), step))

One logical batch = micro-batches of clipped per-example gradient sums
(`clipped_grads`, merged by dpeq.training.micro_batching, the one
micro-batching path), then ONE `apply`: one Gaussian noise draw, one
optimizer step, one averaging step. The guarantee of a run is the plan's.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from dpeq.privacy import clipping, noise
from dpeq.privacy.plan import PrivacyPlan
from dpeq.training import averaging
from dpeq.training import run_log as run_logging

PyTree = Any
# Metrics of the non-noised batch, not covered by epsilon, carry this prefix.
NON_PRIVATE_PREFIX = run_logging.NON_PRIVATE_PREFIX
ViewsFn = Callable[[jax.Array, PyTree], PyTree]
# params -> (trainable, frozen), e.g. dpeq.models.finetune.split_trainable.
Partition = Callable[[PyTree], tuple[PyTree, PyTree]]


@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything that evolves during training (a pytree).

  Attributes:
    params: model parameters.
    opt_state: the optax optimizer state.
    privatizer_state: dpeq.privacy.noise.PrivatizerState (the noise key).
    averages: dict name -> params ("ema_0.999", "polyak", ...).
    update_step: int32 []: number of optimizer updates done.
  """

  params: PyTree
  opt_state: PyTree
  privatizer_state: noise.PrivatizerState
  averages: dict[str, PyTree]
  update_step: jax.Array


jax.tree_util.register_dataclass(TrainState)


@dataclasses.dataclass(frozen=True)
class PrivateUpdate:
  """Pure, jittable functions of one DP-SGD run (see make_private_update)."""

  init: Callable[..., TrainState]
  clipped_grads: Callable[..., clipping.ClippedGradSum]
  apply: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  update: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  plan: PrivacyPlan


def make_private_update(
    *,
    loss_fn: clipping.LossFn,
    optimizer: optax.GradientTransformation,
    plan: PrivacyPlan,
    ema_decays: tuple[float, ...] = (),
    polyak: bool = False,
    views_fn: ViewsFn | None = None,
    per_example_gradients: clipping.GradientStrategy | None = None,
    noisy_grad_metrics: Callable[[PyTree], dict[str, jax.Array]] | None = None,
    partition: Partition | None = None,
) -> PrivateUpdate:
  """DP-SGD for any loss: clipping, noise, optimizer step, averaging.

  Args:
    loss_fn: `loss_fn(params, views) -> (losses [K], aux)` for ONE example
      whose pytree `views` has a leading axis of K augmentation views.
    optimizer: any optax transformation; it receives the privatized MEAN
      gradient (noisy clipped sum / expected_batch_size).
    plan: the PrivacyPlan (its clip norm, rescaling, noise multiplier and
      expected batch size; sigma must be known: calibrate it first).
    ema_decays: decays of the parameter EMAs kept in TrainState.averages.
    polyak: whether to keep the Polyak (running mean) average too.
    views_fn: `views_fn(key, raw_batch) -> views` with leaves [B, K, ...]
      (e.g. dpeq.data.augment.views_fn); None: K = 1, views = raw batch with
      a views axis added.
    per_example_gradients: how clipping computes the per-example norms and
      the clipped sum (a performance choice, same result): None for
      dpeq.privacy.clipping.vmap_gradients, or e.g.
      dpeq.privacy.ghost_clipping.ghost_gradients.
    noisy_grad_metrics: optional `fn(noisy_mean) -> dict` of extra metrics of
      the privatized mean gradient that `apply` hands to the optimizer
      (post-processing: no privacy cost); merged into apply's metrics, so
      no caller needs the privatizer or its state.
    partition: fine-tuning: `partition(params) -> (trainable, frozen)`
      (Haiku params; e.g. a functools.partial of
      dpeq.models.finetune.split_trainable). Only the trainable leaves are
      differentiated, clipped, noised (the noise dimension is theirs),
      stepped by the optimizer and averaged; frozen leaves stay
      bit-identical in params and in every average. None: all trainable.

  Returns:
    A PrivateUpdate with
      init(params, *, key) -> TrainState (key: the noise key of the run);
      clipped_grads(params, batch, mask, *, key) -> ClippedGradSum of one
        micro-batch (key: augmentation key);
      apply(state, clipped) -> (TrainState, metrics): the ONLY place where
        noise is drawn and the update step advances (metrics of the
        non-noised batch carry the prefix "nonprivate/"); it reads only the
        fixed-shape fields of `clipped` (jit it on clipped.totals() when the
        number of micro-batches varies);
      update(state, batch, mask, *, key) -> (TrainState, metrics): one
        logical batch given as ONE micro-batch (clipped_grads, then apply).
        Larger batches go through dpeq.training.micro_batching.
  """
  if plan.noise_multiplier is None:
    raise ValueError(
        "The plan's noise_multiplier is not known yet: build the update from "
        "plan.calibrated(num_examples=n).")
  sensitivity = plan.sensitivity
  averager = averaging.ParamAverager(ema_decays=ema_decays, polyak=polyak)
  privatizer = plan.privatizer

  def split(params):
    return (params, {}) if partition is None else partition(params)

  def join(trainable, frozen):
    return (trainable if partition is None
            else hk.data_structures.merge(trainable, frozen))

  def init(params: PyTree, *, key: jax.Array) -> TrainState:
    trainable, _ = split(params)
    return TrainState(
        params=params,
        opt_state=optimizer.init(trainable),
        privatizer_state=privatizer(key=key).init(trainable),
        averages=averager.init(params),
        update_step=jnp.zeros([], jnp.int32),
    )

  def clipped_grads(params: PyTree, batch: PyTree, mask: jax.Array, *,
                    key: jax.Array) -> clipping.ClippedGradSum:
    if views_fn is None:
      views = jax.tree.map(lambda x: x[:, None], batch)
    else:
      views = views_fn(key, batch)
    trainable, frozen = split(params)
    loss = (loss_fn if partition is None
            else lambda t, v: loss_fn(join(t, frozen), v))
    return clipping.clipped_grad_sum(
        loss, trainable, views, mask, l2_clip_norm=plan.l2_clip_norm,
        rescale_to_unit_norm=plan.rescale_to_unit_norm,
        per_example_gradients=per_example_gradients)

  def apply(state: TrainState, clipped: clipping.ClippedGradSum
            ) -> tuple[TrainState, dict[str, jax.Array]]:
    if clipped.sensitivity != sensitivity:
      raise ValueError(
          f"The clipped sum has sensitivity {clipped.sensitivity}, the plan "
          f"{sensitivity}: make it with this PrivateUpdate's clipped_grads.")
    noisy_mean, privatizer_state = privatizer(
        key=state.privatizer_state.key).update(clipped.grad_sum,
                                           state.privatizer_state)
    trainable, frozen = split(state.params)
    updates, opt_state = optimizer.update(noisy_mean, state.opt_state,
                                          trainable)
    trainable = optax.apply_updates(trainable, updates)
    params = join(trainable, frozen)
    parts = {name: split(average) for name, average in state.averages.items()}
    averaged = averager.update({name: part[0] for name, part in parts.items()},
                               trainable, update_index=state.update_step)
    averages = {name: join(average, parts[name][1])
                for name, average in averaged.items()}
    new_state = TrainState(params=params, opt_state=opt_state,
                           privatizer_state=privatizer_state,
                           averages=averages,
                           update_step=state.update_step + 1)
    finite = jnp.maximum(clipped.num_examples - clipped.num_nonfinite, 1)
    # Of the non-noised batch: NOT covered by epsilon (diagnostics only).
    diagnostics = {
        "num_examples": clipped.num_examples,
        "num_nonfinite": clipped.num_nonfinite,
        "fraction_clipped": clipped.num_clipped / finite,
        "mean_grad_norm": clipped.norm_sum / finite,
        "max_grad_norm": clipped.norm_max,
        "clipped_grad_norm": optax.tree.norm(clipped.grad_sum)
                             / plan.expected_batch_size,
    }
    metrics = {
        "update_step": new_state.update_step,
        "noise_std": jnp.asarray(plan.noise_std, jnp.float32),
        # Functions of the noisy mean: private (post-processing).
        "noisy_grad_norm": optax.tree.norm(noisy_mean),
        "update_norm": optax.tree.norm(updates),
        **(noisy_grad_metrics(noisy_mean) if noisy_grad_metrics else {}),
        **{NON_PRIVATE_PREFIX + k: v for k, v in diagnostics.items()},
    }
    return new_state, metrics

  def update(state: TrainState, batch: PyTree, mask: jax.Array, *,
             key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    return apply(state, clipped_grads(state.params, batch, mask,
                                      key=key).totals())

  return PrivateUpdate(init=init, clipped_grads=clipped_grads, apply=apply,
                       update=update, plan=plan)
