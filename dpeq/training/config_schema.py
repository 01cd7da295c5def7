"""The experiment schema: every config field with its default.

An experiment is one `ml_collections.ConfigDict`. `base_config()` returns every
field with its default; experiment files (`experiments/configs/NAME.py`) start
from it and change what they need. Validation and resolution live in
dpeq.training.config (which re-exports `base_config` and `ConfigError`).
"""

from typing import Any

from ml_collections import config_dict

from dpeq.models import finetune
from dpeq.training import per_example_grads as per_example_grads_lib

ConfigDict = config_dict.ConfigDict

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson", "shuffle")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise")
PER_EXAMPLE_GRADS = per_example_grads_lib.STRATEGIES
DATA_SOURCES = ("tfds", "raw")
TRAINABLE = finetune.TRAINABLE_CHOICES


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
  # "ghost" (Bu et al.'s mixed ghost clipping, book-keeping) |
  # "ghost_two_pass" (the same, least memory, two backward passes) | "auto"
  # (dpeq.training.per_example_grads). Speed and memory only: the guarantee
  # is the same.
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
  # Only these labels, relabelled 0.. in this order (e.g. (5, 6, 7, 8, 9));
  # (): every class. Class-disjoint splits: pretrain on public classes,
  # fine-tune privately on the others.
  c.data.classes = ()
  c.data.augmentation = ConfigDict()
  c.data.augmentation.crop_padding = 0
  c.data.augmentation.random_flip = False
  c.data.augmentation.vertical_flip = False
  c.data.augmentation.random_rot90 = False
  c.data.augmentation.view0_identity = False

  # Fine-tuning (De et al.): start from pretrained parameters. They must be
  # public (or their own run's release): the guarantee of this run covers
  # its training data only.
  c.finetune = ConfigDict()
  # A dpeq workdir (its release/params_<params_name>.npz) or a .npz of
  # "module/param" arrays; None: train from the model's initialisation.
  c.finetune.init_from = config_dict.placeholder(str)
  c.finetune.params_name = "last"  # "last" | "ema_<decay>" | "polyak"
  c.finetune.replace_classifier = True  # fresh head (new classes)
  # "all" | "classifier": only these leaves are clipped, noised and trained
  # (the noise dimension is theirs); the rest stay bit-identical.
  c.finetune.trainable = "all"

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
