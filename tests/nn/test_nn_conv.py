"""R2Conv: equivariance, bias, the trivial group, standardization, gradients."""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq import groups, kernels
from dpeq.nn import FieldType, R2Conv
from dpeq.nn.testing import (
    disk_mask,
    equivariance_error,
    random_params,
    smooth_random_field,
)

EXACT = 1e-5


def _conv(in_type, out_type, **kwargs):
  return hk.without_apply_rng(
      hk.transform(lambda x: R2Conv(in_type, out_type, name="conv", **kwargs)(x))
  )


def _mixed_types(group):
  """An input and an output type with every kind of pair (trivial, regular)."""
  fields = FieldType.irreps if not group.is_finite else FieldType.regular
  in_type = FieldType.trivial(group, 2) + fields(group, 1)
  out_type = fields(group, 2) + FieldType.trivial(group, 1)
  return in_type, out_type


@pytest.mark.parametrize(
    "name", ["C1", "C2", "C4", "D1", "D2", "D4", "C8", "D8", "C16", "SO2", "O2"]
)
def test_exactly_equivariant_for_grid_preserving_elements(name):
  group = groups.get_group(name)
  in_type, out_type = _mixed_types(group)
  model = _conv(in_type, out_type)
  x = np.random.default_rng(0).standard_normal((2, 9, 9, in_type.size))
  x = x.astype(np.float32)
  params = random_params(model.init, x)
  apply = lambda inputs: model.apply(params, inputs)
  for element in group.grid_preserving_elements():
    error = equivariance_error(apply, in_type, out_type, x, element)
    assert error < EXACT, (element, error)


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(dilation=2, padding=2)])
def test_stride_and_dilation_on_symmetric_grids(kwargs):
  d4 = groups.get_group("D4")
  in_type, out_type = _mixed_types(d4)
  model = _conv(in_type, out_type, **kwargs)
  x = np.random.default_rng(1).standard_normal((1, 9, 9, in_type.size))
  params = random_params(model.init, x.astype(np.float32))
  apply = lambda inputs: model.apply(params, inputs.astype(np.float32))
  assert apply(x).shape[1:3] == ((5, 5) if "stride" in kwargs else (9, 9))
  for element in d4.elements():
    assert equivariance_error(apply, in_type, out_type, x, element) < EXACT


# Approximate equivariance off the grid: smooth inputs (blur 2 px) that vanish
# at the rim, rotated with cubic splines, compared inside a disk. Measured:
# ~7e-2 for C8/D8/C16 (finite regular fields sampled on 3x3), ~1.5e-2 for
# SO(2); an unconstrained 3x3 kernel gives ~2 (see the control test).
APPROX = {"C8": 0.15, "D8": 0.15, "C16": 0.15, "SO2": 0.05}


@pytest.mark.parametrize(
    "name,rotation,flip",
    [("C8", math.pi / 4, 0), ("D8", 3 * math.pi / 4, 1), ("C16", math.pi / 8, 0),
     ("SO2", 0.3, 0)],
)
def test_approximately_equivariant_for_other_rotations(name, rotation, flip):
  group = groups.get_group(name)
  fields = FieldType.irreps if name == "SO2" else FieldType.regular
  in_type = FieldType.trivial(group, 1) + fields(group, 1)
  out_type = fields(group, 1)
  model = _conv(in_type, out_type)
  x = smooth_random_field((1, 29, 29, in_type.size), smoothness=2.0, seed=2)
  params = random_params(model.init, x)
  error = equivariance_error(
      lambda inputs: model.apply(params, inputs), in_type, out_type, x,
      groups.GroupElement(rotation, flip), mask=disk_mask(29, 10),
  )
  assert error < APPROX[name]


