"""Tests for dpeq.training.config: schema, validation messages, resolution."""

import math

import dp_accounting
import helpers_tiny_config
import pytest

from dpeq.training import config as config_lib


def _config(**overrides):
  """base_config() with overrides named with "__" for "."."""
  return helpers_tiny_config.override(config_lib.base_config(), **overrides)


def _rdp_epsilon(*, sigma, q, steps, delta):
  """Independent epsilon of Poisson-sampled Gaussian DP-SGD (dp_accounting)."""
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          q, dp_accounting.GaussianDpEvent(sigma)), steps)
  accountant = dp_accounting.rdp.RdpAccountant()
  return accountant.compose(event).get_epsilon(delta)


def _shuffle_epsilon(*, sigma, epochs, delta):
  """Independent epsilon of `epochs` Gaussian mechanisms, replace-one."""
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.GaussianDpEvent(sigma / 2), epochs)
  return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)


def test_base_config_is_valid_and_complete():
  config = config_lib.base_config()
  config_lib.validate(config)
  for field in ("seed", "dp.noise_multiplier", "dp.target_epsilon", "dp.delta",
                "dp.l2_clip_norm", "dp.accountant", "dp.sampling",
                "dp.rescale_to_unit_norm", "dp.non_private",
                "dp.reproducible_seed", "data.allow_eval_on_training_data",
                "training.expected_batch_size", "training.micro_batch_size",
                "training.num_updates", "training.augmult",
                "training.optimizer.nesterov", "training.lr_schedule.scales",
                "training.ema_decays", "training.polyak", "model.kwargs",
                "data.raw_dir", "data.subset",
                "data.augmentation.view0_identity", "eval.params",
                "checkpoint.keep", "logging.progress_bar",
                "distributed.coordinator_address"):
    node = config
    for part in field.split("."):
      assert part in node, field
      node = node[part]


# Each malformed config and a fragment its message must contain: the field
# and what to change. None of them may reach JAX.
MALFORMED = [
    (dict(model__name="resnet1000"), "config.model.name='resnet1000'"),
    (dict(dp__target_epsilon=-1.0), "config.dp.target_epsilon=-1.0"),
    (dict(dp__delta=1.0), "config.dp.delta=1.0: must lie strictly between"),
    (dict(dp__delta=0.0), "config.dp.delta=0.0"),
    (dict(training__micro_batch_size=48), "must divide"),
    (dict(training__micro_batch_size=512), "must not exceed"),
    (dict(training__optimizer__name="adagrad_xyz"),
     "config.training.optimizer.name='adagrad_xyz'"),
    (dict(dp__noise_multiplier=0.0), "dp.non_private=True"),
    (dict(training__augmult=0), "config.training.augmult=0: must be an"),
    (dict(dp__accountant="moments"), "config.dp.accountant='moments'"),
    (dict(dp__sampling="fixed"), "config.dp.sampling='fixed'"),
    (dict(data__source="raw", data__raw_dir="/nonexistent/fmnist"),
     "config.data.raw_dir='/nonexistent/fmnist': does not exist"),
    (dict(data__dataset="cifar100", data__source="raw"),
     "config.data.raw_dir=None: must point"),
    (dict(data__eval_split="valid"),
     "config.data.eval_split='valid': overlaps data.train_split"),
    (dict(data__train_split="train", data__eval_split="train"),
     "data.allow_eval_on_training_data=True"),
    (dict(dp__reproducible_seed=-1), "config.dp.reproducible_seed=-1"),
    (dict(data__dataset="cifar11"), "config.data.dataset='cifar11'"),
    (dict(model__kwargs__depth=16), "config.model.kwargs.depth=16: is not an"),
    (dict(training__optimizer__name="adam",
          training__optimizer__momentum=0.9),
     "config.training.optimizer ('adam'): momentum"),
    (dict(dp__l2_clip_norm=0.0), "config.dp.l2_clip_norm=0.0"),
    (dict(dp__noise_multiplier=None, training__num_updates=None),
     "set one of them"),
    (dict(dp__non_private=True, training__num_updates=None),
     "config.training.num_updates=None: must be set when dp.non_private"),
    (dict(eval__params=("last", "ema_0.9")),
     "add its decay to training.ema_decays"),
    (dict(training__lr_schedule__name="step"),
     "config.training.lr_schedule.name='step'"),
    (dict(training__lr_schedule__name="piecewise",
          training__lr_schedule__boundaries=(10, 20),
          training__lr_schedule__scales=(0.1,)),
     "config.training.lr_schedule ('piecewise')"),
    (dict(training__expected_batch_size=0),
     "config.training.expected_batch_size=0: must be a positive integer"),
    (dict(distributed__num_processes=2), "config.distributed.coordinator"),
    (dict(distributed__process_id=3), "config.distributed.process_id=3"),
    # Checked once, by the privacy plan, in config terms.
    (dict(dp__l2_clip_norm=float("inf")),
     "config.dp.l2_clip_norm=inf: must be a finite number > 0"),
    (dict(dp__noise_multiplier=float("inf")),
     "config.dp.noise_multiplier=inf"),
    (dict(dp__noise_multiplier=0.0), "or set dp.non_private=True"),
    (dict(data__classes=(5, 5)), "config.data.classes=(5, 5)"),
    (dict(finetune__trainable="head"), "config.finetune.trainable='head'"),
    (dict(finetune__trainable="classifier",
          training__per_example_grads="ghost"),
     "must be 'vmap' with finetune.trainable='classifier'"),
]


