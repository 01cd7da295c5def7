"""Experiment configuration: validation, resolution and what is built from it.

The schema (every field and its default) is `base_config()` of
dpeq.training.config_schema, re-exported here. `validate(config)` checks the
fields that can be checked without data and raises `ConfigError` naming the
field and what to change; the privacy numbers are checked by building the
run's `PrivacyPlan` (dpeq.privacy.plan), the one object that owns them.
`resolve(config, num_examples=n)` calibrates the plan to the data size and
writes its two calibrated quantities back:

* `dp.noise_multiplier` (sigma) when it is None: the smallest sigma whose
  epsilon after `training.num_updates` updates stays within
  `dp.target_epsilon`;
* `training.num_updates` (T) when it is None: the largest T whose epsilon at
  `dp.noise_multiplier` stays within `dp.target_epsilon`.

Exactly one of them may be None in a private run; a non-private run
(`dp.non_private=True`) has sigma = 0 and needs an explicit T. The sampling
rate is q = `training.expected_batch_size` / n, with n the number of training
examples after `data.classes` and `data.subset`.
"""

import pathlib
import re
from collections.abc import Mapping
from typing import Any

from ml_collections import config_dict

from dpeq import data as data_lib
from dpeq import models as models_lib
from dpeq import paths
from dpeq.data import augment
from dpeq.privacy import plan as plan_lib
from dpeq.training import averaging, optimizers
from dpeq.training.config_schema import (
  ACCOUNTANTS,
  DATA_SOURCES,
  LR_SCHEDULES,
  PER_EXAMPLE_GRADS,
  SAMPLINGS,
  TRAINABLE,
  ConfigDict,
  ConfigError,
  base_config,
)

__all__ = ["ACCOUNTANTS", "DATA_SOURCES", "LR_SCHEDULES", "PER_EXAMPLE_GRADS",
           "SAMPLINGS", "TRAINABLE", "ConfigDict", "ConfigError",
           "augment_config", "base_config", "eval_overlaps_training",
           "make_optimizer", "privacy_plan", "resolve", "validate"]

_EMA_NAME = re.compile(r"^ema_(.+)$")
# Where each number of the PrivacyPlan lives in the config.
_PLAN_FIELDS = {
    "l2_clip_norm": "dp.l2_clip_norm",
    "rescale_to_unit_norm": "dp.rescale_to_unit_norm",
    "noise_multiplier": "dp.noise_multiplier",
    "target_epsilon": "dp.target_epsilon",
    "delta": "dp.delta",
    "sampling": "dp.sampling",
    "accountant": "dp.accountant",
    "non_private": "dp.non_private",
    "expected_batch_size": "training.expected_batch_size",
    "num_updates": "training.num_updates",
}


# ----------------------------------------------------------------------------
# Validation.


def _fail(field: str, value: Any, fix: str) -> None:
  raise ConfigError(f"config.{field}={value!r}: {fix}")


def _check_schema(config: Mapping[str, Any], schema: Mapping[str, Any],
                  prefix: str) -> None:
  """Every field of `config` exists in `schema` (free-form model.kwargs)."""
  for key in config.keys():
    field = f"{prefix}{key}"
    if key not in schema:
      known = ", ".join(sorted(schema.keys()))
      raise ConfigError(
          f"config.{field} is not a field of the experiment schema; known "
          f"fields here: {known}. Fix the spelling or remove it.")
    if field == "model.kwargs":
      continue
    if isinstance(schema[key], ConfigDict):
      if not isinstance(config[key], (ConfigDict, Mapping)):
        _fail(field, config[key], "must be a group of fields (a ConfigDict).")
      _check_schema(config[key], schema[key], f"{field}.")
  for key in schema.keys():
    if key not in config:
      _fail(f"{prefix}{key}", None,
            "is missing; start the config from "
            "dpeq.training.config.base_config().")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(config: ConfigDict, field: str, *, allow_none=False,
                  allow_zero=False) -> None:
  value = _get(config, field)
  if value is None and allow_none:
    return
  low = 0 if allow_zero else 1
  if not _is_int(value) or value < low:
    what = "a non-negative" if allow_zero else "a positive"
    _fail(field, value, f"must be {what} integer"
          + (" or None." if allow_none else "."))


