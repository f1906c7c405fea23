"""Scalar logs: JSON lines and TensorBoard summaries of the same values."""

import glob
import json

import numpy as np
import tensorflow as tf

from byol.utils import summaries


def read_tensorboard_scalars(folder):
  """{tag: [(step, value), ...]} from the event files of `folder`."""
  scalars = {}
  for path in sorted(glob.glob(f'{folder}/events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
  return scalars


def test_scalars_are_written_as_json_lines_and_tensorboard_summaries(tmp_path):
  log = summaries.ScalarLog(str(tmp_path), 'pretrain_train')
  log.write(10, {'loss': 1.5, 'learning_rate': 0.2})
  log.write(20, {'loss': 0.75, 'learning_rate': 0.1})

  lines = [json.loads(line) for line in open(tmp_path / 'pretrain_train.jsonl')]
  assert [(line['step'], line['loss'], line['learning_rate']) for line in lines] == [
    (10, 1.5, 0.2),
    (20, 0.75, 0.1),
  ]
  scalars = read_tensorboard_scalars(tmp_path / 'tensorboard' / 'pretrain_train')
  assert scalars['loss'] == [(10, 1.5), (20, 0.75)]
  np.testing.assert_allclose([v for _, v in scalars['learning_rate']], [0.2, 0.1], rtol=1e-6)
  assert [step for step, _ in scalars['learning_rate']] == [10, 20]
