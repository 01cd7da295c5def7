"""Pointwise, Fourier and norm nonlinearities: equivariance and validity."""

import math

import haiku as hk
import jax
import numpy as np
import pytest

from dpeq import groups
from dpeq.nn import (
    FieldType,
    FourierNonlinearity,
    NormNonlinearity,
    PointwiseNonlinearity,
)
from dpeq.nn.testing import equivariance_error

EXACT = 1e-5


def _module(build):
  return hk.without_apply_rng(hk.transform(lambda x: build()(x)))


def _channel_action(field_type, x, element):
  """rho(g) on every pixel, no spatial move (nonlinearities act per pixel)."""
  rho = field_type.representation_matrix(element).astype(np.float32)
  return x @ rho.T


def test_pointwise_nonlinearity_on_permutation_fields():
  d4 = groups.get_group("D4")
  field_type = FieldType.regular(d4, 2) + FieldType.trivial(d4, 1)
  model = _module(lambda: PointwiseNonlinearity(field_type, jax.nn.mish))
  x = np.random.default_rng(0).standard_normal((1, 4, 4, 17)).astype(np.float32)
  np.testing.assert_allclose(model.apply({}, x), jax.nn.mish(x))
  for element in d4.elements():
    error = equivariance_error(
        lambda z: model.apply({}, z), field_type, field_type, x, element)
    assert error < EXACT
  # Restricted regular fields are still permutation fields.
  restricted = _module(
      lambda: PointwiseNonlinearity(field_type.restrict("C2"), jax.nn.relu))
  np.testing.assert_array_equal(restricted.apply({}, x), jax.nn.relu(x))


def test_pointwise_nonlinearity_rejects_irrep_fields():
  with pytest.raises(ValueError, match="FourierNonlinearity"):
    _module(lambda: PointwiseNonlinearity(FieldType.irreps("SO2", 1), jax.nn.elu)
            ).init(None, np.zeros((1, 2, 2, 7), np.float32))


def test_fourier_nonlinearity_with_identity_reconstructs_the_field():
  field_type = FieldType.irreps("SO2", 2)
  model = _module(lambda: FourierNonlinearity(field_type, fn=lambda s: s))
  x = np.random.default_rng(1).standard_normal((3, 14)).astype(np.float32)
  x = x[:, None, None, :]
  np.testing.assert_allclose(model.apply({}, x), x, atol=1e-5)
  # And a positively homogeneous fn commutes with positive scaling.
  relu = _module(lambda: FourierNonlinearity(field_type, fn=jax.nn.relu))
  np.testing.assert_allclose(relu.apply({}, 2.5 * x), 2.5 * relu.apply({}, x),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(relu.apply({}, x), x, atol=1e-2)


@pytest.mark.parametrize("name", ["SO2", "O2"])
def test_fourier_nonlinearity_is_equivariant_on_its_sample_grid(name):
  group = groups.get_group(name)
  field_type = FieldType.irreps(group, 2)
  model = _module(lambda: FourierNonlinearity(field_type, num_samples=16))
  x = np.random.default_rng(2).standard_normal((4, 3, 3, field_type.size))
  x = x.astype(np.float32)
  apply = lambda z: np.asarray(model.apply({}, z))
  flips = (0, 1) if group.has_flips else (0,)
  for k in (1, 3, 8):  # Rotations by multiples of 2 pi / 16: exact.
    for flip in flips:
      element = groups.GroupElement(2 * math.pi * k / 16, flip)
      np.testing.assert_allclose(
          apply(_channel_action(field_type, x, element)),
          _channel_action(field_type, apply(x), element), atol=2e-5)
  # Rotations between the samples: approximate (ELU's aliasing), measured
  # ~1e-2 relative; the spatial rot90 of images: exact.
  element = groups.GroupElement(2 * math.pi / 32, 0)
  out = apply(x)
  error = np.max(np.abs(apply(_channel_action(field_type, x, element))
                        - _channel_action(field_type, out, element)))
  assert error < 0.05 * np.max(np.abs(out))
  error = equivariance_error(
      apply, field_type, field_type, x, groups.GroupElement(math.pi / 2, 0))
  assert error < EXACT


def test_fourier_nonlinearity_samples_every_element_of_a_finite_group():
  c4 = groups.get_group("C4")
  field_type = FieldType.irreps(c4, 1) + FieldType.regular(c4, 1)
  model = _module(lambda: FourierNonlinearity(field_type))
  x = np.random.default_rng(3).standard_normal((2, 4, 4, 8)).astype(np.float32)
  for element in c4.elements():
    error = equivariance_error(
        lambda z: model.apply({}, z), field_type, field_type, x, element)
    assert error < EXACT
  # On a regular field the samples are the channels themselves (up to a
  # permutation): the Fourier nonlinearity is the pointwise one.
  for name in ("C4", "D4", "D3"):
    regular = FieldType.regular(name, 1)
    fourier = _module(lambda regular=regular: FourierNonlinearity(regular))
    z = np.random.default_rng(4).standard_normal((2, 3, 3, regular.size))
    np.testing.assert_allclose(
        fourier.apply({}, z.astype(np.float32)), jax.nn.elu(z), atol=1e-5)


def test_fourier_nonlinearity_rejects_fields_it_cannot_sample():
  so2 = groups.get_group("SO2")
  psi1 = so2.irreps()[1]
  twice = FieldType(so2, [groups.directsum(psi1, psi1)])
  with pytest.raises(ValueError, match="at most once"):
    _module(lambda: FourierNonlinearity(twice)).init(
        None, np.zeros((1, 2, 2, 4), np.float32))
  with pytest.raises(ValueError, match="num_samples"):
    _module(lambda: FourierNonlinearity(FieldType.irreps(so2, 1), num_samples=4)
            ).init(None, np.zeros((1, 2, 2, 7), np.float32))


def test_norm_nonlinearity_gates_fields_by_their_norm():
  so2 = groups.get_group("SO2")
  field_type = FieldType.irreps(so2, 2)
  model = _module(lambda: NormNonlinearity(field_type, fn=jax.nn.relu))
  x = np.random.default_rng(4).standard_normal((2, 3, 3, 14)).astype(np.float32)
  params = {"norm_nonlinearity": {"bias": np.array([0.5, 3.0], np.float32)}}
  y = np.asarray(model.apply(params, x)).reshape(2, 3, 3, 2, 7)
  fields = x.reshape(2, 3, 3, 2, 7)
  norms = np.linalg.norm(fields, axis=-1, keepdims=True)
  expected = fields * np.maximum(norms - params["norm_nonlinearity"]["bias"][:, None],
                                 0) / norms
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
  for angle in (0.3, 2.0):  # Exact for every rotation (per pixel).
    element = groups.GroupElement(angle, 0)
    np.testing.assert_allclose(
        model.apply(params, _channel_action(field_type, x, element)),
        _channel_action(field_type, np.asarray(model.apply(params, x)), element),
        atol=1e-5)
