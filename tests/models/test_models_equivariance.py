"""Equivariance of the equivariant models' features before the head.

Each case transforms random images by the grid-preserving elements of the
symmetry that survives the model's restriction and checks that the features
before the classifier (group-pooled, hence trivial fields) transform
accordingly: exact up to float32 rounding. Elements the restriction removed
must then visibly break it, so the check cannot pass vacuously. The
transformed copies go through the network as one batch (no batch statistics),
so each case compiles once.
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq import groups
from dpeq import nn as eqnn
from dpeq.models.eq_cnn import EqCNN
from dpeq.models.eq_resnet9 import EqResNet9
from dpeq.models.eq_resnet9_lean import lean_fields
from dpeq.models.eq_tramer_cnn import EqTramerCNN
from dpeq.models.eq_wrn import EqWideResNet
from dpeq.nn.testing import random_params

ROT90 = groups.GroupElement(math.pi / 2, 0)
ROT180 = groups.GroupElement(math.pi, 0)
FLIP = groups.GroupElement(0.0, 1)

# name -> (module factory, image shape, surviving group, elements that must
# break equivariance).
CASES = {
    "eq_resnet9_D4_halved": (
        lambda: EqResNet9(num_classes=3, group="D4", layout=(8, 16, 16),
                          restrict="halved"),
        (16, 16, 3), "D2", [ROT90]),
    "eq_resnet9_C4_none": (
        lambda: EqResNet9(num_classes=3, group="C4", layout=(8, 16, 16),
                          restrict="none"),
        (16, 16, 3), "C4", [FLIP]),
    "eq_resnet9_SO2_none": (
        lambda: EqResNet9(num_classes=3, group="SO2", layout=(16, 16, 16),
                          restrict="none"),
        (16, 16, 3), "C4", [FLIP]),
    "eq_resnet9_lean_D1": (
        lambda: EqResNet9(num_classes=3, group="D1", layout=(8, 16, 16),
                          restrict="none", fields=lean_fields(
                              "D1", (8, 16, 16), "none", model="test")),
        (16, 16, 3), "D1", [ROT90]),
    "eq_resnet9_lean_C4_halved": (
        lambda: EqResNet9(num_classes=3, group="C4", layout=(8, 16, 16),
                          restrict="halved", fields=lean_fields(
                              "C4", (8, 16, 16), "halved", model="test")),
        (16, 16, 3), "C2", [ROT90, FLIP]),
    "eq_wrn_C4": (
        lambda: EqWideResNet(num_classes=3, group="C4", depth=10, width=1),
        (8, 8, 3), "C4", [FLIP]),
    "eq_cnn_C4": (
        lambda: EqCNN(num_classes=3, group="C4"), (28, 28, 1), "C4", [FLIP]),
    "eq_tramer_cnn_C4": (
        lambda: EqTramerCNN(num_classes=3, group="C4"), (28, 28, 1), "C4",
        [FLIP]),
    "eq_tramer_cnn_D4_32x32": (
        lambda: EqTramerCNN(num_classes=3, group="D4"), (32, 32, 3), "D4", []),
}



def _spatial(x, element):
  """Moves the pixels of NHWC x by a grid-preserving element (any channels)."""
  field_type = eqnn.FieldType.trivial(
      groups.get_group("D4"), x.shape[-1])
  return np.asarray(field_type.transform(np.asarray(x), element))


@pytest.mark.parametrize("case", sorted(CASES))
def test_features_are_equivariant_under_the_surviving_subgroup(case):
  make_module, image_shape, surviving, breaking = CASES[case]
  features = hk.without_apply_rng(hk.transform(lambda x: make_module().features(x)))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(1, *image_shape)).astype(np.float32)
  params = random_params(features.init, jnp.asarray(images))
  good = [
      e for e in groups.get_group(surviving).grid_preserving_elements()
      if e.rotation != 0 or e.flip]
  elements = good + breaking
  batch = np.concatenate([images] + [_spatial(images, e) for e in elements])
  apply = jax.jit(features.apply)
  out = np.asarray(apply(params, jnp.asarray(batch)))
  reference, moved = out[:1], out[1:]
  scale = np.max(np.abs(reference))
  assert scale > 0
  for index, element in enumerate(elements):
    expected = reference if reference.ndim == 2 else _spatial(reference, element)
    error = np.max(np.abs(moved[index : index + 1] - expected)) / scale
    if element in good:
      assert error < 1e-4, (element, error)
    else:
      assert error > 1e-2, (element, error)
