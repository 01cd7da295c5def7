"""A tiny Fashion-MNIST experiment for the runner tests (not collected).

Used in-process (`get_config()`) and by the CLI
(`--config=tests/training/helpers_tiny_config.py:ARG`). ARG is a
comma-separated list of key=value among:
  updates (int, default 8), micro (per-device micro-batch, default 32),
  subset (examples per split, default 1024), calibrate (0 or 1, default 0:
  sigma = 1 and epsilon follows; 1: sigma calibrated to epsilon 3),
  reproducible (int seed, default -1: secret randomness from the OS; >= 0:
  config.dp.reproducible_seed, for runs that must match each other).
The data come from ../shared/data/fashion_mnist (the original files).
"""

from dpeq import paths
from dpeq.training import config as config_lib


def get_config(arg: str = ""):
  options = dict(updates=8, micro=32, subset=1024, calibrate=0,
                 reproducible=-1)
  for pair in filter(None, arg.split(",")):
    key, value = pair.split("=")
    options[key] = int(value)
  c = config_lib.base_config()
  c.seed = 3
  c.data.dataset = "fashion_mnist"
  c.data.source = "raw"
  raw_dir = paths.shared_data_dir("fashion_mnist")
  c.data.raw_dir = None if raw_dir is None else str(raw_dir)
  c.data.subset = options["subset"]
  c.model.name = "cnn_tramer"
  if options["reproducible"] >= 0:
    c.dp.reproducible_seed = options["reproducible"]
  # RDP keeps the per-step ledger and the calibration cheap.
  c.dp.accountant = "rdp"
  if options["calibrate"]:
    c.dp.noise_multiplier = None
    c.dp.target_epsilon = 3.0
  else:  # sigma and T given: epsilon follows
    c.dp.noise_multiplier = 1.0
    c.dp.target_epsilon = None
  c.training.num_updates = options["updates"]
  c.training.expected_batch_size = 128
  c.training.micro_batch_size = options["micro"]
  c.training.augmult = 2
  c.data.augmentation.random_flip = True
  c.training.optimizer.learning_rate = 1.0
  c.training.optimizer.momentum = 0.9
  c.eval.every_updates = 4
  c.eval.batch_size = 256
  c.checkpoint.every_updates = 2
  c.checkpoint.keep = 2
  c.logging.tensorboard = False
  c.logging.progress_bar = False
  return c


def override(config, **fields):
  """Sets fields named with "__" for "." (e.g. data__classes=(1, 2))."""
  for name, value in fields.items():
    *parents, leaf = name.split("__")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