@pytest.mark.parametrize("overrides,fragment", MALFORMED,
                         ids=[m[1][:40] for m in MALFORMED])
def test_malformed_config_gives_specific_message(overrides, fragment):
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(_config(**overrides))
  assert fragment in str(info.value)
  assert isinstance(info.value, ValueError)


def test_eval_on_training_data_only_when_allowed():
  for train, evaluate, overlaps in (
      ("train", "valid", False), ("train_valid", "test", False),
      ("train", "test", False), ("train_valid", "valid", True),
      ("train_valid", "train", True), ("valid", "train_valid", True),
      ("test", "test", True)):
    config = _config(data__train_split=train, data__eval_split=evaluate,
                     data__allow_eval_on_training_data=True)
    config_lib.validate(config)
    assert config_lib.eval_overlaps_training(config) == overlaps, (train,
                                                                   evaluate)
    if overlaps:
      config.data.allow_eval_on_training_data = False
      with pytest.raises(config_lib.ConfigError, match="overlaps"):
        config_lib.validate(config)


def test_unknown_field_is_rejected_with_its_name():
  config = config_lib.base_config()
  config.training.learning_rate = 0.1  # belongs to training.optimizer
  with pytest.raises(config_lib.ConfigError, match="config.training.learning_"
                     "rate is not a field"):
    config_lib.validate(config)
  # model.kwargs holds the model's own options.
  config = config_lib.base_config()
  config.model.name = "resnet9"
  config.model.kwargs.layout = (16, 32, 64)
  config_lib.validate(config)


def test_batch_larger_than_dataset_is_rejected_by_resolve():
  config = _config(training__expected_batch_size=1024,
                   training__micro_batch_size=64)
  with pytest.raises(config_lib.ConfigError,
                     match="exceeds the 1000 training examples"):
    config_lib.resolve(config, num_examples=1000)


def test_resolve_calibrates_sigma_to_the_target_epsilon():
  # RDP keeps this fast; the PLD path is exercised by the budget test below.
  config = _config(dp__noise_multiplier=None, training__num_updates=50,
                   dp__target_epsilon=2.0, dp__delta=1e-5,
                   training__expected_batch_size=256, dp__accountant="rdp")
  resolved = config_lib.resolve(config, num_examples=6000)
  sigma = resolved.dp.noise_multiplier
  assert config.dp.noise_multiplier is None  # input untouched
  assert resolved.training.num_updates == 50
  eps = _rdp_epsilon(sigma=sigma, q=256 / 6000, steps=50, delta=1e-5)
  assert eps <= 2.0 + 1e-6
  # Smallest such sigma: 2% less noise overshoots the target.
  assert _rdp_epsilon(sigma=0.98 * sigma, q=256 / 6000, steps=50,
                      delta=1e-5) > 2.0
  assert config_lib.privacy_plan(resolved, num_examples=6000).epsilon() == (
      pytest.approx(eps, rel=1e-3))


