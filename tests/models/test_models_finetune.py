"""Restore a trained model from a checkpoint and fine-tune it (dpeq.models.finetune)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import dpeq.models
from dpeq.models import finetune
from dpeq.nn.testing import random_params

IMAGE_SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(4, *IMAGE_SHAPE)), jnp.float32)


@pytest.fixture(scope="module")
def restored(images, tmp_path_factory):
  """"Trained" 10-class parameters after an orbax save / restore round trip."""
  model = dpeq.models.create("cnn_tramer", num_classes=10)
  trained = random_params(model.init, images[:1], seed=1)
  path = tmp_path_factory.mktemp("ckpt") / "params"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, trained)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(path, jax.eval_shape(lambda: trained))
  jax.tree.map(
      lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
      restored, trained)
  return restored


@pytest.fixture(scope="module")
def new_task(images, restored):
  """The model for a 5-class task and its params: restored body, fresh head."""
  model = dpeq.models.create("cnn_tramer", num_classes=5)
  fresh = jax.jit(model.init)(jax.random.key(0), images[:1])
  params = finetune.replace_classifier(restored=restored, fresh=fresh)
  return model, fresh, params


def _leaves(params):
  return {(m, n): np.asarray(v) for m, n, v in hk.data_structures.traverse(params)}


def test_replace_classifier_keeps_body_and_takes_new_head(restored, new_task):
  _, fresh, params = new_task
  got, old, new = _leaves(params), _leaves(restored), _leaves(fresh)
  assert set(got) == set(new)
  for key, value in got.items():
    source = new if finetune.is_classifier(key[0]) else old
    np.testing.assert_array_equal(value, source[key])
  assert got[("tramer_cnn/classifier", "w")].shape == (32, 5)


def _fine_tune(model, params, images, *, trainable):
  """Three SGD steps on the trainable part only."""
  labels = jnp.arange(images.shape[0]) % 5
  train, frozen = finetune.split_trainable(params, trainable=trainable)

  def loss(train):
    logits = model.apply(finetune.merge(train, frozen), images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  optimizer = optax.sgd(0.5)

  @jax.jit
  def step(train, opt_state):
    grads = jax.grad(loss)(train)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(train, updates), opt_state

  opt_state = optimizer.init(train)
  for _ in range(3):
    train, opt_state = step(train, opt_state)
  return finetune.merge(train, frozen)


@pytest.mark.parametrize("trainable", ["classifier", "all"])
def test_fine_tuning_changes_exactly_the_trainable_leaves(images, new_task, trainable):
  model, _, params = new_task
  before = _leaves(params)
  after = _leaves(_fine_tune(model, params, images, trainable=trainable))
  assert set(after) == set(before)
  for key in before:
    changed = not np.array_equal(after[key], before[key])
    if trainable == "all" or finetune.is_classifier(key[0]):
      assert changed, key
    else:
      assert not changed, key  # bit-identical


def test_classifier_partition_holds_only_the_head(new_task):
  _, _, params = new_task
  train, frozen = finetune.split_trainable(params, trainable="classifier")
  assert list(train) == ["tramer_cnn/classifier"]
  assert "tramer_cnn/classifier" not in frozen
  everything, nothing = finetune.split_trainable(params, trainable="all")
  assert not nothing and _leaves(everything).keys() == _leaves(params).keys()


def test_bad_fine_tuning_inputs_raise(images, new_task):
  _, fresh, params = new_task
  with pytest.raises(ValueError, match="trainable must be one of"):
    finetune.split_trainable(params, trainable="body")
  other = dpeq.models.create("eq_cnn", num_classes=10, group="C4")
  other_params = jax.eval_shape(other.init, jax.random.key(0), images[:1])
  with pytest.raises(ValueError, match="do not match"):
    finetune.replace_classifier(restored=other_params, fresh=fresh)
