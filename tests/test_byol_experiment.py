"""The pretraining experiment itself: its parameter tree, one update, and checkpoint checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol import byol_experiment
from byol.configs import byol as byol_config
from byol.utils import checkpointing
from byol.utils import helpers
from byol.utils import schedules
import support  # This folder is on the path.


def test_resnet50_experiment_state_has_the_released_parameter_tree(tmp_path):
  config = byol_config.get_config(1000, 4096)
  config['checkpointing_config']['checkpoint_dir'] = str(tmp_path)
  experiment = byol_experiment.ByolExperiment(**config)
  state = jax.eval_shape(experiment._init_fn, jax.random.key(0), experiment._train_batch_shapes())
  assert len(state.online_params) == 113
  assert jax.tree.map(lambda x: x.shape, state.online_params) == jax.tree.map(
    lambda x: x.shape, state.target_params
  )
  shapes = {
    module: {name: value.shape for name, value in params.items()}
    for module, params in state.online_params.items()
  }
  assert shapes['res_net50/~/initial_conv'] == {'w': (7, 7, 3, 64)}
  assert shapes['res_net50/~/block_group_3/~/block_0/~/shortcut_conv'] == {'w': (1, 1, 1024, 2048)}
  assert shapes['projector/linear'] == {'w': (2048, 4096), 'b': (4096,)}
  assert shapes['projector/batch_norm'] == {'scale': (1, 4096), 'offset': (1, 4096)}
  assert shapes['predictor/linear_1'] == {'w': (4096, 256)}
  assert shapes['classifier'] == {'w': (2048, 1000), 'b': (1000,)}
  assert set(state.online_state['res_net50/~/initial_batchnorm/~/mean_ema']) == {
    'average',
    'counter',
    'hidden',
  }


def test_online_and_target_networks_start_from_different_keys(tmp_path):
  experiment = support.pretrain_experiment(tmp_path)
  experiment.initialize(jax.random.key(0))
  online = experiment.state.online_params['tiny_res_net/~/initial_conv']['w']
  target = experiment.state.target_params['tiny_res_net/~/initial_conv']['w']
  assert not np.allclose(online, target)


def test_batchnorm_averages_start_at_statistics_of_the_first_batch(tmp_path):
  experiment = support.pretrain_experiment(tmp_path)
  experiment.initialize(jax.random.key(0))
  state = helpers.to_host(experiment.state)
  for network_state in (state.online_state, state.target_state):
    variances = [
      state_['average'] for module, state_ in network_state.items() if module.endswith('/var_ema')
    ]
    assert len(variances) == 15  # The encoder's 13, one in each of projector and predictor.
    assert all(np.all(variance > 1e-4) for variance in variances)


def test_update_moves_target_by_ema_of_new_online_params_and_logs_schedules(tmp_path):
  config = support.pretrain_config(tmp_path)
  experiment = byol_experiment.ByolExperiment(**config)
  experiment.initialize(jax.random.key(0))
  before = helpers.to_host(experiment.state)
  step = 7
  state, logs = experiment.update(
    experiment.state, support.random_views(experiment), jax.random.key(1), np.int32(step)
  )
  after, logs = helpers.to_host((state, logs))

  tau = 1 - (1 - config['base_target_ema']) * (np.cos(np.pi * step / config['max_steps']) + 1) / 2
  np.testing.assert_allclose(logs['tau'], tau, rtol=1e-6)
  expected_lr = schedules.learning_schedule(
    step,
    8,
    config['lr_schedule_config']['base_learning_rate'],
    config['max_steps'],
    config['lr_schedule_config']['warmup_steps'],
  )
  np.testing.assert_allclose(logs['learning_rate'], expected_lr, rtol=1e-6)
  jax.tree.map(
    lambda target, old_target, online: np.testing.assert_allclose(
      target, tau * old_target + (1 - tau) * online, rtol=1e-5, atol=1e-6
    ),
    after.target_params,
    before.target_params,
    after.online_params,
  )
  # The classifier trains too (a small step: the learning rate is still warming up).
  assert not np.array_equal(
    after.online_params['classifier']['w'], before.online_params['classifier']['w']
  )
  # Both networks update their BatchNorm statistics (training mode on both views).
  for state_name in ('online_state', 'target_state'):
    counter = getattr(after, state_name)['tiny_res_net/~/initial_batchnorm/~/mean_ema']['counter']
    assert int(counter) == 2
  np.testing.assert_allclose(logs['loss'], logs['repr_loss'] + logs['classif_loss'], rtol=1e-6)
  assert 0 <= logs['repr_loss'] <= 8


def test_classifier_loss_does_not_reach_the_encoder(tmp_path):
  experiment = support.pretrain_experiment(tmp_path)
  experiment.initialize(jax.random.key(0))
  state = experiment.state
  inputs = support.random_views(experiment)
  target_outputs, _ = experiment._forward.apply(
    state.target_params, state.target_state, inputs, is_training=True
  )

  def classif_loss(params):
    _, (_, logs) = experiment._loss_fn(params, state.online_state, target_outputs, inputs)
    return logs['classif_loss']

  grads = jax.grad(classif_loss)(state.online_params)
  for module, params in grads.items():
    norm = sum(float(np.sum(np.square(value))) for value in params.values())
    if module == 'classifier':
      assert norm > 0
    else:
      assert norm == 0, module


def test_repr_loss_pairs_each_views_prediction_with_the_other_views_target_projection(tmp_path):
  experiment = support.pretrain_experiment(tmp_path)
  experiment.initialize(jax.random.key(0))
  state = experiment.state
  inputs = support.random_views(experiment)
  # Online and target start from different keys, so the target projections are not the online
  # ones: the pairing is checked on the two networks' own outputs, as `_update_fn` computes them.
  forward = jax.jit(experiment._forward.apply, static_argnames='is_training')
  target_outputs, _ = forward(state.target_params, state.target_state, inputs, is_training=True)
  online_outputs, _ = forward(state.online_params, state.online_state, inputs, is_training=True)
  _, (_, logs) = experiment._loss_fn(
    state.online_params, state.online_state, target_outputs, inputs
  )
  prediction = {
    view: np.asarray(online_outputs[view]['prediction'], np.float64) for view in ('view1', 'view2')
  }
  projection = {
    view: np.asarray(target_outputs[view]['projection'], np.float64) for view in ('view1', 'view2')
  }

  def numpy_loss(x, y):
    # Per example 2 - 2 cos(x, y) (the squared distance of the unit vectors), batch mean.
    cosine = np.sum(x * y, axis=-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    return np.mean(2 - 2 * cosine)

  # BYOL symmetrised: each view's online prediction regresses the other view's target projection.
  expected = numpy_loss(prediction['view1'], projection['view2']) + numpy_loss(
    prediction['view2'], projection['view1']
  )
  # What a loss pairing each view with itself would report: it must be told apart.
  self_paired = numpy_loss(prediction['view1'], projection['view1']) + numpy_loss(
    prediction['view2'], projection['view2']
  )
  rtol = 1e-5
  repr_loss = float(logs['repr_loss'])
  np.testing.assert_allclose(repr_loss, expected, rtol=rtol)
  assert abs(self_paired - expected) > 100 * rtol * expected, (self_paired, expected)
  assert abs(repr_loss - self_paired) > 100 * rtol * expected, (repr_loss, self_paired)


def test_embedding_zero_fraction_counts_the_online_embeddings_entries_at_zero(tmp_path):
  experiment = support.pretrain_experiment(tmp_path)
  experiment.initialize(jax.random.key(0))
  state = experiment.state
  forward = jax.jit(experiment._forward.apply, static_argnames='is_training')
  inputs = support.random_views(experiment)
  target_outputs, _ = forward(state.target_params, state.target_state, inputs, is_training=True)

  def encoder_offsets_at(value):
    # Every BatchNorm offset of the encoder at -100 turns every ReLU after it off: a dead encoder.
    def set_offset(path, leaf):
      name = jax.tree_util.keystr(path)
      return jnp.full_like(leaf, value) if 'res_net' in name and "['offset']" in name else leaf

    return jax.tree_util.tree_map_with_path(set_offset, state.online_params)

  fractions = []
  for params in (state.online_params, encoder_offsets_at(-100.0)):
    online_outputs, _ = forward(params, state.online_state, inputs, is_training=True)
    _, (_, logs) = experiment._loss_fn(params, state.online_state, target_outputs, inputs)
    embeddings = np.stack([np.asarray(online_outputs[v]['embedding']) for v in ('view1', 'view2')])
    assert embeddings.shape == (2, support.BATCH_SIZE, 8)  # TinyResNet: 8 channels.
    np.testing.assert_allclose(
      float(logs['embedding_zero_fraction']), np.mean(embeddings == 0), rtol=1e-6
    )
    fractions.append(float(logs['embedding_zero_fraction']))
  assert 0.0 < fractions[0] < 1.0 and fractions[1] == 1.0, fractions


def test_checkpoint_of_another_encoder_is_refused_with_both_names(tmp_path):
  writer = support.pretrain_experiment(tmp_path)
  writer.initialize(jax.random.key(0))
  writer.save_checkpoint(global_step=3, rng=jax.random.key(1))
  reader = support.pretrain_experiment(tmp_path, encoder='ResNet18')
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r'holds tiny_res_net width 1, classifier of 10 classes, but '
    r'the config asks for ResNet18 1x, 10 classes.*--encoder',
  ):
    reader.load_checkpoint()


def test_checkpoint_round_trip_restores_state_and_step(tmp_path):
  experiment = support.pretrain_experiment(tmp_path)
  experiment.initialize(jax.random.key(0))
  experiment.save_checkpoint(global_step=5, rng=jax.random.key(9))
  restored = support.pretrain_experiment(tmp_path)
  step, rng = restored.load_checkpoint()
  assert step == 5
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(9)))
  jax.tree.map(
    np.testing.assert_array_equal,
    helpers.to_host(restored.state),
    helpers.to_host(experiment.state),
  )


def test_bfloat16_updates_stay_finite_and_close_to_float32_with_a_float32_state(tmp_path):
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    config = support.pretrain_config(tmp_path / dtype)
    config['network_config']['compute_dtype'] = dtype
    experiment = byol_experiment.ByolExperiment(**config)
    experiment.initialize(jax.random.key(0))
    state = experiment.state
    losses[dtype] = []
    for step in range(3):
      state, logs = experiment.update(
        state, support.random_views(experiment, seed=step), jax.random.key(step), np.int32(step)
      )
      losses[dtype].append(float(logs['loss']))
  leaves = jax.tree.leaves(helpers.to_host(state))
  assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
  # Parameters, optimiser state and BatchNorm averages stay float32 (the step counters int32).
  assert {leaf.dtype for leaf in leaves} == {np.dtype('float32'), np.dtype('int32')}
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.02)
  assert losses['bfloat16'] != losses['float32']


def test_small_image_stem_is_chosen_by_override_and_named_in_descriptions(tmp_path):
  config = support.pretrain_config(
    tmp_path, encoder='ResNet18', overrides=['network_config.encoder_config.small_image_stem=true']
  )
  experiment = byol_experiment.ByolExperiment(**config)
  state = jax.eval_shape(experiment._init_fn, jax.random.key(0), experiment._train_batch_shapes())
  assert state.online_params['res_net18/~/initial_conv']['w'].shape == (3, 3, 3, 64)
  assert checkpointing.describe_networks(state.online_params).startswith(
    'res_net18 width 1 small-image stem'
  )
  assert experiment._describe_networks() == 'ResNet18 1x small-image stem, 10 classes'
