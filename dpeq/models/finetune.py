"""Restore a trained model for a new task and fine-tune all of it or its head.

Every dpeq model names its final linear layer `layers.CLASSIFIER_NAME`
("classifier"). Typical use:

  model = dpeq.models.create("wrn", num_classes=100, depth=16, width=4)
  fresh = model.init(rng, images[:1])
  params = finetune.replace_classifier(restored=checkpoint_params, fresh=fresh)
  trainable, frozen = finetune.split_trainable(params, trainable="classifier")
  def loss_fn(trainable, views):
    return per_view_loss(finetune.merge(trainable, frozen), views)

Differentiating (and hence clipping and noising) only `trainable` matters for
DP: the per-example gradient norm, the clipping and the Gaussian noise then
cover exactly the leaves that change, while frozen leaves stay bit-identical
and cost no privacy (they are data-independent constants of the fine-tuning
run; any privacy cost of how they were trained is that run's).
"""

import os
import pathlib
from collections.abc import Mapping

import haiku as hk
import jax
import numpy as np

from dpeq.models.layers import CLASSIFIER_NAME

TRAINABLE_CHOICES = ("all", "classifier")
# A dpeq workdir publishes its parameters as release/params_<name>.npz.
RELEASE_PARAMS = "release/params_{name}.npz"

Params = Mapping[str, Mapping[str, jax.Array]]


def is_classifier(module_name: str) -> bool:
  """Whether a Haiku module path (e.g. "wide_res_net/classifier") is a head."""
  return module_name.split("/")[-1] == CLASSIFIER_NAME


def replace_classifier(*, restored: Params, fresh: Params) -> Params:
  """Restored parameters with the classifier taken from `fresh`.

  Args:
    restored: parameters of a trained model (e.g. from a checkpoint), possibly
      for a different number of classes.
    fresh: freshly initialized parameters of the same architecture for the
      new task (`model.init(...)` of the model with the new num_classes).

  Returns:
    A new params mapping: every non-classifier leaf from `restored`
    (unchanged, same arrays), every classifier leaf from `fresh`.

  Raises:
    ValueError: if the non-classifier parts differ in modules or shapes (the
      checkpoint belongs to another architecture or configuration).
  """
  _, body_restored = _partition(restored, is_classifier)
  head_fresh, body_fresh = _partition(fresh, is_classifier)
  if not head_fresh:
    raise ValueError(
        f"No module named {CLASSIFIER_NAME!r} in the fresh parameters; only "
        "dpeq.models networks can be fine-tuned with this helper."
    )
  shapes_restored = _shapes(body_restored)
  shapes_fresh = _shapes(body_fresh)
  if shapes_restored != shapes_fresh:
    missing = sorted(set(shapes_fresh) - set(shapes_restored))
    unexpected = sorted(set(shapes_restored) - set(shapes_fresh))
    differing = sorted(
        key
        for key in set(shapes_fresh) & set(shapes_restored)
        if shapes_fresh[key] != shapes_restored[key]
    )
    raise ValueError(
        "The restored parameters do not match the model outside its classifier "
        f"(missing: {missing[:3]}, unexpected: {unexpected[:3]}, different "
        f"shapes: {differing[:3]}); restore a checkpoint of the same model name "
        "and kwargs."
    )
  return hk.data_structures.merge(body_restored, head_fresh)


def split_trainable(params: Params, *, trainable: str) -> tuple[Params, Params]:
  """Splits params into (trainable, frozen) for fine-tuning.

  Args:
    params: model parameters.
    trainable: "all" (frozen is empty) or "classifier" (only the final linear
      layer is trainable).

  Returns:
    (trainable_params, frozen_params); `merge(trainable_params,
    frozen_params)` gives back `params`.
  """
  if trainable not in TRAINABLE_CHOICES:
    raise ValueError(
        f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}."
    )
  if trainable == "all":
    return _partition(params, lambda module: True)
  head, body = _partition(params, is_classifier)
  if not head:
    raise ValueError(
        f"No module named {CLASSIFIER_NAME!r} in params; cannot fine-tune only "
        "the classifier."
    )
  return head, body


def merge(trainable: Params, frozen: Params) -> Params:
  """Recombines the two parts returned by `split_trainable`."""
  return hk.data_structures.merge(trainable, frozen)


def _shapes(params: Params) -> dict[tuple[str, str], tuple[int, ...]]:
  return {
      (module, name): np.shape(value)
      for module, name, value in hk.data_structures.traverse(params)
  }


def _partition(params: Params, module_predicate) -> tuple[Params, Params]:
  """(leaves whose module satisfies the predicate, all other leaves)."""
  return hk.data_structures.partition(
      lambda module, name, value: module_predicate(module), params
  )


def pretrained_params_path(init_from: str | os.PathLike, *,
                           params_name: str = "last") -> pathlib.Path:
  """The .npz file a fine-tuning run starts from.

  Args:
    init_from: a dpeq workdir (its `release/params_<params_name>.npz`, what
      the run published) or a .npz file of flat "module/param" arrays.
    params_name: which of a workdir's released parameters: "last",
      "ema_<decay>" or "polyak".

  Raises:
    ValueError: naming the missing file and how to get it.
  """
  path = pathlib.Path(init_from).expanduser()
  if path.is_dir():
    released = path / RELEASE_PARAMS.format(name=params_name)
    if not released.is_file():
      available = sorted(p.name for p in (path / "release").glob("params_*.npz"))
      raise ValueError(
          f"{released} does not exist: finish the pretraining run in {path} "
          "(its release/ is written at the end), or pick one of its released "
          f"parameters ({', '.join(available) or 'none yet'}).")
    return released
  if path.suffix != ".npz" or not path.is_file():
    raise ValueError(
        f"{path} is neither a dpeq workdir nor a .npz params file; point it to "
        "the pretraining run's workdir or to a release/params_<name>.npz.")
  return path


def load_params(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Haiku params from a .npz of "module/param" keys (dpeq's release format).

  The module path is everything before the last "/" (modules nest, e.g.
  "wide_res_net/classifier/w").
  """
  params: dict[str, dict[str, np.ndarray]] = {}
  with np.load(path) as arrays:
    for key in arrays.files:
      module, sep, name = key.rpartition("/")
      if not sep:
        raise ValueError(
            f"{path}: key {key!r} is not of the form 'module/param'; save "
            "Haiku params with one array per module/param.")
      params.setdefault(module, {})[name] = arrays[key]
  return params


def restore_for_task(*, restored: Params, fresh: Params,
                     replace_head: bool) -> Params:
  """Pretrained params for the new task's model.

  Args:
    restored: the pretrained parameters (e.g. `load_params`).
    fresh: `model.init(...)` of the new task's model (its classifier may
      have another number of classes).
    replace_head: take the classifier from `fresh` (a new task), or keep
      the pretrained one (same classes; every shape must then match).

  Raises:
    ValueError: when the parameters do not fit the model.
  """
  if replace_head:
    return replace_classifier(restored=restored, fresh=fresh)
  if _shapes(restored) != _shapes(fresh):
    raise ValueError(
        "The pretrained parameters do not match the model (modules or shapes "
        "differ); replace the classifier for a new number of classes, or use "
        "the pretraining run's model name and kwargs.")
  return jax.tree.map(np.asarray, restored)
