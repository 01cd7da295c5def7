"""Tests for dpeq.training.evaluation: padding, masking, normalization, sharding."""

import json
import os
import subprocess
import sys
import textwrap
import types

import jax.numpy as jnp
import numpy as np
import pytest

from dpeq.training import evaluation

MEAN = np.array([0.2, 0.5, 0.7], np.float32)
STD = np.array([0.3, 0.25, 0.1], np.float32)


def _dataset(num_examples, seed=0):
  rng = np.random.default_rng(seed)
  return types.SimpleNamespace(
      images=rng.integers(0, 256, size=(num_examples, 4, 4, 3), dtype=np.uint8),
      labels=rng.integers(0, 6, size=num_examples).astype(np.int32),
  )


def _params(seed=1):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(scale=0.05, size=(48, 6)).astype(np.float32)}


TRACES = []


def _apply(params, images):
  TRACES.append(images.shape)
  return images.reshape(images.shape[0], -1) @ params["w"]


def _numpy_reference(params, dataset):
  """All N examples at once, float64, written from the definitions."""
  x = (dataset.images.astype(np.float64) / 255.0 - MEAN) / STD
  logits = x.reshape(len(x), -1) @ params["w"].astype(np.float64)
  z = logits - logits.max(-1, keepdims=True)
  probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  labels = dataset.labels
  rows = np.arange(len(labels))
  ranks = (logits > logits[rows, labels][:, None]).sum(-1)
  onehot = np.eye(logits.shape[1])[labels]
  conf, pred = probs.max(-1), probs.argmax(-1)
  correct = (pred == labels).astype(np.float64)
  ece = 0.0
  for b in range(15):
    in_bin = (conf > b / 15) & (conf <= (b + 1) / 15)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
  return {
      "top1": correct.mean(),
      "top5": (ranks < 5).mean(),
      "loss": -np.log(probs[rows, labels]).mean(),
      "brier": ((probs - onehot) ** 2).sum(-1).mean(),
      "ece": ece,
  }


def test_batched_evaluation_equals_full_dataset_metrics():
  dataset, params = _dataset(23), _params()
  expected = _numpy_reference(params, dataset)
  TRACES.clear()
  for batch_size in (5, 23, 64):  # padded last batch, exact fit, one small batch
    got = evaluation.evaluate(
        _apply, params, dataset, batch_size=batch_size, mean=MEAN, std=STD
    )
    assert got["num_examples"] == 23
    for key, value in expected.items():
      assert got[key] == pytest.approx(value, rel=2e-5, abs=2e-6), key
  # One compile per batch shape (5 and 23; 64 shrinks to the dataset size).
  assert sorted(TRACES) == [(5, 4, 4, 3), (23, 4, 4, 3)]


def test_padding_rows_never_count():
  """A model that is right only on zero (padding) images must not gain."""
  dataset = _dataset(7)
  dataset.images[:] = 255  # no real example is all zeros

  def apply(params, images):
    del params
    is_padding = (images.reshape(images.shape[0], -1) < -1.9).all(-1)
    return jnp.where(is_padding[:, None], jnp.eye(6)[0] * 10.0, -jnp.eye(6)[0])

  dataset.labels[:] = 1
  got = evaluation.evaluate(apply, None, dataset, batch_size=4, mean=0.9, std=0.5)
  # Real rows: logits (-1, 0, 0, 0, 0, 0) -> argmax 1 = label: all correct.
  assert got["top1"] == 1.0
  assert got["num_examples"] == 7


def test_bad_inputs_raise_clear_errors():
  dataset, params = _dataset(5), _params()
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    evaluation.evaluate(_apply, params, dataset, batch_size=0, mean=MEAN, std=STD)
  with pytest.raises(ValueError, match="channels"):
    evaluation.evaluate(_apply, params, dataset, batch_size=2, mean=[0.1, 0.2],
                        std=STD)
  with pytest.raises(ValueError, match="must be positive in every channel"):
    evaluation.evaluate(_apply, params, dataset, batch_size=2, mean=MEAN, std=0.0)
  floats = types.SimpleNamespace(images=dataset.images / 255.0,
                                 labels=dataset.labels)
  with pytest.raises(ValueError, match="uint8"):
    evaluation.evaluate(_apply, params, floats, batch_size=2, mean=MEAN, std=STD)
  with pytest.raises(ValueError, match="empty"):
    evaluation.evaluate(_apply, params, _dataset(0), batch_size=2, mean=MEAN,
                        std=STD)


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from dpeq.training import evaluation
    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    data = types.SimpleNamespace(
        images=rng.integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8),
        labels=rng.integers(0, 6, size=30).astype(np.int32))
    params = {"w": rng.normal(scale=0.05, size=(48, 6)).astype(np.float32)}
    apply = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"]
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    kw = dict(batch_size=8, mean=0.5, std=0.25)
    sharded = evaluation.evaluate(apply, params, data,
                                  sharding=NamedSharding(mesh, P("batch")), **kw)
    single = evaluation.evaluate(apply, params, data, **kw)
    try:
      evaluation.evaluate(apply, params, data, batch_size=6, mean=0.5, std=0.25,
                          sharding=NamedSharding(mesh, P("batch")))
      error = ""
    except ValueError as e:
      error = str(e)
    print(json.dumps({"sharded": sharded, "single": single, "error": error}))
    """
)


def test_sharded_evaluation_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env,
                       capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["sharded"]["num_examples"] == 30
  for key, value in result["single"].items():
    assert result["sharded"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
  assert "multiple of the 4 devices" in result["error"]
