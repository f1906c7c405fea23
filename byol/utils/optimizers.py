"""LARS (You et al. 2017) as used by BYOL (SPEC section 5), composed from optax transforms.

Per parameter array, in this order: weight decay `g + wd * p`; trust ratio `g * eta * |p| / |g|`
(unchanged when either norm is 0); momentum `mu = momentum * mu + g`; update `-lr * mu`.
Weight decay and the trust ratio skip biases and normalisation parameters when masked.
With `clip_trust_ratio` (not the original's; off by default) the ratio is `min(eta * |p| / |g|, 1)`.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# A mask is a pytree of booleans like the params (True: the transform applies), or a function of the
# params that returns one.
Mask = Any | Callable[[optax.Params], Any]


def exclude_bias_and_norm(params: optax.Params) -> Any:
  """Mask that is False for biases (`b`) and normalisation parameters (module path with `norm`).

  Haiku params are `{module_path: {param_name: array}}`, e.g.
  `{'res_net50/~/initial_batchnorm': {'scale': ..., 'offset': ...},
  'projector/linear': {'b': ...}}`.
  """

  def include(path: tuple[Any, ...], _: jax.Array) -> bool:
    names = [str(getattr(key, 'key', key)) for key in path]
    return not (names[-1] == 'b' or any('norm' in name for name in names[:-1]))

  return jax.tree_util.tree_map_with_path(include, params)


def scale_by_clipped_trust_ratio(eta: float) -> optax.GradientTransformation:
  """`g * min(eta * |p| / |g|, 1)` per array, `g` unchanged when either norm is 0.

  The trust ratio of short small-batch recipes (solo-learn's LARS with `clip_lr`): a parameter
  whose gradient is small next to it moves at the learning rate itself rather than by a fixed
  share `lr * eta` of its norm per step.
  """

  def scale(update: jax.Array, param: jax.Array) -> jax.Array:
    param_norm, update_norm = jnp.linalg.norm(param), jnp.linalg.norm(update)
    both = (param_norm > 0) & (update_norm > 0)
    ratio = eta * param_norm / jnp.where(both, update_norm, 1.0)
    return update * jnp.where(both, jnp.minimum(ratio, 1.0), 1.0).astype(update.dtype)

  return optax.stateless_with_tree_map(scale)


def lars(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  eta: float = 1e-3,
  weight_decay_mask: Mask | None = None,
  trust_ratio_mask: Mask | None = None,
  clip_trust_ratio: bool = False,
) -> optax.GradientTransformation:
  """LARS with momentum; `learning_rate` may be an optax schedule of the update count.

  Unlike `optax.lars`, the learning rate is applied after the momentum (the original's order, which
  matters when the rate changes between steps). `clip_trust_ratio` caps the trust ratio at 1
  (`scale_by_clipped_trust_ratio`).
  """
  if clip_trust_ratio:
    trust_ratio = scale_by_clipped_trust_ratio(eta)
  else:
    trust_ratio = optax.scale_by_trust_ratio(trust_coefficient=eta, eps=0.0)
  if trust_ratio_mask is not None:
    trust_ratio = optax.masked(trust_ratio, trust_ratio_mask)
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
    trust_ratio,
    optax.trace(decay=momentum, nesterov=False),
    optax.scale_by_learning_rate(learning_rate),
  )
