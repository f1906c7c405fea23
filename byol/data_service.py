r"""Runs a tf.data service dispatcher or worker for `byol.main_loop --data_service_address`.

One dispatcher per run, then workers on any machines with CPUs to spare (each reads the dataset
at the same path as the trainers: a shared file system or a copy):

  python -m byol.data_service --role=dispatcher --port=5050 [--work_dir=/shared/dispatcher]
  python -m byol.data_service --role=worker --dispatcher_address=HOST:5050 --port=5051
  python -m byol.main_loop ... --data_service_address=grpc://HOST:5050

Each serves until it is stopped (Ctrl-C, SIGTERM). `--work_dir` makes the dispatcher
fault-tolerant: restarted on the same folder, it resumes the jobs it was serving.
"""

import socket
import sys
import time

from absl import app
from absl import flags

from byol.utils import console
from byol.utils import data_service

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The launcher's flags, defined when it runs as a program only (the tests import it)."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_enum('role', None, ['dispatcher', 'worker'], 'What to run.', **define)
  flags.DEFINE_integer(
    'port',
    None,
    f'Port to serve on (default {data_service.DEFAULT_DISPATCHER_PORT} for the dispatcher, '
    f'{data_service.DEFAULT_WORKER_PORT} for a worker).',
    lower_bound=1,
    upper_bound=65535,
    **define,
  )
  flags.DEFINE_string(
    'work_dir',
    None,
    'Dispatcher: a folder where it journals its state (fault-tolerant mode), on storage that '
    'outlives the machine.',
    **define,
  )
  flags.DEFINE_float(
    'worker_timeout',
    10.0,
    'Dispatcher: seconds without a heartbeat after which a worker is dropped.',
    lower_bound=0.1,
    **define,
  )
  flags.DEFINE_string('dispatcher_address', None, "Worker: the dispatcher's HOST:PORT.", **define)
  flags.DEFINE_string(
    'worker_host',
    None,
    'Worker: the host name or address the trainers reach this worker at (default: this '
    "machine's name).",
    **define,
  )
  flags.mark_flag_as_required('role', flag_values=flag_values)
  flags.register_multi_flags_validator(
    ['role', 'dispatcher_address'],
    lambda values: values['role'] != 'worker' or values['dispatcher_address'] is not None,
    message='--role=worker needs --dispatcher_address=HOST:PORT of the dispatcher.',
    **define,
  )


def _start() -> tuple[object, str]:
  """The started server of `--role`, and a line that says where it serves."""
  if FLAGS.role == 'dispatcher':
    port = FLAGS.port or data_service.DEFAULT_DISPATCHER_PORT
    server = data_service.start_dispatcher(
      port, work_dir=FLAGS.work_dir, worker_timeout_ms=int(FLAGS.worker_timeout * 1000)
    )
    mode = f'fault-tolerant, journal in {FLAGS.work_dir}' if FLAGS.work_dir else 'in memory'
    here = f'{socket.getfqdn()}:{port}'
    return server, (
      f'tf.data service dispatcher on port {port} ({mode}). Workers: python -m byol.data_service '
      f'--role=worker --dispatcher_address={here}; trainers: --data_service_address=grpc://{here}'
    )
  dispatcher = data_service.check_reachable(FLAGS.dispatcher_address, flag='--dispatcher_address')
  port = FLAGS.port or data_service.DEFAULT_WORKER_PORT
  host = FLAGS.worker_host or socket.getfqdn()
  server = data_service.start_worker(dispatcher, port=port, host=host)
  return server, f'tf.data service worker at {host}:{port}, registered with {dispatcher.host_port}'


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  console.use_clean_lines()
  try:
    server, line = _start()
    print(line, flush=True)
    # Not `server.join()`: it blocks in C++, where Python never sees Ctrl-C. SIGTERM (a job
    # scheduler's stop) ends the process, and the server with it.
    while True:
      time.sleep(3600)
  except data_service.DataServiceError as error:
    sys.exit(f'error: {error}')
  except KeyboardInterrupt:  # Ctrl-C: stop serving, quietly.
    pass


if __name__ == '__main__':
  define_flags()
  app.run(main)
