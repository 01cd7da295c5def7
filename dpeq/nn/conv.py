"""R2Conv: the steerable (G-equivariant) planar convolution.

A kernel K with K(g p) = rho_out(g) K(p) rho_in(g)^-1 for every g in G makes
the cross-correlation out(p) = sum_q K(q) in(p + q) commute with the action
of G on feature fields (see `dpeq.nn.field_type`). Such kernels form a linear
space with an orthonormal basis per pair of field representations
(`dpeq.kernels.kernel_basis`). The layer learns only the coordinates of its
kernel in that basis:

  coefficients  w_ab [n_in(a), n_out(b), num_basis(a, b)] per pair (a, b) of
                input/output representation types, the only parameters;
  kernel        K = sum_(a, b) einsum(w_ab, basis_ab): one einsum per pair with
                the basis sampled on the pixel grid, a constant (neither a
                parameter nor Haiku state) computed once in numpy;
  output        lax.conv_general_dilated(x, K) + bias.

The expansion does not depend on the example, so under
`jax.vmap(jax.grad(...))` over examples (params unbatched) it runs once and the
per-example gradients live in coefficient space.

Equivariance is exact for the grid-preserving elements (multiples of 90
degrees, flips) when the sampling grid is symmetric: stride 1 with "SAME" or
symmetric integer padding; with stride s > 1 the sampled positions are
symmetric only when (H - 1) and (W - 1) are multiples of s (e.g. 9 -> 5 at
stride 2, not 32 -> 16: pool instead). Other rotations of C8, C16, D8, SO(2)
are approximate through the sampling of the basis on a small grid.
"""

from __future__ import annotations

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpeq.kernels import kernel_basis
from dpeq.nn.field_type import FieldType

# Gain of the He-like initialization (variance factor 2, as for ReLU; Mish and
# ELU are close to it).
_INIT_GAIN = 2.0
# The paper's weight standardization: (w - mean) / (std + eps).
_WS_EPS = 1e-5
# Floor on the sum of squared deviations of the scaled standardization (as
# WSConv2D's floor on var * fan_in).
_SCALED_WS_EPS = 1e-4
# weight_standardization values -> mode (None: off).
_WS_MODES = {False: None, True: "layer", "layer": "layer", "scaled": "scaled"}


@functools.lru_cache(maxsize=256)
def _plan(in_type: FieldType, out_type: FieldType, kernel_size: int):
  """The numpy side of an R2Conv: bases, shapes, permutations, init scales."""
  in_kinds, in_order = _sort_fields(in_type)
  out_kinds, out_order = _sort_fields(out_type)
  pairs = []
  for a, (in_rep, in_count) in enumerate(in_kinds):
    for b, (out_rep, out_count) in enumerate(out_kinds):
      basis = kernel_basis(
          group=in_type.group,
          in_rep=in_rep,
          out_rep=out_rep,
          kernel_size=kernel_size,
      )
      pairs.append((a, b, in_count, out_count, np.asarray(basis, np.float32)))
  # He-like rule (orthonormal basis): each output field of type b receives
  # sum_a n_in(a) * num_basis(a, b) coefficients; with coefficient variance
  # s_b^2 = gain * size(b) / that count, the expected squared norm of an output
  # field is gain * size(b) * Var(input channel), i.e. each output channel has
  # gain times the input channels' variance (for i.i.d. inputs).
  fan_in = np.zeros(len(out_kinds))
  for _, b, in_count, _, basis in pairs:
    fan_in[b] += in_count * basis.shape[0]
  init_std = [
      float(np.sqrt(_INIT_GAIN * rep.size / fan)) if fan else 0.0
      for (rep, _), fan in zip(out_kinds, fan_in, strict=True)
  ]
  return {
      "in_kinds": in_kinds,
      "out_kinds": out_kinds,
      "pairs": pairs,
      "init_std": init_std,
      "fan_in": fan_in,
      "in_gather": _inverse_permutation(in_order),
      "out_gather": _inverse_permutation(out_order),
      "bias_basis": out_type.trivial_basis.astype(np.float32),
  }


