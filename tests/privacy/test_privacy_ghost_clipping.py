"""Ghost clipping equals vmap on the conventional models (see helpers_ghost)."""

import helpers_ghost
import jax
import jax.numpy as jnp
import pytest

from dpeq import models
from dpeq.privacy import ghost_layers
from dpeq.privacy.ghost_clipping import find_taps, ghost_gradients

BATCH = helpers_ghost.BATCH


@pytest.mark.parametrize("case,num_views", [
    pair for pair in helpers_ghost.PAIRS if not pair[0].startswith("eq_")])
def test_ghost_norms_and_clipped_sum_equal_vmap(case, num_views):
  helpers_ghost.check_ghost_equals_vmap(case, num_views)


def test_every_parameter_is_tapped_once_and_routes_follow_the_rule():
  loss_fn, params, batch, _ = helpers_ghost._setup("cnn_tramer", 4)
  taps = find_taps(loss_fn, params, batch)
  assert set(taps) == set(params)
  for tap in taps.values():
    choice = tap.rule.choice((BATCH,) + tap.input_shape,
                             (BATCH,) + tap.output_shape)
    assert choice.route == ghost_layers.mixed_route(
        choice.positions, choice.fan_in, choice.fan_out)
  # conv1: 4 views x 8 x 8 positions, p = 8 * 8, d = 16 -> instantiate;
  # the classifier: T = 4, p = 32, d = 10 -> ghost.
  conv1 = taps["tramer_cnn/conv1"]
  assert conv1.rule.choice((BATCH,) + conv1.input_shape,
                           (BATCH,) + conv1.output_shape).route == (
                               "instantiate")
  head = [t for n, t in taps.items() if n.endswith("classifier")][0]
  assert head.rule.choice((BATCH,) + head.input_shape,
                          (BATCH,) + head.output_shape).route == "ghost"


def test_unsupported_layer_is_named_in_the_error():
  model = models.create("nf_resnet50", num_classes=10)
  images = jnp.zeros((2, 1, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), images[:1, 0])

  def loss_fn(p, views):
    return jnp.sum(model.apply(p, views), axis=-1), ()

  with pytest.raises(ghost_layers.UnsupportedLayerError,
                     match=r"NFBottleneck.*per_example_grads='vmap'"):
    jax.eval_shape(lambda p: ghost_gradients(loss_fn, p, images).norms,
                   params)
