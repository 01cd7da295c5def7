"""The per-example-gradient strategy of a run: "vmap", "ghost" or "auto".

A performance setting, not a privacy one: every strategy gives the same
per-example norms and the same clipped sum (tests/privacy/
test_privacy_ghost_clipping.py), so the guarantee does not depend on it.

  vmap   dpeq.privacy.clipping.vmap_gradients: per-example gradients
         materialised; any model.
  ghost  dpeq.privacy.ghost_clipping.ghost_gradients: mixed ghost clipping;
         models built from the supported layers
         (dpeq.privacy.ghost_layers.supported_layers()).
  auto   per traced shape: vmap when the model has a layer ghost clipping
         does not support, otherwise `prefer_ghost` (the rule measured with
         `make bench`, see its docstring).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from dpeq.privacy import clipping, ghost_clipping, ghost_layers

STRATEGIES = ("vmap", "ghost", "auto")


def prefer_ghost(taps, *, batch_size: int, backend: str) -> bool:
  """Whether ghost clipping is expected to be faster than vmap here.

  Measured (experiments/results/bench_cpu.md, "per-example grads"): on
  XLA:CPU the vmap path's per-example conv weight gradients are per-tap
  batched dot products, as cheap as the instantiate route's patch matmul,
  so ghost only saves the per-example backward through the rest of the
  network; it wins once the model has enough layers that vmap's per-example
  backward dominates. On accelerators (not measured here) the published
  results favour ghost for conv nets (Bu et al.). Rule: ghost when the
  backend is not CPU, or when the model has at least `_MIN_LAYERS_CPU`
  parameterised layers.
  """
  del batch_size
  if backend != "cpu":
    return True
  return len(taps) >= _MIN_LAYERS_CPU


_MIN_LAYERS_CPU = 8


def auto_gradients(loss_fn, params, batch) -> clipping.PerExampleGradients:
  """`ghost_gradients` or `vmap_gradients`, chosen when traced."""
  try:
    taps = ghost_clipping.find_taps(loss_fn, params, batch)
  except ghost_layers.UnsupportedLayerError as e:
    logging.info("per_example_grads='auto': vmap (%s)", e)
    return clipping.vmap_gradients(loss_fn, params, batch)
  batch_size = int(np.shape(jax.tree.leaves(batch)[0])[0])
  if prefer_ghost(taps, batch_size=batch_size,
                  backend=jax.default_backend()):
    logging.info("per_example_grads='auto': ghost (%d layers)", len(taps))
    return ghost_clipping.ghost_gradients(loss_fn, params, batch)
  logging.info("per_example_grads='auto': vmap (%d layers)", len(taps))
  return clipping.vmap_gradients(loss_fn, params, batch)


def strategy(name: str) -> clipping.GradientStrategy:
  """The GradientStrategy for a config name ("vmap", "ghost" or "auto")."""
  if name not in STRATEGIES:
    raise ValueError(
        f"per_example_grads={name!r}: use one of {', '.join(STRATEGIES)}.")
  return {"vmap": clipping.vmap_gradients,
          "ghost": ghost_clipping.ghost_gradients,
          "auto": auto_gradients}[name]


def check_supported(name: str, loss_fn, params, batch) -> None:
  """Raises UnsupportedLayerError early when "ghost" cannot run the model."""
  if name == "ghost":
    ghost_clipping.find_taps(loss_fn, params, batch)