def test_resolve_calibrates_the_largest_number_of_updates():
  config = _config(dp__noise_multiplier=1.5, training__num_updates=None,
                   dp__target_epsilon=1.0, training__expected_batch_size=256,
                   dp__accountant="rdp")
  resolved = config_lib.resolve(config, num_examples=6000)
  steps = resolved.training.num_updates
  assert resolved.dp.noise_multiplier == 1.5
  kwargs = dict(sigma=1.5, q=256 / 6000, delta=1e-5)
  assert _rdp_epsilon(steps=steps, **kwargs) <= 1.0 + 1e-6
  assert _rdp_epsilon(steps=steps + 1, **kwargs) > 1.0 - 1e-6


def test_resolve_accounts_shuffled_batches_per_epoch():
  # 6000 / 250 = 24 updates per epoch; each epoch is one Gaussian mechanism
  # with multiplier sigma / 2 (replace-one), no amplification.
  config = _config(dp__noise_multiplier=20.0, training__num_updates=None,
                   dp__target_epsilon=2.0, dp__sampling="shuffle",
                   dp__accountant="rdp", training__expected_batch_size=250,
                   training__micro_batch_size=50)
  resolved = config_lib.resolve(config, num_examples=6000)
  steps = resolved.training.num_updates
  assert steps % 24 == 0
  epochs = steps // 24
  assert _shuffle_epsilon(sigma=20.0, epochs=epochs, delta=1e-5) <= 2.0
  assert _shuffle_epsilon(sigma=20.0, epochs=epochs + 1, delta=1e-5) > 2.0


def test_resolve_calibrates_sigma_for_shuffled_batches():
  # 48 updates = 2 epochs of 24: two Gaussians at sigma / 2 (replace-one).
  config = _config(dp__noise_multiplier=None, training__num_updates=48,
                   dp__target_epsilon=4.0, dp__sampling="shuffle",
                   dp__accountant="rdp", training__expected_batch_size=250,
                   training__micro_batch_size=50)
  sigma = config_lib.resolve(config, num_examples=6000).dp.noise_multiplier
  assert _shuffle_epsilon(sigma=sigma, epochs=2, delta=1e-5) <= 4.0
  assert _shuffle_epsilon(sigma=sigma * 0.99, epochs=2, delta=1e-5) > 4.0


def test_resolve_rejects_explicit_settings_over_budget():
  config = _config(dp__noise_multiplier=1.5, training__num_updates=100,
                   dp__target_epsilon=1.0)
  with pytest.raises(config_lib.ConfigError, match="is exceeded"):
    config_lib.resolve(config, num_examples=6000)
  config.dp.target_epsilon = None  # accept whatever it spends
  resolved = config_lib.resolve(config, num_examples=6000)
  assert config_lib.privacy_plan(resolved, num_examples=6000).epsilon() > 1.0


def test_non_private_run_has_zero_noise_and_infinite_epsilon():
  config = _config(dp__non_private=True, dp__noise_multiplier=None,
                   training__num_updates=7)
  resolved = config_lib.resolve(config, num_examples=6000)
  assert resolved.dp.noise_multiplier == 0.0
  assert resolved.training.num_updates == 7
  assert math.isinf(config_lib.privacy_plan(resolved, num_examples=6000).epsilon())


def test_optional_fields_keep_their_type_for_command_line_overrides():
  config = config_lib.base_config()
  optional = {("dp", "noise_multiplier"): float, ("dp", "target_epsilon"): float,
              ("training", "num_updates"): int, ("data", "subset"): int,
              ("data", "raw_dir"): str,
              ("distributed", "coordinator_address"): str}
  for (group, field), field_type in optional.items():
    config[group][field] = None  # what a config file may do
    assert config[group].get_type(field) is field_type, (group, field)
