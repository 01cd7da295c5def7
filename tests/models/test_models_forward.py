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
    "eq_cnn": ({"group": "C4"}, (28, 28, 1)),
    "eq_resnet9": ({"group": "D4", "layout": (8, 16, 16)}, (16, 16, 3)),
    "eq_wrn": ({"group": "C4", "depth": 10, "width": 1}, (8, 8, 3)),
    "nf_resnet50": ({}, (32, 32, 3)),
    "resnet9": ({"layout": (8, 16, 16)}, (16, 16, 3)),
    "wrn": ({"depth": 10, "width": 1}, (8, 8, 3)),
}


def test_every_registered_model_has_a_case():
  assert set(CASES) == set(dpeq.models.available())


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_per_example_gradients(name):
  kwargs, image_shape = CASES[name]
  model = dpeq.models.create(name, num_classes=NUM_CLASSES, **kwargs)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(BATCH, *image_shape)), jnp.float32)
  labels = jnp.arange(BATCH) % NUM_CLASSES
  params = jax.jit(model.init)(jax.random.key(0), images[:1])

  def example_loss(params, image, label):
    logits = model.apply(params, image[None])
    return -jax.nn.log_softmax(logits)[0, label]

  @jax.jit
  def run(params, images, labels):
    logits = model.apply(params, images)
    per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(
        params, images, labels)
    batch_grad = jax.grad(
        lambda p: jnp.sum(-jnp.take_along_axis(
            jax.nn.log_softmax(model.apply(p, images)), labels[:, None], 1)))(params)
    return logits, per_example, batch_grad

  logits, per_example, batch_grad = run(params, images, labels)
  assert logits.shape == (BATCH, NUM_CLASSES)
  assert np.all(np.isfinite(np.asarray(logits)))
  leaves = jax.tree.leaves(per_example)
  assert all(leaf.shape[0] == BATCH for leaf in leaves)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)
  # Examples do not interact: the per-example gradients add up to the
  # gradient of the batched loss, and each example has its own gradient.
  jax.tree.map(
      lambda pe, g: np.testing.assert_allclose(
          np.asarray(pe.sum(0)), np.asarray(g), rtol=2e-3, atol=1e-5),
      per_example, batch_grad)
  norms = np.sqrt(sum(np.sum(np.asarray(leaf).reshape(BATCH, -1) ** 2, axis=1)
                      for leaf in leaves))
  assert np.all(norms > 0)
  # No batch statistics: changing example 1 leaves example 0's logits alone.
  changed = images.at[1].set(3.0 * images[1] + 1.0)
  logits_changed, _, _ = run(params, changed, labels)
  np.testing.assert_allclose(
      np.asarray(logits_changed[0]), np.asarray(logits[0]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(logits_changed[1]), np.asarray(logits[1]))
