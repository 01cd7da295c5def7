"""The CLI stops on config mistakes with a message, never a traceback."""

import subprocess

import helpers_runner
import pytest
from absl import flags
from ml_collections import config_flags

from dpeq import paths
from dpeq.training import config as config_lib

# dpeq.train.CONFIG_ERROR_EXIT_STATUS (not imported: dpeq.train defines
# global absl flags at import).
CONFIG_ERROR_EXIT_STATUS = 2

# (override of the tiny config, fragment of the message)
BAD_OVERRIDES = [
    ("--config.dp.delta=1.5", "config.dp.delta=1.5: must lie strictly"),
    ("--config.model.name=resnet1000", "config.model.name='resnet1000'"),
    ("--config.dp.epsilon=3", "override names a field that does not exist"),
    ("--config.training.augmult=two", "--config.training.augmult=two"),
]


def _run(workdir, *overrides, config=None):
  command = helpers_runner.cli_command(workdir, "", *overrides)
  if config is not None:
    command[3] = f"--config={config}"
  return subprocess.run(command, cwd=paths.REPO_ROOT, capture_output=True,
                        text=True, env=helpers_runner.cli_env(),
                        check=False)


@pytest.mark.parametrize("override,fragment", BAD_OVERRIDES,
                         ids=[b[0] for b in BAD_OVERRIDES])
def test_bad_override_exits_with_the_message(tmp_path, override, fragment):
  result = _run(tmp_path / "run", override)
  assert result.returncode == CONFIG_ERROR_EXIT_STATUS, result.stderr
  assert fragment in result.stderr
  assert "Traceback" not in result.stderr + result.stdout
  assert not (tmp_path / "run" / "checkpoints").exists()  # stopped early


def test_bad_config_file_argument_and_missing_file(tmp_path):
  result = _run(tmp_path / "run",
                config="experiments/configs/fashion_mnist.py:eps=5")
  assert result.returncode == CONFIG_ERROR_EXIT_STATUS, result.stderr
  assert "eps=5 is not a valid value" in result.stderr
  assert "Traceback" not in result.stderr
  result = _run(tmp_path / "run", config="experiments/configs/no.py")
  assert result.returncode == CONFIG_ERROR_EXIT_STATUS
  assert "no.py" in result.stderr and "Traceback" not in result.stderr


def test_required_overrides_reach_the_resolved_config(fashion_mnist_dir):
  del fashion_mnist_dir  # the tiny config reads ../shared/data/fashion_mnist
  argv = ["train",
          f"--config={paths.REPO_ROOT / helpers_runner.TINY_CONFIG}:calibrate=1",
          "--config.dp.target_epsilon=2.5",
          "--config.dp.delta=1e-6", "--config.training.num_updates=7",
          "--config.seed=5"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.dp.noise_multiplier is None
  assert (config.dp.target_epsilon, config.dp.delta) == (2.5, 1e-6)
  assert (config.training.num_updates, config.seed) == (7, 5)
  resolved = config_lib.resolve(config, num_examples=1024)
  assert resolved.training.num_updates == 7
  # sigma was calibrated to the overridden budget: it spends (almost) 2.5.
  assert config_lib.privacy_plan(resolved, num_examples=1024).epsilon() == (
      pytest.approx(2.5, rel=1e-3))
