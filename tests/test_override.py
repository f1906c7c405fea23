"""`--override key.path=value` on the nested config dicts."""

import jax
import numpy as np
import pytest

from byol import byol_experiment
from byol.configs import byol as byol_config
from byol.configs import eval as eval_config
from byol.configs import override
from byol.utils import cpu_kernels
import support  # This folder is on the path.


def test_nested_entries_take_values_of_their_own_type():
  config = byol_config.get_config(300, 256)
  override.apply(
    config,
    [
      'optimizer_config.weight_decay=1e-5',
      'network_config.encoder_config.width_multiplier=2',
      'network_config.encoder_config.resnet_v2=true',
      'network_config.encoder_class=ResNet18',
      'dataset_config.data_dir=/data',
    ],
  )
  assert config['optimizer_config']['weight_decay'] == 1e-5
  assert config['network_config']['encoder_config']['width_multiplier'] == 2
  assert type(config['network_config']['encoder_config']['width_multiplier']) is int
  assert config['network_config']['encoder_config']['resnet_v2'] is True
  assert config['network_config']['encoder_class'] == 'ResNet18'
  assert config['dataset_config']['data_dir'] == '/data'


def test_top_level_entries_and_the_last_assignment_wins():
  config = eval_config.get_config(None, 256)
  override.apply(
    config,
    [
      'freeze_backbone=false',
      'allow_train_from_scratch=yes',
      'max_steps=10',
      'max_steps=20',
      'checkpoint_to_evaluate=/x.pkl',
    ],
  )
  assert config['freeze_backbone'] is False
  assert config['allow_train_from_scratch'] is True
  assert config['max_steps'] == 20
  assert config['checkpoint_to_evaluate'] == '/x.pkl'


@pytest.mark.parametrize(
  'assignment, message',
  [
    (
      'optimizer_config.weight_dacay=1e-5',
      r'unknown key `weight_dacay`; the keys there are: '
      r'clip_trust_ratio, eta, exclude_bias_from_adaption, momentum',
    ),
    ('optimiser_config.eta=1', r'`optimiser_config` is not a group.*optimizer_config'),
    (
      'network_config=3',
      r'is a group; set one of its keys: bn_config, compute_dtype, cpu_kernels, encoder_class',
    ),
    ('max_steps=ten', r'max_steps=ten: expected an integer'),
    ('optimizer_config.eta=big', r'expected a number'),
    ('network_config.encoder_config.resnet_v2=maybe', r'expected true or false'),
    ('max_steps', r'not of the form key.path=value'),
    ('=3', r'not of the form key.path=value'),
  ],
)
def test_bad_overrides_are_clear_errors(assignment, message):
  with pytest.raises(override.OverrideError, match=message):
    override.apply(byol_config.get_config(300, 256), [assignment])


@pytest.mark.parametrize(
  'make_config',
  [lambda: byol_config.get_config(300, 256), lambda: eval_config.get_config(None, 256)],
)
@pytest.mark.parametrize(
  'text, expected', [('off', False), ('on', True), ('auto', jax.default_backend() == 'cpu')]
)  # 'auto': on where JAX computes on the CPU.
def test_cpu_kernels_switch_is_set_by_override(make_config, text, expected):
  config = make_config()
  assert config['network_config']['cpu_kernels'] == 'auto'  # The default.
  override.apply(config, [f'network_config.cpu_kernels={text}'])
  assert cpu_kernels.resolve_switch(config['network_config']['cpu_kernels']) is expected


def test_cpu_kernels_switch_refuses_other_values():
  config = byol_config.get_config(300, 256)
  override.apply(config, ['network_config.cpu_kernels=false'])
  with pytest.raises(ValueError, match=r"one of auto, on, off .* got 'false'"):
    cpu_kernels.resolve_switch(config['network_config']['cpu_kernels'])


def _pretraining_update_jaxpr(tmp_path, assignments):
  """The jaxpr of a TinyResNet pretraining update on 40-pixel views, with `assignments`.

  At 40 pixels the blur has radius 2 and the last block group convolves 2x2 maps.
  """
  config = support.pretrain_config(tmp_path, overrides=assignments)
  experiment = byol_experiment.ByolExperiment(**config)
  images = np.random.default_rng(0).uniform(size=(2, 8, 40, 40, 3)).astype(np.float32)
  inputs = dict(view1=images[0], view2=images[1], labels=np.zeros(8, np.int32))
  state = jax.eval_shape(experiment._init_fn, jax.random.key(0), inputs)
  jaxpr = str(jax.make_jaxpr(experiment.update)(state, inputs, jax.random.key(1), np.int32(0)))
  return experiment.use_cpu_kernels, jaxpr


@pytest.mark.skipif(
  jax.default_backend() != 'cpu',
  reason='the CPU-only routes are on by default on the CPU backend only',
)
def test_cpu_kernels_are_on_by_default_on_cpu_and_switched_off_by_override(tmp_path):
  use_default, jaxpr_default = _pretraining_update_jaxpr(tmp_path, [])
  use_off, jaxpr_off = _pretraining_update_jaxpr(tmp_path, ['network_config.cpu_kernels=off'])
  assert use_default is True and use_off is False
  # The max-pool gradient: without select-and-scatter by default, XLA's own once switched off.
  assert 'select_and_scatter' not in jaxpr_default and 'select_and_scatter' in jaxpr_off
  # The 2x2-map convolutions and the blur are matrix products only when switched on.
  assert jaxpr_off.count('dot_general') < jaxpr_default.count('dot_general')
