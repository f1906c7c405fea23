"""LARS (You et al. 2017) as used by BYOL (SPEC section 5), composed from optax transforms.

Per parameter array, in this order: weight decay `g + wd * p`; trust ratio `g * eta * |p| / |g|`
(unchanged when either norm is 0); momentum `mu = momentum * mu + g`; update `-lr * mu`.
Weight decay and the trust ratio skip biases and normalisation parameters when masked.
"""

from typing import Any, Callable

import jax
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


def lars(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  eta: float = 1e-3,
  weight_decay_mask: Mask | None = None,
  trust_ratio_mask: Mask | None = None,
) -> optax.GradientTransformation:
  """LARS with momentum; `learning_rate` may be an optax schedule of the update count.

  Unlike `optax.lars`, the learning rate is applied after the momentum (the original's order, which
  matters when the rate changes between steps).
  """
  trust_ratio = optax.scale_by_trust_ratio(trust_coefficient=eta, eps=0.0)
  if trust_ratio_mask is not None:
    trust_ratio = optax.masked(trust_ratio, trust_ratio_mask)
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
    trust_ratio,
    optax.trace(decay=momentum, nesterov=False),
    optax.scale_by_learning_rate(learning_rate),
  )
