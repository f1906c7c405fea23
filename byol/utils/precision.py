"""Mixed precision: the networks compute in bfloat16 while parameters and statistics stay float32.

`mixed_precision(compute_dtype)` makes Haiku modules create float32 parameters and read them in the
compute dtype; `BatchNorm` keeps its statistics and arithmetic in float32 whatever its input.
"""

from collections.abc import Callable, Iterator, Sequence
import contextlib
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

# Dtypes the networks can compute in (`mixed_precision`); parameters are float32 in all of them.
COMPUTE_DTYPES = ('float32', 'bfloat16')


class BatchNorm(hk.BatchNorm):
  """`hk.BatchNorm` computed in float32 whatever its input's dtype; returns the input's dtype.

  Under a bfloat16 compute dtype, batch statistics, moving averages, scale and offset all stay
  float32: bfloat16's 8-bit mantissa would lose small variances and the averages' slow updates.
  On float32 inputs it is exactly `hk.BatchNorm` (same default name, parameters and values).
  """

  def __call__(
    self, inputs: jax.Array, is_training: bool, test_local_stats: bool = False, **kwargs: Any
  ) -> jax.Array:
    outputs = super().__call__(inputs.astype(jnp.float32), is_training, test_local_stats, **kwargs)
    return outputs.astype(inputs.dtype)


def check_compute_dtype(compute_dtype: str) -> None:
  """Raises a ValueError unless `compute_dtype` is one of COMPUTE_DTYPES."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'Unknown compute dtype {compute_dtype!r}; use one of {COMPUTE_DTYPES}.')


@contextlib.contextmanager
def mixed_precision(compute_dtype: str) -> Iterator[None]:
  """Within it, Haiku modules compute in `compute_dtype` while their parameters stay float32.

  Parameters are created in float32 (so their initial values do not depend on the compute dtype)
  and read as `compute_dtype`, except BatchNorm's (see `BatchNorm`); gradients, the optimiser
  state and checkpoints therefore stay float32. The caller casts the inputs to `compute_dtype`
  and the outputs back. With 'float32' it changes nothing.
  """
  check_compute_dtype(compute_dtype)
  if compute_dtype == 'float32':
    yield
    return

  def create_in_float32(
    next_creator: Callable[..., jax.Array],
    shape: Sequence[int],
    dtype: Any,
    init: hk.initializers.Initializer,
    context: hk.GetterContext,
  ) -> jax.Array:
    del context
    dtype = jnp.float32 if jnp.issubdtype(dtype, jnp.floating) else dtype
    return next_creator(shape, dtype, init)

  def read_in_compute_dtype(
    next_getter: Callable[[jax.Array], jax.Array], value: jax.Array, context: hk.GetterContext
  ) -> jax.Array:
    value = next_getter(value)
    if isinstance(context.module, hk.BatchNorm) or value.dtype != jnp.float32:
      return value
    return value.astype(compute_dtype)

  with hk.custom_creator(create_in_float32), hk.custom_getter(read_in_compute_dtype):
    yield
