"""Mixed ghost clipping with book-keeping for Haiku models (Bu et al.).

`ghost_gradients` is a dpeq.privacy.clipping.GradientStrategy: it returns
each example's exact gradient norm and the weighted sum of the per-example
gradients WITHOUT materialising per-example gradients of the whole model:

  1. one forward pass over the batch (vmapped over examples, K views each),
     in which every parameterised layer records its input x (its tap) and
     adds a zero "probe" z to its output, and one backward pass with
     respect to the probes: dloss_i / dz = g_i, each example's gradient at
     that layer's output (examples are independent: no batch statistics);
  2. per layer, the exact per-example squared norm from (x, g) by the
     cheaper route (dpeq.privacy.ghost_layers: ghost or instantiate);
  3. the clipped sum as one weighted contraction per layer, sum_i w_i x_i^T
     g_i (the layer's weight gradient with output gradient w_i g_i), reusing
     the x and g of step 1 (book-keeping): no second backward pass.

`two_pass=True` trades time for memory (Bu et al.'s original ghost
clipping): step 1 differentiates with respect to a zero per-example "sink"
per layer whose cotangent is set, inside the backward pass, to that layer's
squared norm (a jax.custom_vjp on the layer output), so each layer's (x, g)
is used and freed as the backward pass goes, as in a non-private backward
pass; the clipped sum is then a second, ordinary backward pass of
sum_i w_i loss_i (rows of weight 0 replaced by zeros first, so that they add
exactly 0 even when non-finite). Book-keeping keeps every layer's x and g
alive until step 3.

Layers are found with `hk.intercept_methods`, so any model built from the
supported modules works unchanged. Parameters are checked, not assumed: every
module in `params` must be a supported layer called exactly once per
example, and every parameter read must happen inside its own layer's call;
anything else raises with the name of the module (use 'vmap' for it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from dpeq.privacy import clipping, ghost_layers

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LayerTap:
  """One parameterised layer as the forward pass found it."""

  name: str  # Haiku module name (the key of its parameters)
  kind: str  # module type
  rule: Any
  input_shape: tuple[int, ...]  # of one example
  output_shape: tuple[int, ...]  # of one example
  dtype: Any


class _Recorder:
  """Intercepts the parameterised layers of one traced forward pass."""

  def __init__(self, params: Mapping[str, Any], probes, route: str | None,
               sinks=None):
    self.params = params
    self.probes = probes
    self.sinks = sinks
    self.route = route
    self.taps: dict[str, LayerTap] = {}
    self.inputs: dict[str, jax.Array] = {}
    self._active: list[str] = []
    self._depth = 0

  def _guard(self, next_getter, value, context):
    owner = context.module_name
    if not self._active or self._active[-1] != owner:
      where = self._active[-1] if self._active else "outside every layer"
      raise ghost_layers.UnsupportedLayerError(
          f"Parameter {owner}/{context.name} is read {where!r}, not inside "
          f"the call of its own module {owner!r}: ghost clipping cannot see "
          "its per-example gradient; use training.per_example_grads='vmap'.")
    return next_getter(value)

  def intercept(self, next_f, args, kwargs, context):
    if context.method_name != "__call__":
      return next_f(*args, **kwargs)
    module = context.module
    top = self._depth == 0
    self._depth += 1
    try:
      with (hk.custom_getter(self._guard) if top
            else contextlib.nullcontext()):
        if module.module_name not in self.params:
          return next_f(*args, **kwargs)
        return self._tap(module, next_f, args, kwargs)
    finally:
      self._depth -= 1

  def _tap(self, module, next_f, args, kwargs):
    name = module.module_name
    if name in self.inputs:
      raise ghost_layers.UnsupportedLayerError(
          f"Module {name!r} is called more than once per example (shared "
          "weights): ghost clipping taps each layer once; use "
          "training.per_example_grads='vmap'.")
    rule = ghost_layers.rule_for(module, route=self.route)
    p = self.params[name]
    self._active.append(name)
    try:
      if isinstance(rule, ghost_layers.AffineRule):
        x = self._identity_affine_output(rule, name, next_f, args, kwargs)
        y = rule.forward(p, x)
      else:
        if len(args) != 1 or kwargs:
          raise ghost_layers.UnsupportedLayerError(
              f"Module {name!r} is called with extra arguments; ghost "
              "clipping taps single-input layers.")
        x = args[0]
        y = next_f(x)
        expected = jax.eval_shape(rule.forward, p, x)
        if expected.shape != y.shape:
          raise AssertionError(
              f"ghost rule of {name!r} gives shape {expected.shape}, the "
              f"layer {y.shape}: the rule does not match the layer.")
    finally:
      self._active.pop()
    self.inputs[name] = x
    self.taps[name] = LayerTap(name, type(module).__name__, rule,
                               tuple(x.shape), tuple(y.shape), y.dtype)
    if self.probes is not None:
      y = y + self.probes[name].astype(y.dtype)
    if self.sinks is not None:
      y = _norm_sink(rule)(p, x, y, self.sinks[name])
    return y

  def _identity_affine_output(self, rule, name, next_f, args, kwargs):
    """The layer's output with its affine parameters at identity: x_hat."""

    def identity(next_getter, value, context):
      if context.module_name == name and context.name in rule.identity:
        return jnp.full_like(value, rule.identity[context.name])
      return next_getter(value)

    with hk.custom_getter(identity):
      return next_f(*args, **kwargs)


