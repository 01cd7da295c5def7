"""CIFAR-10 with DP-SGD at a budget a 2-core CPU runs (one hour per run).

  --config=experiments/configs/cifar10.py                   (eq_resnet9 C4)
  --config=experiments/configs/cifar10.py:model=resnet9,eps=1

Arguments (defaults first):
  model  eq_resnet9_c4 | eq_resnet9_d4 | resnet9 | cnn_tramer |
         eq_tramer_cnn_d1 | eq_tramer_cnn_c4 | eq_tramer_cnn_d4 |
         eq_resnet9_lean_d1 | eq_resnet9_lean_c4 | eq_resnet9_lean_d4
         eq_resnet9_*: Hölzl et al.'s Equivariant-ResNet-9, layout (16, 32,
         64) fields by their width rule, last stage restricted to the
         subgroup of half the order;
         resnet9: the conventional ResNet-9 at the same layout (16, 32, 64)
         channels (the paper's is (64, 128, 256), ~16x the compute);
         cnn_tramer: Tramèr & Boneh's end-to-end CIFAR-10 CNN (551k
         params, tanh; they report 59.2% at eps 3);
         eq_tramer_cnn_*: dpeq.models.eq_tramer_cnn (Tramèr's small CNN made
         equivariant at Tramèr's widths), on 32x32x3;
         eq_resnet9_lean_*: dpeq.models.eq_resnet9_lean, the Eq-ResNet-9
         at resnet9's channels (16, 32, 64) (same cost per example, 1/|G|
         of the convolution parameters);
  eps    3 | 1 | 2 | 8.

All runs: Poisson sampling over the 50,000 training images (train_valid),
evaluation on the 10,000 test images, delta 1e-5, PLD accounting, one view
per example (K = 1: K views cost K times the compute on a CPU) with random
crops (reflect-pad 4) and horizontal flips, plain SGD at a constant learning
rate 2 and clip norm 1 (De et al.'s style; the tanh CNNs take Tramèr &
Boneh's SGD with momentum 0.9, learning rate 4, clip norm 0.1), EMA 0.999
and Polyak averages evaluated beside the last parameters, a fixed number of
updates (sized per model in experiments/reproduce/cifar10.py) with the noise
multiplier calibrated to eps. Hölzl et al.'s full recipe (batch 8192, K = 4, 2160
updates) is experiments/configs/holzl_resnet9.py.

Data: the original python batches in ../shared/data/cifar10 when that
folder exists (checked against its MD5SUMS), otherwise tfds.
"""

from dpeq.training import config as config_lib
from experiments.configs import common

MODELS = ("eq_resnet9_c4", "eq_resnet9_d4", "resnet9", "cnn_tramer",
          "eq_tramer_cnn_d1", "eq_tramer_cnn_c4", "eq_tramer_cnn_d4",
          "eq_resnet9_lean_d1", "eq_resnet9_lean_c4", "eq_resnet9_lean_d4")
EPSILONS = (3, 1, 2, 8)
# The config arguments of the CIFAR-10 table.
EXPERIMENTS = tuple(
    f"model={model},eps={eps}" for model in MODELS for eps in (1, 2, 3, 8))
_MODEL = {
    "eq_resnet9_c4": ("eq_resnet9", {"group": "C4", "layout": (16, 32, 64)}),
    "eq_resnet9_d4": ("eq_resnet9", {"group": "D4", "layout": (16, 32, 64)}),
    "resnet9": ("resnet9", {"layout": (16, 32, 64)}),
    "cnn_tramer": ("cnn_tramer_cifar10", {}),
    "eq_tramer_cnn_d1": ("eq_tramer_cnn", {"group": "D1"}),
    "eq_tramer_cnn_c4": ("eq_tramer_cnn", {"group": "C4"}),
    "eq_tramer_cnn_d4": ("eq_tramer_cnn", {"group": "D4"}),
    "eq_resnet9_lean_d1": ("eq_resnet9_lean", {"group": "D1"}),
    "eq_resnet9_lean_c4": ("eq_resnet9_lean", {"group": "C4"}),
    "eq_resnet9_lean_d4": ("eq_resnet9_lean", {"group": "D4"}),
}
# Tramèr & Boneh's optimizer for their tanh networks.
_TRAMER_OPTIMIZER = ("cnn_tramer", "eq_tramer_cnn_d1", "eq_tramer_cnn_c4",
                     "eq_tramer_cnn_d4")


def get_config(arg: str = ""):
  """A CIFAR-10 run for the requested model and epsilon."""
  args = common.parse_arg(
      arg, options={"model": MODELS, "eps": EPSILONS},
      defaults={"model": "eq_resnet9_c4", "eps": 3},
      config_name="cifar10.py")
  # base_config() already holds the rest of the recipe: delta 1e-5, clip
  # norm 1, PLD, Poisson, K = 1, plain SGD (no momentum, weight decay or
  # schedule), EMA 0.999 and Polyak.
  c = config_lib.base_config()
  c.dp.target_epsilon = float(args["eps"])
  c.dp.noise_multiplier = None
  c.training.expected_batch_size = 1024
  c.training.micro_batch_size = 128
  c.training.num_updates = 200
  c.training.optimizer.learning_rate = 2.0

  if args["model"] in _TRAMER_OPTIMIZER:
    c.training.optimizer.learning_rate = 4.0
    c.training.optimizer.momentum = 0.9
    c.dp.l2_clip_norm = 0.1

  name, kwargs = _MODEL[args["model"]]
  c.model.name = name
  for key, value in kwargs.items():
    c.model.kwargs[key] = value

  common.cifar10_data(c)

  c.eval.every_updates = 50
  c.eval.batch_size = 500
  c.checkpoint.every_updates = 25
  c.logging.every_updates = 5
  return common.finish(c)
