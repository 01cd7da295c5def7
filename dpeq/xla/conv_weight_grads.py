"""Convolution weight gradients as per-tap dot products (fast per example).

Per-example gradients are `vmap(grad(loss))`. Under vmap, JAX turns the
weight gradient of a convolution into ONE grouped convolution with a group
per example, which XLA:CPU runs 2-3x slower than the batch weight gradient.
`with_tap_weight_grads(fn)` returns a function with the same values and
gradients whose convolutions compute their weight gradient as a sum over
kernel taps of dot products between the shifted input and the output
gradient; under vmap these become batched matrix products, about as fast per
example as the batch gradient.

Mechanism: `fn` is traced to a jaxpr and re-evaluated equation by equation
(as `jax.core.eval_jaxpr` does), with every plain convolution (no grouping,
no dilation, any strides, padding, layout, 1-3 spatial dims) replaced by a
`jax.custom_vjp` convolution; jitted sub-functions are entered, other
higher-order primitives (scan, cond, custom derivatives, remat) are kept as
they are. Nothing changes numerically beyond float32 summation order.

It reads jax internals (jaxpr equations, primitive parameters), so it is
used only with the jax versions it was tested with (`TESTED_JAX_VERSIONS`):
`vmap_gradients` is dpeq.privacy.clipping.vmap_gradients with the rewrite on
XLA:CPU under a tested jax, and plain vmap_gradients everywhere else. The
runner picks it (dpeq.training.per_example_grads).
"""

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex

from dpeq.privacy import clipping

# (major, minor) versions of jax this rewrite was tested with (the suite's
# tests/xla run it against plain autodiff); others fall back to plain vmap.
TESTED_JAX_VERSIONS = ((0, 10),)

_CONV = jex.primitives.conv_general_dilated_p
_JIT = jex.primitives.jit_p


def with_tap_weight_grads(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` with per-tap dot-product weight gradients in its convolutions.

  Args:
    fn: a JAX-traceable function of pytrees of arrays (e.g. a loss).

  Returns:
    A function with the same signature, outputs and derivatives.
  """

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    out = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), out)

  return wrapped


def _eval(jaxpr, consts, args):
  env = {}

  def read(var):
    return var.val if isinstance(var, jex.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts, strict=True))
  env.update(zip(jaxpr.invars, args, strict=True))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is _CONV and _is_plain(eqn.params):
      outvals = [_conv(*invals, params=eqn.params)]
    elif eqn.primitive is _JIT:
      inner = eqn.params["jaxpr"]
      outvals = _eval(inner.jaxpr, inner.consts, invals)
    else:
      with eqn.ctx.manager:
        outvals = eqn.primitive.bind(
            *invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
    env.update(zip(eqn.outvars, outvals, strict=True))
  return [read(v) for v in jaxpr.outvars]


def _is_plain(params) -> bool:
  return (params["feature_group_count"] == 1
          and params["batch_group_count"] == 1
          and all(d == 1 for d in params["lhs_dilation"])
          and all(d == 1 for d in params["rhs_dilation"])
          and len(params["window_strides"]) in (1, 2, 3))


def _conv(lhs, rhs, *, params):
  """The convolution of `params`, with a per-tap weight gradient."""
  bind = lambda x, w: _CONV.bind(x, w, **params)

  @jax.custom_vjp
  def conv(x, w):
    return bind(x, w)

  def conv_fwd(x, w):
    return bind(x, w), (x, w)

  def conv_bwd(residuals, out_grad):
    x, w = residuals
    (x_grad,) = jax.vjp(lambda x: bind(x, w), x)[1](out_grad)
    return x_grad, _tap_weight_grad(x, out_grad, w.shape, w.dtype, params)

  conv.defvjp(conv_fwd, conv_bwd)
  return conv(lhs, rhs)


def _tap_weight_grad(x, out_grad, kernel_shape, dtype, params):
  """d conv / d kernel, contracted with out_grad, as per-tap dot products.

  For a kernel tap at offset o, output position p reads the (padded) input
  at p * stride + o; the weight gradient of that tap is the sum over batch
  and positions of input[p * stride + o] (outer) out_grad[p].
  """
  lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
  num_spatial = len(lhs_spec) - 2
  # Channels-last views: [N, *spatial, C_in] and [N, *spatial, C_out].
  x = jnp.transpose(x, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))
  out_grad = jnp.transpose(out_grad,
                           (out_spec[0], *out_spec[2:], out_spec[1]))
  x = lax.pad(x, jnp.zeros((), x.dtype),
              [(0, 0, 0), *((lo, hi, 0) for lo, hi in params["padding"]),
               (0, 0, 0)])
  kernel_size = [kernel_shape[d] for d in rhs_spec[2:]]
  strides = params["window_strides"]
  out_size = out_grad.shape[1:-1]
  contract = list(range(num_spatial + 1))
  taps = []
  for offset in itertools.product(*(range(k) for k in kernel_size)):
    limit = [o + s * (n - 1) + 1
             for o, s, n in zip(offset, strides, out_size, strict=True)]
    shifted = lax.slice(x, (0, *offset, 0), (x.shape[0], *limit, x.shape[-1]),
                        (1, *strides, 1))
    taps.append(jnp.tensordot(shifted, out_grad, axes=(contract, contract)))
  grad = jnp.stack(taps).reshape(*kernel_size, x.shape[-1], out_grad.shape[-1])
  # From [*spatial, C_in, C_out] to the kernel's own layout.
  permutation = [0] * (num_spatial + 2)
  permutation[rhs_spec[0]] = num_spatial + 1
  permutation[rhs_spec[1]] = num_spatial
  for axis, dim in enumerate(rhs_spec[2:]):
    permutation[dim] = axis
  return jnp.transpose(grad, permutation).astype(dtype)


def is_available(backend: str | None = None) -> bool:
  """Whether the rewrite is used: XLA:CPU and a tested jax version."""
  backend = jax.default_backend() if backend is None else backend
  return (backend == "cpu"
          and tuple(jax.__version_info__[:2]) in TESTED_JAX_VERSIONS)


def vmap_gradients(loss_fn, params, batch) -> clipping.PerExampleGradients:
  """dpeq.privacy.clipping.vmap_gradients, with per-tap conv weight
  gradients where `is_available()` (same values; a GradientStrategy)."""
  if is_available():
    loss_fn = with_tap_weight_grads(loss_fn)
  return clipping.vmap_gradients(loss_fn, params, batch)