def test_the_approximate_check_detects_a_non_equivariant_kernel():
  c8 = FieldType.regular("C8", 1)
  kernel = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
  conv = lambda x: jax.lax.conv_general_dilated(
      jnp.asarray(x), kernel, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = smooth_random_field((1, 29, 29, 8), smoothness=2.0, seed=2)
  error = equivariance_error(
      conv, c8, c8, x, groups.GroupElement(math.pi / 4, 0), mask=disk_mask(29, 10)
  )
  assert error > 5 * APPROX["C8"]


@pytest.mark.parametrize("name", ["D4", "SO2"])
def test_bias_acts_only_on_trivial_components(name):
  group = groups.get_group(name)
  in_type, out_type = _mixed_types(group)
  model = _conv(in_type, out_type)
  x = np.zeros((1, 5, 5, in_type.size), np.float32)
  params = random_params(model.init, x)
  bias = params["conv"]["bias"]
  # One scalar per trivial irrep: 1 per regular or spectral field, 1 per scalar.
  assert bias.shape == (3,)
  y = np.asarray(model.apply(params, x))  # Zero input: y is the bias.
  np.testing.assert_allclose(y, np.broadcast_to(y[:, :1, :1], y.shape))
  per_pixel = y[0, 0, 0]
  if group.is_finite:  # b / sqrt(|G|) on every channel of a regular field.
    np.testing.assert_allclose(
        np.abs(per_pixel[:16]), np.repeat(np.abs(bias[:2]) / math.sqrt(8), 8),
        rtol=1e-6)
  else:  # Only the frequency-0 channel of a spectral field.
    assert np.all(per_pixel[1:7] == 0) and np.all(per_pixel[8:14] == 0)
    np.testing.assert_allclose(np.abs(per_pixel[[0, 7]]), np.abs(bias[:2]))
  np.testing.assert_allclose(np.abs(per_pixel[-1]), np.abs(bias[2]), rtol=1e-6)
  elements = group.elements() if group.is_finite else [
      groups.GroupElement(t, 0) for t in (0.4, 1.3, 2.9)]
  for element in elements:
    rho = out_type.representation_matrix(element)
    np.testing.assert_allclose(rho @ per_pixel, per_pixel, atol=1e-6)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_trivial_group_recovers_ordinary_convolution(kernel_size):
  c1 = groups.get_group("C1")
  in_type, out_type = FieldType.trivial(c1, 2), FieldType.trivial(c1, 3)
  scalar = kernels.kernel_basis(
      group=c1, in_rep=c1.trivial_representation(),
      out_rep=c1.trivial_representation(), kernel_size=kernel_size,
  )[:, :, :, 0, 0].reshape(-1, kernel_size**2).astype(np.float64)
  # Band limit j <= 3 r: 8 of 9 (3x3), 21 of 25 (5x5) kernel dimensions.
  assert np.linalg.matrix_rank(scalar) == {3: 8, 5: 21}[kernel_size]
  rng = np.random.default_rng(4)
  # Any kernel in the band-limited span, with coefficients found by least
  # squares (no use of orthonormality).
  target = np.einsum("bp,bio->pio", scalar, rng.standard_normal((len(scalar), 2, 3)))
  target[kernel_size**2 // 2] += 1.0  # Plus the identity (a centre delta).
  target = target.reshape(kernel_size, kernel_size, 2, 3)
  coefficients = np.linalg.lstsq(
      scalar.T, target.reshape(kernel_size**2, 6), rcond=None)[0]
  params = {"conv": {"coefficients": coefficients.reshape(-1, 2, 3).transpose(1, 2, 0),
                     "bias": np.zeros(3)}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x = rng.standard_normal((2, 9, 9, 2)).astype(np.float32)
  y = _conv(in_type, out_type, kernel_size=kernel_size).apply(params, x)
  expected = jax.lax.conv_general_dilated(
      x, target.astype(np.float32), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_weight_standardization_acts_on_all_coefficients():
  d4 = groups.get_group("D4")
  in_type, out_type = _mixed_types(d4)
  model = hk.without_apply_rng(hk.transform(
      lambda: R2Conv(in_type, out_type, weight_standardization=True,
                     name="conv").kernel()))
  params = random_params(model.init)
  kernel = np.asarray(model.apply(params))
  # Invariant to an affine change of every coefficient of the layer.
  shifted = jax.tree.map(lambda w: 3.0 * w - 0.5, params)
  np.testing.assert_allclose(model.apply(shifted), kernel, rtol=1e-4, atol=1e-5)
  # Orthonormal basis: |K|^2 = |w_hat|^2 = N std(w_hat)^2 = N (std ~ 1).
  coefficients = [w for k, w in params["conv"].items() if k != "bias"]
  count = sum(w.size for w in coefficients)
  assert np.sum(kernel**2) == pytest.approx(count, rel=1e-3)
  # Without standardization the same raw coefficients give another kernel.
  plain = hk.without_apply_rng(hk.transform(
      lambda: R2Conv(in_type, out_type, name="conv").kernel()))
  assert not np.allclose(plain.apply(params), kernel)


def test_scaled_weight_standardization_gives_unit_norm_filters_per_field():
  d4 = groups.get_group("D4")
  in_type, out_type = _mixed_types(d4)
  model = hk.without_apply_rng(hk.transform(
      lambda: R2Conv(in_type, out_type, weight_standardization="scaled",
                     name="conv").kernel()))
  params = random_params(model.init)
  kernel = np.asarray(model.apply(params))
  # Orthonormal basis: each output field's filters have squared norm equal
  # to its number of channels, whatever the fan-in.
  for field in out_type.field_slices:
    norm2 = np.sum(kernel[..., field] ** 2)
    assert norm2 == pytest.approx(field.stop - field.start, rel=1e-4)
  # Invariant to an affine change of each output field's coefficients
  # (one scale and shift per field, shared by every pair into that field),
  # but not to a change that mixes fields' scales within one field.
  rng = np.random.default_rng(3)
  kinds = {}  # output representation index b -> per-field (scale, shift)

  def per_field(name, w):
    b = int(name.rsplit("_", 1)[1])
    if b not in kinds:
      kinds[b] = (rng.uniform(0.5, 3.0, w.shape[1]), rng.normal(size=w.shape[1]))
    scale, shift = kinds[b]
    return w * scale[None, :, None] + shift[None, :, None]

  changed = {"conv": {k: (w if k == "bias" else per_field(k, w))
                      for k, w in params["conv"].items()}}
  np.testing.assert_allclose(model.apply(changed), kernel, rtol=1e-4,
                             atol=1e-5)
  name = sorted(k for k in params["conv"] if k != "bias")[0]
  broken = {"conv": dict(params["conv"])}
  w = np.array(broken["conv"][name])
  w[0] *= 4.0  # one input field's weight within every output field
  broken["conv"][name] = w
  assert not np.allclose(model.apply(broken), kernel, atol=1e-3)
  # And it stays exactly equivariant (it only rescales coefficients).
  conv = _conv(in_type, out_type, weight_standardization="scaled")
  x = np.random.default_rng(0).standard_normal((2, 9, 9, in_type.size))
  x = x.astype(np.float32)
  conv_params = random_params(conv.init, x)
  apply = lambda inputs: conv.apply(conv_params, inputs)
  for element in d4.grid_preserving_elements():
    assert equivariance_error(apply, in_type, out_type, x, element) < EXACT


def test_weight_standardization_refuses_unknown_modes():
  c4 = groups.get_group("C4")
  field_type = FieldType.regular(c4, 1)
  with pytest.raises(ValueError, match="'layer' or 'scaled'"):
    hk.transform(lambda: R2Conv(field_type, field_type,
                                weight_standardization="per_channel")).init(None)


def test_he_initialization_keeps_the_activation_scale():
  c4 = groups.get_group("C4")
  field_type = FieldType.regular(c4, 8)
  model = hk.without_apply_rng(hk.transform(
      lambda x: R2Conv(field_type, field_type, padding="VALID")(x)))
  x = np.random.default_rng(5).standard_normal((4, 12, 12, 32)).astype(np.float32)
  variances = [
      float(jnp.var(model.apply(model.init(jax.random.PRNGKey(seed), x), x)))
      for seed in range(2)
  ]
  assert np.mean(variances) == pytest.approx(2.0, rel=0.25)


def test_only_coefficients_and_bias_are_parameters():
  d4 = groups.get_group("D4")
  in_type, out_type = _mixed_types(d4)
  model = hk.transform_with_state(lambda x: R2Conv(in_type, out_type)(x))
  x = jnp.zeros((1, 5, 5, in_type.size))
  params, state = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert state == {}
  sizes = {name: math.prod(p.shape) for name, p in params["r2_conv"].items()}
  expected = {  # n_in * n_out * basis size: H = 8 harmonics, |G| = 8.
      "coefficients_0_0": 2 * 2 * 8, "coefficients_0_1": 2 * 1 * 2,
      "coefficients_1_0": 1 * 2 * 64, "coefficients_1_1": 1 * 1 * 8,
      "bias": 3,
  }
  assert sizes == expected


def _two_layer_loss(in_type, hidden_type, out_type):
  def loss(x):
    y = R2Conv(in_type, hidden_type, name="first")(x)
    y = jax.nn.mish(y)
    y = R2Conv(hidden_type, out_type, name="second")(y)
    return jnp.sum(jnp.square(y))
  return hk.without_apply_rng(hk.transform(loss))


def test_per_example_gradients_match_a_loop_and_expand_the_kernel_once():
  c4 = groups.get_group("C4")
  in_type = FieldType.trivial(c4, 2)
  hidden_type, out_type = FieldType.regular(c4, 2), FieldType.regular(c4, 1)
  model = _two_layer_loss(in_type, hidden_type, out_type)
  batch = np.random.default_rng(6).standard_normal((3, 1, 7, 7, 2)).astype(np.float32)
  params = random_params(model.init, batch[0])
  per_example = jax.vmap(jax.grad(model.apply), in_axes=(None, 0))
  vmapped = jax.jit(per_example)(params, batch)
  single_grad = jax.jit(jax.grad(model.apply))
  for index in range(len(batch)):
    single = single_grad(params, batch[index])
    jax.tree.map(
        lambda a, b, i=index: np.testing.assert_allclose(a[i], b, rtol=2e-5,
                                                         atol=1e-6),
        vmapped, single)
  # The forward convolutions see one unbatched [3, 3, C_in, C_out] kernel:
  # the kernel expansion is not repeated per example.
  jaxpr = jax.make_jaxpr(per_example)(params, batch)
  kernels_seen = {
      tuple(eqn.invars[1].aval.shape)
      for eqn in jaxpr.eqns if eqn.primitive.name == "conv_general_dilated"
      and eqn.params["feature_group_count"] == 1
      and eqn.params["batch_group_count"] == 1
  }
  assert {(3, 3, 2, 8), (3, 3, 8, 4)} <= kernels_seen


def test_bad_input_raises_clear_errors():
  c4, d4 = groups.get_group("C4"), groups.get_group("D4")
  with pytest.raises(ValueError, match="different groups"):
    hk.transform(lambda: R2Conv(FieldType.regular(c4, 1),
                                FieldType.regular(d4, 1))).init(None)
  with pytest.raises(ValueError, match="kernel_size must be one of"):
    hk.transform(lambda: R2Conv(FieldType.regular(c4, 1), FieldType.regular(c4, 1),
                                kernel_size=4)).init(None)
  with pytest.raises(ValueError, match="padding"):
    hk.transform(lambda: R2Conv(FieldType.regular(c4, 1), FieldType.regular(c4, 1),
                                padding=(0, 1))).init(None)
  so2 = groups.get_group("SO2")
  psi3 = FieldType(so2, [so2.irreps()[3]])
  with pytest.raises(ValueError, match="basis is empty"):
    hk.transform(lambda: R2Conv(FieldType.trivial(so2, 1), psi3)).init(None)
  model = _conv(FieldType.regular(c4, 1), FieldType.regular(c4, 1))
  with pytest.raises(ValueError, match="has 3 channels.*has 4"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 3)))
