"""The benchmark and reproduction harness: aggregation logic and a tiny run."""

import json
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq import models
from dpeq.data import augment
from dpeq.training import config as config_lib
from experiments.bench import common, models_overhead
from experiments.bench import run as bench_run
from experiments.reproduce import cifar10 as cifar10_study
from experiments.reproduce import fashion_mnist as fmnist
from experiments.reproduce import harness, plots


def test_markdown_table_formats_rows_and_missing_values():
  table = common.markdown_table(
      [{"a": "x", "b": 0.123456}, {"a": "y", "b": 1234.5, "c": None}],
      [("a", "A"), ("b", "B"), ("c", "C")])
  lines = table.splitlines()
  assert lines[0] == "| A | B | C |"
  assert lines[2] == "| x | 0.123 | - |"
  assert lines[3] == "| y | 1234 | - |"


def test_interleaved_seconds_alternates_and_counts_calls():
  order = []
  fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
  times = common.interleaved_seconds(fns, rounds=3, calls_per_round=2,
                                     warmup=1)
  assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
  with pytest.raises(ValueError, match="rounds"):
    common.interleaved_seconds(fns, rounds=0)


def _record(model, stage, eps, seed, accuracy, overrides=None, wall=60.0):
  return {"key": f"{stage}/{model}/{eps}/{seed}/{overrides}", "model": model,
          "stage": stage, "eps": eps, "seed": seed,
          "overrides": overrides or {}, "accuracy": accuracy, "wall_s": wall,
          "num_updates": 10, "expected_batch_size": 512,
          "noise_multiplier": 1.0}


def test_select_uses_validation_only_and_summarize_uses_selected_params():
  records = [
      _record("m", "sweep", 3, 0, {"last": 0.80, "polyak": 0.82}, {"lr": 1}),
      _record("m", "sweep", 3, 0, {"last": 0.85, "polyak": 0.84}, {"lr": 2}),
      # A final run must never influence the selection.
      _record("m", "final", 3, 0, {"last": 0.10, "polyak": 0.99}, {"lr": 2}),
      _record("m", "final", 3, 1, {"last": 0.30, "polyak": 0.10}, {"lr": 2}),
      _record("m", "final", 3, 2, {"last": 0.20, "polyak": 0.10},
              {"lr": 2, "training.num_updates": 40}),
      _record("m", "final", 8, 0, {"last": 0.50, "polyak": 0.10}, {"lr": 2}),
      # A final run of another recipe (e.g. made before the sweep) is its own
      # row, not a seed of the selected recipe.
      _record("m", "final", 3, 0, {"last": 0.90, "polyak": 0.10}),
  ]
  selected = fmnist.select(records)
  assert selected["m"]["overrides"] == {"lr": 2}
  assert selected["m"]["params"] == "last"
  summary = fmnist.summarize(records, selected)
  other = [r for r in summary if r["model"] != "m"]
  assert [(r["model"], r["seeds"], r["median"]) for r in other] == [
      ("m (not the swept recipe: lr=\"default\")", 1, 0.90)]
  rows = {r["eps"]: r for r in summary if r["model"] == "m"}
  assert rows[3]["seeds"] == 3
  assert rows[3]["median"] == pytest.approx(0.20)
  assert rows[3]["std"] == pytest.approx(statistics.stdev([0.1, 0.3, 0.2]))
  assert rows[8]["std"] == 0.0
  assert "20.00 +- 10.00" in fmnist.table_markdown([rows[3]])


def test_final_runs_of_another_length_are_another_row_not_seeds():
  selected = {"m": {"overrides": {"lr": 2}, "params": "last"}}
  short = [_record("m", "final", 3, seed, {"last": accuracy}, {"lr": 2})
           for seed, accuracy in ((0, 0.6), (1, 0.7))]
  long = {**_record("m", "final", 3, 0, {"last": 0.9},
                    {"lr": 2, "training.num_updates": 20}), "num_updates": 20}
  rows = harness.summarize([*short, long], selected)
  assert [(r["model"], r["num_updates"], r["seeds"], r["median"])
          for r in rows] == [("m", 10, 2, pytest.approx(0.65)),
                             ("m", 20, 1, 0.9)]


