"""Conventional 2-D convolution with scaled weight standardization.

Scaled weight standardization (Brock et al. 2021, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets"; used by
De et al. 2022 in every convolution of their WideResNets and NF-ResNets)
re-parameterizes a kernel `w` of shape [kh, kw, C_in, C_out] per output
channel o as

  w_hat[..., o] = gain[o] * (w[..., o] - mean_o) / sqrt(max(var_o * fan_in, eps))

with mean_o and var_o (biased) taken over the fan_in = kh * kw * C_in entries
of w[..., o]. Without the eps floor, sum(w_hat[..., o] ** 2) = gain[o] ** 2, so
a unit-variance input gives unit-variance outputs at initialization whatever
the scale of `w`. The statistics are over weights only: no batch statistics,
so per-example gradients stay per example.
"""

from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

IntOrPair = int | Sequence[int]
Padding = str | Sequence[tuple[int, int]]


def scaled_standardize(
    weight: jax.Array, *, gain: jax.Array, eps: float = 1e-4
) -> jax.Array:
  """Scaled weight standardization of an HWIO kernel.

  Args:
    weight: kernel [kh, kw, C_in, C_out].
    gain: per-output-channel gain [C_out].
    eps: floor on var * fan_in (guards all-constant kernels).

  Returns:
    The standardized kernel, same shape as `weight`:
    gain * (w - mean) / sqrt(max(var * fan_in, eps)) per output channel.
  """
  if weight.ndim != 4:
    raise ValueError(
        f"scaled_standardize expects an HWIO kernel of rank 4, got shape "
        f"{weight.shape}."
    )
  fan_in = np.prod(weight.shape[:-1])
  mean = jnp.mean(weight, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(weight, axis=(0, 1, 2), keepdims=True)
  return gain * (weight - mean) * jax.lax.rsqrt(jnp.maximum(var * fan_in, eps))


def _pair(value: IntOrPair, what: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
    raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}.")
  return int(pair[0]), int(pair[1])


class WSConv2D(hk.Module):
  """2-D convolution (NHWC) with scaled weight standardization, gain and bias.

  Parameters: `w` [kh, kw, C_in, C_out] (the raw kernel), `gain` [C_out]
  (init 1) and, with `with_bias`, `bias` [C_out] (init 0). The kernel used in
  the convolution is `scaled_standardize(w, gain=gain, eps=eps)`.
  """

  def __init__(
      self,
      output_channels: int,
      kernel_shape: IntOrPair = 3,
      *,
      stride: IntOrPair = 1,
      padding: Padding = "SAME",
      with_bias: bool = True,
      w_init: Callable[[Sequence[int], jnp.dtype], jax.Array] | None = None,
      eps: float = 1e-4,
      name: str | None = None,
  ):
    """Creates the module.

    Args:
      output_channels: C_out.
      kernel_shape: kernel size (int or (kh, kw)).
      stride: spatial stride (int or pair).
      padding: "SAME", "VALID" or explicit ((top, bottom), (left, right)).
      with_bias: whether to add a learnable per-channel bias.
      w_init: initializer of the raw kernel (default: fan-in variance
        scaling; standardization makes the result insensitive to it).
      eps: floor on var * fan_in.
      name: module name.
    """
    super().__init__(name=name)
    if int(output_channels) != output_channels or output_channels < 1:
      raise ValueError(
          f"output_channels must be a positive int, got {output_channels!r}."
      )
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
      raise ValueError(
          f'padding must be "SAME", "VALID" or explicit pairs, got {padding!r}.'
      )
    if eps <= 0:
      raise ValueError(f"eps must be positive, got {eps}.")
    self.output_channels = int(output_channels)
    self.kernel_shape = _pair(kernel_shape, "kernel_shape")
    self.stride = _pair(stride, "stride")
    self.padding = padding if isinstance(padding, str) else tuple(padding)
    self.with_bias = with_bias
    self.w_init = w_init or hk.initializers.VarianceScaling(1.0, "fan_in")
    self.eps = eps

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Convolves `inputs` [B, H, W, C_in] -> [B, H', W', C_out]."""
    if inputs.ndim != 4:
      raise ValueError(
          f"WSConv2D expects NHWC inputs of rank 4, got shape {inputs.shape}; "
          "add a batch axis for a single image."
      )
    w_shape = (*self.kernel_shape, inputs.shape[-1], self.output_channels)
    w = hk.get_parameter("w", w_shape, inputs.dtype, init=self.w_init)
    gain = hk.get_parameter(
        "gain", (self.output_channels,), inputs.dtype, init=jnp.ones
    )
    kernel = scaled_standardize(w, gain=gain, eps=self.eps)
    out = jax.lax.conv_general_dilated(
        inputs,
        kernel,
        window_strides=self.stride,
        padding=self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if self.with_bias:
      out = out + hk.get_parameter(
          "bias", (self.output_channels,), inputs.dtype, init=jnp.zeros
      )
    return out
