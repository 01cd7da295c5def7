"""Hölzl et al. 2023: (Equivariant-)ResNet-9 trained from scratch with DP-SGD.

  --config=experiments/configs/holzl_resnet9.py:group=D4,eps=2
  --config=experiments/configs/holzl_resnet9.py:group=SO2,eps=2
  --config=experiments/configs/holzl_resnet9.py:group=D4,eps=8,dataset=cifar100
  --config=experiments/configs/holzl_resnet9.py:model=resnet9,eps=2   (baseline)

Arguments (defaults first):
  model    eq_resnet9 | resnet9 (the conventional ResNet-9 of Klause et al.,
           layout (64, 128, 256), which takes no group);
  group    D4 | C4 | C8 | C16 | D8 | D16 | SO2 (their Table 4; eq_resnet9 only);
  eps      2 | 1 | 4 | 8;
  dataset  cifar10 | cifar100 | tiny_imagenet | imagenette.

Recipe (the paper and its code): Poisson sampling with expected batch 8192,
2160 updates (the noise multiplier is calibrated to eps), augmentation
multiplicity 4 with view 0 un-augmented and views 1..3 reflect-padded by 4,
randomly cropped and horizontally flipped, clip norm 2, plain SGD with
constant learning rate 2 (no momentum, weight decay or schedule), EMA 0.999
(evaluated alongside the last and Polyak-averaged parameters), RDP
accounting. The Equivariant-ResNet-9 uses layout (16, 32, 64) fields scaled
by the width rule and restricts its last stage to the subgroup of half the
order (SO(2): to invariant fields).

Per dataset: CIFAR-10 trains on all 50,000 images with delta 1e-5; CIFAR-100
(all 50,000), Tiny-ImageNet (90,000: 10,000 held out, as the paper's code)
and ImageNette (8,469: 1,000 held out) use delta 8e-7 as this project's
issue asks (the paper's public CIFAR-100 setup file states 1e-5). ImageNette
has fewer examples than the batch of 8192, so it uses an expected batch of
1024 (our choice; the paper does not state one).
"""

from dpeq.training import config as config_lib
from experiments.configs import common

GROUPS = ("D4", "C4", "C8", "C16", "D8", "D16", "SO2")
DATASETS = ("cifar10", "cifar100", "tiny_imagenet", "imagenette")
_TRAIN_SPLIT = {
    "cifar10": "train_valid",
    "cifar100": "train_valid",
    "tiny_imagenet": "train",
    "imagenette": "train",
}
_DELTA = {"cifar10": 1e-5}
_BATCH_SIZE = {"imagenette": 1024}

# The config arguments of the paper's runs: every group of Table 4 at eps 2;
# D4 at eps 1, 4 and 8; the other datasets at eps 8; the ResNet-9 baselines.
EXPERIMENTS = (
    tuple(f"group={group},eps=2" for group in GROUPS)
    + tuple(f"group=D4,eps={eps}" for eps in (1, 4, 8))
    + tuple(f"group=D4,eps=8,dataset={dataset}" for dataset in DATASETS[1:])
    + tuple(f"model=resnet9,eps={eps}" for eps in (1, 2, 4, 8))
)


def get_config(arg: str = ""):
  """(Equivariant-)ResNet-9 at the requested group, epsilon and dataset."""
  args = common.parse_arg(
      arg,
      options={
          "model": ("eq_resnet9", "resnet9"),
          "group": GROUPS,
          "eps": (1, 2, 4, 8),
          "dataset": DATASETS,
      },
      defaults={"model": "eq_resnet9", "group": None, "eps": 2,
                "dataset": "cifar10"},
      config_name="holzl_resnet9.py",
  )
  if args["model"] == "resnet9" and args["group"] is not None:
    raise config_lib.ConfigError(
        f"group={args['group']} applies only to model=eq_resnet9; drop it for "
        "the conventional model=resnet9."
    )
  dataset = args["dataset"]
  c = config_lib.base_config()
  c.seed = 0

  c.dp.target_epsilon = float(args["eps"])
  c.dp.noise_multiplier = None
  c.dp.delta = _DELTA.get(dataset, 8e-7)
  c.dp.l2_clip_norm = 2.0
  c.dp.rescale_to_unit_norm = False
  c.dp.accountant = "rdp"
  c.dp.sampling = "poisson"

  c.training.expected_batch_size = _BATCH_SIZE.get(dataset, 8192)
  c.training.micro_batch_size = 128
  c.training.num_updates = 2160
  c.training.augmult = 4
  c.training.optimizer.name = "sgd"
  c.training.optimizer.learning_rate = 2.0
  c.training.optimizer.momentum = 0.0
  c.training.optimizer.weight_decay = 0.0
  c.training.lr_schedule.name = "constant"
  c.training.ema_decays = (0.999,)
  c.training.polyak = True

  c.model.name = args["model"]
  if args["model"] == "eq_resnet9":
    c.model.kwargs.group = args["group"] or "D4"
    c.model.kwargs.layout = (16, 32, 64)
  else:
    c.model.kwargs.layout = (64, 128, 256)

  c.data.dataset = dataset
  c.data.train_split = _TRAIN_SPLIT[dataset]
  c.data.eval_split = "test"
  c.data.augmentation.crop_padding = 4
  c.data.augmentation.random_flip = True
  c.data.augmentation.view0_identity = True
  common.use_shared_data(c)

  c.eval.every_updates = 216
  c.eval.batch_size = 500
  c.eval.params = ("last", "ema_0.999", "polyak")
  c.checkpoint.every_updates = 100
  c.logging.every_updates = 1
  return common.finish(c)
