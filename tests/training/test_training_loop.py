"""End-to-end tests of dpeq.training.loop.train on a tiny Fashion-MNIST run."""

import json

import dp_accounting
import helpers_runner
import helpers_tiny_config
import numpy as np
import pytest

from dpeq.training import checkpointing, loop
from dpeq.training import config as config_lib

NUM_UPDATES = 8
NUM_EXAMPLES = 1024
EXPECTED_BATCH = 128


@pytest.fixture(scope="module")
def tiny_run(fashion_mnist_dir, tmp_path_factory):
  """One uninterrupted run: (workdir, the dict train() returned)."""
  workdir = tmp_path_factory.mktemp("loop_run")
  config = helpers_tiny_config.get_config(f"updates={NUM_UPDATES}")
  config.data.raw_dir = str(fashion_mnist_dir)
  config.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  final = loop.train(config, workdir=workdir)
  return workdir, final


def _independent_epsilon(steps: int) -> float:
  """RDP epsilon of Poisson-sampled Gaussian DP-SGD, from dp_accounting."""
  event = dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(
          EXPECTED_BATCH / NUM_EXAMPLES, dp_accounting.GaussianDpEvent(1.0)),
      steps)
  return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)


def test_training_records_every_step_once_and_loss_decreases(tiny_run):
  workdir, _ = tiny_run
  records = helpers_runner.records(workdir)
  training = [r for r in records if "params" not in r]
  assert [r["step"] for r in training] == list(range(1, NUM_UPDATES + 1))
  losses = [r["loss"] for r in training]
  # From ~ln(10) = 2.3 at random init; DP noise makes single steps jumpy.
  assert np.mean(losses[-3:]) < np.mean(losses[:2]) - 0.3, losses
  for r in training:
    assert 0 <= r["train_accuracy"] <= 1
    assert 0 <= r["fraction_clipped"] <= 1
    assert r["grad_norm_min"] <= r["grad_norm_mean"] <= r["grad_norm_max"]
    assert 0 < r["batch_size"] <= NUM_EXAMPLES
    assert r["noise_std"] == pytest.approx(1.0)  # sigma * C on the sum
    assert r["signal_to_noise"] > 0


def test_reported_epsilon_equals_the_accountant(tiny_run):
  workdir, final = tiny_run
  for record in helpers_runner.records(workdir):
    assert record["epsilon"] == pytest.approx(
        _independent_epsilon(record["step"]), rel=1e-9), record["step"]
  privacy = json.loads((workdir / "privacy.json").read_text())
  expected = _independent_epsilon(NUM_UPDATES)
  assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert final["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert privacy["noise_multiplier"] == 1.0
  assert privacy["num_updates"] == NUM_UPDATES
  assert privacy["sampling_rate"] == EXPECTED_BATCH / NUM_EXAMPLES
  assert privacy["delta"] == 1e-5 and privacy["accountant"] == "rdp"
  assert "PoissonSampledDpEvent" in privacy["dp_event"]


def test_evaluations_sparsity_and_report(tiny_run):
  workdir, final = tiny_run
  evaluations = [r for r in helpers_runner.records(workdir) if "params" in r]
  names = ("last", "ema_0.999", "polyak")
  assert [(r["step"], r["params"]) for r in evaluations] == [
      (step, name) for step in (4, 8) for name in names]
  for r in evaluations:
    sparsity = [r[f"sparsity/params/{e}"] for e in ("1e-5", "1e-4", "1e-3",
                                                   "1e-2")]
    assert all(0 <= s <= 1 for s in sparsity)
    assert sparsity == sorted(sparsity)  # more coordinates below larger eps
  for name in names:
    assert final[f"{name}/accuracy"] > 0.3  # 10 classes: chance is 0.1
  for r in helpers_runner.records(workdir):
    if "params" not in r:  # training records: the privatized gradient's
      sparsity = [r[f"sparsity/grad/{e}"] for e in ("1e-5", "1e-3", "1e-2")]
      assert sparsity == sorted(sparsity) and 0 <= sparsity[0] <= 1
  config = json.loads((workdir / "config.json").read_text())
  assert config["dp"]["noise_multiplier"] == 1.0
  assert config["training"]["num_updates"] == NUM_UPDATES
  assert (workdir / "report.md").stat().st_size > 0
  for plot in ("loss_accuracy.png", "epsilon.png", "sparsity.png"):
    assert (workdir / plot).read_bytes()[:4] == b"\x89PNG", plot


def test_micro_steps_do_not_advance_the_update_step(tiny_run):
  # ~128 examples per update in micro-batches of 32: ~4 micro-steps each.
  workdir, _ = tiny_run
  state, record = checkpointing.read_checkpoint(workdir)
  assert int(state["update_step"]) == NUM_UPDATES
  assert int(state["privatizer_state"]["update_step"]) == NUM_UPDATES
  assert record["ledger"]["num_updates"] == NUM_UPDATES
  # Polyak = running mean of the T iterates: differs from the last params.
  last = helpers_runner.flat(state["params"])
  polyak = helpers_runner.flat(state["averages"]["polyak"])
  assert any(not np.allclose(last[k], polyak[k]) for k in last)


def test_resuming_with_another_config_is_refused(tiny_run):
  workdir, _ = tiny_run
  config = helpers_tiny_config.get_config(f"updates={NUM_UPDATES}")
  config.dp.noise_multiplier = 2.0
  config.data.cache_dir = json.loads(
      (workdir / "config.json").read_text())["data"]["cache_dir"]
  with pytest.raises(config_lib.ConfigError, match="config.dp differs"):
    loop.train(config, workdir=workdir)


def test_missing_dataset_offline_is_a_config_error(tmp_path):
  config = config_lib.base_config()
  config.data.dataset = "cifar10"
  config.data.source = "tfds"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path)  # exists, but holds no files
  config.data.cache_dir = str(tmp_path / "cache")
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.data \(dataset='cifar10'.*manual_dir"):
    loop.load_data(config)
