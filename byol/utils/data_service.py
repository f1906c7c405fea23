"""tf.data service: the training input's reading, decoding and cropping on other machines' CPUs.

A dispatcher (`start_dispatcher`) and any number of workers (`start_worker`) form the service; a
trainer's input pipeline is shipped to it (`distribute`) and comes back as finished host batches.
TensorFlow's engine does the work; this module chooses how it is used:

- **No sharding (`ShardingPolicy.OFF`).** Every worker runs the trainer process's whole pipeline
  (its own shards, `byol.utils.dataset.load`) with random seeds of its own, and the trainer takes
  batches from whichever worker has one ready. Dynamic sharding would hand each example to one
  worker only, but it needs a pipeline with a single splittable source, and ours zips each shard's
  examples with a stream of crop seeds and interleaves the shards of a process.
- **One job per trainer process.** Each process registers its own pipeline; workers serve all of
  them, so one pool of workers feeds every host of a run.
- **Workers may die.** A trainer keeps reading from the others; the batches a dead worker had
  buffered are lost, nothing else.

The address is checked before anything is shipped: TensorFlow's client retries an unreachable
dispatcher forever, which looks like a hung trainer.
"""

import re
import socket
import time
from typing import NamedTuple

from byol.utils import input_spec
from byol.utils.tensorflow_quiet import tf

DEFAULT_DISPATCHER_PORT = 5050
DEFAULT_WORKER_PORT = 5051
# How long a trainer waits for the dispatcher's port to open: long enough for a dispatcher
# started at the same time as the trainers (one job script), short enough to report a wrong
# address before anyone wonders whether training hangs.
CONNECT_TIMEOUT_S = 60.0
_ADDRESS = re.compile(r'^(?:grpc://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d{1,5})$')


class DataServiceError(input_spec.DatasetError):
  """A tf.data service address that is malformed or that nothing answers at."""


class Address(NamedTuple):
  """A dispatcher's or a worker's host and port."""

  host: str
  port: int

  @property
  def target(self) -> str:
    """The form TensorFlow's client takes: 'grpc://host:port'."""
    return f'grpc://{self.host}:{self.port}'

  @property
  def host_port(self) -> str:
    """The form a worker's config takes: 'host:port'."""
    return f'{self.host}:{self.port}'


def parse_address(text: str, flag: str = '--data_service_address') -> Address:
  """`grpc://host:port` (or `host:port`) as an `Address`; a DataServiceError naming `flag` and the
  expected form for anything else."""
  match = _ADDRESS.match(text.strip())
  port = int(match['port']) if match else 0
  if not match or not 0 < port < 65536:
    raise DataServiceError(
      f'{flag}={text!r} is not a tf.data service address: give grpc://HOST:PORT, e.g. '
      f'grpc://10.0.0.5:{DEFAULT_DISPATCHER_PORT}.'
    )
  return Address(match['host'], port)


def check_reachable(
  text: str, timeout_s: float = CONNECT_TIMEOUT_S, flag: str = '--data_service_address'
) -> Address:
  """The dispatcher `Address` of `text` once a TCP connection to it succeeds.

  Retries a refused or timed-out connection (a dispatcher still starting) for `timeout_s`; a host
  name that does not resolve fails at once. Raises DataServiceError naming `flag`, the address and
  how to start a dispatcher there.
  """
  address = parse_address(text, flag)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      connect_to = (address.host.strip('[]'), address.port)  # An IPv6 host without brackets.
      with socket.create_connection(connect_to, timeout=max(1.0, min(5.0, timeout_s))):
        return address
    except socket.gaierror as error:
      reason = f'its host does not resolve ({error.strerror})'
      break
    except OSError as error:
      reason = f'{error.strerror or error} for {timeout_s:.0f} s'
      if time.monotonic() >= deadline:
        break
      time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
  raise DataServiceError(
    f'No tf.data service dispatcher answers at {flag}={text}: '
    f'{reason}. Start one there with `python -m byol.data_service --role=dispatcher '
    f'--port={address.port}` and workers with `--role=worker '
    f'--dispatcher_address={address.host_port}`.'
  )


def distribute(ds: tf.data.Dataset, address: Address) -> tf.data.Dataset:
  """`ds` produced by the service's workers, each running all of it (see the module docstring)."""
  service = tf.data.experimental.service
  return ds.apply(
    service.distribute(processing_mode=service.ShardingPolicy.OFF, service=address.target)
  )


def _check_port_free(port: int) -> None:
  """Raises DataServiceError if something listens on `port` already: gRPC shares a port between
  servers (SO_REUSEPORT), so a second dispatcher or worker on it would start without complaint
  and take some of the first one's connections."""
  if port == 0:
    return
  with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
    # Not refused for the closed connections of a server that just stopped (TIME_WAIT): a
    # dispatcher restarted at once on its port, as fault-tolerant mode has it, must start.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(('', port))
    except OSError as error:
      raise DataServiceError(
        f'Port {port} is taken ({error.strerror}): a dispatcher or worker may already run '
        'here; choose another with --port.'
      ) from None


def start_dispatcher(
  port: int, *, work_dir: str | None = None, worker_timeout_ms: int = 10_000
) -> tf.data.experimental.service.DispatchServer:
  """A started dispatcher on `port` (0: any free port, see its `.target`).

  With `work_dir` it journals its state there (fault-tolerant mode): a dispatcher restarted on the
  same folder resumes the jobs it was serving. A worker silent for `worker_timeout_ms` is
  dropped.
  """
  _check_port_free(port)
  service = tf.data.experimental.service
  return service.DispatchServer(
    service.DispatcherConfig(
      port=port,
      work_dir=work_dir,
      fault_tolerant_mode=work_dir is not None,
      worker_timeout_ms=worker_timeout_ms,
    )
  )


def start_worker(
  dispatcher: Address, *, port: int, host: str, heartbeat_interval_ms: int = 1_000
) -> tf.data.experimental.service.WorkerServer:
  """A started worker on `port` that registers with `dispatcher` and that trainers reach at
  `host:port`; it runs the pipelines it is given (their files must be readable here, at the same
  paths as on the trainers)."""
  _check_port_free(port)
  service = tf.data.experimental.service
  return service.WorkerServer(
    service.WorkerConfig(
      dispatcher_address=dispatcher.host_port,
      worker_address=f'{host}:{port}',
      port=port,
      heartbeat_interval_ms=heartbeat_interval_ms,
    )
  )
