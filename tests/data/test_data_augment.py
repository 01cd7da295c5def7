"""On-device augmentation: crops, flips, rotations, view 0, keys, normalisation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from dpeq.data import augment
from dpeq.data.augment import AugmentConfig


@functools.partial(jax.jit, static_argnames=("config",))
def _raw_views(key, images, config):
  """Views with mean 0, std 1/255, so outputs are the uint8 pixel values."""
  return augment.make_views(key, images, config=config, mean=0.0, std=1 / 255)


def _as_uint8(views):
  views = np.asarray(views)
  rounded = np.round(views)
  np.testing.assert_allclose(views, rounded, atol=1e-3)
  return rounded.astype(np.uint8)


def _random_images(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_crops_are_windows_of_the_reflect_padded_image_with_uniform_offsets():
  pad, size, batch, views = 2, 8, 64, 32
  image = _random_images(0, (size, size, 3))
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  offsets = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
  windows = np.stack([padded[dy:dy + size, dx:dx + size] for dy, dx in offsets])
  assert len({w.tobytes() for w in windows}) == len(offsets)  # All distinct.

  config = AugmentConfig(num_views=views, crop_padding=pad)
  images = np.broadcast_to(image, (batch, size, size, 3))
  out = _as_uint8(_raw_views(jax.random.key(1), images, config))
  assert out.shape == (batch, views, size, size, 3)
  flat = out.reshape(-1, size, size, 3)
  matches = np.all(flat[:, None] == windows[None], axis=(2, 3, 4))
  assert np.all(matches.sum(axis=1) == 1)  # Every crop is exactly one window.
  counts = np.bincount(matches.argmax(axis=1), minlength=len(offsets))
  assert scipy.stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("option,transform,num_outcomes", [
    ("random_flip", lambda x, k: np.flip(x, axis=-2) if k else x, 2),
    ("vertical_flip", lambda x, k: np.flip(x, axis=-3) if k else x, 2),
    ("random_rot90", lambda x, k: np.rot90(x, k, axes=(-3, -2)), 4),
])
def test_flips_and_rotations(option, transform, num_outcomes):
  batch, views, size = 8, 16, 6
  config = AugmentConfig(num_views=views, **{option: True})
  images = _random_images(2, (batch, size, size, 2))
  key = jax.random.key(3)
  out = _as_uint8(_raw_views(key, images, config))
  seen = np.zeros(num_outcomes, int)
  for b in range(batch):
    outcomes = np.stack([transform(images[b], k) for k in range(num_outcomes)])
    for v in range(views):
      which = np.flatnonzero(np.all(out[b, v] == outcomes, axis=(1, 2, 3)))
      assert len(which) == 1
      seen[which[0]] += 1
  # Each outcome is equally likely (binomial / chi-square over 128 draws).
  assert scipy.stats.chisquare(seen).pvalue > 1e-3
  # With the same key, transforming the input transforms the output the same
  # way (the drawn transformation commutes with it; for flips: involution).
  g = functools.partial(transform, k=1)
  out_g = _as_uint8(_raw_views(key, g(images), config))
  np.testing.assert_array_equal(out_g, g(out))


def test_view0_identity_and_keys():
  config = AugmentConfig(num_views=4, crop_padding=3, random_flip=True,
                         view0_identity=True)
  image = _random_images(4, (10, 10, 3))
  images = np.concatenate([_random_images(5, (4, 10, 10, 3)),
                           np.broadcast_to(image, (12, 10, 10, 3))])
  out = _as_uint8(_raw_views(jax.random.key(7), images, config))
  # View 0 is the plain image; the others are augmented.
  np.testing.assert_array_equal(out[:, 0], images)
  assert not np.all(out[:, 1:] == images[:, None])
  # Same key, same views; another key, other views.
  again = _as_uint8(_raw_views(jax.random.key(7), images, config))
  other = _as_uint8(_raw_views(jax.random.key(8), images, config))
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out[:, 1:], other[:, 1:])
  # Identical images at different batch positions get different views.
  distinct = {out[b, v].tobytes() for b in range(4, 16) for v in range(1, 4)}
  assert len(distinct) > 12
  # K = 1 with view0_identity: only the plain image.
  single = AugmentConfig(num_views=1, crop_padding=3, view0_identity=True)
  out = _as_uint8(_raw_views(jax.random.key(0), images, single))
  np.testing.assert_array_equal(out[:, 0], images)


def test_normalisation_matches_numpy():
  mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
  config = AugmentConfig(num_views=3)
  images = _random_images(6, (4, 5, 7, 3))
  out = augment.make_views(jax.random.key(0), images, config=config, mean=mean,
                           std=std)
  assert out.dtype == jnp.float32 and out.shape == (4, 3, 5, 7, 3)
  expected = (images.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
  for v in range(3):
    np.testing.assert_allclose(np.asarray(out[:, v]), expected, atol=1e-5)


def test_views_fn_broadcasts_labels():
  config = AugmentConfig(num_views=3)
  fn = jax.jit(augment.views_fn(config, mean=(0.5,), std=(0.25,)))
  images = _random_images(7, (4, 6, 6, 1))
  batch = {"images": images, "labels": np.arange(4, dtype=np.int32)}
  views = fn(jax.random.key(0), batch)
  assert views["images"].shape == (4, 3, 6, 6, 1)
  assert views["images"].dtype == jnp.float32
  assert views["labels"].dtype == jnp.int32
  np.testing.assert_array_equal(views["labels"],
                                np.repeat(np.arange(4), 3).reshape(4, 3))
  expected = (images / 255 - 0.5) / 0.25
  np.testing.assert_allclose(views["images"][:, 2], expected, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_views=0), "num_views"),
    (dict(crop_padding=-1), "crop_padding"),
    (dict(num_views=2.0), "num_views"),
    (dict(random_flip=1), "random_flip"),
])
def test_bad_config_raises(kwargs, match):
  with pytest.raises(ValueError, match=match):
    AugmentConfig(**kwargs)


def test_bad_inputs_raise_early():
  images = np.zeros((2, 4, 6, 3), np.uint8)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="3 channels"):
    augment.make_views(key, images, config=AugmentConfig(), mean=(0, 0),
                       std=(1, 1, 1))
  with pytest.raises(ValueError, match="positive"):
    augment.make_views(key, images, config=AugmentConfig(), mean=0, std=0)
  with pytest.raises(ValueError, match="crop_padding"):
    augment.make_views(key, images, config=AugmentConfig(crop_padding=4),
                       mean=0, std=1)
  with pytest.raises(ValueError, match="square"):
    augment.make_views(key, images, config=AugmentConfig(random_rot90=True),
                       mean=0, std=1)
