"""Small stacks of dpeq.nn layers: equivariance end to end, per-example grads."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from dpeq import groups
from dpeq.nn import (
    AntiAliasedAvgPool,
    EquivariantGroupNorm,
    FieldType,
    FourierNonlinearity,
    GroupPooling,
    IIDInstanceNorm,
    InvariantHead,
    NormNonlinearity,
    PointwiseNonlinearity,
    R2Conv,
    Restrict,
    max_pool,
)
from dpeq.nn.testing import (
    disk_mask,
    equivariance_error,
    random_params,
    smooth_random_field,
)


def _finite_group_classifier(group_name: str, subgroup_name: str | None):
  """conv-mish-norm-pool, [restrict], residual block, norm, invariant head."""

  def forward(images):
    group = groups.get_group(group_name)
    x_type = FieldType.trivial(group, 3)
    hidden = FieldType.regular(group, 2)
    x = R2Conv(x_type, hidden)(images)
    x = PointwiseNonlinearity(hidden, jax.nn.mish)(x)
    x = EquivariantGroupNorm(hidden, num_groups=2, affine=True)(x)
    x = max_pool(x)
    if subgroup_name is not None:
      restrict = Restrict(hidden, subgroup_name)
      x, hidden = restrict(x), restrict.out_type
    y = R2Conv(hidden, hidden, weight_standardization=True)(x)
    y = PointwiseNonlinearity(hidden, jax.nn.mish)(y)
    x = EquivariantGroupNorm(hidden, num_groups=1)(x + y)
    return InvariantHead(hidden, num_classes=4)(x)

  return hk.without_apply_rng(hk.transform(forward))


def _assert_invariant(model, images, group):
  params = random_params(model.init, images)
  logits = np.asarray(model.apply(params, images))
  scalars = FieldType.trivial(group, images.shape[-1])
  for element in group.elements():
    np.testing.assert_allclose(
        model.apply(params, scalars.transform(images, element)), logits,
        rtol=1e-5, atol=1e-5 * np.abs(logits).max())


def test_d4_classifier_is_invariant_to_all_of_d4():
  images = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
  _assert_invariant(
      _finite_group_classifier("D4", None), images, groups.get_group("D4"))


def test_restricted_c8_classifier_is_invariant_to_the_subgroup():
  images = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
  _assert_invariant(
      _finite_group_classifier("C8", "C4"), images, groups.get_group("C4"))


def _so2_stack():
  def forward(images):
    so2 = groups.get_group("SO2")
    x_type, hidden = FieldType.trivial(so2, 1), FieldType.irreps(so2, 2)
    x = R2Conv(x_type, hidden)(images)
    x = FourierNonlinearity(hidden)(x)
    x = IIDInstanceNorm(hidden)(x)
    x = AntiAliasedAvgPool(hidden)(x)
    x = R2Conv(hidden, hidden)(x)
    x = NormNonlinearity(hidden)(x)
    return GroupPooling(hidden, mode="norm")(x)

  return hk.without_apply_rng(hk.transform(forward))


def test_so2_stack_is_exact_on_the_grid_and_close_elsewhere():
  model = _so2_stack()
  images = smooth_random_field((1, 36, 36, 1), smoothness=4.0, seed=3)
  params = random_params(model.init, images)
  apply = lambda z: model.apply(params, z)
  in_type, out_type = FieldType.trivial("SO2", 1), FieldType.trivial("SO2", 2)
  for element in groups.get_group("SO2").grid_preserving_elements():
    assert equivariance_error(apply, in_type, out_type, images, element) < 1e-5
  # 0.3 rad: the sampled bases, the Fourier ELU between its 16 samples, the
  # stride-2 pool and the spline rotation of the 18x18 output by the test
  # itself; measured 0.04-0.12 over seeds (a single conv: ~0.01).
  error = equivariance_error(
      apply, in_type, out_type, images, groups.GroupElement(0.3, 0),
      mask=disk_mask(18, 6))
  assert error < 0.2


def test_per_example_gradients_of_a_normalized_stack_match_a_loop():
  def loss(images):
    d4 = groups.get_group("D4")
    hidden = FieldType.regular(d4, 2)
    x = R2Conv(FieldType.trivial(d4, 1), hidden)(images)
    x = EquivariantGroupNorm(hidden, num_groups=2, affine=True)(jax.nn.elu(x))
    x = R2Conv(hidden, FieldType.irreps(d4, 1))(x)
    x = IIDInstanceNorm(FieldType.irreps(d4, 1))(x)
    return jnp.mean(jnp.square(x - 0.5))

  model = hk.without_apply_rng(hk.transform(loss))
  # Per example: K = 2 views [2, 6, 6, 1] (as DP-SGD's augmentation
  # multiplicity feeds them); 3 examples.
  batch = np.random.default_rng(4).standard_normal((3, 2, 6, 6, 1))
  batch = batch.astype(np.float32)
  params = random_params(model.init, batch[0])
  per_example = jax.jit(jax.vmap(jax.grad(model.apply), in_axes=(None, 0)))
  vmapped = per_example(params, batch)
  single_grad = jax.jit(jax.grad(model.apply))
  for index in range(len(batch)):
    single = single_grad(params, batch[index])
    for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(single), strict=True):
      np.testing.assert_allclose(a[index], b, rtol=1e-4, atol=1e-6)
  # Normalization is per example: another example in the batch changes
  # nothing about example 0's gradient.
  other = batch.copy()
  other[1:] *= 10.0
  again = per_example(params, other)
  for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(again), strict=True):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-7)
