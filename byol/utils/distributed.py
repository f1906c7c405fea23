"""JAX's multi-process runtime: joining a run of several processes, and agreeing on what is read.

A run of several processes (one per host, or one per GPU) trains one model over the devices of all
of them. Each process reads its own shard of the data, but everything else must be the same on
every process: the checkpoint a train worker resumes from, the step an eval worker evaluates. Only
process 0 writes checkpoints, and only process 0 reads them: the bytes it reads are broadcast to the
others. Every process then starts from the same bytes, even while a train worker replaces the file
and even without a file system shared between the hosts.
"""

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class DistributedError(RuntimeError):
  """A run of several processes that cannot be joined."""


def initialize(
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  auto_detect: bool = False,
) -> None:
  """Joins a multi-process run; does nothing for a run of one process (no argument given).

  With `auto_detect`, what is not given is detected by JAX from the cluster's environment (a
  Cloud TPU pod, SLURM, Open MPI). Must be called before anything uses a device.
  """
  if not auto_detect and (coordinator_address, num_processes, process_id) == (None,) * 3:
    return
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  except (ValueError, RuntimeError) as error:
    raise DistributedError(
      f"Could not join the run of several processes ({error}). Give the coordinator's "
      "address (process 0's host:port), the number of processes and this process's id, or "
      'start the processes under a cluster manager that JAX detects (SLURM, Cloud TPU, '
      'Open MPI).'
    ) from None
  logging.info(
    "Process %d of %d: %d of the run's %d devices.",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def from_process_0(value: np.ndarray) -> np.ndarray:
  """Process 0's `value` on every process; each process passes an array of the same shape and type.

  Sent as raw bytes: JAX would otherwise narrow 64-bit values to 32 bits (without `jax_enable_x64`).
  """
  value = np.asarray(value)
  if jax.process_count() == 1:
    return value
  received = multihost_utils.broadcast_one_to_all(np.ravel(value).view(np.uint8))
  return np.asarray(received).view(value.dtype).reshape(value.shape)


def read_on_process_0(path: str) -> bytes | None:
  """The contents of `path` as process 0 reads them, on every process; None if it has no file.

  Raises OSError on every process when process 0 cannot read an existing file.
  """
  data, error = None, None
  if jax.process_index() == 0:
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except FileNotFoundError:
      pass
    except OSError as os_error:
      error = os_error
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return data
  # The size first (-1: no file, -2: unreadable), so that the others can receive the bytes.
  size = -2 if error is not None else -1 if data is None else len(data)
  size = int(from_process_0(np.int64(size)))
  if size == -2:
    raise error or OSError(f'Process 0 could not read {path}; see its log.')
  if size == -1:
    return None
  buffer = np.frombuffer(data, np.uint8) if data is not None else np.zeros(size, np.uint8)
  return from_process_0(buffer).tobytes()
