"""The transfer probe's classifier against an independent numpy solution of the same problem."""

import numpy as np
import pytest

from byol.utils import logistic_regression


def newton_solution(x, y, num_classes, l2, iterations=50):
  """Minimises mean CE + (l2 / 2) ||W||^2 by Newton's method with the exact Hessian, in numpy."""
  n, d = x.shape
  augmented = np.concatenate([x, np.ones((n, 1))], axis=1)  # [N, D + 1]: the bias as a feature.
  theta = np.zeros((d + 1, num_classes))
  onehot = np.eye(num_classes)[y]
  penalty = np.ones((d + 1, num_classes)) * l2
  penalty[-1] = 0.0  # The bias is not regularised.
  for _ in range(iterations):
    logits = augmented @ theta
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    gradient = augmented.T @ (p - onehot) / n + penalty * theta  # [D + 1, C]
    # Hessian over vec(theta) (class-major): (1/N) sum_i (diag(p_i) - p_i p_i^T) kron a_i a_i^T.
    hessian = np.zeros(((d + 1) * num_classes,) * 2)
    for a, p_i in zip(augmented, p):
      hessian += np.kron(np.diag(p_i) - np.outer(p_i, p_i), np.outer(a, a)) / n
    hessian += np.diag(penalty.T.reshape(-1))
    # The logits do not change when a constant is added to every class's bias: lstsq takes the
    # step of least norm, which keeps the biases' sum at 0 as it starts.
    step = np.linalg.lstsq(hessian, gradient.T.reshape(-1), rcond=None)[0]
    theta -= step.reshape(num_classes, d + 1).T
  return theta[:-1], theta[-1]


@pytest.mark.parametrize('l2', [1e-3, 0.1])
def test_fit_matches_newtons_method_in_numpy(l2):
  rng = np.random.default_rng(0)
  num_classes, n, d = 3, 40, 4
  y = rng.integers(0, num_classes, n)
  x = rng.normal(size=(n, d)) + np.eye(num_classes, d)[y] * 1.5  # Overlapping classes.
  w, b = newton_solution(x, y, num_classes, l2)

  fitted, iterations = logistic_regression.fit(
    x.astype(np.float32),
    y.astype(np.int32),
    l2,
    logistic_regression.zeros(d, num_classes),
    tolerance=1e-6,
  )
  assert 0 < int(iterations) < 500
  np.testing.assert_allclose(fitted.w, w, atol=2e-4)
  np.testing.assert_allclose(fitted.b, b, atol=2e-4)
  expected_accuracy = np.mean(np.argmax(x @ w + b, axis=1) == y)
  assert logistic_regression.top1_accuracy(fitted, x, y) == expected_accuracy


def test_a_warm_start_reaches_the_same_solution():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60, 5)).astype(np.float32)
  y = rng.integers(0, 4, 60).astype(np.int32)
  cold, _ = logistic_regression.fit(x, y, 0.01, logistic_regression.zeros(5, 4))
  start, _ = logistic_regression.fit(x, y, 1.0, logistic_regression.zeros(5, 4))
  warm, _ = logistic_regression.fit(x, y, 0.01, start)
  np.testing.assert_allclose(warm.w, cold.w, atol=1e-4)
