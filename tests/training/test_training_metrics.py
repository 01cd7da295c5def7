"""Tests for dpeq.training.metrics against direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpeq.training import metrics


def _softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _random_problem(seed, batch=64, classes=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(scale=2.0, size=(batch, classes)).astype(np.float32)
  labels = rng.integers(0, classes, size=batch).astype(np.int32)
  mask = rng.random(batch) < 0.7
  return logits, labels, mask


def test_top_k_matches_sorting_in_numpy():
  logits, labels, mask = _random_problem(0)
  for k in (1, 3, 7):
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    expected = np.array([labels[i] in order[i] for i in range(len(labels))])
    got = np.asarray(metrics.top_k_correct(logits, labels, k=k))
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    np.testing.assert_allclose(
        metrics.top_k_accuracy(logits, labels, k=k, mask=mask),
        expected[mask].mean(),
        rtol=1e-6,
    )


def test_top_1_is_argmax_and_ties_do_not_count_every_class():
  logits = np.zeros((4, 5), np.float32)  # a collapsed model: constant logits
  labels = np.array([0, 1, 2, 0], np.int32)
  acc = metrics.top_k_accuracy(logits, labels, k=1)
  np.testing.assert_allclose(acc, 0.5)  # argmax picks class 0 for every row
  hand = np.array([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0]], np.float32)
  np.testing.assert_array_equal(
      metrics.top_k_correct(hand, np.array([2, 2]), k=2), [1.0, 0.0]
  )


def test_top_k_rejects_k_larger_than_classes():
  with pytest.raises(ValueError, match="k must be in"):
    metrics.top_k_correct(np.zeros((2, 3)), np.zeros(2, np.int32), k=5)


def test_cross_entropy_and_brier_match_numpy():
  logits, labels, mask = _random_problem(1)
  probs = _softmax(logits.astype(np.float64))
  onehot = np.eye(logits.shape[1])[labels]
  ce = -np.log(probs[np.arange(len(labels)), labels])
  brier = ((probs - onehot) ** 2).sum(axis=-1)
  np.testing.assert_allclose(metrics.cross_entropy(logits, labels), ce, rtol=1e-5)
  np.testing.assert_allclose(metrics.brier(logits, labels), brier, rtol=1e-5)
  np.testing.assert_allclose(
      metrics.mean_cross_entropy(logits, labels, mask=mask), ce[mask].mean(), 1e-5
  )
  np.testing.assert_allclose(
      metrics.brier_score(logits, labels, mask=mask), brier[mask].mean(), 1e-5
  )


def test_brier_hand_checkable_extremes():
  confident_right = np.array([[50.0, 0.0]], np.float32)
  confident_wrong = np.array([[0.0, 50.0]], np.float32)
  uniform = np.zeros((1, 4), np.float32)
  label = np.array([0], np.int32)
  np.testing.assert_allclose(metrics.brier(confident_right, label), [0.0], atol=1e-6)
  np.testing.assert_allclose(metrics.brier(confident_wrong, label), [2.0], atol=1e-6)
  # (1 - 1/4)^2 + 3 * (1/4)^2 = 0.75.
  np.testing.assert_allclose(metrics.brier(uniform, label), [0.75], atol=1e-6)


def _numpy_ece(logits, labels, mask, num_bins=15):
  probs = _softmax(logits.astype(np.float64))[mask]
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == labels[mask]).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:], strict=True):
    in_bin = (conf > lo) & (conf <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
  return ece


def test_ece_matches_numpy_loop_and_accumulates_over_batches():
  logits, labels, mask = _random_problem(2, batch=200, classes=4)
  expected = _numpy_ece(logits, labels, mask)
  np.testing.assert_allclose(
      metrics.expected_calibration_error(logits, labels, mask=mask), expected, 1e-5
  )
  halves = [
      metrics.calibration_bins(logits[s], labels[s], mask=mask[s])
      for s in (slice(0, 77), slice(77, None))
  ]
  summed = jax.tree_util.tree_map(jnp.add, *halves)
  np.testing.assert_allclose(
      metrics.expected_calibration_error_from_bins(summed), expected, rtol=1e-5
  )


def test_ece_hand_checkable():
  # Two examples with confidence 0.9 (one right, one wrong): one bin,
  # |0.5 - 0.9| = 0.4.
  p = np.log(np.array([[0.9, 0.1], [0.9, 0.1]], np.float32))
  labels = np.array([0, 1], np.int32)
  np.testing.assert_allclose(
      metrics.expected_calibration_error(p, labels), 0.4, atol=1e-6
  )


def test_masked_mean_ignores_padding_and_handles_empty_mask():
  values = np.array([1.0, 2.0, 100.0], np.float32)
  np.testing.assert_allclose(metrics.masked_mean(values, [True, True, False]), 1.5)
  np.testing.assert_allclose(metrics.masked_mean(values, [False] * 3), 0.0)


def test_l0_sparsity_counts_over_the_whole_tree_and_jits():
  rng = np.random.default_rng(3)
  tree = {
      "a": rng.normal(size=(5, 7)).astype(np.float32),
      "b": [rng.normal(scale=1e-3, size=(11,)).astype(np.float32)],
      "c": np.zeros((3, 2), np.float32),
  }
  eps = (0.0, 1e-3, 0.5, 10.0)
  flat = np.concatenate([np.abs(x).ravel() for x in jax.tree_util.tree_leaves(tree)])
  expected = [(flat <= e).mean() for e in eps]
  got = jax.jit(lambda t: metrics.l0_sparsity(t, eps=eps))(tree)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[0] == pytest.approx(6 / flat.size)  # exact zeros only
  assert got[-1] == 1.0


def test_metrics_reject_misshapen_input():
  with pytest.raises(ValueError, match="labels must be"):
    metrics.cross_entropy(np.zeros((3, 4)), np.zeros((3, 1), np.int32))
  with pytest.raises(ValueError, match="eps must be"):
    metrics.l0_sparsity({"w": np.ones(3)}, eps=())
