"""De et al. 2022: fine-tuning a WRN-28-10 on CIFAR-100 at eps 1.

  --config=experiments/configs/cifar100_finetune.py

No arguments. Recipe (De et al.; jax_privacy's shipped config): a WRN-28-10
pre-trained (non-privately) on ImageNet 32x32 gets a fresh 100-way classifier
and all its layers are fine-tuned with (1, 1e-5)-DP: Poisson sampling with
expected batch 16384 over the 50,000 CIFAR-100 training images, augmentation
multiplicity 16 (reflect-pad 4, random crop, random horizontal flip), clip
norm 1 with rescaling to unit norm, noise multiplier 21.1 for 250 updates,
plain SGD with constant learning rate 1, no weight decay, EMA 0.9, RDP
accounting.

The pretrained weights come from `finetune.init_from` (default
runs/imagenet32_wrn28_10): the workdir of a WRN-28-10 pretraining run (its
release/params_last.npz) or a .npz of "module/param" arrays with dpeq's WRN
module names. No ImageNet weights exist offline, so point it to your own:

  --config=experiments/configs/cifar100_finetune.py \
      --config.finetune.init_from=/path/to/wrn28_10_run

The runner refuses to start (a ConfigError naming the field) while that path
does not exist. The classifier is replaced by a fresh 100-way one and all
parameters are trained (`finetune.trainable="all"`; "classifier" trains,
clips and noises the head only). The guarantee covers CIFAR-100; the
pretraining data must be public. experiments/configs/cifar10_finetune.py
shows the same setting end to end on the data here.
"""

from dpeq.training import config as config_lib
from experiments.configs import common

# The config arguments of the paper's runs.
EXPERIMENTS = ("",)
# Where the WRN-28-10 pretrained on ImageNet 32x32 is expected.
PRETRAINED_WORKDIR = "runs/imagenet32_wrn28_10"


def get_config(arg: str = ""):
  """WRN-28-10 fine-tuned on CIFAR-100 at (1, 1e-5)-DP."""
  common.parse_arg(arg, options={}, defaults={}, config_name="cifar100_finetune.py")
  c = config_lib.base_config()
  c.seed = 0

  c.dp.target_epsilon = 1.0
  c.dp.noise_multiplier = 21.1
  c.dp.delta = 1e-5
  c.dp.l2_clip_norm = 1.0
  c.dp.rescale_to_unit_norm = True
  c.dp.accountant = "rdp"
  c.dp.sampling = "poisson"

  c.training.expected_batch_size = 16384
  c.training.micro_batch_size = 16
  c.training.num_updates = 250
  c.training.augmult = 16
  c.training.optimizer.name = "sgd"
  c.training.optimizer.learning_rate = 1.0
  c.training.optimizer.momentum = 0.0
  c.training.optimizer.weight_decay = 0.0
  c.training.lr_schedule.name = "constant"
  c.training.ema_decays = (0.9,)
  c.training.polyak = True

  c.finetune.init_from = PRETRAINED_WORKDIR
  c.finetune.params_name = "last"
  c.finetune.replace_classifier = True
  c.finetune.trainable = "all"

  c.model.name = "wrn"
  c.model.kwargs.depth = 28
  c.model.kwargs.width = 10

  c.data.dataset = "cifar100"
  c.data.train_split = "train_valid"
  c.data.eval_split = "test"
  c.data.augmentation.crop_padding = 4
  c.data.augmentation.random_flip = True
  common.use_shared_data(c)

  c.eval.every_updates = 50
  c.eval.batch_size = 1000
  c.eval.params = ("last", "ema_0.9", "polyak")
  c.checkpoint.every_updates = 25
  c.logging.every_updates = 1
  return common.finish(c)
