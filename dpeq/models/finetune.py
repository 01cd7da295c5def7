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

from collections.abc import Mapping

import haiku as hk
import jax
import numpy as np

from dpeq.models.layers import CLASSIFIER_NAME

TRAINABLE_CHOICES = ("all", "classifier")

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