def _coefficient_name(a: int, b: int, multiple: bool) -> str:
  return f"coefficients_{a}_{b}" if multiple else "coefficients"


def _scaled_standardize(plan, coefficients: list) -> list:
  """Per output field o of type b: (w - mean_o) * sqrt(size(b) / S_o), with
  mean_o and S_o (sum of squared deviations) over the o-th output field's
  coefficients of every pair (a, b); S_o floored at _SCALED_WS_EPS. With an
  orthonormal basis each output field's expanded kernel then has squared
  norm size(b): one per channel, as WSConv2D's scaled standardization with
  gain 1 (Brock et al. 2021)."""
  sums = {}
  for (_, b, _, _, _), w in zip(plan["pairs"], coefficients, strict=True):
    if w is not None:
      sums[b] = sums.get(b, 0.0) + jnp.sum(w, axis=(0, 2))
  # fan_in[b]: the coefficients per output field of type b (see _plan).
  means = {b: sums[b] / plan["fan_in"][b] for b in sums}
  squares = {}
  for (_, b, _, _, _), w in zip(plan["pairs"], coefficients, strict=True):
    if w is not None:
      deviation = w - means[b][None, :, None]
      squares[b] = squares.get(b, 0.0) + jnp.sum(deviation**2, axis=(0, 2))
  scales = {
      b: jnp.sqrt(plan["out_kinds"][b][0].size)
      * lax.rsqrt(jnp.maximum(squares[b], _SCALED_WS_EPS))
      for b in squares
  }
  return [
      None if w is None else (w - means[b][None, :, None])
      * scales[b][None, :, None]
      for (_, b, _, _, _), w in zip(plan["pairs"], coefficients, strict=True)
  ]


def _expand_kernel(plan, kernel_size: int, coefficients: list,
                   weight_standardization: str | None) -> jax.Array:
  """HWIO kernel from the coefficients of each pair (None: empty basis)."""
  if weight_standardization == "layer":
    flat = jnp.concatenate([w.ravel() for w in coefficients if w is not None])
    mean, std = jnp.mean(flat), jnp.std(flat)
    coefficients = [
        None if w is None else (w - mean) / (std + _WS_EPS)
        for w in coefficients
    ]
  elif weight_standardization == "scaled":
    coefficients = _scaled_standardize(plan, coefficients)
  k = kernel_size
  rows = []
  for a, (in_rep, in_count) in enumerate(plan["in_kinds"]):
    blocks = []
    for (pair_a, b, _, out_count, basis), w in zip(
        plan["pairs"], coefficients, strict=True
    ):
      if pair_a != a:
        continue
      out_rep = plan["out_kinds"][b][0]
      shape = (k, k, in_count * in_rep.size, out_count * out_rep.size)
      if w is None:
        blocks.append(jnp.zeros(shape, jnp.float32))
      else:
        block = jnp.einsum("mnb,bhwio->hwmino", w, jnp.asarray(basis))
        blocks.append(block.reshape(shape))
    rows.append(jnp.concatenate(blocks, axis=3) if len(blocks) > 1 else blocks[0])
  kernel = jnp.concatenate(rows, axis=2) if len(rows) > 1 else rows[0]
  if plan["in_gather"] is not None:
    kernel = kernel[:, :, plan["in_gather"], :]
  if plan["out_gather"] is not None:
    kernel = kernel[:, :, :, plan["out_gather"]]
  return kernel


