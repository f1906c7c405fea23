"""Scalar logs that people can plot: JSON lines, and TensorBoard summaries beside them.

`<folder>/<name>.jsonl` gets one `{"step": ..., "time": ..., <scalar>: ...}` object per write, and
`<folder>/tensorboard/<name>/` the same scalars as TensorBoard summaries, so that
`tensorboard --logdir <checkpoint_root>/tensorboard` plots loss, learning rate, tau and accuracies
of the train and eval workers side by side. Only process 0 writes.
"""

import json
import os
import time
from typing import Mapping

import jax

from byol.utils.tensorflow_quiet import tf


def _scalar_metadata() -> tf.compat.v1.SummaryMetadata:
  """Marks a summary as a scalar for TensorBoard's scalars dashboard.

  `tf.summary.scalar` lives in the separate `tensorboard` package; this is what it writes, with
  TensorFlow's own `tf.summary.write`, so that TensorFlow alone is enough to write the logs.
  """
  metadata = tf.compat.v1.SummaryMetadata()
  metadata.plugin_data.plugin_name = 'scalars'
  return metadata


class ScalarLog:
  """Appends scalars of a worker to `<folder>/<name>.jsonl` and `<folder>/tensorboard/<name>/`."""

  def __init__(self, folder: str, name: str):
    self._is_writer = jax.process_index() == 0
    self._json_path = os.path.join(folder, f'{name}.jsonl')
    self._summary_folder = os.path.join(folder, 'tensorboard', name)
    self._summary_writer: tf.summary.SummaryWriter | None = None  # Made on the first write.

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Records `scalars` at `step` in both forms, flushed, so a crash loses nothing written."""
    if not self._is_writer:
      return
    with open(self._json_path, 'a') as f:
      f.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
    if self._summary_writer is None:
      self._summary_writer = tf.summary.create_file_writer(self._summary_folder)
    with self._summary_writer.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.write(name, tf.constant(value, tf.float32), metadata=_scalar_metadata())
    self._summary_writer.flush()
