"""Losses and metrics against numpy; device helpers on the local devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol.utils import helpers


def test_l2_normalize_gives_unit_norm_and_keeps_zero_vectors():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(helpers.l2_normalize(x, axis=-1), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_regression_loss_matches_numpy():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 8, 16)).astype(np.float32)
  nx = x / np.linalg.norm(x, axis=-1, keepdims=True)
  ny = y / np.linalg.norm(y, axis=-1, keepdims=True)
  want = np.sum((nx - ny) ** 2, axis=-1)
  np.testing.assert_allclose(helpers.regression_loss(x, y), want, rtol=1e-5)
  # Equal to 2 - 2 cos(x, y), and 0 for parallel vectors whatever their scale.
  np.testing.assert_allclose(want, 2 - 2 * np.sum(nx * ny, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(helpers.regression_loss(x, 3 * x), np.zeros(8), atol=1e-6)


def test_softmax_cross_entropy_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.eye(5, dtype=np.float32)[[0, 3, 4, 1]]
  log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  np.testing.assert_allclose(
    helpers.softmax_cross_entropy(logits, labels), -np.sum(labels * log_probs, -1), rtol=1e-5
  )


def test_topk_accuracy_counts_true_class_among_largest():
  logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]], np.float32)
  labels = np.array([1, 2, 0])
  np.testing.assert_array_equal(helpers.topk_accuracy(logits, labels, topk=1), [1.0, 0.0, 0.0])
  np.testing.assert_array_equal(helpers.topk_accuracy(logits, labels, topk=2), [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(helpers.topk_accuracy(logits, labels, topk=3), [1.0, 1.0, 1.0])


def test_topk_accuracy_counts_ties_and_nans_against_the_true_class():
  dead = np.zeros((3, 10), np.float32)  # A dead output: every logit equal.
  labels = np.array([0, 4, 9])
  for topk in (1, 5):
    np.testing.assert_array_equal(helpers.topk_accuracy(dead, labels, topk=topk), [0.0, 0.0, 0.0])
  tied = np.array([[0.0, 2.0, 2.0, 1.0], [0.0, 2.0, 2.0, 1.0], [0.0, 2.0, 2.0, 1.0]], np.float32)
  # Class 1 ties with class 2: among the top 2, not the top 1; class 3 is third.
  np.testing.assert_array_equal(
    helpers.topk_accuracy(tied, np.array([1, 2, 3]), topk=1), [0.0, 0.0, 0.0]
  )
  np.testing.assert_array_equal(
    helpers.topk_accuracy(tied, np.array([1, 2, 3]), topk=2), [1.0, 1.0, 0.0]
  )
  with_nan = np.array([[np.nan, 1.0, 0.0], [0.0, 1.0, np.nan]], np.float32)
  np.testing.assert_array_equal(
    helpers.topk_accuracy(with_nan, np.array([0, 1]), topk=1), [0.0, 0.0]
  )
  # The same verdicts as numpy's definition: fewer than k other logits at least as large.
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 3, size=(64, 6)).astype(np.float32)  # Many ties.
  labels = rng.integers(0, 6, size=64)
  true = logits[np.arange(64), labels][:, None]
  expected = (np.sum(logits >= true, axis=-1) - 1 < 2).astype(np.float32)
  np.testing.assert_array_equal(helpers.topk_accuracy(logits, labels, topk=2), expected)


def test_evaluation_batches_round_up_to_the_devices_and_must_be_positive():
  assert helpers.round_up_to_devices(25) == 25  # One device here; 2 and 4: test_multi_device.py.
  with pytest.raises(helpers.BatchSizeError, match='must be positive'):
    helpers.round_up_to_devices(0)


def test_check_batch_size_names_device_count():
  helpers.check_batch_size(jax.device_count() * 3)
  with pytest.raises(helpers.BatchSizeError, match='multiple of the number of devices'):
    helpers.check_batch_size(0)


def test_prefetch_to_device_yields_every_batch_in_order_as_global_arrays():
  mesh = helpers.make_mesh()
  sharding = helpers.batch_sharded(mesh)
  n = jax.device_count() * 2
  local = [{'x': np.full((n, 3), i, np.float32)} for i in range(5)]
  out = list(helpers.prefetch_to_device(local, sharding, size=2))
  assert [int(batch['x'][0, 0]) for batch in out] == [0, 1, 2, 3, 4]
  assert all(batch['x'].sharding == sharding for batch in out)
  assert isinstance(out[0]['x'], jax.Array) and out[0]['x'].shape == (n, 3)


def test_to_host_returns_numpy():
  tree = helpers.to_host({'a': jnp.ones(2), 'b': [jnp.zeros(())]})
  assert isinstance(tree['a'], np.ndarray) and isinstance(tree['b'][0], np.ndarray)
