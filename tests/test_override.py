"""`--override key.path=value` on the nested config dicts."""

import pytest

from byol.configs import byol as byol_config
from byol.configs import eval as eval_config
from byol.configs import override


def test_nested_entries_take_values_of_their_own_type():
  config = byol_config.get_config(300, 256)
  override.apply(config, [
      'optimizer_config.weight_decay=1e-5',
      'network_config.encoder_config.width_multiplier=2',
      'network_config.encoder_config.resnet_v2=true',
      'network_config.encoder_class=ResNet18',
      'dataset_config.data_dir=/data',
  ])
  assert config['optimizer_config']['weight_decay'] == 1e-5
  assert config['network_config']['encoder_config']['width_multiplier'] == 2
  assert type(config['network_config']['encoder_config']['width_multiplier']) is int
  assert config['network_config']['encoder_config']['resnet_v2'] is True
  assert config['network_config']['encoder_class'] == 'ResNet18'
  assert config['dataset_config']['data_dir'] == '/data'


def test_top_level_entries_and_the_last_assignment_wins():
  config = eval_config.get_config(None, 256)
  override.apply(config, ['freeze_backbone=false', 'allow_train_from_scratch=yes',
                          'max_steps=10', 'max_steps=20', 'checkpoint_to_evaluate=/x.pkl'])
  assert config['freeze_backbone'] is False
  assert config['allow_train_from_scratch'] is True
  assert config['max_steps'] == 20
  assert config['checkpoint_to_evaluate'] == '/x.pkl'


@pytest.mark.parametrize('assignment, message', [
    ('optimizer_config.weight_dacay=1e-5', r'unknown key `weight_dacay`; the keys there are: '
                                           r'eta, exclude_bias_from_adaption, momentum'),
    ('optimiser_config.eta=1', r'`optimiser_config` is not a group.*optimizer_config'),
    ('network_config=3',
     r'is a group; set one of its keys: bn_config, compute_dtype, encoder_class'),
    ('max_steps=ten', r'max_steps=ten: expected an integer'),
    ('optimizer_config.eta=big', r'expected a number'),
    ('network_config.encoder_config.resnet_v2=maybe', r'expected true or false'),
    ('max_steps', r'not of the form key.path=value'),
    ('=3', r'not of the form key.path=value'),
])
def test_bad_overrides_are_clear_errors(assignment, message):
  with pytest.raises(override.OverrideError, match=message):
    override.apply(byol_config.get_config(300, 256), [assignment])
