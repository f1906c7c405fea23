"""Tests of the labelled subsets of semi-supervised runs: class-balanced, seeded, recorded."""

import json

import numpy as np
import pytest

from byol.utils import label_subset

# 3 classes of 50, 200 and 7 examples, shuffled.
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [50, 200, 7]))


@pytest.mark.parametrize('fraction', [0.01, 0.1, 0.5, 1.0])
def test_each_class_keeps_its_rounded_share_and_at_least_one(fraction):
  chosen = label_subset.choose(LABELS, fraction, seed=0)
  assert np.all(np.diff(chosen) > 0)  # Increasing: distinct indices, in reading order.
  counts = np.bincount(LABELS[chosen], minlength=3)
  expected = [max(1, int(np.floor(fraction * size + 0.5))) for size in (50, 200, 7)]
  np.testing.assert_array_equal(counts, expected)


def test_the_draw_depends_on_the_seed_only():
  first = label_subset.choose(LABELS, 0.1, seed=3)
  np.testing.assert_array_equal(label_subset.choose(LABELS.copy(), 0.1, seed=3), first)
  assert not np.array_equal(label_subset.choose(LABELS, 0.1, seed=4), first)


def test_a_class_draw_does_not_depend_on_the_other_classes():
  chosen = label_subset.choose(LABELS, 0.1, seed=0)
  class_1 = np.flatnonzero(LABELS == 1)
  alone = label_subset.choose(LABELS[class_1], 0.1, seed=0)
  np.testing.assert_array_equal(class_1[alone], chosen[LABELS[chosen] == 1])


@pytest.mark.parametrize('fraction', [0.0, -0.1, 1.5])
def test_a_fraction_out_of_range_is_a_clear_error(fraction):
  with pytest.raises(label_subset.LabelSubsetError, match=r'--label_fraction must be in \(0, 1\]'):
    label_subset.choose(LABELS, fraction, seed=0)


def load(path, fraction=0.1, split_labels=None, **description):
  return label_subset.load_or_choose(
    str(path),
    description=dict(dict(dataset='d', split='train', split_size=len(LABELS)), **description),
    fraction=fraction,
    seed=0,
    split_labels=split_labels or (lambda: (np.arange(100, 100 + len(LABELS)), LABELS)),
  )


def test_the_recorded_subset_is_what_later_runs_read(tmp_path):
  path = tmp_path / 'fine-tune.labels.json'
  chosen = load(path)
  np.testing.assert_array_equal(chosen, 100 + label_subset.choose(LABELS, 0.1, seed=0))
  record = json.loads(path.read_text())
  assert record['positions'] == chosen.tolist()
  assert record['examples_per_class'] == {'0': 5, '1': 20, '2': 1}

  # A later run reads the file, never the labels: its list holds whatever the file says.
  record['positions'] = [100, 105]
  path.write_text(json.dumps(record))

  def labels_not_read():
    raise AssertionError('the labels were read')

  np.testing.assert_array_equal(load(path, split_labels=labels_not_read), [100, 105])


@pytest.mark.parametrize(
  'change', [dict(fraction=0.01), dict(dataset='other'), dict(split_size=7)], ids=str
)
def test_a_subset_recorded_for_another_run_is_a_clear_error(tmp_path, change):
  path = tmp_path / 'linear-eval.labels.json'
  load(path)
  with pytest.raises(label_subset.LabelSubsetError, match='delete the file to draw a new subset'):
    load(path, **change)


@pytest.mark.parametrize(
  'contents',
  [b'\xff', b'[1, 2]', b'{"positions": [1]}', None],
  ids=['not text', 'a list', 'no description', 'positions not increasing'],
)
def test_a_damaged_subset_file_is_a_clear_error(tmp_path, contents):
  path = tmp_path / 'linear-eval.labels.json'
  load(path)
  if contents is None:
    record = json.loads(path.read_text())
    record['positions'] = [3, 2]
    contents = json.dumps(record).encode()
  path.write_bytes(contents)
  with pytest.raises(label_subset.LabelSubsetError, match='delete'):
    load(path)