def kernel_and_bias_fn(layer: R2Conv):
  """The layer's parameters -> (HWIO kernel, per-channel bias or None).

  A pure function of the layer's parameter dict (no Haiku context), the same
  expansion `R2Conv.__call__` uses: for code that needs the kernel as a
  function of the coefficients (e.g. dpeq.privacy.ghost_clipping's per-example norms).
  """
  plan, size = layer._plan, layer.kernel_size
  standardize = layer.weight_standardization
  multiple = len(plan["pairs"]) > 1
  names = [_coefficient_name(a, b, multiple) if basis.shape[0] else None
           for a, b, _, _, basis in plan["pairs"]]
  with_bias = layer.with_bias and layer.out_type.num_trivial

  def fn(params):
    coefficients = [None if n is None else params[n] for n in names]
    kernel = _expand_kernel(plan, size, coefficients, standardize)
    bias = None
    if with_bias:
      bias = params["bias"] @ jnp.asarray(plan["bias_basis"])
    return kernel, bias

  return fn


def _sort_fields(field_type: FieldType):
  """Distinct representations (first-appearance order) and channel order.

  Returns ([(rep, count)], order) where `order` lists the original channels
  grouped by representation: the channel layout in which each pair's kernel
  block is contiguous.
  """
  kinds: dict = {}
  for rep, field in zip(field_type.reps, field_type.field_slices, strict=True):
    kinds.setdefault(rep, []).append(np.arange(field.start, field.stop))
  order = np.concatenate([np.concatenate(chunks) for chunks in kinds.values()])
  return [(rep, len(chunks)) for rep, chunks in kinds.items()], order


def _inverse_permutation(order: np.ndarray):
  """Index that maps the grouped layout back to channel order (None: same)."""
  if np.array_equal(order, np.arange(order.size)):
    return None
  return np.argsort(order)


def _check_positive_int(value, *, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"R2Conv: {name} must be a positive int, got {value!r}.")
  return int(value)


