"""`input_padding` of resnet9 and eq_resnet9_lean (28x28 -> 32x32 grids)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpeq.models
from dpeq.models import layers
from dpeq.models.eq_resnet9 import EqResNet9
from dpeq.models.eq_resnet9_lean import lean_fields

SMALL = {"resnet9": {"layout": (8, 8, 8)},
         "eq_resnet9_lean": {"group": "D1", "channels": (8, 8, 8)}}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_padding_is_the_zero_border_of_the_images(name):
  padded_model = dpeq.models.create(name, num_classes=3, input_padding=2,
                                    **SMALL[name])
  plain_model = dpeq.models.create(name, num_classes=3, **SMALL[name])
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 28, 28, 1)), jnp.float32)
  bordered = jnp.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  params = padded_model.init(jax.random.key(0), images)
  # Same parameters: the padding adds none.
  assert (jax.tree.structure(params)
          == jax.tree.structure(plain_model.init(jax.random.key(0), bordered)))
  got = padded_model.apply(params, images)
  want = plain_model.apply(params, bordered)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert got.shape == (2, 3)


def test_lean_model_refuses_a_grid_its_pools_would_break():
  model = dpeq.models.create("eq_resnet9_lean", num_classes=3,
                             **SMALL["eq_resnet9_lean"])
  images = jnp.zeros((1, 28, 28, 1))
  with pytest.raises(ValueError, match="input_padding .*2 for 28x28"):
    model.init(jax.random.key(0), images)


def test_lean_model_with_padding_is_mirror_equivariant_on_28x28():
  """The mirror of a 28x28 image gives mirrored features once padded by 2.

  With group pooling the last features are mirror invariant per position,
  so the adaptive-pooled head input of the mirrored image is that of the
  image with its columns reversed.
  """
  def features(images):
    images = layers.pad_images(images, 2)
    return EqResNet9(num_classes=3, group="D1", layout=(8, 8, 8),
                     restrict="none", group_pool=True,
                     weight_standardization="scaled",
                     fields=lean_fields("D1", (8, 8, 8), "none",
                                        model="test")).features(images)

  model = hk.without_apply_rng(hk.transform(features))
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(2, 28, 28, 1)), jnp.float32)
  params = model.init(jax.random.key(0), images)
  out = np.asarray(model.apply(params, images))
  mirrored = np.asarray(model.apply(params, images[:, :, ::-1]))
  assert out.shape[1:3] == (4, 4)
  np.testing.assert_allclose(mirrored, out[:, :, ::-1], rtol=1e-4, atol=1e-5)
  # Not trivially so: the image itself is not symmetric.
  assert not np.allclose(out, out[:, :, ::-1], atol=1e-3)
