"""Training input through the tf.data service: a dispatcher here, two worker processes on loopback
(started with `python -m byol.data_service`, as a user would)."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from byol import workers
from byol.utils import data_service
from byol.utils import dataset
import support  # This folder is on the path.

NUM_EXAMPLES = 12  # One image per class: an example's label names it.
BATCH_SIZE = 4


class Service:
  """A dispatcher in this process and worker processes registered with it."""

  def __init__(self, num_workers: int):
    self.dispatcher = data_service.start_dispatcher(support.free_port(), worker_timeout_ms=1_000)
    self.address = self.dispatcher.target
    self.workers = [self._start_worker() for _ in range(num_workers)]

  def _start_worker(self) -> subprocess.Popen:
    worker = subprocess.Popen(
      [
        sys.executable,
        '-m',
        'byol.data_service',
        '--role=worker',
        f'--dispatcher_address={self.address}',
        f'--port={support.free_port()}',
        '--worker_host=localhost',
      ],
      env=support.environment(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    line = worker.stdout.readline()  # Printed once it serves.
    assert line.startswith('tf.data service worker at localhost:'), line
    return worker

  def replace_worker(self, index: int) -> None:
    """Kills worker `index` (as a crashed machine would stop) and starts another in its place."""
    self.workers[index].kill()
    self.workers[index].wait()
    self.workers[index] = self._start_worker()

  def stop(self) -> None:
    for worker in self.workers:
      worker.kill()
      worker.wait()
    self.dispatcher.stop()


@pytest.fixture(scope='module')
def service():
  running = Service(num_workers=2)
  yield running
  running.stop()


@pytest.fixture(scope='module')
def unique_labels(tmp_path_factory):
  """A folder dataset whose every training image is its own class."""
  root = tmp_path_factory.mktemp('unique')
  classes = {f'class_{index:02d}': 1 for index in range(NUM_EXAMPLES)}
  return support.write_image_folder(root, {'train': classes, 'val': classes})


def load_through(service, dataset_name, **kwargs):
  return dataset.load(
    dataset.Split.TRAIN_AND_VALID,
    preprocess_mode=dataset.PreprocessMode.LINEAR_TRAIN,
    image_size=16,
    dataset_name=dataset_name,
    data_service_address=service.address,
    **kwargs,
  )


def test_every_example_reaches_the_trainer_and_each_device_its_own_shard(service, unique_labels):
  # Two shards (devices) of 6 examples, 2 rows of each batch apiece.
  batches = load_through(
    service, unique_labels, batch_dims=[BATCH_SIZE], shards=[0, 1], num_shards=2
  )
  received = [next(batches) for _ in range(2 * NUM_EXAMPLES // BATCH_SIZE)]
  labels = np.stack([batch['labels'] for batch in received])
  # Each worker shuffles within its passes over a shard, so whichever worker sent how many of
  # these two passes' worth, one of them sent a whole pass: every example arrives, at most 3
  # times (e.g. a pass and a half from one worker and half a pass from the other).
  counts = np.bincount(labels.ravel(), minlength=NUM_EXAMPLES)
  assert counts.min() >= 1 and counts.max() <= 3, counts
  # The folder lists its images in a fixed shuffled order: shard 0 is the first 6 of it.
  _, listed_labels = dataset.split_labels(dataset.Split.TRAIN_AND_VALID, unique_labels)
  assert set(labels[:, :2].ravel()) == set(listed_labels[:6])  # Shard 0's rows: its examples.
  assert set(labels[:, 2:].ravel()) == set(listed_labels[6:])
  assert not batches.saveable
  # Sent as 8-bit images, received as float32 in [0, 1], as the local pipeline delivers them.
  images = np.stack([batch['images'] for batch in received])
  assert images.dtype == np.float32 and images.shape == (6, BATCH_SIZE, 16, 16, 3)
  np.testing.assert_allclose(images * 255, np.round(images * 255), atol=1e-4)
  assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.1


def pretrain_through(service, folder, steps):
  """A tiny pretraining run through the service to `steps`; the steps it logged, in order."""
  config = support.pretrain_config(
    folder,
    overrides=[
      f'max_steps={steps}',
      'lr_schedule_config.warmup_steps=0',
      f'dataset_config.data_service_address={service.address}',
    ],
  )
  workers.train_loop(config, 'pretrain', log_interval=0)
  with open(os.path.join(folder, 'pretrain_train.jsonl')) as f:
    logged = [json.loads(line) for line in f]
  assert all(np.isfinite(scalars['loss']) for scalars in logged)
  return [scalars['step'] for scalars in logged]


def test_a_run_trains_checkpoints_and_resumes_through_the_service(service, tmp_path):
  pretrain_through(service, tmp_path, 3)
  steps = pretrain_through(service, tmp_path, 5)  # Resumes from step 3's checkpoint.
  assert steps[0] < 3 and steps[-1] == 5 and steps == sorted(steps), steps
  # The service's batches have no position to keep beside the checkpoints.
  assert not os.path.exists(tmp_path / 'pretrain.pkl.input')


def test_a_run_goes_on_when_a_worker_dies_mid_run(service, tmp_path, monkeypatch):
  pulled = 0
  take = dataset.HostBatches.__next__

  def next_batch(batches):
    nonlocal pulled
    pulled += 1
    if pulled == 3:
      service.replace_worker(1)  # Killed; the new one joins the next jobs.
    return take(batches)

  monkeypatch.setattr(dataset.HostBatches, '__next__', next_batch)
  assert pretrain_through(service, tmp_path, 8)[-1] == 8
  assert pulled >= 9  # The initialisation's batch and the 8 steps', at least.


def test_an_address_nothing_answers_at_stops_within_the_timeout():
  address = f'grpc://localhost:{support.free_port()}'
  start = time.monotonic()
  with pytest.raises(
    data_service.DataServiceError, match=f'answers at --data_service_address={address}'
  ):
    data_service.check_reachable(address, timeout_s=1.0)
  assert time.monotonic() - start < 5


@pytest.mark.parametrize(
  'address, fragments',
  [
    ('grpc://dispatcher', ['--data_service_address must be grpc://HOST:PORT']),
    ('grpc://no-such-host.invalid:5050', ['no-such-host.invalid:5050', 'does not resolve']),
  ],
)
def test_a_bad_address_is_one_clear_error(tmp_path, address, fragments):
  code, output = support.run_main_loop(
    '--dataset=synthetic',
    '--encoder=TinyResNet',
    '--batch_size=8',
    '--max_steps=2',
    f'--checkpoint_root={tmp_path}',
    f'--data_service_address={address}',
  )
  support.assert_one_clear_error(code, output, *fragments)


def test_the_launcher_refuses_a_taken_port(service):
  port = service.address.rpartition(':')[2]
  result = subprocess.run(
    [sys.executable, '-m', 'byol.data_service', '--role=dispatcher', f'--port={port}'],
    env=support.environment(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  support.assert_one_clear_error(result.returncode, result.stderr, f'Port {port} is taken')


def test_a_dispatcher_restarts_at_once_on_the_port_of_one_that_just_stopped(tmp_path):
  # A server that closed its connections first leaves them in TIME_WAIT on its port for a minute.
  with socket.create_server(('localhost', 0)) as server:
    port = server.getsockname()[1]
    client = socket.create_connection(('localhost', port))
    connection, _ = server.accept()
    connection.close()
  client.close()
  # Fault-tolerant mode restarts a dispatcher on the same port and journal at once.
  dispatcher = data_service.start_dispatcher(port, work_dir=str(tmp_path))
  dispatcher.stop()