class R2Conv(hk.Module):
  """G-equivariant convolution between two field types of the same group.

  Parameters (Haiku): one coefficient array per pair of input/output
  representation types, named "coefficients" when there is one pair and
  "coefficients_<a>_<b>" otherwise (a, b: indices of the distinct
  representations in order of first appearance), of shape
  [n_in(a), n_out(b), num_basis(a, b)]; and, with `bias`, "bias"
  [out_type.num_trivial]: one scalar per trivial irrep of each output field,
  added along `out_type.trivial_basis` (b / sqrt(|G|) on every channel of a
  regular field; only the frequency-0 channel of a spectral field).

  Initialization: coefficients ~ N(0, s_b^2) with s_b^2 = 2 size(b) /
  (sum_a n_in(a) num_basis(a, b)) for output representation b, so that with an
  orthonormal basis each output channel has twice the variance of i.i.d.
  input channels (He et al.); bias zero.

  Weight standardization, recomputed every call; it acts on coefficients, so
  the kernel stays equivariant:
    True or "layer" (the paper's form, Hölzl et al.): (w - mean) / (std +
      1e-5) with one mean and one (biased) std over all coefficients of the
      layer (the output's scale then grows with the square root of the
      fan-in);
    "scaled" (dpeq's, the analogue of WSConv2D's scaled standardization
      with gain 1): per output field, centred and scaled so that its
      expanded kernel has squared norm size(field), i.e. unit-norm filters
      per output channel whatever the fan-in.
  """

  def __init__(
      self,
      in_type: FieldType,
      out_type: FieldType,
      kernel_size: int = 3,
      *,
      stride: int = 1,
      padding: str | int = "SAME",
      dilation: int = 1,
      bias: bool = True,
      weight_standardization: bool | str = False,
      name: str | None = None,
  ):
    """Builds the layer (and its numpy basis, cached across layers).

    Args:
      in_type: field type of the input [..., H, W, in_type.size].
      out_type: field type of the output; same group as `in_type`.
      kernel_size: odd kernel side length supported by `dpeq.kernels`.
      stride: spatial stride.
      padding: "SAME", "VALID" or a non-negative int padded on every side.
      dilation: kernel dilation.
      bias: whether to learn a bias on the trivial components.
      weight_standardization: False, True / "layer" or "scaled" (see the
        class docstring).
      name: Haiku module name.

    Raises:
      ValueError: for field types of different groups, bad sizes/strides/
        padding, or when no equivariant kernel maps `in_type` to `out_type`.
    """
    super().__init__(name=name)
    if not isinstance(in_type, FieldType) or not isinstance(out_type, FieldType):
      raise ValueError(
          "R2Conv takes FieldTypes for in_type and out_type, got "
          f"{type(in_type).__name__} and {type(out_type).__name__}."
      )
    if in_type.group != out_type.group:
      raise ValueError(
          f"R2Conv: in_type {in_type} and out_type {out_type} are of different "
          "groups; restrict one of them first."
      )
    self.in_type = in_type
    self.out_type = out_type
    self.kernel_size = _check_positive_int(kernel_size, name="kernel_size")
    self.stride = _check_positive_int(stride, name="stride")
    self.dilation = _check_positive_int(dilation, name="dilation")
    if isinstance(padding, str):
      if padding not in ("SAME", "VALID"):
        raise ValueError(
            f"R2Conv: padding must be 'SAME', 'VALID' or an int, got {padding!r}."
        )
      self.padding = padding
    elif isinstance(padding, (int, np.integer)) and padding >= 0:
      self.padding = ((int(padding), int(padding)),) * 2
    else:
      raise ValueError(
          f"R2Conv: padding must be 'SAME', 'VALID' or an int >= 0, got "
          f"{padding!r} (asymmetric padding would break equivariance)."
      )
    self.with_bias = bool(bias)
    if weight_standardization not in tuple(_WS_MODES):
      raise ValueError(
          "R2Conv: weight_standardization must be False, True, 'layer' or "
          f"'scaled', got {weight_standardization!r}.")
    self.weight_standardization = _WS_MODES[weight_standardization]
    self._plan = _plan(in_type, out_type, self.kernel_size)
    if not any(pair[-1].shape[0] for pair in self._plan["pairs"]):
      raise ValueError(
          f"R2Conv: no {self.kernel_size}x{self.kernel_size} equivariant "
          f"kernel maps {in_type} to {out_type} (the basis is empty); change "
          "the field types or the kernel size."
      )

  @property
  def num_basis(self) -> int:
    """Number of learned coefficients (without the bias)."""
    return sum(
        in_count * out_count * basis.shape[0]
        for _, _, in_count, out_count, basis in self._plan["pairs"]
    )

  def _coefficients(self) -> list:
    multiple = len(self._plan["pairs"]) > 1
    return [
        None if not basis.shape[0] else hk.get_parameter(
            _coefficient_name(a, b, multiple),
            (in_count, out_count, basis.shape[0]),
            jnp.float32,
            init=hk.initializers.RandomNormal(
                stddev=self._plan["init_std"][b]),
        )
        for a, b, in_count, out_count, basis in self._plan["pairs"]
    ]

  def kernel(self) -> jax.Array:
    """The expanded HWIO kernel [k, k, in_type.size, out_type.size] (float32)."""
    return _expand_kernel(self._plan, self.kernel_size, self._coefficients(),
                          self.weight_standardization)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves x [..., H, W, in_type.size] -> [..., H', W', out_type.size]."""
    self.in_type.check_input(x, layer=f"R2Conv {self.module_name}")
    kernel = self.kernel().astype(x.dtype)
    leading = x.shape[:-3]
    images = x.reshape((-1,) + x.shape[-3:])
    y = lax.conv_general_dilated(
        images,
        kernel,
        window_strides=(self.stride, self.stride),
        padding=self.padding,
        rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if self.with_bias and self.out_type.num_trivial:
      bias = hk.get_parameter(
          "bias", (self.out_type.num_trivial,), jnp.float32, init=jnp.zeros
      )
      y = y + (bias @ jnp.asarray(self._plan["bias_basis"])).astype(y.dtype)
    return y.reshape(leading + y.shape[1:])
