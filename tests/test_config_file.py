"""The config kept beside a checkpoint, and what a run on a pretraining checkpoint takes from it."""

import copy

import pytest

from byol.configs import byol as byol_config
from byol.configs import config_file
from byol.configs import eval as eval_config


def pretraining_config():
  return byol_config.get_config(
    100,
    8,
    overrides=[
      'network_config.encoder_class=ResNet18',
      'network_config.encoder_config.width_multiplier=2',
      'dataset_config.image_size=64',
    ],
  )


def test_written_config_reads_back_as_json(tmp_path):
  config = pretraining_config()
  config_file.write(config, str(tmp_path), 'pretrain')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['pretrain.config.json']
  read = config_file.read(str(tmp_path), 'pretrain')
  assert read['network_config']['encoder_config']['width_multiplier'] == 2
  assert read['dataset_config']['image_size'] == 64
  assert config_file.read(str(tmp_path), 'linear-eval') is None


def test_linear_evaluation_takes_the_encoder_and_image_size_of_the_pretraining_run():
  config = eval_config.get_config('/x/pretrain.pkl', 8)
  others = copy.deepcopy(config)
  config_file.inherit(config, pretraining_config(), explicit={}, source='f')
  assert config['network_config']['encoder_class'] == 'ResNet18'
  assert config['network_config']['encoder_config']['width_multiplier'] == 2
  assert config['dataset_config']['image_size'] == 64
  # Nothing else changes.
  for key_path in config_file.INHERITED:
    *parents, key = key_path
    node, other = config, others
    for parent in parents:
      node, other = node[parent], other[parent]
    other[key] = node[key]
  assert config == others


def test_an_explicit_flag_that_agrees_is_kept_and_one_that_contradicts_names_both():
  config = eval_config.get_config('/x/pretrain.pkl', 8)
  config['network_config']['encoder_class'] = 'ResNet18'
  config_file.inherit(
    config,
    pretraining_config(),
    explicit={('network_config', 'encoder_class'): '--encoder'},
    source='f',
  )
  config['network_config']['encoder_config']['width_multiplier'] = 1
  with pytest.raises(
    config_file.ConfigError,
    match=r'--override network_config.encoder_config.width_multiplier gives '
    r'network_config.encoder_config.width_multiplier=1, but the pretraining run used 2 '
    r'\(/r/pretrain.config.json\)',
  ):
    config_file.inherit(
      config,
      pretraining_config(),
      explicit={
        ('network_config', 'encoder_config', 'width_multiplier'): (
          '--override network_config.encoder_config.width_multiplier'
        )
      },
      source='/r/pretrain.config.json',
    )


def test_a_config_of_an_older_version_without_an_entry_leaves_it_to_the_flags():
  pretraining = pretraining_config()
  del pretraining['network_config']['encoder_config']['zero_init_residual']
  config = eval_config.get_config('/x/pretrain.pkl', 8)
  config['network_config']['encoder_config']['zero_init_residual'] = True
  config_file.inherit(config, pretraining, explicit={}, source='f')
  assert config['network_config']['encoder_config']['zero_init_residual'] is True
  assert config['network_config']['encoder_class'] == 'ResNet18'


@pytest.mark.parametrize('contents', [b'{"network_config": ', b'[1, 2]', b'\xff\xfe'])
def test_a_file_that_is_not_a_config_is_a_clear_error(tmp_path, contents):
  (tmp_path / 'pretrain.config.json').write_bytes(contents)
  with pytest.raises(config_file.ConfigError, match='is not a config.*delete it'):
    config_file.read(str(tmp_path), 'pretrain')