def _norm_sink(rule):
  """y -> y whose backward pass also sets the cotangent of `sink` (one
  example's zero scalar) to the layer's squared gradient norm from (x, g)."""

  @jax.custom_vjp
  def sink_fn(p, x, y, sink):
    del p, x, sink
    return y

  def fwd(p, x, y, sink):
    return y, (p, x, sink)

  def bwd(residuals, g):
    p, x, sink = residuals
    sq_norm = rule.sq_norms(p, x[None], g[None])[0].astype(sink.dtype)
    return (jax.tree.map(jnp.zeros_like, p), jnp.zeros_like(x), g, sq_norm)

  sink_fn.defvjp(fwd, bwd)
  return sink_fn


def _tapped_forward(loss_fn, params, batch, probes, route, sinks=None):
  """Per-example mean losses [B], aux and layer inputs (none with sinks),
  with the taps."""
  recorders = []

  def one(views, probe, sink):
    recorder = _Recorder(params, probe, route, sink)
    recorders.append(recorder)
    with hk.intercept_methods(recorder.intercept):
      losses, aux = loss_fn(params, views)
    if jnp.ndim(losses) != 1:
      raise ValueError(
          "loss_fn(params, views) must return (losses [K], aux) for one "
          f"example; got losses of shape {jnp.shape(losses)}.")
    return jnp.mean(losses), (aux, {} if sink is not None
                              else recorder.inputs)

  out = jax.vmap(one)(batch, probes, sinks)
  return out, recorders[-1].taps


def find_taps(loss_fn, params, batch, *, route: str | None = None
              ) -> dict[str, LayerTap]:
  """The layers ghost clipping will tap, in call order (an abstract trace).

  Raises:
    UnsupportedLayerError: a module owning parameters is not supported, or
      parameters are read outside their module's call.
  """
  _check_params(params)
  taps = {}

  def trace(p, b):
    _, found = _tapped_forward(loss_fn, p, b, None, route)
    taps.update(found)
    return 0

  jax.eval_shape(trace, params, batch)
  missing = sorted(set(params) - set(taps))
  if missing:
    raise ghost_layers.UnsupportedLayerError(
        f"Parameters of {', '.join(missing)} are not used inside a "
        "supported layer's call: ghost clipping cannot see their gradient; "
        "use training.per_example_grads='vmap'.")
  return taps


def _check_params(params):
  if not isinstance(params, Mapping) or not all(
      isinstance(v, Mapping) for v in params.values()):
    raise ValueError(
        "ghost clipping needs Haiku parameters ({module: {name: array}}); "
        f"got {type(params).__name__}. Use per_example_grads='vmap'.")


def ghost_gradients(loss_fn: clipping.LossFn, params: PyTree, batch: PyTree,
                    *, route: str | None = None,
                    taps: Mapping[str, LayerTap] | None = None,
                    two_pass: bool = False
                    ) -> clipping.PerExampleGradients:
  """Norms and weighted sum by mixed ghost clipping (see the module doc).

  Args:
    loss_fn: `loss_fn(params, views) -> (losses [K], aux)` for ONE example,
      built on a Haiku model whose parameterised modules are all supported
      (dpeq.privacy.ghost_layers.supported_layers()).
    params: the Haiku parameters.
    batch: pytree of [B, K, ...].
    route: None (per layer, the cheaper of ghost and instantiate) or force
      "ghost" / "instantiate" where a layer allows it.
    taps: `find_taps(loss_fn, params, batch, route=route)` when the caller
      has traced it already (None: traced here).
    two_pass: norms by per-layer sinks in one backward pass, then the
      weighted sum by a second backward pass (less memory, more time; see
      the module doc); False: book-keeping.

  Returns:
    clipping.PerExampleGradients with exact norms and the weighted sum.
  """
  if taps is None:
    taps = find_taps(loss_fn, params, batch, route=route)
  if two_pass:
    return _two_pass(loss_fn, params, batch, taps, route)
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  probes = {name: jnp.zeros((batch_size,) + tap.output_shape, tap.dtype)
            for name, tap in taps.items()}

  def forward(z):
    (losses, (aux, inputs)), _ = _tapped_forward(loss_fn, params, batch, z,
                                                 route)
    return losses, (aux, inputs)

  losses, pullback, (aux, inputs) = jax.vjp(forward, probes, has_aux=True)
  (output_grads,) = pullback(jnp.ones_like(losses))
  squares = [taps[name].rule.sq_norms(params[name], inputs[name],
                                      output_grads[name]) for name in taps]
  norms = jnp.sqrt(sum(squares))

  def weighted_sum(weights):
    return {name: taps[name].rule.weighted_grad(
        params[name], inputs[name], output_grads[name], weights)
            for name in params}

  return clipping.PerExampleGradients(norms=norms, aux=aux,
                                      weighted_sum=weighted_sum)


def _two_pass(loss_fn, params, batch, taps, route):
  """Norms from per-layer sinks; the weighted sum by a second backward."""
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  sinks = {name: jnp.zeros((batch_size,), tap.dtype)
           for name, tap in taps.items()}

  def total(s):
    (losses, (aux, _)), _ = _tapped_forward(loss_fn, params, batch, None,
                                            route, sinks=s)
    return jnp.sum(losses), aux

  squares, aux = jax.grad(total, has_aux=True)(sinks)
  norms = jnp.sqrt(sum(squares[name] for name in taps))

  def weighted_sum(weights):
    keep = weights != 0
    # Dropped rows become zeros: finite, and weight 0 makes them add 0.
    clean = jax.tree.map(
        lambda v: jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v,
                            jnp.zeros((), v.dtype)), batch)

    def weighted_loss(p):
      def one(views):
        return jnp.mean(loss_fn(p, views)[0])
      losses = jax.vmap(one)(clean)
      return jnp.sum(jnp.where(keep, weights.astype(losses.dtype) * losses,
                               jnp.zeros((), losses.dtype)))

    return jax.grad(weighted_loss)(params)

  return clipping.PerExampleGradients(norms=norms, aux=aux,
                                      weighted_sum=weighted_sum)
