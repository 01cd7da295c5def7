"""Experiment configuration: the schema, its validation and its resolution.

An experiment is one `ml_collections.ConfigDict`. `base_config()` returns every
field with its default; experiment files (`experiments/configs/NAME.py`) start
from it and change what they need. `validate(config)` checks the fields that
can be checked without data and raises `ConfigError` naming the field and what
to change. `resolve(config, num_examples=n)` checks what needs the dataset size
and fills the two calibrated quantities:

* `dp.noise_multiplier` (sigma) when it is None: the smallest sigma whose
  epsilon after `training.num_updates` updates stays within
  `dp.target_epsilon`;
* `training.num_updates` (T) when it is None: the largest T whose epsilon at
  `dp.noise_multiplier` stays within `dp.target_epsilon`.

Exactly one of them may be None in a private run; a non-private run
(`dp.non_private=True`) has sigma = 0 and needs an explicit T. The sampling
rate is q = `training.expected_batch_size` / n, with n the number of training
examples after `data.subset`.
"""

import math
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from ml_collections import config_dict

from dpeq import data as data_lib
from dpeq import models as models_lib
from dpeq import paths
from dpeq.data import augment
from dpeq.privacy import accounting, sampling
from dpeq.training import averaging, optimizers
from dpeq.training import per_example_grads as per_example_grads_lib
from dpeq.training import update as update_lib

ConfigDict = config_dict.ConfigDict

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson", "shuffle")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise")
PER_EXAMPLE_GRADS = per_example_grads_lib.STRATEGIES
DATA_SOURCES = ("tfds", "raw")
_EMA_NAME = re.compile(r"^ema_(.+)$")


class ConfigError(ValueError):
  """A config field has a value the runner cannot use; the message says why."""


def _optional(field_type: type, default: Any) -> config_dict.FieldReference:
  """A field that may be None and keeps its type for command-line overrides.

  (A plain field set to None by a config file becomes NoneType, and
  `--config.a.b=v` then fails for it.)
  """
  return config_dict.FieldReference(default, field_type=field_type)


