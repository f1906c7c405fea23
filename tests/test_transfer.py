"""Transfer by linear probe: features of another dataset from a pretraining checkpoint, cached by
the encoder's identity, and the protocol's sweep, choice and test score."""

import hashlib
import json
import pathlib

import jax
import numpy as np
import pytest

from byol import transfer
from byol.configs import config_file
from byol.configs import datasets
import support  # This folder is on the path.

# The target: 3 classes of 24 px crops (the pretraining: 10 classes at 16 px). 12 training images
# a class: the first 3 of 36 (a tenth, `VALID_HOLDOUT_FRACTION`) are VALID.
TARGET_LAYOUT = {'train': {'ant': 12, 'bee': 12, 'cat': 12}, 'val': {'ant': 4, 'bee': 4, 'cat': 4}}


@pytest.fixture
def target(tmp_path):
  return datasets.describe(support.write_image_folder(tmp_path / 'target', TARGET_LAYOUT))


def pretraining_folder(folder, width=1):
  """A pretraining checkpoint with its `pretrain.config.json`, as a train worker leaves them."""
  folder.mkdir()
  support.write_pretrain_checkpoint(folder, width=width)
  config_file.write(support.pretrain_config(folder, width=width), str(folder), 'pretrain')
  return str(folder)


def test_features_of_another_dataset_from_the_checkpoint_then_the_sweep(tmp_path, target):
  root = pretraining_folder(tmp_path / 'pretrain')
  output = tmp_path / 'transfer'
  config = transfer.transfer_config(
    root, target, output_dir=str(output), overrides=['dataset_config.image_size=24']
  )
  # The pretraining run's encoder, on the target's classes and image size.
  assert config['network_config']['encoder_class'] == 'TinyResNet'
  assert config['dataset_config']['image_size'] == 24 and config['num_classes'] == 3
  table = transfer.transfer(config, l2_values=[1.0, 0.01])

  assert table['num_examples'] == dict(train=33, valid=3, test=12)  # Every image once.
  assert table['feature_dimension'] == 8  # TinyResNet's embedding at width 1.
  assert [run['l2'] for run in table['runs']] == [1.0, 0.01]  # Strongest first.
  best = max(run['valid_top1'] for run in table['runs'])
  assert table['chosen_l2'] == next(r['l2'] for r in table['runs'] if r['valid_top1'] == best)
  assert 0.0 <= table['test_top1'] <= 1.0
  assert json.loads((output / 'transfer.json').read_text()) == json.loads(json.dumps(table))
  checkpoint_bytes = (tmp_path / 'pretrain' / 'pretrain.pkl').read_bytes()
  assert table['encoder']['weights'].endswith(hashlib.sha256(checkpoint_bytes).hexdigest())
  with np.load(output / 'features_test.npz') as cached:
    assert cached['features'].shape == (12, 8)
    np.testing.assert_array_equal(np.sort(cached['labels']), np.repeat([0, 1, 2], 4))


def test_cached_features_are_read_for_the_same_encoder_and_computed_again_for_another(tmp_path):
  path = str(tmp_path / 'features_train.npz')
  calls = []

  def compute(value):
    calls.append(value)
    return dict(features=np.full((2, 3), value, np.float32), labels=np.array([0, 1], np.int32))

  first, computed = transfer.cached_features(path, 'encoder A', lambda: compute(1.0))
  assert computed and calls == [1.0]
  again, computed = transfer.cached_features(path, 'encoder A', lambda: compute(2.0))
  assert not computed and calls == [1.0]
  np.testing.assert_array_equal(again['features'], first['features'])
  other, computed = transfer.cached_features(path, 'encoder B', lambda: compute(2.0))
  assert computed and calls == [1.0, 2.0] and other['features'][0, 0] == 2.0
  # A damaged file, and one holding a pickled object: neither is read, both are replaced.
  for content in (b'PK\x03\x04 truncated', None):
    if content is None:
      np.savez(path, identity=np.array('encoder B'), features=np.array([object()]), labels=[0])
    else:
      pathlib.Path(path).write_bytes(content)
    _, computed = transfer.cached_features(path, 'encoder B', lambda: compute(3.0))
    assert computed
  assert calls == [1.0, 2.0, 3.0, 3.0]


def test_the_identity_changes_with_the_checkpoint_and_the_images(tmp_path, target):
  root = pretraining_folder(tmp_path / 'pretrain')
  config = transfer.transfer_config(root, target, output_dir=str(tmp_path / 'out'))
  identity = transfer.encoder_identity(config)
  assert transfer.encoder_identity(config) == identity
  # Another encoder in the same file.
  experiment = support.pretrain_experiment(tmp_path / 'pretrain')
  experiment.initialize(jax.random.key(1))
  experiment.save_checkpoint(global_step=10, rng=jax.random.key(1))
  assert transfer.encoder_identity(config) != identity
  config['dataset_config']['image_size'] += 8
  assert transfer.encoder_identity(config) != identity


def test_sweep_on_separable_features_chooses_on_valid_and_scores_on_test():
  rng = np.random.default_rng(0)

  def split(n):
    labels = rng.integers(0, 4, n).astype(np.int32)
    features = rng.normal(size=(n, 6)) + 4.0 * np.eye(4, 6)[labels]
    return dict(features=features.astype(np.float32), labels=labels)

  table = transfer.sweep(dict(train=split(200), valid=split(50), test=split(100)), 4, [1e3, 1e-3])
  runs = {run['l2']: run for run in table['runs']}
  # A penalty of 1000 leaves the classifier near zero (chance); 0.001 separates the classes.
  assert runs[1e-3]['valid_top1'] > 0.9 > runs[1e3]['valid_top1'] - 0.5
  assert table['chosen_l2'] == 1e-3 and table['test_top1'] > 0.9
  assert table['num_examples'] == dict(train=200, valid=50, test=100)


def test_random_encoder_baseline_from_the_command_line(tmp_path, target, monkeypatch, capsys):
  root = pretraining_folder(tmp_path / 'pretrain')
  support.run_program(
    transfer,
    monkeypatch,
    f'--checkpoint_root={root}',
    f'--dataset={target.name}',
    f'--output_dir={tmp_path / "random"}',
    '--random_encoder',
    '--l2_values=0.1',
    '--image_size=24',
  )
  printed = capsys.readouterr().out
  assert f'Transfer to {target.name} at 24 px: test top-1 ' in printed
  table = json.loads((tmp_path / 'random' / 'transfer.json').read_text())
  assert table['encoder']['weights'] == 'random, seed 0'
  assert table['encoder']['encoder_class'] == 'TinyResNet'  # From the pretraining's config.


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path, target, monkeypatch):
  with pytest.raises(SystemExit, match='No pretraining checkpoint to evaluate'):
    support.run_program(
      transfer,
      monkeypatch,
      f'--checkpoint_root={tmp_path}',
      f'--dataset={target.name}',
      f'--output_dir={tmp_path / "out"}',
      '--encoder=TinyResNet',
    )
