"""L2-regularised multinomial logistic regression on fixed features: the transfer probe.

The paper's transfer protocol (section 4.3, after Kornblith et al. 2019): a linear classifier on
frozen features, its regularisation chosen on a validation split. `fit` minimises

  mean_i CE(softmax(x_i W + b), y_i) + (l2 / 2) * ||W||^2      (the bias b is not regularised)

over the whole training set at once with L-BFGS (`optax.lbfgs`, zoom line search). The problem is
smooth and, for l2 > 0, strictly convex in W: its solution is unique, and the stopping rule (the
gradient's norm, or an iteration cap) decides only how close the solver gets to it.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Classifier(NamedTuple):
  """A linear classifier: logits = features @ w + b."""

  w: jax.Array  # [D, C]
  b: jax.Array  # [C]


def objective(
  classifier: Classifier, features: jax.Array, labels: jax.Array, l2: jax.typing.ArrayLike
) -> jax.Array:
  """Mean cross-entropy of `classifier` on features [N, D], labels [N], plus (l2 / 2) ||w||^2."""
  logits = features @ classifier.w + classifier.b  # [N, C]
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [N]
  return jnp.mean(cross_entropy) + 0.5 * l2 * jnp.sum(classifier.w**2)


@functools.partial(jax.jit, static_argnames=('max_iterations',))
def fit(
  features: jax.Array,
  labels: jax.Array,
  l2: jax.typing.ArrayLike,
  start: Classifier,
  *,
  max_iterations: int = 500,
  tolerance: float = 1e-6,
) -> tuple[Classifier, jax.Array]:
  """The minimiser of `objective`, from `start` (zeros, or a nearby solution to warm-start).

  Returns it and the iterations taken: L-BFGS stops once the gradient's norm is below `tolerance`
  or after `max_iterations`.
  """

  def value_fn(classifier: Classifier) -> jax.Array:
    return objective(classifier, features, labels, l2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(value_fn)

  def step(carry: tuple[Classifier, optax.OptState]) -> tuple[Classifier, optax.OptState]:
    classifier, state = carry
    value, grad = value_and_grad(classifier, state=state)
    updates, state = solver.update(
      grad, state, classifier, value=value, grad=grad, value_fn=value_fn
    )
    return optax.apply_updates(classifier, updates), state

  def unfinished(carry: tuple[Classifier, optax.OptState]) -> jax.Array:
    _, state = carry
    count = optax.tree.get(state, 'count')
    grad = optax.tree.get(state, 'grad')
    return (count == 0) | ((count < max_iterations) & (optax.tree.norm(grad) >= tolerance))

  classifier, state = jax.lax.while_loop(unfinished, step, (start, solver.init(start)))
  return classifier, optax.tree.get(state, 'count')


def zeros(dimension: int, num_classes: int) -> Classifier:
  """The all-zero classifier [D, C], [C]: every class equally likely."""
  return Classifier(jnp.zeros((dimension, num_classes)), jnp.zeros((num_classes,)))


def top1_accuracy(classifier: Classifier, features: np.ndarray, labels: np.ndarray) -> float:
  """The share of `features` [N, D] whose highest logit is their label [N]."""
  logits = np.asarray(features @ np.asarray(classifier.w) + np.asarray(classifier.b))
  return float(np.mean(np.argmax(logits, axis=-1) == labels))
