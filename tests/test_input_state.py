"""The training input's saved positions: taken ahead of the prefetch, restored exactly, kept few."""

import json
import os

from absl import logging
import numpy as np
import pytest

from byol.utils import dataset
from byol.utils import helpers
from byol.utils import input_state
import support  # This folder is on the path.

LAYOUT = {'dataset': 'synthetic', 'seed': 0, 'shards': [0], 'num_shards': 1}


def make_input(checkpoint_path, layout=LAYOUT):
  host_batches = support.synthetic_train_batches(dataset.PreprocessMode.LINEAR_TRAIN)
  sharding = helpers.batch_sharded(helpers.make_mesh())
  return input_state.DeviceInput(
    host_batches, sharding, checkpoint_path=checkpoint_path, layout=layout
  )


def labels(batches):
  return [np.asarray(batch['labels']).tolist() for batch in batches]


def test_a_position_taken_behind_the_prefetch_resumes_at_the_batch_that_follows_it(tmp_path):
  path = str(tmp_path / 'pretrain.pkl')
  run = make_input(path)
  assert run.request_position(3) == 3
  batches = [next(run) for _ in range(6)]  # Batches 3 and 4 were on the devices at batch 2.
  resumed = make_input(path)
  input_state.resume(resumed, 3, checkpoint_path=path)
  resumed_batches = [next(resumed) for _ in range(3)]
  for batch, batch_again in zip(batches[3:6], resumed_batches):
    for key in ('images', 'labels'):
      np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(batch_again[key]))
  with pytest.raises(ValueError, match='produced 7 batches'):
    run.request_position(6)  # Already pulled: too late to take it.


def test_the_step_0_checkpoint_resumes_after_the_batch_of_the_initialisation(tmp_path):
  path = str(tmp_path / 'pretrain.pkl')
  run = make_input(path)
  expected = [next(run) for _ in range(3)]
  resumed = make_input(path)
  input_state.resume(resumed, 1, checkpoint_path=path)  # No position saved: one batch skipped.
  assert labels([next(resumed) for _ in range(2)]) == labels(expected[1:])


def test_a_position_of_another_layout_is_not_used(tmp_path, caplog):
  path = str(tmp_path / 'pretrain.pkl')
  run = make_input(path)
  run.request_position(4)
  first = [next(run) for _ in range(5)]
  other = make_input(path, dict(LAYOUT, num_shards=2, shards=[0, 1]))
  with caplog.at_level(logging.WARNING):
    input_state.resume(other, 4, checkpoint_path=path)
  assert 'No saved input position' in caplog.text and 'starts again from its seed' in caplog.text
  assert labels([next(other)]) == labels(first[:1])


def test_only_the_newest_positions_are_kept(tmp_path):
  path = str(tmp_path / 'pretrain.pkl')
  folder = os.path.join(input_state.positions_folder(path), 'process_0_of_1')
  os.makedirs(os.path.join(folder, '.batches_9.abc'))  # Left by a write a crash stopped.
  run = make_input(path)
  for count in (2, 3, 5, 6):
    run.request_position(count)
  for _ in range(6):
    next(run)
  assert sorted(os.listdir(folder)) == ['batches_3', 'batches_5', 'batches_6']
  with open(os.path.join(folder, 'batches_6', 'layout.json')) as f:
    assert json.load(f) == LAYOUT