def test_fashion_mnist_resnet_pair_runs_the_same_grid_batch_and_length():
  lean, conventional = (
      fmnist.make_config(fmnist.Run(model, 3, 0, (), "final"))
      for model in ("eq_resnet9_lean_d1", "resnet9_32"))
  for config in (lean, conventional):
    config_lib.validate(config)
    assert config.model.kwargs.input_padding == 2  # 28x28 -> 32x32
  assert (lean.model.name, conventional.model.name) == (
      "eq_resnet9_lean", "resnet9")
  assert lean.model.kwargs.group == "D1"
  assert tuple(conventional.model.kwargs.layout) == (16, 32, 64)
  for field in ("expected_batch_size", "num_updates"):
    assert lean.training[field] == conventional.training[field], field
  assert (lean.training.optimizer.learning_rate
          == conventional.training.optimizer.learning_rate)


def test_reproduce_configs_are_valid_and_sweep_holds_out_the_test_set():
  sweep = fmnist.make_config(fmnist.Run(
      "eq_cnn_d4", 3, 0, (("training.optimizer.learning_rate", 4.0),),
      "sweep"))
  config_lib.validate(sweep)
  assert (sweep.data.train_split, sweep.data.eval_split) == ("train", "valid")
  assert sweep.model.kwargs.group == "D4"
  assert sweep.training.optimizer.learning_rate == 4.0
  final = fmnist.make_config(fmnist.Run("cnn_tramer", 1, 2, (), "final"))
  config_lib.validate(final)
  assert (final.data.train_split, final.data.eval_split) == (
      "train_valid", "test")
  assert final.dp.target_epsilon == 1 and final.seed == 2
  paper = fmnist.make_config(fmnist.Run("cnn_tramer_40ep", 3, 0, (), "final"))
  epochs = (paper.training.num_updates * paper.training.expected_batch_size
            / 60_000)
  assert round(epochs) == 40  # Tramer & Boneh's length.
  for model in fmnist.MODELS:
    assert all(isinstance(r, dict) for r in fmnist.SWEEP.get(model, ({},)))


def test_cifar10_study_configs_are_valid_and_sweep_holds_out_the_test_set():
  study = cifar10_study.STUDY
  for model in study.models:
    for recipe in study.sweep.get(model, ({},)):
      sweep = harness.make_config(study, harness.Run(
          model, 3, 0, tuple(sorted(recipe.items())), "sweep"))
      config_lib.validate(sweep)
      assert (sweep.data.train_split, sweep.data.eval_split) == (
          "train", "valid")
      assert sweep.data.dataset == "cifar10"
    final = harness.make_config(study, harness.Run(
        model, 1, 2, tuple(sorted(study.final_length[model].items())),
        "final"))
    config_lib.validate(final)
    assert (final.data.train_split, final.data.eval_split) == (
        "train_valid", "test")
    assert final.dp.target_epsilon == 1 and final.seed == 2
    assert final.training.num_updates == study.final_length[model][
        "training.num_updates"]
  groups = {m: harness.make_config(study, harness.Run(m, 3, 0, (), "final"))
            .model.kwargs.to_dict().get("group") for m in study.models}
  assert groups == {"eq_resnet9_c4": "C4", "eq_resnet9_d4": "D4",
                    "resnet9": None, "cnn_tramer": None,
                    "eq_tramer_cnn_d1": "D1", "eq_tramer_cnn_c4": "C4",
                    "eq_tramer_cnn_d4": "D4", "eq_resnet9_lean_d1": "D1",
                    "eq_resnet9_lean_c4": "C4", "eq_resnet9_lean_d4": "D4"}


