"""Per-example clipped gradient sums, the input of the Gaussian mechanism.

`clipped_grad_sum` returns the SUM over the real examples of a batch of their
per-example gradients, each clipped to an L2 norm of at most `l2_clip_norm`
(the global norm over all leaves of the parameter pytree). Each example
carries K augmentation views and its gradient is that of its MEAN loss over
the views, so the views of one example never add sensitivity.

Formal guarantee: let D and D' be two batches that differ by the presence of
one example (added, removed, or turned into a padded row). Then

    || grad_sum(D) - grad_sum(D') ||_2 <= sensitivity,

with `sensitivity = l2_clip_norm` (or 1 when `rescale_to_unit_norm`). This
holds for every value of the example, including ones whose gradient is
non-finite: such examples contribute exactly zero (and are counted), a
decision that depends on that example alone.

The norms and the weighted sum come from a per-example-gradient strategy
(`PerExampleGradients`): `vmap_gradients` materialises the per-example
gradients; dpeq.privacy.ghost_clipping computes the same numbers without
them. The bound above holds for any strategy whose norms are the exact
norms of the gradients its weighted sum adds; clipping itself
(`_clip_and_sum`) is shared.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]]


@dataclasses.dataclass(frozen=True)
class PerExampleGradients:
  """What a per-example-gradient strategy returns for one (micro-)batch.

  The guarantee rests on exactly two facts about it, which every strategy
  must meet (tests/privacy/test_privacy_ghost_clipping.py checks ghost
  clipping against `vmap_gradients`):

  Attributes:
    norms: float32 [B]: the exact global L2 norm (all leaves) of each row's
      gradient of its MEAN loss over its K views; inf/nan when not finite.
    aux: pytree of [B, ...]: the per-example aux outputs of the loss.
    weighted_sum: `weighted_sum(w) -> like params` for w float32 [B]: the sum
      over rows of w_i times row i's gradient, in which a row with w_i = 0
      contributes exactly zero, even when its gradient is not finite.
  """

  norms: jax.Array
  aux: PyTree
  weighted_sum: Callable[[jax.Array], PyTree]


# strategy(loss_fn, params, batch) -> PerExampleGradients. A performance
# choice: every strategy yields the same norms and the same clipped sum.
GradientStrategy = Callable[[LossFn, PyTree, PyTree], PerExampleGradients]


@dataclasses.dataclass(frozen=True)
class ClippedGradSum:
  """Sum of clipped per-example gradients of one (micro-)batch.

  Attributes:
    grad_sum: like params: sum over real, finite examples of their clipped
      gradients.
    per_example_norms: float32 [B]: pre-clip global L2 norm of each example's
      gradient (0 for padded rows; may be inf/nan for non-finite rows).
    aux: pytree of [B, ...]: the per-example aux outputs of the loss.
    num_examples: int32 []: number of real (unpadded) rows.
    num_nonfinite: int32 []: real rows whose gradient was not finite (they
      contribute zero).
    num_clipped: int32 []: real finite rows whose norm exceeded l2_clip_norm.
    norm_sum: float32 []: sum of the pre-clip norms of real finite rows.
    norm_max: float32 []: max of those norms (0 when there are none).
    sensitivity: static float: L2 sensitivity of `grad_sum` under add/remove
      of one example; the Gaussian noise std is noise_multiplier * sensitivity.
  """

  grad_sum: PyTree
  per_example_norms: jax.Array | None
  aux: PyTree
  num_examples: jax.Array
  num_nonfinite: jax.Array
  num_clipped: jax.Array
  norm_sum: jax.Array
  norm_max: jax.Array
  sensitivity: float = dataclasses.field(metadata=dict(static=True))

  def merge(self, other: "ClippedGradSum") -> "ClippedGradSum":
    """Combines the results of two disjoint micro-batches.

    Sums and counts add, per-example arrays are concatenated along the batch
    axis (self first). Both must have the same sensitivity.
    """
    if self.sensitivity != other.sensitivity:
      raise ValueError(
          "Cannot merge clipped sums with different sensitivities "
          f"({self.sensitivity} vs {other.sensitivity}): use one l2_clip_norm "
          "and one rescale_to_unit_norm setting for all micro-batches."
      )
    concat = lambda a, b: jnp.concatenate([a, b], axis=0)
    per_example = (self.per_example_norms, self.aux)
    other_per_example = (other.per_example_norms, other.aux)
    if (self.per_example_norms is None) != (other.per_example_norms is None):
      raise ValueError(
          "Cannot merge a result that kept its per-example arrays with one "
          "from totals(): call totals() on both or on neither."
      )
    norms, aux = jax.tree.map(concat, per_example, other_per_example)
    return ClippedGradSum(
        grad_sum=jax.tree.map(jnp.add, self.grad_sum, other.grad_sum),
        per_example_norms=norms,
        aux=aux,
        num_examples=self.num_examples + other.num_examples,
        num_nonfinite=self.num_nonfinite + other.num_nonfinite,
        num_clipped=self.num_clipped + other.num_clipped,
        norm_sum=self.norm_sum + other.norm_sum,
        norm_max=jnp.maximum(self.norm_max, other.norm_max),
        sensitivity=self.sensitivity,
    )

  def totals(self) -> "ClippedGradSum":
    """The fixed-shape part (sums and counts), without per-example arrays.

    This is all that the privatizer and the optimizer step read; passing it
    to a jitted `apply` avoids a retrace for every new number of
    micro-batches in a Poisson-sampled logical batch.
    """
    return dataclasses.replace(self, per_example_norms=None, aux=None)


jax.tree_util.register_dataclass(ClippedGradSum)


def global_norms(per_example_grads: PyTree) -> jax.Array:
  """Global L2 norm over all leaves of a pytree of [B, ...] arrays -> [B]."""
  leaves = jax.tree.leaves(per_example_grads)
  if not leaves:
    raise ValueError("The gradient pytree is empty: the model has no params.")
  squares = [jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1)
             for x in leaves]
  return jnp.sqrt(sum(squares))


def clipped_grad_sum(
    loss_fn: LossFn,
    params: PyTree,
    batch: PyTree,
    mask: jax.Array,
    *,
    l2_clip_norm: float,
    rescale_to_unit_norm: bool = False,
    per_example_gradients: GradientStrategy | None = None,
) -> ClippedGradSum:
  """Sum over real examples of clipped per-example gradients.

  Args:
    loss_fn: `loss_fn(params, views) -> (losses [K], aux)` for ONE example:
      `views` is that example's pytree with leading axis K (its augmentation
      views); `aux` a pytree of per-example values.
    params: the parameters (any pytree of float arrays).
    batch: pytree whose leaves are [B, K, ...].
    mask: bool [B]: True for real rows, False for padding.
    l2_clip_norm: C > 0: every example's gradient is scaled to norm <= C.
    rescale_to_unit_norm: De et al.: divide each clipped gradient by C, so
      its norm is <= 1 and the sensitivity is 1 (the learning rate absorbs C).
    per_example_gradients: how the norms and the weighted sum are computed
      (a PerExampleGradients strategy); None: `vmap_gradients`. E.g.
      dpeq.privacy.ghost_clipping.ghost_gradients for Haiku models (Bu et
      al.'s mixed ghost clipping). The result does not depend on it beyond
      float rounding.

  Returns:
    A ClippedGradSum with sensitivity C (or 1 with rescale_to_unit_norm).
    Padded and non-finite rows contribute exactly zero to `grad_sum`. The
    batch is one micro-batch: larger logical batches are cut by
    dpeq.training.micro_batching and their sums merged
    (ClippedGradSum.merge).

  Raises:
    ValueError: on a non-positive clip norm or mismatched shapes.
  """
  l2_clip_norm = _check_clip_norm(l2_clip_norm)
  _check_batch(batch, mask)
  strategy = per_example_gradients or vmap_gradients
  return _clip_and_sum(
      strategy(loss_fn, params, batch), mask, l2_clip_norm=l2_clip_norm,
      rescale_to_unit_norm=rescale_to_unit_norm)


def vmap_gradients(loss_fn: LossFn, params: PyTree,
                   batch: PyTree) -> PerExampleGradients:
  """Per-example gradients materialised with jax.vmap(jax.grad(...)).

  Works for any loss; memory ~ B x the number of parameters.
  """

  def mean_loss(p, views):
    losses, aux = loss_fn(p, views)
    if jnp.ndim(losses) != 1:
      raise ValueError(
          "loss_fn(params, views) must return (losses [K], aux) for one "
          f"example; got losses of shape {jnp.shape(losses)}."
      )
    return jnp.mean(losses), aux

  grad_fn = jax.grad(mean_loss, has_aux=True)
  grads, aux = jax.vmap(grad_fn, in_axes=(None, 0))(params, batch)
  norms = global_norms(grads)
  finite = jnp.isfinite(norms)

  def weighted_sum(weights):
    # A dot over the batch axis (XLA:CPU reduces a leading axis with jnp.sum
    # several times slower), at HIGHEST precision so that no backend rounds
    # the clipped gradients (e.g. to TF32).
    dot = lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=(0, 0),
                                  precision=jax.lax.Precision.HIGHEST)
    # Rows of weight 0 vanish exactly when finite; only when some row is
    # non-finite (0 * inf = nan) must they be masked first.
    drop = weights != 0
    masked = lambda g: dot(jnp.where(_expand(drop, g), g,
                                     jnp.zeros((), g.dtype)))
    return jax.lax.cond(jnp.all(finite), lambda: jax.tree.map(dot, grads),
                        lambda: jax.tree.map(masked, grads))

  return PerExampleGradients(norms=norms, aux=aux, weighted_sum=weighted_sum)


def _clip_and_sum(per_example: PerExampleGradients, mask, *, l2_clip_norm,
                  rescale_to_unit_norm) -> ClippedGradSum:
  """Clip factors from the norms, then one weighted sum: the guarantee."""
  norms = per_example.norms
  finite = jnp.isfinite(norms)
  keep = mask & finite
  # min(1, C / norm), computed safely at norm = 0 and for dropped rows.
  safe_norms = jnp.where(keep, norms, 1.0)
  scale = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(safe_norms, 1e-30))
  if rescale_to_unit_norm:
    scale = scale / l2_clip_norm
  scale = jnp.where(keep, scale, 0.0)
  kept_norms = jnp.where(keep, norms, 0.0)
  return ClippedGradSum(
      grad_sum=per_example.weighted_sum(scale),
      per_example_norms=jnp.where(mask, norms, 0.0),
      aux=per_example.aux,
      num_examples=jnp.sum(mask, dtype=jnp.int32),
      num_nonfinite=jnp.sum(mask & ~finite, dtype=jnp.int32),
      num_clipped=jnp.sum(keep & (norms > l2_clip_norm), dtype=jnp.int32),
      norm_sum=jnp.sum(kept_norms),
      norm_max=jnp.max(kept_norms, initial=0.0),
      sensitivity=1.0 if rescale_to_unit_norm else l2_clip_norm,
  )


def _expand(v, like):
  return v.reshape(v.shape + (1,) * (like.ndim - 1))


def _check_clip_norm(l2_clip_norm) -> float:
  try:
    value = float(l2_clip_norm)
  except (TypeError, ValueError):
    value = float("nan")
  if not value > 0 or value == float("inf"):
    raise ValueError(
        f"l2_clip_norm={l2_clip_norm!r} must be a finite number > 0 (De et al. "
        "use 1.0)."
    )
  return value


def _check_batch(batch, mask) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError("The batch pytree is empty.")
  if jnp.ndim(mask) != 1:
    raise ValueError(f"mask must be bool [B]; got shape {jnp.shape(mask)}.")
  if mask.dtype != jnp.bool_:
    raise ValueError(f"mask must have dtype bool; got {mask.dtype}.")
  batch_size = mask.shape[0]
  for leaf in leaves:
    if jnp.ndim(leaf) < 2 or leaf.shape[0] != batch_size:
      raise ValueError(
          "Every batch leaf must be [B, K, ...] with B = len(mask) = "
          f"{batch_size}; got a leaf of shape {jnp.shape(leaf)}. Add the "
          "views axis (K = 1: x[:, None]) before clipping."
      )
  return batch_size
