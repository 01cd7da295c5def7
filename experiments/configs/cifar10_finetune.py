"""Fine-tuning from a checkpoint on data at hand: CIFAR-10, public 0-4 -> private 5-9.

  python -m dpeq.train \
      --config=experiments/configs/cifar10_finetune.py:stage=pretrain \
      --workdir=runs/cifar10_finetune/pretrain_eq_tramer_cnn_d1
  python -m dpeq.train \
      --config=experiments/configs/cifar10_finetune.py:stage=finetune,eps=3 \
      --workdir=runs/cifar10_finetune/finetune_eps3

De et al.'s headline setting (pretrain without privacy on public data,
fine-tune with DP on the private data) shown end to end with the data here,
since no ImageNet weights exist offline. CIFAR-10 is split by class: classes
0-4 (airplane, automobile, bird, cat, deer) play the PUBLIC data, classes 5-9
(dog, frog, horse, ship, truck) the PRIVATE data; the two share no example.

Arguments (defaults first):
  stage  pretrain | finetune | finetune_head | scratch
         pretrain: non-private, classes 0-4 (train_valid), evaluated on the
           test images of classes 0-4;
         finetune: private on classes 5-9, all parameters, starting from
           the pretraining run's released last parameters with a fresh
           classifier (finetune.init_from, by default
           runs/cifar10_finetune/pretrain_<model>, where
           experiments/reproduce/cifar10_finetune.py puts it);
         finetune_head: the same, only the classifier trained (clipped,
           noised; the noise dimension is the classifier's);
         scratch: private on classes 5-9 from the model's initialisation
           (the baseline at the same epsilon and budget).
  eps    3 | 1 (private stages).
  model  eq_tramer_cnn_d1 | cnn_tramer.

The guarantee of a private stage covers the private classes; the public
pretraining data needs none. Every private stage: Poisson sampling over the
25,000 training images of classes 5-9, delta 1e-5, PLD, K = 1 with random
crops and flips, Tramer & Boneh's SGD (momentum 0.9, learning rate 4, clip
norm 0.1), 400 updates of expected batch 512, sigma calibrated to eps.
"""

from dpeq.training import config as config_lib
from experiments.configs import common

STAGES = ("pretrain", "finetune", "finetune_head", "scratch")
EPSILONS = (3, 1)
MODELS = ("eq_tramer_cnn_d1", "cnn_tramer")
PUBLIC_CLASSES = (0, 1, 2, 3, 4)
PRIVATE_CLASSES = (5, 6, 7, 8, 9)
PRETRAIN_WORKDIR = "runs/cifar10_finetune/pretrain_{model}"
EXPERIMENTS = tuple(["stage=pretrain"] + [
    f"stage={stage},eps={eps}" for stage in STAGES[1:] for eps in EPSILONS])
_MODEL = {"eq_tramer_cnn_d1": ("eq_tramer_cnn", {"group": "D1"}),
          "cnn_tramer": ("cnn_tramer_cifar10", {})}


def get_config(arg: str = ""):
  """One stage of the pretrain -> private fine-tune experiment."""
  args = common.parse_arg(
      arg, options={"stage": STAGES, "eps": EPSILONS, "model": MODELS},
      defaults={"stage": "finetune", "eps": 3, "model": "eq_tramer_cnn_d1"},
      config_name="cifar10_finetune.py")
  stage = args["stage"]
  c = config_lib.base_config()
  name, kwargs = _MODEL[args["model"]]
  c.model.name = name
  for key, value in kwargs.items():
    c.model.kwargs[key] = value

  c.training.micro_batch_size = 128
  c.training.optimizer.learning_rate = 4.0
  c.training.optimizer.momentum = 0.9
  c.dp.l2_clip_norm = 0.1
  if stage == "pretrain":
    c.dp.non_private = True
    c.dp.noise_multiplier = None
    c.dp.target_epsilon = None
    c.training.expected_batch_size = 256
    c.training.num_updates = 1000
    c.data.classes = PUBLIC_CLASSES
  else:
    c.dp.target_epsilon = float(args["eps"])
    c.dp.noise_multiplier = None
    c.training.expected_batch_size = 512
    c.training.num_updates = 400
    c.data.classes = PRIVATE_CLASSES
    if stage != "scratch":
      c.finetune.init_from = PRETRAIN_WORKDIR.format(model=args["model"])
      c.finetune.replace_classifier = True
      c.finetune.trainable = "classifier" if stage == "finetune_head" else "all"

  common.cifar10_data(c)

  c.eval.every_updates = 0
  c.eval.batch_size = 500
  c.checkpoint.every_updates = 50
  c.logging.every_updates = 10
  return common.finish(c)