def base_config() -> ConfigDict:
  """Every field of the experiment schema with its default.

  The defaults describe a small private Fashion-MNIST run (epsilon 3 over 500
  updates, sigma calibrated); experiment files override what they need.
  Fields that default to None are typed placeholders, so command-line
  overrides such as `--config.dp.noise_multiplier=1.1` parse to the right
  type.

  Returns:
    A fresh, unlocked ConfigDict.
  """
  c = ConfigDict()
  # PUBLIC seed of the model's initialisation only. The noise, the batches
  # and the augmentation come from secret OS entropy (dpeq.privacy.randomness)
  # unless dp.reproducible_seed is set.
  c.seed = 0

  c.dp = ConfigDict()
  c.dp.noise_multiplier = config_dict.placeholder(float)  # None: calibrate
  c.dp.target_epsilon = _optional(float, 3.0)  # None: accept what is spent
  c.dp.delta = 1e-5
  c.dp.l2_clip_norm = 1.0  # C, per-example clipping norm
  c.dp.accountant = "pld"  # "pld" | "rdp"
  c.dp.sampling = "poisson"  # "poisson" | "shuffle" (own, weaker event)
  c.dp.rescale_to_unit_norm = False  # De et al.: clipped grads / C
  c.dp.non_private = False  # True: no noise, infinite epsilon (baselines)
  # Opt-in reproducibility: noise, batches and augmentation follow from this
  # PUBLIC seed, and the run is not private against anyone who knows it.
  # None (the default): secret randomness from the operating system.
  c.dp.reproducible_seed = config_dict.placeholder(int)

  c.training = ConfigDict()
  c.training.expected_batch_size = 256  # B = q * n; the noise divisor
  c.training.micro_batch_size = 64  # rows per device per micro-step
  c.training.num_updates = _optional(int, 500)  # T updates; None: calibrate
  c.training.augmult = 1  # K augmented views per example
  # How per-example norms and the clipped sum are computed: "vmap" |
  # "ghost" (Bu et al.'s mixed ghost clipping) | "auto" (dpeq.privacy.ghost_clipping.
  # selection). Speed and memory only: the guarantee is the same.
  c.training.per_example_grads = "vmap"
  c.training.optimizer = ConfigDict()
  c.training.optimizer.name = "sgd"
  c.training.optimizer.learning_rate = 1.0
  c.training.optimizer.momentum = 0.0
  c.training.optimizer.nesterov = False
  c.training.optimizer.weight_decay = 0.0
  c.training.optimizer.b1 = 0.9
  c.training.optimizer.b2 = 0.999
  c.training.lr_schedule = ConfigDict()
  c.training.lr_schedule.name = "constant"  # see LR_SCHEDULES
  c.training.lr_schedule.warmup_updates = 0  # "warmup_cosine" only
  c.training.lr_schedule.boundaries = ()  # "piecewise": update counts
  c.training.lr_schedule.scales = ()  # "piecewise": lr factors
  c.training.ema_decays = (0.999,)  # one parameter EMA per decay
  c.training.polyak = True  # also keep the running mean of the iterates

  c.model = ConfigDict()
  c.model.name = "cnn_tramer"  # a name of dpeq.models.available()
  c.model.kwargs = ConfigDict()  # the model's own options

  c.data = ConfigDict()
  c.data.dataset = "fashion_mnist"  # a name of dpeq.data.available()
  c.data.source = "tfds"  # "tfds" | "raw" (the original files in raw_dir)
  c.data.data_dir = config_dict.placeholder(str)  # tfds data folder
  c.data.manual_dir = config_dict.placeholder(str)  # files to prepare from
  c.data.raw_dir = config_dict.placeholder(str)  # None: shared/data/<name>
  c.data.cache_dir = config_dict.placeholder(str)  # .npy cache of splits
  # The whole official training set; "train" holds out "valid" from it.
  c.data.train_split = "train_valid"
  c.data.eval_split = "test"
  # Quick runs: only the first `subset` examples of each split (train and
  # eval); n (hence q) is then the subset size.
  c.data.subset = config_dict.placeholder(int)
  # Evaluating on a split that overlaps the training split (e.g. "valid"
  # while training on "train_valid") is refused unless this is True; its
  # records are then labelled as not covered by epsilon.
  c.data.allow_eval_on_training_data = False
  c.data.augmentation = ConfigDict()
  c.data.augmentation.crop_padding = 0
  c.data.augmentation.random_flip = False
  c.data.augmentation.vertical_flip = False
  c.data.augmentation.random_rot90 = False
  c.data.augmentation.view0_identity = False

  c.eval = ConfigDict()
  c.eval.every_updates = 100  # 0: only at the end (always at the end)
  c.eval.batch_size = 1000  # a multiple of the number of devices
  c.eval.params = ("last", "ema_0.999", "polyak")

  c.checkpoint = ConfigDict()
  c.checkpoint.every_updates = 50  # 0: only at the end (always at the end)
  c.checkpoint.keep = 3  # the newest N are kept

  c.logging = ConfigDict()
  c.logging.every_updates = 1  # a training record (with epsilon) every N
  c.logging.tensorboard = True
  c.logging.progress_bar = True

  c.distributed = ConfigDict()  # multi-host: one process per host
  c.distributed.coordinator_address = config_dict.placeholder(str)  # h:port
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  return c


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

  # --- dp
  dp = config.dp
  if not isinstance(dp.non_private, bool):
    _fail("dp.non_private", dp.non_private, "must be True or False.")
  _choice(config, "dp.accountant", ACCOUNTANTS)
  _choice(config, "dp.sampling", SAMPLINGS)
  if not _is_number(dp.l2_clip_norm) or not dp.l2_clip_norm > 0:
    _fail("dp.l2_clip_norm", dp.l2_clip_norm,
          "must be a positive number (the per-example gradient clip norm).")
  if dp.non_private:
    if dp.noise_multiplier not in (None, 0, 0.0):
      _fail("dp.noise_multiplier", dp.noise_multiplier,
            "must be None or 0 when dp.non_private=True (no noise is added).")
    if config.training.num_updates is None:
      _fail("training.num_updates", None,
            "must be set when dp.non_private=True (there is no privacy "
            "budget to derive it from).")
  else:
    sigma = dp.noise_multiplier
    if sigma is not None and (not _is_number(sigma) or not sigma > 0):
      _fail("dp.noise_multiplier", sigma,
            "must be positive for a private run; set it to None to calibrate "
            "it from dp.target_epsilon, or set dp.non_private=True to train "
            "without privacy.")
    eps = dp.target_epsilon
    if eps is not None and (not _is_number(eps) or not 0 < eps < math.inf):
      _fail("dp.target_epsilon", eps, "must be a positive, finite number.")
    if not _is_number(dp.delta) or not 0 < dp.delta < 1:
      _fail("dp.delta", dp.delta,
            "must lie strictly between 0 and 1 (typically well below "
            "1 / number of training examples).")
    if sigma is None and config.training.num_updates is None:
      _fail("dp.noise_multiplier", None,
            "and training.num_updates=None: set one of them; the other is "
            "calibrated to dp.target_epsilon.")
    if eps is None and (sigma is None or config.training.num_updates is None):
      _fail("dp.target_epsilon", None,
            "is needed to calibrate dp.noise_multiplier or "
            "training.num_updates; set it, or set both of those explicitly.")
  if not isinstance(dp.rescale_to_unit_norm, bool):
    _fail("dp.rescale_to_unit_norm", dp.rescale_to_unit_norm,
          "must be True or False.")

  # --- training
  t = config.training
  _positive_int(config, "training.expected_batch_size")
  _positive_int(config, "training.micro_batch_size")
  _positive_int(config, "training.num_updates", allow_none=True)
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


