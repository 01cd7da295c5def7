"""The model registry: names, keyword checks and early, readable errors."""

import haiku as hk
import jax
import jax.numpy as jnp
import pytest

import dpeq.models

NAMES = ("cnn_tramer", "cnn_tramer_cifar10", "eq_cnn", "eq_resnet9",
         "eq_resnet9_lean", "eq_tramer_cnn", "eq_wrn", "nf_resnet50", "resnet9", "wrn")


def test_available_lists_the_documented_names():
  assert dpeq.models.available() == NAMES


def test_documented_kwargs():
  expected = {
      "cnn_tramer": set(), "cnn_tramer_cifar10": set(), "eq_cnn": {"group"},
      "eq_resnet9": {"group", "layout", "restrict"},
      "eq_resnet9_lean": {"group", "channels", "restrict", "group_pool",
                          "weight_standardization", "input_padding"},
      "eq_tramer_cnn": {"group", "channels", "activation", "group_pool"},
      "eq_wrn": {"group", "depth", "width"}, "nf_resnet50": set(),
      "resnet9": {"layout", "input_padding"}, "wrn": {"depth", "width"},
  }
  for name in NAMES:
    assert set(dpeq.models.model_kwargs(name)) == expected[name], name
  assert dpeq.models.model_kwargs("eq_resnet9") == {
      "group": "D4", "layout": (16, 32, 64), "restrict": "halved"}
  assert dpeq.models.model_kwargs("wrn") == {"depth": 16, "width": 4}


def test_create_returns_a_transformed_pair():
  model = dpeq.models.create("cnn_tramer", num_classes=7)
  assert isinstance(model, hk.Transformed)
  images = jnp.zeros((2, 28, 28, 1))
  shapes = jax.eval_shape(model.init, jax.random.key(0), images[:1])
  logits = jax.eval_shape(model.apply, shapes, images)
  assert logits.shape == (2, 7)
  assert jax.eval_shape(
      lambda p, x: model.apply(p, x, is_training=True), shapes, images).shape == (
          2, 7)


def test_unknown_name_lists_the_models():
  with pytest.raises(ValueError,
                     match="available models: cnn_tramer, cnn_tramer_cifar10"):
    dpeq.models.create("resnet18", num_classes=10)


def test_unknown_kwarg_lists_the_accepted_ones():
  with pytest.raises(ValueError, match="unknown argument.*widht.*accepts num_classes"
                     " and depth, width"):
    dpeq.models.create("wrn", num_classes=10, widht=4)
  with pytest.raises(ValueError, match="nothing else"):
    dpeq.models.create("nf_resnet50", num_classes=10, depth=101)


@pytest.mark.parametrize("name,kwargs,message", [
    ("wrn", {"depth": 15}, "6 n \\+ 4"),
    ("eq_wrn", {"depth": 12}, "6 n \\+ 4"),
    ("wrn", {"width": 0}, "positive int"),
    ("resnet9", {"layout": (64, 128)}, "3 entries"),
    ("eq_resnet9", {"group": "C5"}, "even number of rotations"),
    ("eq_resnet9", {"group": "Z4"}, "unknown group"),
    ("eq_resnet9", {"restrict": "half"}, "restrict must be one of"),
    ("eq_cnn", {"group": "SO3"}, "unknown group"),
    ("eq_tramer_cnn", {"group": "SO2"}, "needs a finite group"),
    ("eq_tramer_cnn", {"group": "D4", "channels": (12, 32)},
     "multiples of \\|D4\\| = 8"),
    ("eq_tramer_cnn", {"channels": (16,)}, "two positive ints"),
    ("eq_tramer_cnn", {"activation": "mish"}, "activation must be one of"),
])
def test_invalid_values_fail_at_create(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    dpeq.models.create(name, num_classes=10, **kwargs)


def test_invalid_num_classes_and_images():
  with pytest.raises(ValueError, match="num_classes"):
    dpeq.models.create("wrn", num_classes=0)
  model = dpeq.models.create("wrn", num_classes=10, depth=10, width=1)
  with pytest.raises(ValueError, match="rank 4"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="float images"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))


def test_odd_groups_work_without_halving():
  model = dpeq.models.create("eq_resnet9", num_classes=10, group="C5", restrict="none",
                             layout=(8, 8, 8))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert jax.tree.leaves(shapes)
