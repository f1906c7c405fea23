"""Learning-rate and target-EMA schedules of BYOL (SPEC section 5).

Both are optax schedules evaluated at the global step; the tests check them against the closed-form
formulas of the paper, so any change in optax's numbers would be caught.
"""

import jax
import optax


def learning_schedule(
  global_step: jax.typing.ArrayLike,
  batch_size: int,
  base_learning_rate: float,
  total_steps: int,
  warmup_steps: int,
) -> jax.Array:
  """Linear warm-up then cosine decay of `base_learning_rate * batch_size / 256`.

  The cosine runs over `total_steps - warmup_steps` steps counted from the end of the warm-up, and
  the rate is 0 from `total_steps` on.
  """
  if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f'Need 0 <= warmup_steps <= total_steps and total_steps > 0; got warmup_steps={warmup_steps},'
      f' total_steps={total_steps}. Lower the warm-up or train for more steps.'
    )
  scaled_learning_rate = base_learning_rate * batch_size / 256.0
  if warmup_steps == total_steps:
    # Degenerate (tiny runs): optax needs a non-empty cosine, so the rate is a pure ramp.
    return optax.linear_schedule(0.0, scaled_learning_rate, max(warmup_steps, 1))(global_step)
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=scaled_learning_rate,
    warmup_steps=warmup_steps,
    decay_steps=total_steps,
    end_value=0.0,
  )
  return schedule(global_step)


def target_ema(global_step: jax.typing.ArrayLike, base_ema: float, max_steps: int) -> jax.Array:
  """tau = 1 - (1 - base_ema) * (cos(pi * k / K) + 1) / 2, with k clipped at K = max_steps."""
  if max_steps <= 0:
    raise ValueError(f'max_steps must be positive, got {max_steps}.')
  decay = optax.cosine_decay_schedule(init_value=1.0 - base_ema, decay_steps=max_steps)
  return 1.0 - decay(global_step)
