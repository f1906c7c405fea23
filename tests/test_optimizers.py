"""LARS against an independent numpy implementation of SPEC section 5."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from byol.utils import optimizers


def numpy_lars_step(params, grads, momenta, lr, wd, momentum, eta, include, clip=False):
  """One step of SPEC section 5 on flat dicts `{name: array}`; `include[name]` marks LARS params.
  With `clip` the trust ratio is at most 1. Returns the new parameters and momenta, and the
  unclipped trust ratio `eta * |p| / |g|` of every array it scaled."""
  new_params, new_momenta, ratios = {}, {}, {}
  for name, p in params.items():
    g = grads[name].astype(np.float64)
    p64 = p.astype(np.float64)
    if include[name]:
      g = g + wd * p64
      p_norm, g_norm = np.linalg.norm(p64), np.linalg.norm(g)
      if p_norm > 0 and g_norm > 0:
        ratios[name] = eta * p_norm / g_norm
        g = g * (min(ratios[name], 1.0) if clip else ratios[name])
    mu = momentum * momenta[name] + g
    new_momenta[name] = mu
    new_params[name] = p64 - lr * mu
  return new_params, new_momenta, ratios


def haiku_like_params(rng):
  return {
    'res_net18/~/initial_conv': {'w': rng.normal(size=(3, 3, 3, 4)).astype(np.float32)},
    'res_net18/~/initial_batchnorm': {
      'scale': rng.normal(size=(1, 1, 1, 4)).astype(np.float32),
      'offset': rng.normal(size=(1, 1, 1, 4)).astype(np.float32),
    },
    'projector/linear': {
      'w': rng.normal(size=(4, 5)).astype(np.float32),
      'b': rng.normal(size=(5,)).astype(np.float32),
    },
    'projector/batch_norm': {'scale': rng.normal(size=(1, 5)).astype(np.float32)},
    # A zero array: its trust ratio must fall back to 1.
    'classifier': {'w': np.zeros((5, 3), np.float32), 'b': np.zeros((3,), np.float32)},
  }


def flatten(tree):
  return {
    f'{module}/{name}': np.asarray(value)
    for module, values in tree.items()
    for name, value in values.items()
  }


def lars_against_numpy(params, steps, wd, momentum, eta, clip=False):
  """`optimizers.lars` (both masks `exclude_bias_and_norm`) and `numpy_lars_step`, side by side over
  `steps`, a list of (learning rate, grads). Returns both final parameters, flat, and numpy's trust
  ratios of every step."""
  include = flatten(optimizers.exclude_bias_and_norm(params))
  expected = flatten(params)
  momenta = {name: np.zeros_like(value, np.float64) for name, value in expected.items()}
  jax_params, state, ratios = jax.tree.map(jnp.asarray, params), None, []
  for lr, grads in steps:
    optimizer = optimizers.lars(
      lr,
      weight_decay=wd,
      momentum=momentum,
      eta=eta,
      weight_decay_mask=optimizers.exclude_bias_and_norm,
      trust_ratio_mask=optimizers.exclude_bias_and_norm,
      clip_trust_ratio=clip,
    )
    if state is None:
      state = optimizer.init(jax_params)
    updates, state = optimizer.update(grads, state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    expected, momenta, step_ratios = numpy_lars_step(
      expected, flatten(grads), momenta, lr, wd, momentum, eta, include, clip
    )
    ratios.append(step_ratios)
  return flatten(jax_params), expected, ratios


def assert_same_params(actual, expected):
  for name, value in actual.items():
    np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_exclude_bias_and_norm_marks_weights_only():
  mask = flatten(optimizers.exclude_bias_and_norm(haiku_like_params(np.random.default_rng(0))))
  assert mask == {
    'res_net18/~/initial_conv/w': True,
    'res_net18/~/initial_batchnorm/scale': False,
    'res_net18/~/initial_batchnorm/offset': False,
    'projector/linear/w': True,
    'projector/linear/b': False,
    'projector/batch_norm/scale': False,
    'classifier/w': True,
    'classifier/b': False,
  }


def test_lars_matches_numpy_over_several_steps_with_changing_learning_rate():
  rng = np.random.default_rng(0)
  params = haiku_like_params(rng)
  steps = []
  for step, lr in enumerate([0.5, 1.0, 0.25, 2.0]):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    if step == 1:  # A zero gradient: its trust ratio must fall back to 1 too.
      grads['res_net18/~/initial_conv']['w'] = np.zeros((3, 3, 3, 4), np.float32)
    steps.append((lr, grads))
  # A large decay, so that its effect is visible.
  actual, expected, _ = lars_against_numpy(params, steps, wd=1e-2, momentum=0.9, eta=1e-3)
  assert_same_params(actual, expected)


def test_lars_without_masks_decays_and_scales_everything():
  params = {'bn': {'b': jnp.full((4,), 2.0)}}
  grads = {'bn': {'b': jnp.full((4,), 1.0)}}
  optimizer = optimizers.lars(1.0, weight_decay=0.5, momentum=0.9, eta=0.1)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  # g = 1 + 0.5 * 2 = 2 per entry; trust ratio 0.1 * |p| / |g| = 0.1 * 4 / 4.
  np.testing.assert_allclose(updates['bn']['b'], np.full((4,), -0.2), rtol=1e-6)


def test_clipped_trust_ratio_matches_numpy_on_both_sides_of_1():
  rng = np.random.default_rng(1)
  params = haiku_like_params(rng)
  # eta 1: ratios |p| / |g| of unit-normal arrays lie on both sides of 1 once the gradients are
  # scaled by 0.5 or 2 (checked below), so the cap is both met and not.
  steps = [
    (0.1, jax.tree.map(lambda p: factor * rng.normal(size=p.shape).astype(np.float32), params))
    for factor in (0.5, 2.0, 0.5)
  ]
  actual, expected, ratios = lars_against_numpy(
    params, steps, wd=1e-2, momentum=0.9, eta=1.0, clip=True
  )
  assert {ratio > 1 for step in ratios for ratio in step.values()} == {True, False}
  assert_same_params(actual, expected)
