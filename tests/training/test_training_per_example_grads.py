"""The run's per-example-gradient strategy: names and the 'auto' rule."""

import jax
import jax.numpy as jnp
import optax
import pytest

from dpeq import models
from dpeq.privacy import clipping, ghost_clipping
from dpeq.training import per_example_grads
from dpeq.xla import conv_weight_grads


def _loss_and_params(name, shape, **kwargs):
  model = models.create(name, num_classes=10, **kwargs)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, *shape)))

  def loss_fn(p, views):
    return optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, views["images"]), views["labels"]), ()

  return loss_fn, params


def _views(batch, num_views, shape):
  return {"images": jax.ShapeDtypeStruct((batch, num_views, *shape),
                                         jnp.float32),
          "labels": jax.ShapeDtypeStruct((batch, num_views), jnp.int32)}


def test_names_map_to_strategies_and_bad_names_are_refused():
  # vmap: the runner's (dpeq.xla: per-tap conv weight gradients on CPU).
  assert per_example_grads.strategy("vmap") is conv_weight_grads.vmap_gradients
  assert per_example_grads.strategy("ghost") is ghost_clipping.ghost_gradients
  with pytest.raises(ValueError, match="vmap, ghost, ghost_two_pass, auto"):
    per_example_grads.strategy("fast")


@pytest.mark.parametrize("name,kwargs,shape,num_views,backend,ghost", [
    ("cnn_tramer", {}, (28, 28, 1), 1, "cpu", True),
    ("cnn_tramer", {}, (28, 28, 1), 4, "cpu", False),
    ("cnn_tramer", {}, (28, 28, 1), 1, "gpu", False),
    ("resnet9", {"layout": (4, 8, 16)}, (16, 16, 3), 1, "cpu", False),
])
def test_prefer_ghost_follows_the_measured_rule(name, kwargs, shape,
                                                num_views, backend, ghost):
  loss_fn, params = _loss_and_params(name, shape, **kwargs)
  taps = ghost_clipping.find_taps(loss_fn, params,
                                  _views(2, num_views, shape))
  assert per_example_grads.prefer_ghost(
      taps, num_views=num_views, backend=backend) is ghost


def test_auto_takes_vmap_for_a_model_ghost_cannot_run(monkeypatch):
  calls = []
  real = clipping.vmap_gradients
  monkeypatch.setattr(clipping, "vmap_gradients",
                      lambda *a: calls.append("vmap") or real(*a))
  loss_fn, params = _loss_and_params("nf_resnet50", (32, 32, 3))
  out = jax.eval_shape(
      lambda p: per_example_grads.auto_gradients(
          loss_fn, p, _views(2, 1, (32, 32, 3))).norms, params)
  assert out.shape == (2,) and calls == ["vmap"]
