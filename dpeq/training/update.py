"""The private update: make the training of any Haiku model DP-SGD.

    private = make_private_update(loss_fn=loss_fn, optimizer=optax.sgd(2.0),
                                  config=DpSgdConfig(l2_clip_norm=1.0,
                                                     noise_multiplier=3.0,
                                                     expected_batch_size=256))
    secret = RunRandomness.from_os_entropy()      # dpeq.privacy.randomness
    state = private.init(params, key=secret.noise_key())   # state is secret
    sampler = PoissonSampler(..., seed=secret.sampler_seed())
    selection = sampler.batch(int(state.update_step))      # host, numpy
    state, metrics = jax.jit(private.update)(
        state, batch, selection.mask,
        key=jax.random.fold_in(secret.augmentation_key(), step))

One logical batch = micro-batches of clipped per-example gradient sums
(`clipped_grads`, merged with ClippedGradSum.merge), then ONE `apply`: one
Gaussian noise draw, one optimizer step, one averaging step. The guarantee
of a run is that of the sampler's DpEvent (dpeq.privacy.sampling) at
config.noise_multiplier, accounted by dpeq.privacy.accounting.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dpeq.privacy import clipping, noise
from dpeq.training import averaging
from dpeq.training import run_log as run_logging

PyTree = Any
# Metrics of the non-noised batch, not covered by epsilon, carry this prefix.
NON_PRIVATE_PREFIX = run_logging.NON_PRIVATE_PREFIX
ViewsFn = Callable[[jax.Array, PyTree], PyTree]


@dataclasses.dataclass(frozen=True)
class DpSgdConfig:
  """What the private update needs to know about DP-SGD.

  Attributes:
    l2_clip_norm: C > 0, per-example clipping norm.
    noise_multiplier: sigma > 0 (noise std = sigma * sensitivity on the sum);
      0 only together with non_private=True.
    expected_batch_size: the divisor of the noisy sum (q * n for Poisson
      sampling, the batch size for shuffling).
    micro_batch_size: rows per clipped_grads call inside `update`; None: the
      whole padded batch at once. Must divide the padded batch size.
    rescale_to_unit_norm: De et al.'s rescaling (sensitivity 1, not C).
    ema_decays: decays of the parameter EMAs kept in TrainState.averages.
    polyak: whether to keep the Polyak (running mean) average too.
    non_private: explicitly train without noise (requires
      noise_multiplier=0; epsilon is then infinite).
  """

  l2_clip_norm: float
  noise_multiplier: float
  expected_batch_size: int
  micro_batch_size: int | None = None
  rescale_to_unit_norm: bool = False
  ema_decays: tuple[float, ...] = ()
  polyak: bool = False
  non_private: bool = False

  def __post_init__(self):
    if not self.l2_clip_norm > 0 or self.l2_clip_norm == float("inf"):
      raise ValueError(
          f"l2_clip_norm={self.l2_clip_norm} must be a finite number > 0 "
          "(De et al. use 1.0).")
    if self.non_private:
      if self.noise_multiplier != 0:
        raise ValueError(
            f"noise_multiplier={self.noise_multiplier} with non_private=True: "
            "set it to 0, or non_private=False for private training.")
    elif not self.noise_multiplier > 0 or (
        self.noise_multiplier == float("inf")):
      raise ValueError(
          f"noise_multiplier={self.noise_multiplier} must be a finite number "
          "> 0; set non_private=True to train without noise on purpose.")
    if (isinstance(self.expected_batch_size, bool)
        or int(self.expected_batch_size) != self.expected_batch_size
        or self.expected_batch_size < 1):
      raise ValueError(
          f"expected_batch_size={self.expected_batch_size} must be an int "
          ">= 1.")
    if self.micro_batch_size is not None and (
        isinstance(self.micro_batch_size, bool)
        or int(self.micro_batch_size) != self.micro_batch_size
        or self.micro_batch_size < 1):
      raise ValueError(
          f"micro_batch_size={self.micro_batch_size} must be an int >= 1 or "
          "None.")
    averaging.ParamAverager(ema_decays=self.ema_decays, polyak=self.polyak)
    object.__setattr__(self, "ema_decays",
                       tuple(float(d) for d in self.ema_decays))

  @property
  def sensitivity(self) -> float:
    """L2 sensitivity of the clipped sum under add/remove of one example."""
    return 1.0 if self.rescale_to_unit_norm else float(self.l2_clip_norm)


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
  config: DpSgdConfig


def make_private_update(
    *,
    loss_fn: clipping.LossFn,
    optimizer: optax.GradientTransformation,
    config: DpSgdConfig,
    views_fn: ViewsFn | None = None,
    per_example_gradients: clipping.GradientStrategy | None = None,
    noisy_grad_metrics: Callable[[PyTree], dict[str, jax.Array]] | None = None,
) -> PrivateUpdate:
  """DP-SGD for any loss: clipping, noise, optimizer step, averaging.

  Args:
    loss_fn: `loss_fn(params, views) -> (losses [K], aux)` for ONE example
      whose pytree `views` has a leading axis of K augmentation views.
    optimizer: any optax transformation; it receives the privatized MEAN
      gradient (noisy clipped sum / expected_batch_size).
    config: the DpSgdConfig.
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
        logical batch; micro-batch i (of config.micro_batch_size rows) uses
        the augmentation key fold_in(key, i); a Python loop, so it unrolls
        under jit.
  """
  sensitivity = config.sensitivity
  averager = averaging.ParamAverager(ema_decays=config.ema_decays,
                                     polyak=config.polyak)

  def privatizer(key):
    return noise.gaussian_mean_privatizer(
        noise_multiplier=config.noise_multiplier, sensitivity=sensitivity,
        expected_batch_size=config.expected_batch_size, key=key)

  def init(params: PyTree, *, key: jax.Array) -> TrainState:
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        privatizer_state=privatizer(key).init(params),
        averages=averager.init(params),
        update_step=jnp.zeros([], jnp.int32),
    )

  def clipped_grads(params: PyTree, batch: PyTree, mask: jax.Array, *,
                    key: jax.Array) -> clipping.ClippedGradSum:
    if views_fn is None:
      views = jax.tree.map(lambda x: x[:, None], batch)
    else:
      views = views_fn(key, batch)
    return clipping.clipped_grad_sum(
        loss_fn, params, views, mask, l2_clip_norm=config.l2_clip_norm,
        rescale_to_unit_norm=config.rescale_to_unit_norm,
        per_example_gradients=per_example_gradients)

  def apply(state: TrainState, clipped: clipping.ClippedGradSum
            ) -> tuple[TrainState, dict[str, jax.Array]]:
    if clipped.sensitivity != sensitivity:
      raise ValueError(
          f"The clipped sum has sensitivity {clipped.sensitivity}, the config "
          f"{sensitivity}: make it with this PrivateUpdate's clipped_grads.")
    noisy_mean, privatizer_state = privatizer(
        state.privatizer_state.key).update(clipped.grad_sum,
                                           state.privatizer_state)
    updates, opt_state = optimizer.update(noisy_mean, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    averages = averager.update(state.averages, params,
                               update_index=state.update_step)
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
                             / config.expected_batch_size,
    }
    metrics = {
        "update_step": new_state.update_step,
        "noise_std": jnp.asarray(config.noise_multiplier * sensitivity,
                                 jnp.float32),
        # Functions of the noisy mean: private (post-processing).
        "noisy_grad_norm": optax.tree.norm(noisy_mean),
        "update_norm": optax.tree.norm(updates),
        **(noisy_grad_metrics(noisy_mean) if noisy_grad_metrics else {}),
        **{NON_PRIVATE_PREFIX + k: v for k, v in diagnostics.items()},
    }
    return new_state, metrics

  def update(state: TrainState, batch: PyTree, mask: jax.Array, *,
             key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    padded_size = mask.shape[0]
    micro = config.micro_batch_size or padded_size
    if padded_size % micro:
      raise ValueError(
          f"micro_batch_size={micro} does not divide the padded batch of "
          f"{padded_size} rows: pad to a multiple of it "
          "(PoissonSampler(pad_multiple=micro_batch_size)).")
    total = None
    for i, start in enumerate(range(0, padded_size, micro)):
      chunk = jax.tree.map(lambda x, s=start: x[s:s + micro], batch)
      part = clipped_grads(state.params, chunk, mask[start:start + micro],
                           key=jax.random.fold_in(key, i))
      total = part if total is None else total.merge(part)
    return apply(state, total.totals())

  return PrivateUpdate(init=init, clipped_grads=clipped_grads, apply=apply,
                       update=update, config=config)
