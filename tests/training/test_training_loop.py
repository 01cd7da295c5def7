"""End-to-end tests of dpeq.training.loop.train on a tiny Fashion-MNIST run."""

import json

import dp_accounting
import helpers_runner
import helpers_tiny_config
import jax
import numpy as np
import pytest

from dpeq.privacy import randomness
from dpeq.training import checkpointing, loop, release, secret_file
from dpeq.training import config as config_lib
from dpeq.training import run_log as run_logging

NP = run_logging.NON_PRIVATE_PREFIX
NUM_UPDATES = 8
NUM_EXAMPLES = 1024
EXPECTED_BATCH = 128


@pytest.fixture(scope="module")
def tiny_run(fashion_mnist_dir, tmp_path_factory):
  """One uninterrupted run: (workdir, the dict train() returned).

  Reproducible (public seed 3), so that the statistical assertions below
  (loss decreases, accuracy above chance) see one known trajectory; the
  secret mode has tests of its own.
  """
  workdir = tmp_path_factory.mktemp("loop_run")
  config = helpers_tiny_config.get_config(
      f"updates={NUM_UPDATES},reproducible=3")
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
  diagnostics = [{k[len(NP):]: v for k, v in r.items() if k.startswith(NP)}
                 for r in training]
  losses = [d["loss"] for d in diagnostics]
  # From ~ln(10) = 2.3 at random init; DP noise makes single steps jumpy.
  assert np.mean(losses[-3:]) < np.mean(losses[:2]) - 0.3, losses
  # The training wall-clock grows with every update; non-private (a timing
  # side channel of the Poisson batch sizes), so the release leaves it out.
  seconds = [r[NP + "train_seconds"]
             for r in helpers_runner.records(workdir, keep_wall_clock=True)
             if "params" not in r]
  assert len(seconds) == NUM_UPDATES and seconds[0] > 0
  assert all(b > a for a, b in zip(seconds[:-1], seconds[1:], strict=True)), (
      seconds)
  for r, d in zip(training, diagnostics, strict=True):
    assert 0 <= d["train_accuracy"] <= 1
    assert 0 <= d["fraction_clipped"] <= 1
    assert d["grad_norm_min"] <= d["grad_norm_mean"] <= d["grad_norm_max"]
    assert 0 < d["batch_size"] <= NUM_EXAMPLES
    assert d["signal_to_noise"] > 0
    assert r["noise_std"] == pytest.approx(1.0)  # sigma * C on the sum
    # Values of the non-noised batch only appear under the non-private prefix.
    public = set(r) - {NP + k for k in d}
    assert public <= {"step", "epsilon", "noise_std", "noisy_grad_norm",
                      "update_norm"} | {k for k in r if k.startswith(
                          "sparsity/grad/")}, public


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
  assert privacy["accountant_delta"] == 1e-5 and privacy["accountant"] == "rdp"
  # The float32 noise's cut tail, added to delta for the 26,010 parameters.
  tail = (1 + np.exp(expected)) * NUM_UPDATES * 13_005 * 2.0 ** -96
  assert privacy["noise_tail_delta"] == pytest.approx(tail)
  assert privacy["delta"] == 1e-5 + privacy["noise_tail_delta"]
  assert privacy["noise_dimension"] == 26_010
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


def _secret_words(workdir) -> list[int]:
  return json.loads((workdir / secret_file.SECRET_FILE).read_text())[
      "entropy_words"]


def _noise_key_words(workdir) -> list[int]:
  state, _ = checkpointing.read_checkpoint(workdir)
  return np.asarray(state["privatizer_state"]["key"]).tolist()


def test_noise_and_batches_are_secret_and_differ_between_identical_configs(
    tiny_run, fashion_mnist_dir, tmp_path):
  # The same (default, secret) config twice: fresh secrets, hence other
  # noise and batches.
  config = helpers_tiny_config.get_config("updates=2")
  config.data.raw_dir = str(fashion_mnist_dir)
  config.data.cache_dir = json.loads(
      (tiny_run[0] / "config.json").read_text())["data"]["cache_dir"]
  workdir, again = tmp_path / "first", tmp_path / "again"
  for run in (workdir, again):
    loop.train(config, workdir=run)
  assert _noise_key_words(again) != _noise_key_words(workdir)
  assert _secret_words(again) != _secret_words(workdir)
  first_batches = [config_lib.privacy_plan(
      config, num_examples=NUM_EXAMPLES).sampler(
      seed=randomness.RunRandomness.from_words(
          _secret_words(w), is_reproducible=False).sampler_seed()).batch(0)
                   for w in (workdir, again)]
  assert not np.array_equal(first_batches[0].indices,
                            first_batches[1].indices)
  # The realised batch sizes logged are those of the secret sampler.
  logged = [r[NP + "batch_size"] for r in helpers_runner.records(again)
            if "params" not in r]
  assert logged[0] == first_batches[1].num_real
  for run in (workdir, again):
    secret = randomness.RunRandomness.from_words(_secret_words(run),
                                                 is_reproducible=False)
    # The checkpoint's noise key is the secret's, and follows from no
    # public seed (today's bug: every run's key followed from seed 0).
    key_words = _noise_key_words(run)
    assert key_words == np.asarray(jax.random.key_data(
        secret.noise_key())).tolist()
    for seed in (0, 3):
      public = [np.asarray(jax.random.key_data(k)).tolist()
                for k in jax.random.split(jax.random.key(seed), 3)]
      assert key_words not in public
    assert (run / secret_file.SECRET_FILE).stat().st_mode & 0o077 == 0
    assert "secret (operating-system entropy)" in (run / "report.md"
                                                   ).read_text()
    # Neither the secret nor the key appears in any output but the
    # checkpoints and the secret file.
    texts = {p: p.read_bytes().decode("latin-1") for p in run.rglob("*")
             if p.is_file() and "checkpoints" not in p.parts
             and p.name != secret_file.SECRET_FILE}
    assert any(p.name == "report.md" for p in texts)
    needles = ([str(w) for w in _secret_words(run) if w > 99_999]
               + [str(secret.entropy), str(secret.sampler_seed())]
               + [str(w) for w in key_words if w > 99_999])
    for path, text in texts.items():
      for needle in needles:
        assert needle not in text, (path, needle)