def make_dp_sgd_config(config: ConfigDict) -> "update_lib.DpSgdConfig":
  """The private update's DpSgdConfig of a RESOLVED config."""
  return update_lib.DpSgdConfig(
      l2_clip_norm=config.dp.l2_clip_norm,
      noise_multiplier=config.dp.noise_multiplier,
      expected_batch_size=config.training.expected_batch_size,
      rescale_to_unit_norm=config.dp.rescale_to_unit_norm,
      ema_decays=tuple(config.training.ema_decays),
      polyak=config.training.polyak, non_private=config.dp.non_private)


def make_sampler(config: ConfigDict, *, num_examples: int,
                 seed: int | None, pad_multiple: int = 1):
  """The batch sampler of `config.dp.sampling` over `num_examples` examples.

  Its `dp_event` is what the run is accounted with (calibration, ledger and
  privacy.json all use it), so the guarantee matches the sampling done.
  `seed`: the run's secret sampler seed, or None for a sampler that only
  describes its DpEvent.
  """
  cls = {"poisson": sampling.PoissonSampler,
         "shuffle": sampling.ShuffleSampler}[config.dp.sampling]
  return cls(num_examples=num_examples,
             expected_batch_size=config.training.expected_batch_size,
             seed=seed, pad_multiple=pad_multiple)


def make_ledger(config: ConfigDict, *, num_examples: int,
                noise_dimension: int, num_updates: int = 0):
  """The PrivacyLedger of a resolved config, at `num_updates` updates of
  `noise_dimension` noised coordinates (the number of parameters)."""
  return accounting.PrivacyLedger(
      sampler=make_sampler(config, num_examples=num_examples, seed=None),
      noise_multiplier=config.dp.noise_multiplier, delta=config.dp.delta,
      noise_dimension=noise_dimension, accountant=config.dp.accountant,
      num_updates=num_updates)


def spent_epsilon(config: ConfigDict, *, num_examples: int) -> float:
  """Epsilon (at dp.delta) of the whole run of a resolved config (inf when
  non-private)."""
  if config.dp.non_private:
    return math.inf
  sampler = make_sampler(config, num_examples=num_examples, seed=None)
  return accounting.epsilon_of_event(
      sampler.dp_event(noise_multiplier=config.dp.noise_multiplier,
                       num_updates=config.training.num_updates),
      delta=config.dp.delta, accountant=config.dp.accountant)


