"""Per-layer rules: exact per-example gradient norms and weighted sums.

A layer with parameters p maps its input x to y = f(p, x), one example's
rows independently of the others'. Given each example's tap input x_i and
output gradient g_i = dloss_i / dy_i (both [B, ...]), a rule computes

  sq_norms(p, x, g)       [B]: ||d loss_i / d p||^2, exactly, per example;
  weighted_grad(p, x, g, w)  sum_i w_i d loss_i / d p, one contraction over
                          the whole batch (book-keeping, Bu et al. 2023).

Routes to the norm (Bu et al. 2022, "mixed ghost clipping"): a linear map
y_t = W^T a_t over T positions (a dense layer's rows, a convolution's
patches, all K views of the example together) has the per-example gradient
G = sum_t a_t g_t^T, whose squared norm is either

  ghost        sum_{t,s} (a_t . a_s)(g_t . g_s)   cost ~ T^2 (p + d), or
  instantiate  ||sum_t a_t g_t^T||^2              cost ~ T p d,

whichever is cheaper (ghost when 2 T^2 < p d). A kernel that is itself a
function of the parameters, W = k(theta) (weight standardisation, the basis
expansion of a steerable convolution), is instantiated: G per example, then
pulled back through k exactly (the vjp of k at theta), so the norm clipped
is that of the gradient in theta, not an upper bound. Affine layers
(group-norm scale and offset) take the per-example vjp of their forward.

Everything here is pure JAX on arrays; which rule a Haiku module gets is
`rule_for(module)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from dpeq.nn import conv as conv_lib
from dpeq.nn import norm as norm_lib
from dpeq.nn import wsconv

Params = dict[str, jax.Array]
_DOT = dict(precision=jax.lax.Precision.HIGHEST)


def _sq(tree) -> jax.Array:
  """Per-example squared norm of a pytree of [B, ...] arrays."""
  return sum(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1)
             for v in jax.tree.leaves(tree))


def _per_example_vjp(forward, p, x, g):
  """d loss_i / d p for every example: vmap of the vjp of forward(p, x_i)."""
  def one(x_i, g_i):
    _, pullback = jax.vjp(lambda q: forward(q, x_i), p)
    return pullback(g_i)[0]
  return jax.vmap(one)(x, g)


def _weighted(x, g, weights):
  """Rows with weight 0 dropped exactly (also non-finite ones); g scaled."""
  keep = weights != 0
  expand = lambda v: keep.reshape((-1,) + (1,) * (v.ndim - 1))
  x = jnp.where(expand(x), x, jnp.zeros((), x.dtype))
  g = jnp.where(expand(g), g, jnp.zeros((), g.dtype))
  return x, g * weights.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)


@dataclasses.dataclass(frozen=True)
class Choice:
  """How a rule computes a layer's norm: "ghost" or "instantiate"."""

  route: str
  positions: int  # T per example (K views included)
  fan_in: int  # p
  fan_out: int  # d


def mixed_route(positions: int, fan_in: int, fan_out: int) -> str:
  """Bu et al.'s rule: ghost norm when 2 T^2 < p d, else instantiate."""
  return "ghost" if 2 * positions**2 < fan_in * fan_out else "instantiate"


