"""Tests for dpeq.training.run_log: JSONL records, TensorBoard, progress bar."""

import json
import logging
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from dpeq.training import run_log as dpeq_logging


def test_records_are_strict_json_with_python_scalars(tmp_path):
  writer = dpeq_logging.MetricsWriter(tmp_path / "run", tensorboard=False)
  logged = writer.write({
      "step": np.int32(3),
      "epsilon": jnp.float32(0.5),
      "loss": np.float64("nan"),
      "grad_norms": jnp.arange(3.0),
      "flag": np.bool_(True),
  })
  # Flushed before close: a killed run keeps what it logged.
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 1
  on_disk = json.loads(lines[0])
  assert on_disk == logged
  assert on_disk == {"step": 3, "epsilon": 0.5, "loss": None,
                     "grad_norms": [0.0, 1.0, 2.0], "flag": True}
  assert type(on_disk["step"]) is int
  writer.write({"step": 4, "params": "ema_0.999", "accuracy": 0.25})
  writer.close()
  writer.close()  # idempotent
  records = dpeq_logging.read_records(tmp_path / "run")
  assert [dpeq_logging.is_evaluation(r) for r in records] == [False, True]
  with pytest.raises(ValueError, match="after close"):
    writer.write({"step": 5})


def test_appends_across_writers_and_skips_a_torn_line(tmp_path):
  with dpeq_logging.MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write({"step": 1, "epsilon": 0.1})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "epsi')  # killed mid-write
  with dpeq_logging.MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write({"step": 2, "epsilon": 0.2})
  steps = [r["step"] for r in dpeq_logging.read_records(tmp_path)]
  assert steps == [1, 2]


def test_bad_records_raise(tmp_path):
  with dpeq_logging.MetricsWriter(tmp_path, tensorboard=False) as w:
    with pytest.raises(ValueError, match="needs a `step`"):
      w.write({"loss": 1.0})
    with pytest.raises(TypeError, match="cannot log"):
      w.write({"step": 1, "thing": object()})


def test_tensorboard_scalars_are_written(tmp_path):
  tf = pytest.importorskip("tensorflow", reason="TensorBoard needs tensorflow")
  with dpeq_logging.MetricsWriter(tmp_path, tensorboard=True) as w:
    w.write({"step": 1, "epsilon": 0.5, "loss": 2.0})
    w.write({"step": 2, "params": "last", "accuracy": 0.75, "top5": 1.0})
  event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(event_files) == 1
  seen = {}
  for event in tf.compat.v1.train.summary_iterator(str(event_files[0])):
    for value in event.summary.value:
      seen[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
  assert seen["train/epsilon"] == (1, 0.5)
  assert seen["eval_last/accuracy"] == (2, 0.75)
  assert "eval_last/params" not in seen


def test_tensorboard_without_tensorflow_warns_and_still_logs(
    tmp_path, monkeypatch, caplog
):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # import now fails
  with caplog.at_level(logging.WARNING):
    with dpeq_logging.MetricsWriter(tmp_path, tensorboard=True) as w:
      w.write({"step": 1, "epsilon": 0.5})
  assert "TensorBoard logging is off" in caplog.text
  assert not (tmp_path / "tensorboard").exists()
  assert len(dpeq_logging.read_records(tmp_path)) == 1


def test_progress_bar_shows_step_epsilon_and_accuracy(capsys):
  with dpeq_logging.ProgressBar(total=10, initial=2) as bar:
    bar.update(5, epsilon=1.23456)
    bar.update(7, train_accuracy=0.5)
  err = capsys.readouterr().err
  assert "7/10" in err
  assert "eps=1.235" in err and "acc=0.5000" in err
