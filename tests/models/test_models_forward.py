"""Forward pass and per-example gradients (vmap of grad) for every model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpeq.models

NUM_CLASSES = 3
BATCH = 2

# Tiny configurations: every registered model must appear here.
CASES = {
    "cnn_tramer": ({}, (28, 28, 1)),
    "cnn_tramer_cifar10": ({}, (16, 16, 3)),
    "eq_cnn": ({"group": "SO2"}, (28, 28, 1)),
    "eq_resnet9": ({"group": "D4", "layout": (8, 16, 16)}, (16, 16, 3)),
    "eq_resnet9_lean": ({"group": "D1", "channels": (8, 16, 16)},
                        (16, 16, 3)),
    "eq_tramer_cnn": ({"group": "C4"}, (28, 28, 1)),
    "eq_wrn": ({"group": "C4", "depth": 10, "width": 1}, (8, 8, 3)),
    "nf_resnet50": ({}, (16, 16, 3)),
    "resnet9": ({"layout": (8, 16, 16)}, (16, 16, 3)),
    "wrn": ({"depth": 10, "width": 1}, (8, 8, 3)),
}


def test_every_registered_model_has_a_case():
  assert set(CASES) == set(dpeq.models.available())


def random_params(model, images, rng):
  """Random parameters with the model's structure (no init compile needed).

  Every leaf (including SkipInit gains that init to zero) is drawn from
  N(0, 0.3^2), so every path of the network carries signal.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), images[:1])
  return jax.tree.map(
      lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_per_example_gradients(name):
  kwargs, image_shape = CASES[name]
  model = dpeq.models.create(name, num_classes=NUM_CLASSES, **kwargs)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(BATCH, *image_shape)), jnp.float32)
  labels = jnp.arange(BATCH) % NUM_CLASSES
  params = random_params(model, images, rng)

  def example_loss(params, image, label):
    logits = model.apply(params, image[None])
    return -jax.nn.log_softmax(logits)[0, label], logits[0]

  @jax.jit
  def run(params, images, labels):
    grads, logits = jax.vmap(
        jax.grad(example_loss, has_aux=True), in_axes=(None, 0, 0))(
            params, images, labels)
    return model.apply(params, images), logits, grads

  logits, example_logits, grads = run(params, images, labels)
  assert logits.shape == (BATCH, NUM_CLASSES)
  assert np.all(np.isfinite(np.asarray(logits)))
  # The batched forward equals the forward of each example alone.
  np.testing.assert_allclose(
      np.asarray(example_logits), np.asarray(logits), rtol=1e-4, atol=1e-5)
  leaves = jax.tree.leaves(grads)
  assert all(leaf.shape[0] == BATCH for leaf in leaves)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
  flat = np.concatenate(
      [np.asarray(leaf).reshape(BATCH, -1) for leaf in leaves], axis=1)
  assert np.all(np.linalg.norm(flat, axis=1) > 0)
  assert not np.allclose(flat[0], flat[1])
  # No batch statistics: changing example 1 leaves example 0 alone.
  changed = images.at[1].set(3.0 * images[1] + 1.0)
  logits_changed, _, grads_changed = run(params, changed, labels)
  np.testing.assert_allclose(
      np.asarray(logits_changed[0]), np.asarray(logits[0]), rtol=1e-5, atol=1e-6)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(
          np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-6),
      grads_changed, grads)
  assert not np.allclose(np.asarray(logits_changed[1]), np.asarray(logits[1]))


def test_eq_tramer_cnn_refuses_sizes_that_break_the_grid_symmetry():
  model = dpeq.models.create("eq_tramer_cnn", num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match="multiples of 4.*30x30"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 30, 30, 1)))
  # 12x12 is a multiple of 4 but its maps vanish before the head.
  with pytest.raises(ValueError, match="at least 16.*12x12"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 12, 12, 1)))
