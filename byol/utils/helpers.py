"""Losses, metrics and device helpers shared by the pretraining and evaluation experiments."""

import collections
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Name of the single mesh axis over which the batch is split (data parallelism).
DATA_AXIS = 'data'


def l2_normalize(x: jax.Array, axis: int | None = None, epsilon: float = 1e-12) -> jax.Array:
  """x / ||x||, with `epsilon` as a floor on the squared norm (so zero vectors stay zero)."""
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, epsilon))


def regression_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """|| x/||x|| - y/||y|| ||^2 per example: [B, D] x [B, D] -> [B]."""
  normed_x = l2_normalize(x, axis=-1)
  normed_y = l2_normalize(y, axis=-1)
  return jnp.sum(jnp.square(normed_x - normed_y), axis=-1)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy per example of `logits` [B, C] against one-hot `labels` [B, C] -> [B]."""
  return -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)


def topk_accuracy(logits: jax.Array, labels: jax.Array, topk: int) -> jax.Array:
  """1.0 where the true class is among the `topk` largest logits, else 0.0: [B, C], [B] -> [B].

  A tie counts against the true class: it is among the top k only if fewer than k other logits are
  at least as large (or NaN). So a dead output, all logits equal, is never correct, and neither is
  a NaN; unlike an argsort, the result does not depend on an arbitrary order of tied classes.
  """
  true_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)  # [B, 1]
  # `~(x < y)` is `x >= y` that also holds for NaN; the true class counts itself once.
  num_others_not_smaller = jnp.sum(~(logits < true_logit), axis=-1) - 1  # [B]
  return (num_others_not_smaller < topk).astype(jnp.float32)


# ----------------------------------------------------------------------------- devices and batches


def make_mesh() -> Mesh:
  """A one-axis mesh over every device of every process: the batch is split along `DATA_AXIS`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def local_shards(mesh: Mesh) -> tuple[list[int], int]:
  """Which shards of the data this process reads: its devices' positions along the batch axis.

  Returns the positions and their number (the device count), in the layout of
  `jax.make_array_from_process_local_data`: a process's part of a global batch is the rows of
  its devices, in the mesh's order.
  """
  devices = list(mesh.devices.flat)
  positions = [
    index for index, device in enumerate(devices) if device.process_index == jax.process_index()
  ]
  return positions, len(devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays held whole by every device (parameters, optimiser and BN state)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays split along their leading (batch) dimension over all devices."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


class BatchSizeError(ValueError):
  """A batch size that does not split evenly over the devices."""


def check_batch_size(batch_size: int) -> None:
  """Raises BatchSizeError unless `batch_size` splits evenly over all devices of all processes."""
  num_devices = jax.device_count()
  if batch_size <= 0 or batch_size % num_devices:
    raise BatchSizeError(
      f'batch_size={batch_size} must be a positive multiple of the number of devices '
      f'({num_devices} over {jax.process_count()} process(es)). Pick e.g. '
      f'{max(num_devices, batch_size - batch_size % num_devices)}.'
    )


def round_up_to_devices(batch_size: int) -> int:
  """The smallest multiple of the device count (over all processes) that is at least `batch_size`.

  For evaluation batches: evaluation pads and masks its last batches, so a larger batch changes
  nothing but speed, while a preset's batch (e.g. 25) need not divide 2, 4 or 8 devices.
  """
  if batch_size <= 0:
    raise BatchSizeError(f'The evaluation batch size must be positive, got {batch_size}.')
  num_devices = jax.device_count()
  return -(-batch_size // num_devices) * num_devices


def to_global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  """Assembles this process's share of a batch into global arrays split over `sharding`'s mesh."""
  return {
    key: jax.make_array_from_process_local_data(sharding, value)
    for key, value in local_batch.items()
  }


def prefetch_to_device(
  local_batches: Iterable[Mapping[str, np.ndarray]],
  sharding: NamedSharding,
  size: int = 2,
  before_pull: Callable[[int], None] | None = None,
) -> Iterator[dict]:
  """Yields global device batches, keeping `size` transfers in flight ahead of the consumer.

  Transfers are asynchronous, so the host-to-device copy of the next batches overlaps the step that
  runs on the current one. `before_pull(n)`, if given, is called before the n-th batch (from 0) is
  taken from `local_batches`: the place to save the position of an input (`input_state`).
  """
  queue = collections.deque()
  iterator = iter(local_batches)
  pulled = 0

  def enqueue(count: int) -> None:
    nonlocal pulled
    for _ in range(count):
      if before_pull is not None:
        before_pull(pulled)
      try:
        local_batch = next(iterator)
      except StopIteration:
        return
      pulled += 1
      queue.append(to_global_batch(local_batch, sharding))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


def to_host(tree: Any) -> Any:
  """Copies a pytree of (replicated) device arrays to host numpy arrays."""
  return jax.tree.map(np.asarray, jax.device_get(tree))
