"""Model registry: config names -> Haiku transformed models.

`create(name, num_classes=..., **kwargs)` looks the name up, checks the
keyword arguments against the builder's signature, lets the builder validate
their values (so mistakes fail here, not inside a jitted step) and wraps the
forward function with `hk.without_apply_rng(hk.transform(...))`.
"""

import importlib
import inspect
from collections.abc import Callable

import haiku as hk

# name -> (module in dpeq.models, builder function). Builders are imported on
# first use, so conventional models do not pay for the equivariant machinery.
_BUILDERS: dict[str, tuple[str, str]] = {
    "cnn_tramer": ("small_cnn", "cnn_tramer"),
    "cnn_tramer_cifar10": ("small_cnn", "cnn_tramer_cifar10"),
    "eq_cnn": ("eq_cnn", "eq_cnn"),
    "eq_resnet9": ("eq_resnet9", "eq_resnet9"),
    "eq_resnet9_lean": ("eq_resnet9_lean", "eq_resnet9_lean"),
    "eq_tramer_cnn": ("eq_tramer_cnn", "eq_tramer_cnn"),
    "eq_wrn": ("eq_wrn", "eq_wrn"),
    "nf_resnet50": ("nf_resnet", "nf_resnet50"),
    "resnet9": ("resnet9", "resnet9"),
    "wrn": ("wrn", "wrn"),
}


def available() -> tuple[str, ...]:
  """The registered model names, sorted."""
  return tuple(sorted(_BUILDERS))


def model_kwargs(name: str) -> dict[str, object]:
  """The keyword arguments model `name` accepts (besides num_classes).

  Returns a dict from argument name to its default value.
  """
  builder = _lookup(name)
  return {
      arg: param.default
      for arg, param in inspect.signature(builder).parameters.items()
      if arg != "num_classes"
  }


def _lookup(name: str) -> Callable[..., Callable]:
  if name not in _BUILDERS:
    raise ValueError(
        f"Unknown model {name!r}; available models: {', '.join(available())}."
    )
  module_name, function_name = _BUILDERS[name]
  module = importlib.import_module(f"dpeq.models.{module_name}")
  return getattr(module, function_name)


def create(name: str, *, num_classes: int, **kwargs) -> hk.Transformed:
  """Builds model `name` as a Haiku transformed pair.

  Args:
    name: one of `available()`.
    num_classes: number of output logits.
    **kwargs: the model's own options (see `model_kwargs(name)`), e.g.
      depth / width for "wrn", group / layout / restrict for "eq_resnet9".

  Returns:
    `hk.Transformed` with `init(rng, images, is_training=False) -> params` and
    `apply(params, images, is_training=False) -> logits [B, num_classes]` for
    float NHWC images [B, H, W, C]. Models are deterministic (no RNG, no
    state, no batch statistics); constants (kernel bases, masks) are not
    parameters.

  Raises:
    ValueError: unknown name, unknown keyword argument or invalid value.
  """
  builder = _lookup(name)
  accepted = model_kwargs(name)
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(
        f"Model {name!r} got unknown argument(s) {', '.join(unknown)}; it accepts "
        f"num_classes and {', '.join(accepted) or 'nothing else'}."
    )
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or (
      num_classes < 1
  ):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  forward = builder(num_classes=int(num_classes), **kwargs)
  return hk.without_apply_rng(hk.transform(forward))