def test_bench_case_runs_both_updates_on_the_same_views():
  row = models_overhead.bench_case("cnn_tramer/fmnist", batch_size=2,
                                   num_views=2, rounds=1)
  assert row["private_s"] > 0 and row["non_private_s"] > 0
  assert row["ratio"] == pytest.approx(row["private_s"] / row["non_private_s"])
  assert row["private_images_per_s"] == pytest.approx(
      2 * row["private_examples_per_s"])
  assert row["num_params"] == 26_010
  # The non-private step is plain SGD on the mean loss: with the views of
  # the same key, its first update equals -lr * grad (momentum starts at 0).
  (_, _, step, (params, opt_state, batch, key), _) = models_overhead.make_steps(
      models_overhead.CASES["cnn_tramer/fmnist"], batch_size=2, num_views=2)
  new_params, _ = jax.jit(step)(params, opt_state, batch, key)
  views = augment.views_fn(
      augment.AugmentConfig(num_views=2, crop_padding=2, random_flip=True),
      mean=0.5, std=0.25)(key, batch)
  model = models.create("cnn_tramer", num_classes=10)

  def mean_loss(p):
    logits = model.apply(p, views["images"].reshape(4, 28, 28, 1))
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(log_probs[jnp.arange(4), views["labels"].reshape(4)])

  expected = jax.tree.map(lambda p, g: p - 0.1 * g, params,
                          jax.grad(mean_loss)(params))
  for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  page = bench_run.render({
      "machine": common.machine_info(), "command": "test", "date": "now",
      "models": [row, {"case": "x", "num_views": 1, "skipped": "no model"}]})
  assert "cnn_tramer/fmnist" in page and "x: skipped" in page