def _get(config: ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _choice(config: ConfigDict, field: str, choices: tuple[str, ...]) -> None:
  value = _get(config, field)
  if value not in choices:
    _fail(field, value, f"must be one of {', '.join(map(repr, choices))}.")


def make_optimizer(config: ConfigDict):
  """The optax optimizer of `config.training` (with its lr schedule).

  Cosine schedules need `training.num_updates`; while it is None (before
  `resolve`), only the optimizer's options are checked, with a constant rate.

  Raises:
    ConfigError: naming the optimizer or schedule fields at fault.
  """
  t = config.training
  opt, sched = t.optimizer, t.lr_schedule
  learning_rate = opt.learning_rate
  if t.num_updates is not None:
    try:
      learning_rate = optimizers.make_schedule(
          name=sched.name, learning_rate=opt.learning_rate,
          num_updates=t.num_updates, warmup_updates=sched.warmup_updates,
          boundaries=tuple(sched.boundaries), scales=tuple(sched.scales))
    except ValueError as e:
      raise ConfigError(
          f"config.training.lr_schedule ({sched.name!r}): {e}") from None
  try:
    return optimizers.make_optimizer(
        name=opt.name, learning_rate=learning_rate, momentum=opt.momentum,
        nesterov=opt.nesterov, weight_decay=opt.weight_decay, b1=opt.b1,
        b2=opt.b2)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.training.optimizer ({opt.name!r}): {e}") from None


def augment_config(config: ConfigDict):
  """The dpeq.data.augment.AugmentConfig of `config` (K = training.augmult)."""
  aug = config.data.augmentation
  try:
    return augment.AugmentConfig(
        num_views=config.training.augmult, crop_padding=aug.crop_padding,
        random_flip=aug.random_flip, vertical_flip=aug.vertical_flip,
        random_rot90=aug.random_rot90, view0_identity=aug.view0_identity)
  except ValueError as e:
    raise ConfigError(f"config.data.augmentation: {e}") from None


def validate(config: ConfigDict) -> None:
  """Checks every field that can be checked without loading data.

  Args:
    config: an experiment config built from `base_config()`.

  Raises:
    ConfigError: naming the first bad field, its value and what to change.
  """
  _check_schema(config, base_config(), "")
  if not _is_int(config.seed) or config.seed < 0:
    _fail("seed", config.seed, "must be a non-negative integer.")
  seed = config.dp.reproducible_seed
  if seed is not None and (not _is_int(seed) or seed < 0):
    _fail("dp.reproducible_seed", seed,
          "must be None (secret randomness, the default) or a non-negative "
          "integer (reproducible, NOT private against anyone who knows it).")

  # --- dp: the privacy numbers are checked by building their plan.
  privacy_plan(config)

  # --- training
  t = config.training
  _positive_int(config, "training.micro_batch_size")
  if t.micro_batch_size > t.expected_batch_size:
    _fail("training.micro_batch_size", t.micro_batch_size,
          f"must not exceed training.expected_batch_size="
          f"{t.expected_batch_size}.")
  if t.expected_batch_size % t.micro_batch_size:
    _fail("training.micro_batch_size", t.micro_batch_size,
          f"must divide training.expected_batch_size={t.expected_batch_size} "
          "(a logical batch is a whole number of micro-batches); choose a "
          "divisor.")
  if not _is_int(t.augmult) or t.augmult < 1:
    _fail("training.augmult", t.augmult,
          "must be an integer >= 1 (the number of augmented views per "
          "example; 1 means no augmentation multiplicity).")
  opt = t.optimizer
  _choice(config, "training.per_example_grads", PER_EXAMPLE_GRADS)
  _choice(config, "training.optimizer.name", optimizers.available())
  if not _is_number(opt.learning_rate) or not opt.learning_rate > 0:
    _fail("training.optimizer.learning_rate", opt.learning_rate,
          "must be a positive number.")
  _choice(config, "training.lr_schedule.name", LR_SCHEDULES)
  _positive_int(config, "training.lr_schedule.warmup_updates",
                allow_zero=True)
  make_optimizer(config)  # the optimizer's own checks, as ConfigErrors
  for decay in t.ema_decays:
    if not _is_number(decay) or not 0 < decay < 1:
      _fail("training.ema_decays", tuple(t.ema_decays),
            "must hold decays strictly between 0 and 1.")
  if not isinstance(t.polyak, bool):
    _fail("training.polyak", t.polyak, "must be True or False.")

  # --- model
  _choice(config, "model.name", models_lib.available())
  accepted = models_lib.model_kwargs(config.model.name)
  for key in config.model.kwargs.keys():
    if key not in accepted:
      _fail(f"model.kwargs.{key}", config.model.kwargs[key],
            f"is not an option of model {config.model.name!r}; it accepts "
            f"{', '.join(sorted(accepted)) or 'no options'}.")

  # --- data
  d = config.data
  _choice(config, "data.dataset", data_lib.available())
  _choice(config, "data.train_split", data_lib.SPLITS)
  _choice(config, "data.eval_split", data_lib.SPLITS)
  _choice(config, "data.source", DATA_SOURCES)
  if not isinstance(d.allow_eval_on_training_data, bool):
    _fail("data.allow_eval_on_training_data", d.allow_eval_on_training_data,
          "must be True or False.")
  if eval_overlaps_training(config) and not d.allow_eval_on_training_data:
    _fail("data.eval_split", d.eval_split,
          f"overlaps data.train_split={d.train_split!r}: metrics on training "
          "examples are not covered by epsilon. Evaluate on a disjoint split "
          "(\"test\", or \"valid\" while training on \"train\"), or set "
          "data.allow_eval_on_training_data=True to evaluate anyway (the "
          "records are then labelled non-private).")
  if d.source == "raw":
    if d.raw_dir is None and paths.shared_data_dir(d.dataset) is None:
      _fail("data.raw_dir", None,
            f"must point to the folder with the original {d.dataset} files "
            "when data.source='raw' (there is no shared/data/"
            f"{d.dataset} to fall back on), or use data.source='tfds'.")
    if d.raw_dir is not None and not pathlib.Path(
        d.raw_dir).expanduser().is_dir():
      _fail("data.raw_dir", d.raw_dir,
            "does not exist; point it to the folder with the original "
            "dataset files, or use data.source='tfds' (needs the network or "
            "a prepared data.data_dir).")
  for field in ("data.manual_dir",):
    value = _get(config, field)
    if value is not None and not pathlib.Path(value).expanduser().is_dir():
      _fail(field, value, "does not exist; fix the path or set it to None.")
  _positive_int(config, "data.subset", allow_none=True)
  aug = d.augmentation
  _positive_int(config, "data.augmentation.crop_padding", allow_zero=True)
  for name in ("random_flip", "vertical_flip", "random_rot90",
               "view0_identity"):
    if not isinstance(aug[name], bool):
      _fail(f"data.augmentation.{name}", aug[name], "must be True or False.")
  augment_config(config)
  classes = d.classes
  if not isinstance(classes, tuple | list) or len(set(classes)) != len(
      classes) or not all(_is_int(c) and c >= 0 for c in classes):
    _fail("data.classes", classes,
          "must be a tuple of distinct non-negative labels (e.g. (5, 6, 7, 8, "
          "9)), or () for every class.")

  # --- finetune
  f = config.finetune
  _choice(config, "finetune.trainable", TRAINABLE)
  if not isinstance(f.replace_classifier, bool):
    _fail("finetune.replace_classifier", f.replace_classifier,
          "must be True or False.")
  if not isinstance(f.params_name, str) or not f.params_name:
    _fail("finetune.params_name", f.params_name,
          "must name released parameters: 'last', 'ema_<decay>' or 'polyak'.")
  # finetune.init_from is read (and its absence reported) by the runner
  # before training: a config may name a pretraining run yet to be done.
  if f.trainable != "all" and t.per_example_grads != "vmap":
    _fail("training.per_example_grads", t.per_example_grads,
          f"must be 'vmap' with finetune.trainable={f.trainable!r} (ghost "
          "clipping differentiates every layer).")

  # --- eval
  _positive_int(config, "eval.every_updates", allow_zero=True)
  _positive_int(config, "eval.batch_size")
  known = {"last"} | {averaging.ema_name(decay) for decay in t.ema_decays}
  if t.polyak:
    known.add("polyak")
  for name in config.eval.params:
    if name not in known:
      match = _EMA_NAME.match(str(name))
      hint = (" (add its decay to training.ema_decays)" if match else
              " (set training.polyak=True)" if name == "polyak" else "")
      _fail("eval.params", tuple(config.eval.params),
            f"names {name!r}, which this run does not produce{hint}; "
            f"available: {', '.join(sorted(known))}.")

  # --- checkpoint / logging
  _positive_int(config, "checkpoint.every_updates", allow_zero=True)
  _positive_int(config, "checkpoint.keep")
  _positive_int(config, "logging.every_updates")
  for name in ("tensorboard", "progress_bar"):
    if not isinstance(config.logging[name], bool):
      _fail(f"logging.{name}", config.logging[name], "must be True or False.")

  # --- distributed
  dist = config.distributed
  _positive_int(config, "distributed.num_processes")
  _positive_int(config, "distributed.process_id", allow_zero=True)
  if dist.process_id >= dist.num_processes:
    _fail("distributed.process_id", dist.process_id,
          f"must be smaller than distributed.num_processes="
          f"{dist.num_processes}.")
  if dist.num_processes > 1 and not dist.coordinator_address:
    _fail("distributed.coordinator_address", dist.coordinator_address,
          "must be set (host:port of process 0) when "
          "distributed.num_processes > 1.")
  if dist.coordinator_address is not None and ":" not in str(
      dist.coordinator_address):
    _fail("distributed.coordinator_address", dist.coordinator_address,
          "must have the form host:port.")


# ----------------------------------------------------------------------------
# Resolution.


# Splits that share examples: "train" and "valid" are parts of "train_valid".
_SPLIT_PARTS = {"train": {"train"}, "valid": {"valid"},
                "train_valid": {"train", "valid"}, "test": {"test"}}


def eval_overlaps_training(config: ConfigDict) -> bool:
  """Whether data.eval_split shares examples with data.train_split."""
  d = config.data
  return bool(_SPLIT_PARTS.get(d.train_split, set())
              & _SPLIT_PARTS.get(d.eval_split, set()))


def privacy_plan(config: ConfigDict, *,
                 num_examples: int | None = None) -> plan_lib.PrivacyPlan:
  """The PrivacyPlan of `config` (its dp.* and the batch size and T).

  Args:
    config: an experiment config; after `resolve`, sigma and T are set.
    num_examples: n, the training split size; None for a plan that is not
      yet calibrated to the data.

  Raises:
    ConfigError: naming the config field of a number the plan refuses.
  """
  dp, t = config.dp, config.training
  try:
    return plan_lib.PrivacyPlan(
        l2_clip_norm=dp.l2_clip_norm,
        rescale_to_unit_norm=dp.rescale_to_unit_norm,
        noise_multiplier=dp.noise_multiplier,
        target_epsilon=dp.target_epsilon, delta=dp.delta,
        sampling=dp.sampling, accountant=dp.accountant,
        non_private=dp.non_private,
        expected_batch_size=t.expected_batch_size,
        num_updates=t.num_updates, num_examples=num_examples)
  except plan_lib.PlanError as e:
    raise _plan_error(e) from None


def _plan_error(error: plan_lib.PlanError) -> ConfigError:
  if error.field == "num_examples":  # n comes from the data, not a field.
    return ConfigError(
        f"the training split has {error.value!r} examples; check "
        "config.data.dataset, config.data.train_split, config.data.classes "
        "and config.data.subset.")
  fix = error.fix
  for name, path in _PLAN_FIELDS.items():  # Speak in config fields.
    fix = re.sub(rf"\b{name}\b", path, fix)
  return ConfigError(
      f"config.{_PLAN_FIELDS[error.field]}={error.value!r}: {fix}")


def resolve(config: ConfigDict, *, num_examples: int) -> ConfigDict:
  """Validates `config` against the data size and fills sigma and T.

  Args:
    config: an experiment config (not modified).
    num_examples: the number of training examples n the sampler draws from
      (after `data.classes` and `data.subset`).

  Returns:
    A copy with `dp.noise_multiplier` (0.0 when non-private) and
    `training.num_updates` set.

  Raises:
    ConfigError: for a field that does not fit the data, or a privacy
      budget that cannot be met.
  """
  validate(config)
  if not _is_int(num_examples) or num_examples < 1:
    raise _plan_error(plan_lib.PlanError("num_examples", num_examples, ""))
  try:
    plan = privacy_plan(config).calibrated(num_examples=num_examples)
  except plan_lib.PlanError as e:
    raise _plan_error(e) from None
  config = config_dict.ConfigDict(config.to_dict())
  config.dp.noise_multiplier = plan.noise_multiplier
  config.training.num_updates = plan.num_updates
  make_optimizer(config)  # now with the schedule over T updates
  return config
