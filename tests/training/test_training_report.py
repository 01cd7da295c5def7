"""Tests for dpeq.training.report on synthetic run directories."""

import json
import math

import numpy as np
import pytest
from matplotlib import image as mpl_image

from dpeq.training import config as config_lib
from dpeq.training import report
from dpeq.training import run_log as run_logging

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(workdir, *, sparsity=True):
  config = config_lib.base_config()
  config.dp.noise_multiplier = 1.25
  config.training.num_updates = 40
  (workdir / "config.json").write_text(json.dumps(config.to_dict()))
  privacy = {"epsilon": 2.875, "delta": 1.5e-5, "accountant_delta": 1e-5,
             "noise_tail_delta": 5e-6, "num_updates": 40,
             "noise_multiplier": 1.25, "sampling": "PoissonSampler",
             "sampling_rate": 256 / 60000, "num_examples": 60000,
             "neighboring_relation": "add_or_remove_one", "accountant": "pld",
             # The plan's numbers (dpeq.privacy.plan.PrivacyPlan.to_dict).
             "l2_clip_norm": 1.0, "sensitivity": 1.0, "noise_std": 1.25,
             "noise_std_of_mean": 1.25 / 256}
  (workdir / "privacy.json").write_text(json.dumps(privacy))
  rng = np.random.default_rng(0)
  with run_logging.MetricsWriter(workdir, tensorboard=False) as writer:
    for step in range(1, 41):
      record = {"step": step, "epsilon": 2.875 * math.sqrt(step / 40),
                "nonprivate/loss": 2.3 * math.exp(-step / 20)
                                   + 0.05 * rng.random(),
                "nonprivate/train_accuracy": 1 - math.exp(-step / 15),
                "noisy_grad_norm": 0.5}
      if sparsity and step % 10 == 0:
        record["sparsity/grad/1e-3"] = 0.1 + step / 100
      writer.write(record)
      if step % 20 == 0:
        for params, acc in (("last", 0.61), ("ema_0.999", 0.63), ("polyak", 0.6)):
          writer.write({"step": step, "params": params,
                        "accuracy": acc * step / 40, "top5": 0.97, "loss": 1.1,
                        "brier": 0.52, "ece": 0.031,
                        "sparsity/params/1e-3": 0.2})
    # A resumed run repeats step 40's evaluation of "last": the later one wins.
    writer.write({"step": 40, "params": "last", "accuracy": 0.6125, "top5": 0.97,
                  "loss": 1.1, "brier": 0.52, "ece": 0.031})


def test_full_report_has_privacy_metrics_and_readable_plots(tmp_path):
  _write_run(tmp_path)
  path = report.write_report(tmp_path)
  assert path == tmp_path / "report.md"
  text = path.read_text()
  assert "| noise multiplier sigma | 1.25 |" in text
  assert "| updates T | 40 |" in text
  assert "| **epsilon spent** | 2.875 |" in text
  assert ("| **delta** (accountant + noise sampler's cut tail) | 1.5e-05 |"
          in text)
  assert "| delta of the accountant | 1e-05 |" in text
  assert "| delta of the float32 noise's cut tail | 5e-06 |" in text
  # The threat model, and the training record split into what is covered
  # by epsilon and the non-private diagnostics.
  assert "What is secret" in text and "What may be released" in text
  private, diagnostics = text.split("Non-private diagnostics")
  assert "| noisy_grad_norm | 0.5 |" in private.split("Last training")[1]
  assert "| train_accuracy |" in diagnostics
  assert "train_accuracy" not in private.split("Last training")[1]
  assert "| target epsilon | 3 |" in text
  # sigma * C / B = 1.25 * 1 / 256, read from privacy.json.
  assert f"| {1.25 / 256:.4g} |" in text
  assert "| sensitivity of the clipped sum (C, or 1 rescaled) | 1 |" in text
  # Final metrics: one row per params set at the last evaluation step, and the
  # repeated (resumed) record of "last" replaced the earlier one.
  assert "| `last` | 40 | 61.25% | 97.00% | 1.1 | 0.52 | 0.031 |" in text
  assert "| `ema_0.999` | 40 | 63.00% |" in text
  assert "| `polyak` | 40 | 60.00% |" in text
  for name in ("loss_accuracy.png", "epsilon.png", "sparsity.png"):
    assert f"]({name})" in text
    data = (tmp_path / name).read_bytes()
    assert data.startswith(PNG_MAGIC)
    pixels = mpl_image.imread(tmp_path / name)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
  assert '"noise_multiplier": 1.25' in text  # the full config is included


def test_missing_inputs_give_a_report_that_says_so(tmp_path):
  path = report.write_report(tmp_path)
  text = path.read_text()
  assert "`config.json` was not found" in text
  assert "`privacy.json` was not found" in text
  assert "No evaluation records" in text
  assert "No series to plot" in text
  assert not list(tmp_path.glob("*.png"))


def test_optional_series_missing_and_stale_plots_removed(tmp_path):
  _write_run(tmp_path, sparsity=True)
  report.write_report(tmp_path)
  assert (tmp_path / "sparsity.png").exists()
  (tmp_path / "metrics.jsonl").unlink()
  _write_run(tmp_path, sparsity=False)
  # Drop sparsity from the eval records too.
  records = [
      {k: v for k, v in r.items() if not k.startswith("sparsity")}
      for r in run_logging.read_records(tmp_path)
  ]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  text = report.write_report(tmp_path).read_text()
  assert "sparsity.png" not in text
  assert not (tmp_path / "sparsity.png").exists()
  assert (tmp_path / "epsilon.png").exists()


def test_non_private_run_is_flagged(tmp_path):
  config = config_lib.base_config()
  config.dp.non_private = True
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  (tmp_path / "privacy.json").write_text(json.dumps({"epsilon": math.inf}))
  text = report.write_report(tmp_path).read_text()
  assert "**This run is not private**" in text
  assert "| **epsilon spent** | inf |" in text


def test_not_a_directory_raises(tmp_path):
  with pytest.raises(ValueError, match="not a directory"):
    report.write_report(tmp_path / "missing")