@pytest.mark.parametrize("kernel,strides,padding", [
    ((3, 3, 2, 5), (1, 1), "SAME"),
    ((8, 8, 2, 3), (2, 2), ((3, 3), (3, 3))),
    ((4, 4, 2, 2), (2, 2), "VALID"),
])
def test_patched_conv_gives_the_same_per_example_gradients(kernel, strides,
                                                           padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 2, 12, 12, 2)), jnp.float32)
  w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)

  def per_example_grads(conv):
    def loss(w, x):
      y = conv(x, w, strides, padding,
               dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(jnp.sin(y))
    return jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0))(w, x)

  expected = per_example_grads(jax.lax.conv_general_dilated)
  with models_overhead.patch_conv_gradients():
    patched = lambda: per_example_grads(jax.lax.conv_general_dilated)
    assert "custom_vjp" in str(jax.make_jaxpr(patched)())
    got = jax.jit(patched)()
  assert jax.lax.conv_general_dilated is models_overhead._XLA_CONV
  for a, b in zip(got, expected, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_final_runs_at_the_sweep_epsilon_trace_accuracy_against_wall_clock(
    tmp_path):
  study = fmnist.STUDY
  at_sweep_eps = fmnist.make_config(fmnist.Run("cnn_tramer", 3, 0, (), "final"))
  elsewhere = fmnist.make_config(fmnist.Run("cnn_tramer", 1, 0, (), "final"))
  updates = at_sweep_eps.training.num_updates
  assert at_sweep_eps.eval.every_updates == math.ceil(
      updates / study.curve_points)
  assert elsewhere.eval.every_updates == 0  # one evaluation, at the end
  # A metrics.jsonl as the loop writes it: training records carry the
  # training wall-clock, evaluation records the accuracy per params.
  lines = []
  for step, seconds, accuracy in ((2, 1.5, 0.4), (4, 3.0, 0.6), (5, 3.5, 0.7)):
    lines.append({"step": step, "epsilon": 1.0,
                  "nonprivate/train_seconds": seconds})
    for params, shift in (("last", 0.0), ("ema_0.999", 0.01)):
      lines.append({"step": step, "params": params,
                    "accuracy": accuracy + shift})
  lines.append({"step": 3, "epsilon": 1.0, "nonprivate/train_seconds": 2.0})
  (tmp_path / "metrics.jsonl").write_text(
      "\n".join(json.dumps(line) for line in lines))
  curve = harness.read_curve(tmp_path)
  assert [p["step"] for p in curve] == [2, 4, 5]  # evaluated steps only
  assert [p["train_seconds"] for p in curve] == [1.5, 3.0, 3.5]
  assert curve[1]["accuracy"] == {"last": 0.6, "ema_0.999": 0.61}
  records = [
      {"stage": "final", "eps": 3, "model": "cnn_tramer", "seed": 0,
       "num_updates": 5, "wall_s": 4.0, "accuracy": {"last": 0.7},
       "curve": curve},
      {"stage": "final", "eps": 3, "model": "resnet9", "seed": 0,
       "num_updates": 5, "wall_s": 9.0,
       "accuracy": {"last": 0.8}},  # no curve: one point
      {"stage": "final", "eps": 3, "model": "resnet9", "seed": 0,
       "num_updates": 9, "wall_s": 16.0, "accuracy": {"last": 0.85}},
  ]
  # A model run at two lengths gets a series per length.
  lengths = plots.lengths_per_model(records)
  assert [plots.series_label(r["model"], r["num_updates"], lengths)
          for r in records] == ["cnn_tramer", "resnet9, T = 5",
                                "resnet9, T = 9"]
  path = tmp_path / "plot.png"
  assert plots.accuracy_vs_wallclock(
      records, lambda model: "last", path, title="t",
      reference_lines=study.reference_lines)
  assert path.read_bytes()[:4] == b"\x89PNG"
  assert not plots.accuracy_vs_wallclock(
      records[:0], lambda model: "last", tmp_path / "x.png", title="t")
  assert not (tmp_path / "x.png").exists()


def test_write_table_writes_the_table_and_both_plots(tmp_path):
  study = fmnist.STUDY
  records = [
      {**_record("m", "final", eps, 0, {"last": 0.5 + eps / 100}),
       "num_updates": 10} for eps in (1, 3)]
  records.append({**_record("m", "final", 3, 0, {"last": 0.8}), "key": "x",
                  "num_updates": 20})
  records.append(_record("m", "sweep", 3, 0, {"last": 0.4}))
  (tmp_path / study.runs_file).write_text(
      "\n".join(json.dumps(r) for r in records))
  table = harness.write_table(study, tmp_path).read_text()
  assert "| m | 3 | last | 53.00 +- 0.00 | 1 | 10 |" in table
  assert "| m | 3 | last | 80.00 +- 0.00 | 1 | 20 |" in table
  for name in (study.plot_file, study.wallclock_plot_file):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_validation_choice_made_outside_the_sweep_picks_the_reported_params():
  records = [{"stage": "final", "model": "m", "eps": 3, "seed": 0,
              "accuracy": {"last": 0.80, "ema_0.999": 0.82}, "wall_s": 1.0,
              "num_updates": 1, "expected_batch_size": 1,
              "noise_multiplier": 1.0}]
  default = harness.summarize(records, {})
  chosen = harness.summarize(records, {}, params_chosen={"m": "ema_0.999"})
  assert (default[0]["params"], default[0]["median"]) == ("last", 0.80)
  assert (chosen[0]["params"], chosen[0]["median"]) == ("ema_0.999", 0.82)
  # A sweep's own choice wins over the outside one.
  swept = harness.summarize(records, {"m": {"params": "last"}},
                            params_chosen={"m": "ema_0.999"})
  assert swept[0]["params"] == "last"


def test_ghost_clipping_bench_rows_measure_both_strategies():
  from experiments.bench import ghost_clipping as ghost_bench
  row = ghost_bench.speed_row("cnn_tramer/fmnist", batch_size=2, rounds=1)
  assert row["vmap_s"] > 0 and row["ghost_s"] > 0
  assert row["ghost_speedup"] == pytest.approx(row["vmap_s"] / row["ghost_s"])
  memory = ghost_bench.memory_row("cnn_tramer/fmnist", batch_size=2)
  assert memory["num_params"] == 26_010
  assert memory["ghost_mib"] > 0 and memory["non_private_mib"] > 0
