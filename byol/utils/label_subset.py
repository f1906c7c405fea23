"""Labelled subsets for semi-supervised runs: a seeded, class-balanced share of a split's examples.

`--label_fraction=0.01` trains a linear-evaluation or fine-tuning run on 1% of the training
split's labelled examples: the same fraction of every class (at least one example of each), drawn
with a generator seeded by the run's `label_seed` and the class. The choice is kept beside the
checkpoint as a JSON list of example positions (`<checkpoint_dir>/<name>.labels.json`): a run that
finds the file trains on exactly those examples, whatever a later numpy's random streams would
draw, and a resumed run or its eval worker reads the same list. Process 0 reads and writes it.

ImageNet's 1% and 10% subsets used by SimCLR and BYOL are TFDS datasets of their own
(`--dataset=imagenet2012_subset/1pct`, `/10pct`), read whole without this module.
"""

from collections.abc import Callable
import json
from typing import Any

import jax
import numpy as np

from byol.utils import checkpointing
from byol.utils import distributed


class LabelSubsetError(ValueError):
  """A subset file that does not belong to the run, or a fraction out of range."""


def choose(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices into `labels` [N]: from each class with n examples, round(fraction * n) of
  them (at least one), drawn without replacement by a generator seeded with (seed, class)."""
  check_fraction(fraction)
  labels = np.asarray(labels)
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = max(1, int(fraction * len(members) + 0.5))
    rng = np.random.default_rng([seed, int(label)])  # Each class's draw independent of the others.
    chosen.append(rng.choice(members, size=count, replace=False))
  return np.sort(np.concatenate(chosen))


def check_fraction(fraction: float) -> None:
  """Raises LabelSubsetError unless 0 < fraction <= 1."""
  if not 0 < fraction <= 1:
    raise LabelSubsetError(f'--label_fraction must be in (0, 1], got {fraction}.')


def load_or_choose(
  path: str,
  *,
  description: dict[str, Any],
  fraction: float,
  seed: int,
  split_labels: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
  """The positions of the subset recorded at `path`, or of a new one, which is then recorded.

  Args:
    path: the subset's JSON file.
    description: what the subset is of (dataset, split, ...); a file recorded for another one is
      an error, never silently used.
    fraction: the share of each class's examples.
    seed: the seed of the draw.
    split_labels: returns the positions int64 [N] of the split's examples and their labels [N];
      called only when there is no file yet.

  Returns:
    Increasing example positions int64 [n], the same on every process.
  """
  check_fraction(fraction)
  record = dict(description, label_fraction=fraction, label_seed=seed)
  data = distributed.read_on_process_0(path)
  if data is not None:
    return _positions_from_file(path, data, record)
  positions, labels = split_labels()
  indices = choose(labels, fraction, seed)
  chosen = np.asarray(positions, np.int64)[indices]
  if jax.process_index() == 0:
    classes, counts = np.unique(np.asarray(labels)[indices], return_counts=True)
    contents = dict(
      record,
      num_examples=len(chosen),
      examples_per_class={str(label): int(count) for label, count in zip(classes, counts)},
      positions=chosen.tolist(),
    )
    data = json.dumps(contents).encode()  # One line: ImageNet's 10% is 128,000 positions.
    checkpointing.write_atomically(path, lambda f: f.write(data))
  return chosen


def _positions_from_file(path: str, data: bytes, record: dict[str, Any]) -> np.ndarray:
  """The positions a subset file lists, checked against what the run expects of it."""
  try:
    contents = json.loads(data)
    recorded = {name: contents[name] for name in record}
    positions = contents['positions']
  except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as error:
    raise LabelSubsetError(
      f'{path} is not a labelled-subset file ({error!r}); delete it.'
    ) from None
  if recorded != record:
    raise LabelSubsetError(
      f'{path} records the subset {recorded}, but this run asks for {record}. Use another '
      '--checkpoint_root, or delete the file to draw a new subset.'
    )
  if not (
    isinstance(positions, list)
    and positions
    and all(type(position) is int and position >= 0 for position in positions)
    and all(a < b for a, b in zip(positions, positions[1:]))
  ):
    raise LabelSubsetError(
      f'{path} does not list increasing example positions; delete it to draw the subset again.'
    )
  return np.asarray(positions, np.int64)