def _calibrate_noise_multiplier(config: ConfigDict, sampler) -> float:
  """Smallest sigma whose epsilon after T updates is within the target."""
  dp, num_updates = config.dp, config.training.num_updates
  if config.dp.sampling == "poisson":
    return accounting.calibrate_noise_multiplier(
        target_epsilon=dp.target_epsilon, sampling_rate=sampler.sampling_rate,
        steps=num_updates, delta=dp.delta, accountant=dp.accountant)
  # Other samplers: the same search over their own DpEvent.
  return accounting.calibrate_noise_multiplier_of_event(
      lambda sigma: sampler.dp_event(noise_multiplier=sigma,
                                     num_updates=num_updates),
      target_epsilon=dp.target_epsilon, delta=dp.delta,
      accountant=dp.accountant)


def _calibrate_num_updates(config: ConfigDict, sampler) -> int:
  """Largest T whose epsilon at the given sigma is within the target."""
  dp = config.dp
  if config.dp.sampling == "poisson":
    return accounting.calibrate_steps(
        target_epsilon=dp.target_epsilon, noise_multiplier=dp.noise_multiplier,
        sampling_rate=sampler.sampling_rate, delta=dp.delta,
        accountant=dp.accountant)
  # Shuffling: epsilon grows per epoch started, so T ends on an epoch.
  return accounting.calibrate_steps_of_event(
      lambda steps: sampler.dp_event(noise_multiplier=dp.noise_multiplier,
                                     num_updates=steps),
      target_epsilon=dp.target_epsilon, delta=dp.delta,
      accountant=dp.accountant)


def resolve(config: ConfigDict, *, num_examples: int) -> ConfigDict:
  """Validates `config` against the data size and fills sigma and T.

  Args:
    config: an experiment config (not modified).
    num_examples: the number of training examples n the sampler draws from
      (after `data.subset`).

  Returns:
    A copy with `dp.noise_multiplier` (0.0 when non-private) and
    `training.num_updates` set.

  Raises:
    ConfigError: for a field that does not fit the data, or a privacy
      budget that cannot be met.
  """
  validate(config)
  if not _is_int(num_examples) or num_examples < 1:
    raise ConfigError(
        f"the training split has {num_examples!r} examples; check "
        "config.data.dataset, config.data.train_split and config.data.subset.")
  config = config_dict.ConfigDict(config.to_dict())
  t, dp = config.training, config.dp
  if t.expected_batch_size > num_examples:
    _fail("training.expected_batch_size", t.expected_batch_size,
          f"exceeds the {num_examples} training examples; use a batch size "
          "of at most the dataset size.")
  if dp.non_private:
    dp.noise_multiplier = 0.0
  else:
    sampler = make_sampler(config, num_examples=num_examples, seed=None)
    try:
      if dp.noise_multiplier is None:
        dp.noise_multiplier = float(
            _calibrate_noise_multiplier(config, sampler))
      elif t.num_updates is None:
        t.num_updates = int(_calibrate_num_updates(config, sampler))
    except ValueError as e:
      raise ConfigError(
          f"config.dp.target_epsilon={dp.target_epsilon} cannot be met: {e}"
      ) from None
    if dp.target_epsilon is not None:
      eps = spent_epsilon(config, num_examples=num_examples)
      if eps > dp.target_epsilon * (1 + 1e-6):
        _fail("dp.target_epsilon", dp.target_epsilon,
              f"is exceeded: noise_multiplier={dp.noise_multiplier} for "
              f"{t.num_updates} updates spends epsilon={eps:.4g}; set "
              "training.num_updates=None (or dp.noise_multiplier=None) to "
              "calibrate, or set dp.target_epsilon=None to accept it.")
  make_optimizer(config)  # now with the schedule over T updates
  return config
