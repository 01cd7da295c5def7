"""De et al. 2022: NF-ResNet-50 trained from scratch on ImageNet at eps 8.

  --config=experiments/configs/imagenet_nf_resnet50.py

No arguments. Recipe (De et al.; jax_privacy's shipped config): (8, 8e-7)-DP
with Poisson sampling, expected batch 16384 over the 1,271,167 training
images (the official train set minus 10,000 held out), augmentation
multiplicity 4 (reflect-pad 4, random 224x224 crop, random horizontal flip),
clip norm 1 with rescaling to unit norm, noise multiplier 2.5, plain SGD with
constant learning rate 4, no weight decay, EMA 0.99999, RDP accounting; the
accountant picks the number of updates (jax_privacy: 71,589). Paper top-1 on
the validation set: 32.4 %. ImageNet cannot be downloaded by tfds: point
data.manual_dir at the folder with ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (or data.data_dir at a prepared tfds directory).
"""

from dpeq.training import config as config_lib
from experiments.configs import common

# The config arguments of the paper's runs.
EXPERIMENTS = ("",)


def get_config(arg: str = ""):
  """NF-ResNet-50 on ImageNet at (8, 8e-7)-DP."""
  common.parse_arg(arg, options={}, defaults={},
                   config_name="imagenet_nf_resnet50.py")
  c = config_lib.base_config()
  c.seed = 0

  c.dp.target_epsilon = 8.0
  c.dp.noise_multiplier = 2.5
  c.dp.delta = 8e-7
  c.dp.l2_clip_norm = 1.0
  c.dp.rescale_to_unit_norm = True
  c.dp.accountant = "rdp"
  c.dp.sampling = "poisson"

  c.training.expected_batch_size = 16384
  c.training.micro_batch_size = 32
  c.training.num_updates = None
  c.training.augmult = 4
  c.training.optimizer.name = "sgd"
  c.training.optimizer.learning_rate = 4.0
  c.training.optimizer.momentum = 0.0
  c.training.optimizer.weight_decay = 0.0
  c.training.lr_schedule.name = "constant"
  c.training.ema_decays = (0.99999,)
  c.training.polyak = True

  c.model.name = "nf_resnet50"

  c.data.dataset = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.augmentation.crop_padding = 4
  c.data.augmentation.random_flip = True

  c.eval.every_updates = 2500
  c.eval.batch_size = 500
  c.eval.params = ("last", "ema_0.99999", "polyak")
  c.checkpoint.every_updates = 500
  c.logging.every_updates = 10
  return common.finish(c)
