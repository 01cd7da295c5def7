"""Fashion-MNIST with DP-SGD: small models that train on a 2-core CPU.

  --config=experiments/configs/fashion_mnist.py                  (the default)
  --config=experiments/configs/fashion_mnist.py:model=cnn_tramer,eps=1

Arguments (defaults first):
  model  eq_tramer_cnn | eq_cnn | cnn_tramer | resnet9 | eq_resnet9_lean
         eq_tramer_cnn: Tramer & Boneh's CNN made equivariant to the
         horizontal mirror (group D1) at Tramer's widths, 14,122 params; the
         default run (`make train`), sized to ~15 min on an idle 2-core CPU
         (the design and its batch size come out of the ablation in
         experiments/results/fashion_mnist_ablation.md);
         eq_cnn: a small C4-equivariant CNN at Hoelzl et al.'s width rule;
         cnn_tramer: the end-to-end CNN of Tramer & Boneh 2021 (26k params);
         resnet9: a narrow ResNet-9, layout (16, 32, 64);
         eq_resnet9_lean: dpeq.models.eq_resnet9_lean D1 (ResNet-9's
         channels (16, 32, 64) as mirror-regular fields), the images
         zero-padded to 32x32 so that its three pools keep the grid's
         mirror symmetry;
  eps    3 | 1 | 2 | 8.

All runs: Poisson sampling over the 60,000 training images (train_valid),
evaluation on the 10,000 test images, delta 1e-5, PLD accounting, no
augmentation (K = 1), a fixed number of updates with the noise multiplier
calibrated to eps, EMA 0.999 and Polyak averages evaluated beside the last
parameters. cnn_tramer and eq_tramer_cnn use Tramer & Boneh's optimizer
(SGD with momentum 0.9, learning rate 4, clip norm 0.1); cnn_tramer at their
expected batch 2048 for ~20 epochs (600 updates; they train 40), eq_tramer_cnn
at expected batch 512 (at a fixed CPU budget the mirror-equivariant network
gains from the 4x more updates, Tramer's CNN loses: ablation). The
C4-equivariant CNN and the ResNet-9 use De et al.'s style (plain SGD,
constant learning rate 2, clip norm 1) with expected batch 512;
eq_resnet9_lean takes its CIFAR-10 recipe (learning rate 4, expected batch
1024).

Data: read from ../shared/data/fashion_mnist (the original files) when that
folder exists, otherwise downloaded through tfds.
"""

from dpeq.training import config as config_lib
from experiments.configs import common

MODELS = ("eq_tramer_cnn", "eq_cnn", "cnn_tramer", "resnet9",
          "eq_resnet9_lean")
EPSILONS = (3, 1, 2, 8)

# Per model: expected batch, updates, optimizer, clip norm, micro-batch. The
# sizes keep each run within about 20 minutes on an idle 2-core CPU (per
# example, eq_cnn's clipped gradient costs ~10x cnn_tramer's, resnet9's ~20x).
_RECIPES = {
    "cnn_tramer": dict(
        expected_batch_size=2048, num_updates=600, learning_rate=4.0,
        momentum=0.9, l2_clip_norm=0.1, micro_batch_size=512,
    ),
    "resnet9": dict(
        expected_batch_size=512, num_updates=200, learning_rate=2.0,
        momentum=0.0, l2_clip_norm=1.0, micro_batch_size=256,
    ),
    # Tramer's optimizer at batch 512; 2200 updates ~14 min idle.
    "eq_tramer_cnn": dict(
        expected_batch_size=512, num_updates=2200, learning_rate=4.0,
        momentum=0.9, l2_clip_norm=0.1, micro_batch_size=128,
    ),
    "eq_cnn": dict(
        expected_batch_size=512, num_updates=300, learning_rate=2.0,
        momentum=0.0, l2_clip_norm=1.0, micro_batch_size=256,
    ),
    "eq_resnet9_lean": dict(
        expected_batch_size=1024, num_updates=200, learning_rate=4.0,
        momentum=0.0, l2_clip_norm=1.0, micro_batch_size=128,
    ),
}
_MODEL_KWARGS = {
    "cnn_tramer": {},
    "resnet9": {"layout": (16, 32, 64)},
    "eq_cnn": {"group": "C4"},
    "eq_tramer_cnn": {"group": "D1"},
    "eq_resnet9_lean": {"group": "D1", "input_padding": 2},
}

# The config arguments of the runs experiments/reproduce makes.
EXPERIMENTS = tuple(
    f"model={model},eps={eps}" for model in MODELS for eps in (1, 2, 3, 8)
)


def get_config(arg: str = ""):
  """A Fashion-MNIST run for the requested model and epsilon."""
  args = common.parse_arg(
      arg,
      options={"model": MODELS, "eps": EPSILONS},
      defaults={"model": "eq_tramer_cnn", "eps": 3},
      config_name="fashion_mnist.py",
  )
  recipe = _RECIPES[args["model"]]
  c = config_lib.base_config()
  c.seed = 0

  c.dp.target_epsilon = float(args["eps"])
  c.dp.noise_multiplier = None
  c.dp.delta = 1e-5
  c.dp.l2_clip_norm = recipe["l2_clip_norm"]
  c.dp.accountant = "pld"
  c.dp.sampling = "poisson"

  c.training.expected_batch_size = recipe["expected_batch_size"]
  c.training.micro_batch_size = recipe["micro_batch_size"]
  c.training.num_updates = recipe["num_updates"]
  c.training.augmult = 1
  c.training.optimizer.name = "sgd"
  c.training.optimizer.learning_rate = recipe["learning_rate"]
  c.training.optimizer.momentum = recipe["momentum"]
  c.training.optimizer.weight_decay = 0.0
  c.training.lr_schedule.name = "constant"
  c.training.ema_decays = (0.999,)
  c.training.polyak = True

  c.model.name = args["model"]
  for key, value in _MODEL_KWARGS[args["model"]].items():
    c.model.kwargs[key] = value

  c.data.dataset = "fashion_mnist"
  c.data.train_split = "train_valid"
  c.data.eval_split = "test"
  common.use_shared_data(c)

  # Eight evaluations along the run; the privacy ledger (a PLD, ~0.5 s) and
  # a checkpoint every 25 / 100 updates keep their cost a few % of the run.
  c.eval.every_updates = max(1, recipe["num_updates"] // 8)
  c.eval.batch_size = 1000
  c.eval.params = ("last", "ema_0.999", "polyak")
  c.checkpoint.every_updates = 100
  c.logging.every_updates = 25
  return common.finish(c)
