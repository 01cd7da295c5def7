"""Every experiment config loads, validates, and builds its model."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from dpeq import models, paths
from dpeq.data import specs
from dpeq.training import config as config_lib

CONFIG_DIR = paths.REPO_ROOT / "experiments" / "configs"
CONFIG_FILES = sorted(
    p for p in CONFIG_DIR.glob("*.py") if p.name not in ("__init__.py", "common.py")
)
# Config files import `experiments.configs.common`, as from the repo root.
if str(paths.REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(paths.REPO_ROOT))


def _load(path):
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _all_configs():
  """(file name, argument, config) for the default and every listed run."""
  out = []
  for path in CONFIG_FILES:
    module = _load(path)
    args = dict.fromkeys(("",) + tuple(getattr(module, "EXPERIMENTS", ())))
    for arg in args:
      out.append((path.name, arg, module.get_config(arg)))
  return out


@pytest.fixture(scope="module")
def all_configs():
  return _all_configs()


def test_the_expected_families_exist():
  names = {p.name for p in CONFIG_FILES}
  assert {"fashion_mnist.py", "cifar10_wrn.py", "imagenet_nf_resnet50.py",
          "cifar100_finetune.py", "holzl_resnet9.py"} <= names
  for path in CONFIG_FILES:
    assert getattr(_load(path), "EXPERIMENTS", None), f"{path.name}: EXPERIMENTS"


def test_every_config_validates(all_configs):
  assert len(all_configs) >= 30
  for name, arg, config in all_configs:
    config_lib.validate(config)  # raises ConfigError naming the field
    assert config.model.name in models.available(), (name, arg)


def test_every_model_and_kwargs_are_accepted_by_create(all_configs):
  seen = set()
  for name, arg, config in all_configs:
    spec = specs.get_spec(config.data.dataset)
    kwargs = config.model.kwargs.to_dict()
    key = (config.model.name, repr(sorted(kwargs.items())), spec.image_shape,
           spec.num_classes)
    if key in seen:
      continue
    seen.add(key)
    model = models.create(config.model.name, num_classes=spec.num_classes,
                          **kwargs)
    images = jax.ShapeDtypeStruct((1, *spec.image_shape), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)
    logits = jax.eval_shape(model.apply, params, images)
    assert logits.shape == (1, spec.num_classes), (name, arg)


def test_paper_recipes_are_encoded(all_configs):
  by_run = {(name, arg): config for name, arg, config in all_configs}
  wrn = by_run[("cifar10_wrn.py", "eps=1")]
  assert (wrn.dp.noise_multiplier, wrn.training.num_updates) == (10.0, 875)
  assert (wrn.training.expected_batch_size, wrn.training.augmult) == (4096, 16)
  assert by_run[("cifar10_wrn.py", "eps=8,depth=40")].model.kwargs.depth == 40
  imagenet = by_run[("imagenet_nf_resnet50.py", "")]
  assert (imagenet.dp.delta, imagenet.training.expected_batch_size,
          imagenet.training.augmult, imagenet.dp.noise_multiplier,
          imagenet.training.optimizer.learning_rate) == (8e-7, 16384, 4, 2.5, 4.0)
  holzl = by_run[("holzl_resnet9.py", "group=SO2,eps=2")]
  assert holzl.model.kwargs.group == "SO2" and holzl.dp.target_epsilon == 2.0
  assert holzl.data.augmentation.view0_identity and holzl.dp.l2_clip_norm == 2.0
  assert by_run[("holzl_resnet9.py", "group=D4,eps=8,dataset=imagenette")
                ].dp.delta == 8e-7
  default = by_run[("fashion_mnist.py", "")]
  assert default.model.name.startswith("eq_") and default.dp.target_epsilon == 3.0


def test_unknown_or_bad_arguments_list_the_valid_ones():
  module = _load(CONFIG_DIR / "cifar10_wrn.py")
  with pytest.raises(config_lib.ConfigError, match=r"unknown config argument "
                     r"'width'.*valid: eps in \{1, 2, 4, 8\}"):
    module.get_config("width=8")
  with pytest.raises(config_lib.ConfigError, match="use one of 1, 2, 4, 8"):
    module.get_config("eps=3")
  with pytest.raises(config_lib.ConfigError, match="not key=value"):
    module.get_config("eps")
  holzl = _load(CONFIG_DIR / "holzl_resnet9.py")
  with pytest.raises(config_lib.ConfigError, match="applies only to"):
    holzl.get_config("model=resnet9,group=C8")
  imagenet = _load(CONFIG_DIR / "imagenet_nf_resnet50.py")
  with pytest.raises(config_lib.ConfigError, match="valid: no arguments"):
    imagenet.get_config("eps=4")


# ml_collections loads config files with the deprecated load_module().
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_loads_through_config_flags_with_overrides():
  """The CLI path: FILE.py:ARGS plus --config.a.b=v overrides."""
  argv = [
      "prog",
      f"--config={CONFIG_DIR / 'fashion_mnist.py'}:model=cnn_tramer,eps=1",
      "--config.seed=7",
      "--config.dp.target_epsilon=2.5",
      "--config.training.num_updates=20",
  ]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.model.name == "cnn_tramer"
  assert (config.seed, config.dp.target_epsilon) == (7, 2.5)
  assert config.training.num_updates == 20
  config_lib.validate(config)