def _linear_sq_norm(a, g, route):
  """||sum_t a_t g_t^T||^2 per example; a [B, T, p], g [B, T, d]."""
  if route == "ghost":
    gram_a = jnp.einsum("btp,bsp->bts", a, a, **_DOT)
    gram_g = jnp.einsum("btd,bsd->bts", g, g, **_DOT)
    return jnp.sum(gram_a * gram_g, axis=(1, 2))
  grad = jnp.einsum("btp,btd->bpd", a, g, **_DOT)
  return jnp.sum(jnp.square(grad), axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class DenseRule:
  """hk.Linear: y = x w + b over the last axis."""

  with_bias: bool
  route_override: str | None = None

  def forward(self, p: Params, x):
    y = jnp.dot(x, p["w"], **_DOT)
    return y + p["b"] if self.with_bias else y

  def choice(self, x_shape, y_shape) -> Choice:
    positions = int(np.prod(x_shape[1:-1], dtype=np.int64))
    route = self.route_override or mixed_route(positions, x_shape[-1],
                                               y_shape[-1])
    return Choice(route, positions, x_shape[-1], y_shape[-1])

  def sq_norms(self, p: Params, x, g):
    a = x.reshape(x.shape[0], -1, x.shape[-1])
    g = g.reshape(g.shape[0], -1, g.shape[-1])
    total = _linear_sq_norm(a, g, self.choice(x.shape, g.shape).route)
    if self.with_bias:
      total = total + jnp.sum(jnp.square(jnp.sum(g, axis=1)), axis=1)
    return total

  def weighted_grad(self, p: Params, x, g, weights) -> Params:
    x, g = _weighted(x, g, weights)
    a = x.reshape(-1, x.shape[-1])
    g = g.reshape(-1, g.shape[-1])
    grads = {"w": jnp.dot(a.T, g, **_DOT)}
    if self.with_bias:
      grads["b"] = jnp.sum(g, axis=0)
    return grads


@dataclasses.dataclass(frozen=True)
class ConvRule:
  """A 2-D NHWC convolution whose kernel and bias are functions of params.

  `kernel_and_bias(p) -> (HWIO kernel, per-channel bias or None)`; when
  `kernel_is_param` names the parameter that IS the kernel, the ghost route
  is open, otherwise the per-example kernel gradient is instantiated and
  pulled back through `kernel_and_bias`.
  """

  kernel_and_bias: Callable[[Params], tuple[jax.Array, jax.Array | None]]
  kernel_shape: tuple[int, int]
  stride: tuple[int, int]
  padding: Any
  dilation: tuple[int, int]
  kernel_is_param: str | None = None
  bias_param: str | None = None
  route_override: str | None = None

  def _conv(self, images, kernel):
    return jax.lax.conv_general_dilated(
        images, kernel, window_strides=self.stride, padding=self.padding,
        rhs_dilation=self.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), **_DOT)

  def forward(self, p: Params, x):
    kernel, bias = self.kernel_and_bias(p)
    images = x.reshape((-1,) + x.shape[-3:])
    y = self._conv(images, kernel.astype(x.dtype))
    if bias is not None:
      y = y + bias.astype(y.dtype)
    return y.reshape(x.shape[:-3] + y.shape[1:])

  def choice(self, x_shape, y_shape) -> Choice:
    positions = int(np.prod(y_shape[1:-1], dtype=np.int64))
    fan_in = x_shape[-1] * self.kernel_shape[0] * self.kernel_shape[1]
    route = mixed_route(positions, fan_in, y_shape[-1])
    if self.kernel_is_param is None:
      route = "instantiate"
    if self.route_override is not None:
      route = self.route_override if self.kernel_is_param else "instantiate"
    return Choice(route, positions, fan_in, y_shape[-1])

  def _taps(self, x):
    """The input seen by each kernel tap: kh * kw arrays [B, T, C_in].

    Strided slices of the padded input (data movement only; XLA:CPU runs
    conv_general_dilated_patches as a convolution with an identity kernel,
    p times the work). Tap (i, j) is kernel[i, j] in HWIO.
    """
    batch = x.shape[0]
    images = x.reshape((-1,) + x.shape[-3:])
    (kh, kw), (sh, sw), (dh, dw) = (self.kernel_shape, self.stride,
                                    self.dilation)
    height, width = images.shape[1:3]
    if isinstance(self.padding, str):
      pads = jax.lax.padtype_to_pads(
          (height, width), ((kh - 1) * dh + 1, (kw - 1) * dw + 1),
          (sh, sw), self.padding)
    else:
      pads = self.padding
    images = jnp.pad(images, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    out_h = (images.shape[1] - (kh - 1) * dh - 1) // sh + 1
    out_w = (images.shape[2] - (kw - 1) * dw - 1) // sw + 1
    taps = []
    for i in range(kh):
      for j in range(kw):
        tap = images[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh,
                     j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
        taps.append(tap.reshape(batch, -1, tap.shape[-1]))
    return taps

  def sq_norms(self, p: Params, x, g):
    choice = self.choice(x.shape, g.shape)
    taps = self._taps(x)
    g = g.reshape(g.shape[0], -1, g.shape[-1])
    bias_grad = jnp.sum(g, axis=1)  # [B, d]: d loss_i / d (channel bias)
    if choice.route == "ghost":
      gram_a = sum(jnp.einsum("btc,bsc->bts", a, a, **_DOT) for a in taps)
      gram_g = jnp.einsum("btd,bsd->bts", g, g, **_DOT)
      total = jnp.sum(gram_a * gram_g, axis=(1, 2))
      if self.bias_param is not None:
        total = total + jnp.sum(jnp.square(bias_grad), axis=1)
      return total
    kh, kw = self.kernel_shape
    kernel_grads = jnp.stack(
        [jnp.einsum("btc,btd->bcd", a, g, **_DOT) for a in taps], axis=1)
    kernel_grads = kernel_grads.reshape(  # [B, kh, kw, C_in, d]
        (x.shape[0], kh, kw) + kernel_grads.shape[2:])
    if self.kernel_is_param is not None:  # W itself is the parameter
      total = jnp.sum(jnp.square(kernel_grads), axis=(1, 2, 3, 4))
      if self.bias_param is not None:
        total = total + jnp.sum(jnp.square(bias_grad), axis=1)
      return total
    (_, bias), pullback = jax.vjp(self.kernel_and_bias, p)
    has_bias = bias is not None

    def one(kernel_grad, bias_g):
      return pullback((kernel_grad, bias_g if has_bias else None))[0]

    return _sq(jax.vmap(one)(kernel_grads, bias_grad))

  def weighted_grad(self, p: Params, x, g, weights) -> Params:
    x, g = _weighted(x, g, weights)
    (kernel, bias), pullback = jax.vjp(self.kernel_and_bias, p)
    images = x.reshape((-1,) + x.shape[-3:])
    g = g.reshape((-1,) + g.shape[-3:])
    _, conv_pullback = jax.vjp(lambda k: self._conv(images, k), kernel)
    kernel_grad = conv_pullback(g)[0]
    bias_grad = None if bias is None else jnp.sum(g, axis=(0, 1, 2))
    return pullback((kernel_grad, bias_grad))[0]


@dataclasses.dataclass(frozen=True)
class AffineRule:
  """Scale and offset after a normalisation: y = affine(p, x_hat).

  The tap input is x_hat, the layer's output with its affine parameters at
  identity (scale 1, offset 0); `identity` names those values.
  """

  affine: Callable[[Params, jax.Array], jax.Array]
  identity: dict[str, float]
  route_override: str | None = None

  def forward(self, p: Params, x_hat):
    return self.affine(p, x_hat)

  def choice(self, x_shape, y_shape) -> Choice:
    positions = int(np.prod(x_shape[1:-1], dtype=np.int64))
    return Choice("instantiate", positions, x_shape[-1], y_shape[-1])

  def sq_norms(self, p: Params, x_hat, g):
    return _sq(_per_example_vjp(self.affine, p, x_hat, g))

  def weighted_grad(self, p: Params, x_hat, g, weights) -> Params:
    x_hat, g = _weighted(x_hat, g, weights)
    _, pullback = jax.vjp(lambda q: self.affine(q, x_hat), p)
    return pullback(g)[0]


class UnsupportedLayerError(ValueError):
  """A module owns parameters that no ghost rule covers."""


def _pair(value, name):
  value = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
  if len(value) != 2:
    raise UnsupportedLayerError(f"{name}={value!r}: only 2-D convolutions.")
  return tuple(int(v) for v in value)


def _hk_conv_rule(module: hk.Conv2D) -> ConvRule:
  if (module.num_spatial_dims != 2 or module.channel_index != -1
      or module.feature_group_count != 1 or module.mask is not None
      or any(d != 1 for d in module.lhs_dilation)):
    raise UnsupportedLayerError(
        f"{module.module_name}: ghost clipping supports hk.Conv2D with "
        "channels_last data, no mask, feature_group_count 1 and no input "
        "dilation; use per_example_grads='vmap'.")
  with_bias = module.with_bias
  return ConvRule(
      kernel_and_bias=lambda p: (p["w"], p["b"] if with_bias else None),
      kernel_shape=_pair(module.kernel_shape, "kernel_shape"),
      stride=_pair(module.stride, "stride"),
      padding=module.padding if isinstance(module.padding, str)
      else tuple(tuple(pair) for pair in module.padding),
      dilation=_pair(module.kernel_dilation, "rate"),
      kernel_is_param="w", bias_param="b" if with_bias else None)


def _wsconv_rule(module: wsconv.WSConv2D) -> ConvRule:
  with_bias, eps = module.with_bias, module.eps

  def kernel_and_bias(p):
    kernel = wsconv.scaled_standardize(p["w"], gain=p["gain"], eps=eps)
    return kernel, p["bias"] if with_bias else None

  return ConvRule(kernel_and_bias=kernel_and_bias,
                  kernel_shape=module.kernel_shape, stride=module.stride,
                  padding=module.padding, dilation=(1, 1))


def _r2conv_rule(module: conv_lib.R2Conv) -> ConvRule:
  size = module.kernel_size
  return ConvRule(kernel_and_bias=conv_lib.kernel_and_bias_fn(module),
                  kernel_shape=(size, size),
                  stride=(module.stride, module.stride),
                  padding=module.padding,
                  dilation=(module.dilation, module.dilation))


def _hk_group_norm_rule(module: hk.GroupNorm) -> AffineRule:
  if module.channel_index != -1:
    raise UnsupportedLayerError(
        f"{module.module_name}: ghost clipping supports channels_last "
        "hk.GroupNorm only; use per_example_grads='vmap'.")

  def affine(p, x_hat):
    y = x_hat * p["scale"] if "scale" in p else x_hat
    return y + p["offset"] if "offset" in p else y

  return AffineRule(affine=affine, identity={"scale": 1.0, "offset": 0.0})


def _equivariant_group_norm_rule(module: norm_lib.EquivariantGroupNorm
                                 ) -> AffineRule:
  field_type = module.in_type
  return AffineRule(
      affine=lambda p, x_hat: norm_lib.apply_affine(field_type, p, x_hat),
      identity={"scale": 1.0, "offset": 0.0})


_RULES: dict[type, Callable[[Any], Any]] = {
    hk.Linear: lambda m: DenseRule(with_bias=m.with_bias),
    hk.Conv2D: _hk_conv_rule,
    wsconv.WSConv2D: _wsconv_rule,
    conv_lib.R2Conv: _r2conv_rule,
    hk.GroupNorm: _hk_group_norm_rule,
    norm_lib.EquivariantGroupNorm: _equivariant_group_norm_rule,
}


def supported_layers() -> tuple[str, ...]:
  """Names of the module types ghost clipping has rules for."""
  return tuple(sorted(t.__name__ for t in _RULES))


def rule_for(module: hk.Module, *, route: str | None = None):
  """The rule of `module` (exact type match; subclasses may change f).

  Args:
    module: a Haiku module that owns parameters.
    route: None for the mixed rule, or "ghost" / "instantiate" to force
      the norm route where the layer allows it (tests, benchmarks).

  Raises:
    UnsupportedLayerError: no rule for this module type or configuration.
  """
  make = _RULES.get(type(module))
  if make is None:
    raise UnsupportedLayerError(
        f"Module {module.module_name!r} ({type(module).__name__}) owns "
        "parameters but ghost clipping has no rule for it (supported: "
        f"{', '.join(supported_layers())}); use "
        "training.per_example_grads='vmap' (or 'auto').")
  rule = make(module)
  return dataclasses.replace(rule, route_override=route) if route else rule