def test_release_holds_params_privacy_and_private_metrics_only(tiny_run):
  workdir, final = tiny_run
  out = workdir / release.RELEASE_DIR
  state, _ = checkpointing.read_checkpoint(workdir)
  for name in ("last", "ema_0.999", "polyak"):
    saved = np.load(out / f"params_{name}.npz")
    tree = state["params"] if name == "last" else state["averages"][name]
    expected = helpers_runner.flat(tree)
    assert len(saved.files) == len(expected)
    for key in saved.files:
      module, param = key.rsplit("/", 1)
      np.testing.assert_array_equal(saved[key], tree[module][param])
  assert (json.loads((out / "privacy.json").read_text())
          == json.loads((workdir / "privacy.json").read_text()))
  released = [json.loads(line)
              for line in (out / "metrics.jsonl").read_text().splitlines()]
  everything = helpers_runner.records(workdir)
  assert len(released) == len(everything)
  for r in released:
    assert not any(k.startswith(NP) for k in r)
  assert "What may be released" in (out / "README.md").read_text()
  report = (workdir / "report.md").read_text()
  assert "What is secret" in report and "not covered by epsilon" in report
  assert not (workdir / "checkpoints").is_relative_to(out)


def test_reproducible_mode_is_labelled_and_eval_on_training_data_too(
    fashion_mnist_dir, tmp_path):
  workdir = tmp_path / "reproducible"
  config = helpers_tiny_config.get_config("updates=1,reproducible=5")
  config.data.raw_dir = str(fashion_mnist_dir)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.train_split = "train"
  config.data.eval_split = "train"
  with pytest.raises(config_lib.ConfigError, match="overlaps"):
    loop.train(config, workdir=workdir)
  config.data.allow_eval_on_training_data = True
  loop.train(config, workdir=workdir)
  # Everything follows from the public seed; no secret file is written.
  assert not (workdir / secret_file.SECRET_FILE).exists()
  assert _noise_key_words(workdir) == np.asarray(jax.random.key_data(
      randomness.RunRandomness.reproducible(5).noise_key())).tolist()
  report = (workdir / "report.md").read_text()
  assert "NOT private against anyone who knows the seed" in report
  assert "REPRODUCIBLE from the public seed 5" in report
  assert "**Not covered by epsilon:** evaluated on `train`" in report
  assert json.loads((workdir / "privacy.json").read_text())[
      "reproducible_seed"] == 5
  evaluations = [r for r in helpers_runner.records(workdir) if "params" in r]
  assert evaluations and all(r[run_logging.EVAL_ON_TRAINING_DATA]
                             for r in evaluations)
  released = (workdir / release.RELEASE_DIR / "metrics.jsonl").read_text()
  assert '"params"' not in released  # evaluations on training data stay out
  assert "NOT private" in (workdir / release.RELEASE_DIR / "README.md"
                           ).read_text()


def test_ghost_and_vmap_runs_train_the_same_params(fashion_mnist_dir,
                                                   tmp_path):
  """per_example_grads is speed only: same noise, batches, updates."""
  finals = {}
  for name in ("vmap", "ghost", "ghost_two_pass", "auto"):
    config = helpers_tiny_config.get_config("updates=2,reproducible=7")
    config.data.raw_dir = str(fashion_mnist_dir)
    config.data.cache_dir = str(tmp_path / "cache")
    config.training.per_example_grads = name
    workdir = tmp_path / name
    loop.train(config, workdir=workdir)
    state, _ = checkpointing.read_checkpoint(workdir)
    finals[name] = helpers_runner.flat(state["params"])
  for name in ("ghost", "ghost_two_pass", "auto"):
    assert finals[name].keys() == finals["vmap"].keys()
    for key, value in finals["vmap"].items():
      np.testing.assert_allclose(finals[name][key], value, rtol=2e-4,
                                 atol=2e-6, err_msg=f"{name}: {key}")


def test_ghost_on_a_model_without_rules_is_a_config_error(fashion_mnist_dir,
                                                          tmp_path):
  config = helpers_tiny_config.get_config("updates=1")
  config.data.raw_dir = str(fashion_mnist_dir)
  config.data.cache_dir = str(tmp_path / "cache")
  config.model.name = "nf_resnet50"
  config.training.per_example_grads = "ghost"
  with pytest.raises(config_lib.ConfigError,
                     match=r"per_example_grads='ghost'.*NFBottleneck"):
    loop.train(config, workdir=tmp_path / "run")
  config.training.per_example_grads = "fast"
  with pytest.raises(config_lib.ConfigError, match="per_example_grads"):
    loop.train(config, workdir=tmp_path / "run2")
