"""The training input, on the devices, with a position that checkpoints keep (exact resume).

A run resumed from the checkpoint of step `s` is fed the batches an uninterrupted run would have
fed to steps `s + 1, s + 2, ...`. Each process saves where its input pipeline stands with tf.data's
own iterator checkpointing (`dataset.HostBatches`), beside the experiment checkpoint, named by the
count of batches the run had used (`s + 1` at step `s`: the initialisation takes one):

  <checkpoint file>.input/process_<i>_of_<n>/batches_<count>/
      layout.json, position.index, position.data-00000-of-00001

Restoring reads the read positions, shuffle buffers and batches in flight back (Imagenette at
128 px, batch 64: 57 MB, written in 0.3-0.5 s and read in 0.4 s on 2 cores) instead of producing
the `s` batches again, so resuming costs the same after a million steps as after ten.

Batches run ahead of the consumer: `size` are copied to the devices before they are needed, so the
pipeline has produced more batches than the experiment has trained on. A position is therefore
taken at a pull, before the batch that follows it is produced, when the training loop asked for it
ahead of time (`request_position`); the checkpoint of the step that is fed that batch next is then
written with it. The batches on the devices at that moment are neither lost nor fed twice.

Batches from the tf.data service have no position to save (`HostBatches.saveable`): nothing is
written, and a resumed run reads a new stream of the same shards from the service.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Mapping

from absl import logging
import jax
from jax.sharding import NamedSharding

from byol.utils import checkpointing
from byol.utils import dataset
from byol.utils import helpers

# Positions kept per process: the newest checkpoint's, and those of the checkpoints that may still
# be on disk while a newer one is written (a write in the background, a write a crash stopped).
_POSITIONS_KEPT = 3
_COUNT_PREFIX = 'batches_'
_LAYOUT_FILE = 'layout.json'
_POSITION_PREFIX = 'position'


def positions_folder(checkpoint_path: str) -> str:
  """Where the input positions of the checkpoint at `checkpoint_path` are saved."""
  return checkpoint_path + '.input'


def _process_folder(checkpoint_path: str) -> str:
  return os.path.join(
    positions_folder(checkpoint_path), f'process_{jax.process_index()}_of_{jax.process_count()}'
  )


class DeviceInput:
  """Global device batches of this process's input pipeline, copied `size` batches ahead
  (`helpers.prefetch_to_device`), whose position can be saved and restored.

  Counts the batches the pipeline has produced, from the start of the run (not of this process).
  `request_position` asks for the position after a given count to be written under
  `checkpoint_path`'s positions folder when the pipeline gets there; `resume` reads one back.
  """

  def __init__(
    self,
    host_batches: dataset.HostBatches,
    sharding: NamedSharding,
    *,
    checkpoint_path: str,
    layout: Mapping[str, Any],
    size: int = 2,
  ):
    """`host_batches` is the pipeline at its start; `layout` describes it (dataset, split,
    shards, seed, ...): a saved position is only restored into a pipeline of the same layout."""
    self._host_batches = host_batches
    self._sharding = sharding
    self._folder = _process_folder(checkpoint_path)
    self._layout = json.loads(json.dumps(dict(layout)))  # As it reads back from the file.
    self._size = size
    self._device_batches: Iterator[dict] | None = None  # Started by the first `next`.
    self._next_pull = 0  # Batches the pipeline has produced, in the whole run.
    self._requested: set[int] = set()  # Counts after which to save the position.

  def __iter__(self) -> 'DeviceInput':
    return self

  def __next__(self) -> dict:
    if self._device_batches is None:
      first = self._next_pull

      def before_pull(pulled: int) -> None:
        count = first + pulled
        if count in self._requested:
          self._requested.discard(count)
          self._save_position(count)
        self._next_pull = count + 1

      self._device_batches = helpers.prefetch_to_device(
        self._host_batches, self._sharding, size=self._size, before_pull=before_pull
      )
    return next(self._device_batches)

  @property
  def next_position(self) -> int:
    """The earliest position that can still be saved: after the batches produced so far."""
    return self._next_pull

  def request_position(self, count: int) -> int:
    """Asks for the position after `count` batches to be saved when the pipeline gets there (at
    least `next_position`); returns `count`."""
    if count < self._next_pull:
      raise ValueError(
        f'The input has produced {self._next_pull} batches; the position after {count} is past.'
      )
    self._requested.add(count)
    return count

  def _save_position(self, count: int) -> None:
    """Writes the position after `count` batches to its folder, atomically (a temporary
    folder renamed into place), then removes the oldest positions."""
    if not self._host_batches.saveable:
      return
    final = os.path.join(self._folder, f'{_COUNT_PREFIX}{count}')
    temporary = None
    try:
      os.makedirs(self._folder, exist_ok=True)
      for name in os.listdir(self._folder):  # Left by a write a crash stopped.
        if name.startswith(f'.{_COUNT_PREFIX}'):
          shutil.rmtree(os.path.join(self._folder, name), ignore_errors=True)
      temporary = tempfile.mkdtemp(dir=self._folder, prefix=f'.{_COUNT_PREFIX}{count}.')
      with open(os.path.join(temporary, _LAYOUT_FILE), 'w') as f:
        json.dump(self._layout, f, sort_keys=True)
      self._host_batches.save(os.path.join(temporary, _POSITION_PREFIX))
      # On the disk before the checkpoint that needs it, as durable as that checkpoint.
      for name in os.listdir(temporary):
        checkpointing.sync(os.path.join(temporary, name))
      checkpointing.sync(temporary)
      if os.path.exists(final):  # The same position, saved by an earlier attempt at this run.
        shutil.rmtree(final)
      os.replace(temporary, final)
      checkpointing.sync(self._folder)
    except (OSError, dataset.DatasetError) as error:
      if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
      raise checkpointing.CheckpointError(
        f'Cannot save the input position to {self._folder} ({error}); the last checkpoint is '
        'intact. Free space there or pass a writable --checkpoint_root, then start the run '
        'again: it resumes from that checkpoint.'
      ) from None
    counts = sorted(_saved_counts(self._folder), reverse=True)
    for count in counts[_POSITIONS_KEPT:]:
      shutil.rmtree(os.path.join(self._folder, f'{_COUNT_PREFIX}{count}'), ignore_errors=True)

  def restore(self, count: int) -> bool:
    """Moves a pipeline that has produced nothing yet to where it stood after `count` batches,
    from the saved position; returns False (and stays at its start) when there is none for this
    layout. Input from the tf.data service has no position: it only counts on from `count`."""
    if self._device_batches is not None:
      raise RuntimeError('Restore the input before taking batches from it.')
    if not self._host_batches.saveable:
      logging.info(
        'Resuming after %d batches on input from the tf.data service, which keeps no position: '
        'it sends a new random stream of the same shards.',
        count,
      )
      self._next_pull = count
      return True
    folder = os.path.join(self._folder, f'{_COUNT_PREFIX}{count}')
    try:
      with open(os.path.join(folder, _LAYOUT_FILE)) as f:
        layout = json.load(f)
    except (OSError, ValueError):
      layout = None
    if layout != self._layout:
      return False
    self._host_batches.restore(os.path.join(folder, _POSITION_PREFIX))
    self._next_pull = count
    return True

  def skip(self, count: int) -> None:
    """Drops the pipeline's next `count` batches (before any batch was taken)."""
    if self._device_batches is not None:
      raise RuntimeError('Skip batches before taking batches from the input.')
    for _ in range(count):
      next(self._host_batches)
    self._next_pull += count


def _saved_counts(folder: str) -> list[int]:
  counts = []
  for name in os.listdir(folder):
    if name.startswith(_COUNT_PREFIX) and name[len(_COUNT_PREFIX) :].isdigit():
      counts.append(int(name[len(_COUNT_PREFIX) :]))
  return counts


def resume(device_input: DeviceInput, count: int, *, checkpoint_path: str) -> None:
  """Puts a new input where the run of `checkpoint_path` stood after `count` batches.

  Without a saved position (a checkpoint from an older version of this code, or of another device
  layout) the input starts from its seed again, with a warning: the run continues, on batches it
  may have seen.
  """
  if count == 0 or device_input.restore(count):
    return
  if count == 1:  # The checkpoint of step 0: one batch went into the initialisation.
    device_input.skip(1)
    return
  logging.warning(
    'No saved input position for %s after %d batches (a checkpoint written by an older version, '
    'or with another number of devices or processes, dataset or batch size): the input starts '
    'again from its seed.',
    checkpoint_path,
    count,
  )
