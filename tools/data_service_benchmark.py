r"""The pretraining input pipeline alone, read locally and through the tf.data service with 1, 2,
... worker processes on this machine, side by side in one run (BENCHMARKS.md, "Input on the
tf.data service").

  python tools/data_service_benchmark.py --dataset=folder:/data/imagenet_like --image_size=224 \
    --batch_size=64 --workers=0,1,2 [--output=figures.json]

For each worker count it reads `--warmup` batches, then times `--batches` more, and counts the CPU
time spent meanwhile by this process and the workers (user + system, from /proc): the CPU-seconds
an image costs is what sizes a worker pool (images/s wanted x CPU-s per image = cores).
"""

import json
import os
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags

from byol.utils import console
from byol.utils import data_service
from byol.utils import dataset
from byol.utils import input_spec

flags.DEFINE_string('dataset', 'synthetic', "As byol.main_loop's --dataset.")
flags.DEFINE_string('data_dir', None, 'TFDS data folder of --dataset.')
flags.DEFINE_integer('image_size', 224, 'Side of the crops.', lower_bound=8)
flags.DEFINE_integer('batch_size', 64, 'Batch size of the host batches.', lower_bound=1)
flags.DEFINE_list('workers', ['0', '1', '2'], 'Worker counts to measure (0: read locally).')
flags.DEFINE_integer('warmup', 5, 'Batches read before timing.', lower_bound=1)
flags.DEFINE_integer('batches', 30, 'Batches timed.', lower_bound=1)
flags.DEFINE_string('output', None, 'Where to write the figures as JSON.')
FLAGS = flags.FLAGS

_CLOCK_TICKS = os.sysconf('SC_CLK_TCK')


def _cpu_seconds(pid: int) -> float:
  """User + system CPU time of process `pid` so far."""
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rpartition(')')[2].split()
  return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15).


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('localhost', 0))
    return probe.getsockname()[1]


def _start_worker(dispatcher: str) -> subprocess.Popen:
  worker = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'byol.data_service',
      '--role=worker',
      f'--dispatcher_address={dispatcher}',
      f'--port={_free_port()}',
      '--worker_host=localhost',
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  worker.stdout.readline()  # Printed once it serves.
  return worker


def measure(num_workers: int, dispatcher_address: str) -> dict:
  """Images/s and CPU-seconds per image of the pretraining pipeline with `num_workers` workers."""
  workers = [_start_worker(dispatcher_address) for _ in range(num_workers)]
  try:
    batches = dataset.load(
      input_spec.Split.TRAIN,
      preprocess_mode=input_spec.PreprocessMode.PRETRAIN,
      batch_dims=[FLAGS.batch_size],
      image_size=FLAGS.image_size,
      dataset_name=FLAGS.dataset,
      data_dir=FLAGS.data_dir,
      seed=0,
      data_service_address=dispatcher_address if num_workers else None,
    )
    for _ in range(FLAGS.warmup):
      next(batches)
    pids = [os.getpid(), *(worker.pid for worker in workers)]
    cpu_before = [_cpu_seconds(pid) for pid in pids]
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
      next(batches)
    seconds = time.perf_counter() - start
    cpu = [_cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before)]
  finally:
    for worker in workers:
      worker.kill()
      worker.wait()
  images = FLAGS.batches * FLAGS.batch_size
  return dict(
    workers=num_workers,
    images_per_s=images / seconds,
    trainer_cpu_ms_per_image=1e3 * cpu[0] / images,
    workers_cpu_ms_per_image=1e3 * sum(cpu[1:]) / images,
  )


def main(argv: list[str]) -> None:
  del argv
  console.use_clean_lines()
  counts = [int(count) for count in FLAGS.workers]
  dispatcher = data_service.start_dispatcher(0, worker_timeout_ms=2_000)
  address = dispatcher.target
  rows = []
  for count in counts:
    rows.append(measure(count, address))
    row = rows[-1]
    where = f'{count} service workers' if count else 'local (no service)'
    print(
      f'{where:>19}: {row["images_per_s"]:7.1f} images/s, CPU per image '
      f'{row["trainer_cpu_ms_per_image"]:.1f} ms in the trainer + '
      f'{row["workers_cpu_ms_per_image"]:.1f} ms in the workers',
      flush=True,
    )
  dispatcher.stop()
  print(
    f'{os.cpu_count()} CPU cores; {FLAGS.dataset}, {FLAGS.image_size} px, batch {FLAGS.batch_size}'
  )
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(
        dict(
          cpu_cores=os.cpu_count(),
          dataset=FLAGS.dataset,
          image_size=FLAGS.image_size,
          batch_size=FLAGS.batch_size,
          rows=rows,
        ),
        f,
        indent=2,
      )


if __name__ == '__main__':
  app.run(main)
