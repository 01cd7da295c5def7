"""The per-example-gradient strategy of a run: "vmap", "ghost",
"ghost_two_pass" or "auto".

A performance setting, not a privacy one: every strategy gives the same
per-example norms and the same clipped sum (tests/privacy/
test_privacy_ghost_clipping.py), so the guarantee does not depend on it.

  vmap   dpeq.privacy.clipping.vmap_gradients: per-example gradients
         materialised; any model. The runner takes it from dpeq.xla
         (per-tap conv weight gradients on XLA:CPU under a tested jax,
         plain vmap elsewhere: same values).
  ghost  dpeq.privacy.ghost_clipping.ghost_gradients: mixed ghost clipping
         with book-keeping; models built from the supported layers
         (dpeq.privacy.ghost_layers.supported_layers()).
  ghost_two_pass  the same norms from per-layer sinks in one backward
         pass, then the clipped sum by a second backward pass: the least
         memory (no per-example gradients, no layer kept past its use).
  auto   per traced shape: vmap when the model has a layer ghost clipping
         does not support, otherwise `prefer_ghost` (the rule measured with
         `make bench`, see its docstring): today ghost only for the small
         CNNs at K = 1 on CPU.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from absl import logging

from dpeq.privacy import clipping, ghost_clipping, ghost_layers
from dpeq.xla import conv_weight_grads

STRATEGIES = ("vmap", "ghost", "ghost_two_pass", "auto")


def prefer_ghost(taps, *, num_views: int, backend: str) -> bool:
  """Whether ghost clipping is expected to be faster than vmap here.

  Measured on the 2-core CPU (experiments/results/ghost_clipping_cpu.md;
  interleaved rounds, private step over non-private step of the same
  images): ghost wins only for the small CNNs at K = 1
  (Tramer's CNN B = 16: 1.50 vs 1.86; eq_cnn: 1.71 vs 1.87). With K = 4
  views the Gram matrices over K*T positions grow K^2-fold and the
  per-example backward that vmap pays is shared by the views, so vmap wins
  (1.14 vs 1.43; 1.32 vs 1.51); on ResNet-9, Eq-ResNet-9 D4 and WRN-16-4
  vmap wins at K = 1 and 4 (XLA:CPU runs dpeq's per-tap per-example weight
  gradients as batched dots, and the ghost path's extra pass over every
  layer's output gradient costs more than it saves). Not measured on
  accelerators: vmap there.

  Rule: ghost on CPU when K = 1 and the model has at most
  `_MAX_LAYERS_CPU` parameterised layers; vmap otherwise.
  """
  if backend != "cpu":
    return False
  return num_views == 1 and len(taps) <= _MAX_LAYERS_CPU


_MAX_LAYERS_CPU = 4


def auto_gradients(loss_fn, params, batch) -> clipping.PerExampleGradients:
  """`ghost_gradients` or `vmap_gradients`, chosen when traced."""
  try:
    taps = ghost_clipping.find_taps(loss_fn, params, batch)
  except ghost_layers.UnsupportedLayerError as e:
    logging.info("per_example_grads='auto': vmap (%s)", e)
    return conv_weight_grads.vmap_gradients(loss_fn, params, batch)
  num_views = int(np.shape(jax.tree.leaves(batch)[0])[1])
  if prefer_ghost(taps, num_views=num_views, backend=jax.default_backend()):
    logging.info("per_example_grads='auto': ghost (%d layers)", len(taps))
    return ghost_clipping.ghost_gradients(loss_fn, params, batch, taps=taps)
  logging.info("per_example_grads='auto': vmap (%d layers)", len(taps))
  return conv_weight_grads.vmap_gradients(loss_fn, params, batch)


def strategy(name: str) -> clipping.GradientStrategy:
  """The GradientStrategy for a config name (one of STRATEGIES)."""
  if name not in STRATEGIES:
    raise ValueError(
        f"per_example_grads={name!r}: use one of {', '.join(STRATEGIES)}.")
  return {"vmap": conv_weight_grads.vmap_gradients,
          "ghost": ghost_clipping.ghost_gradients,
          "ghost_two_pass": functools.partial(ghost_clipping.ghost_gradients,
                                              two_pass=True),
          "auto": auto_gradients}[name]


def check_supported(name: str, loss_fn, params, batch) -> None:
  """Raises UnsupportedLayerError early when ghost clipping cannot run the
  model."""
  if name in ("ghost", "ghost_two_pass"):
    ghost_clipping.find_taps(loss_fn, params, batch)
