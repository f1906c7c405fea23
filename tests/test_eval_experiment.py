"""Linear evaluation and fine-tuning on a pretrained encoder."""

import jax
import numpy as np
import optax
import pytest

from byol.utils import checkpointing
from byol.utils import helpers
import support  # This folder is on the path.


def train_steps(experiment, steps=2):
  rng = np.random.default_rng(0)
  state = experiment.state
  for step in range(steps):
    batch = dict(
      images=rng.uniform(size=(8, support.IMAGE_SIZE, support.IMAGE_SIZE, 3)).astype(np.float32),
      labels=rng.integers(0, support.NUM_CLASSES, 8).astype(np.int32),
    )
    state, logs = experiment.update(
      state, helpers.to_global_batch(batch, experiment.batch_sharding), np.int32(step)
    )
  return helpers.to_host(state), helpers.to_host(logs)


def test_encoder_is_loaded_from_the_online_network(tmp_path):
  checkpoint, pretrain_state = support.write_pretrain_checkpoint(tmp_path)
  experiment = support.linear_eval_experiment(tmp_path, checkpoint)
  experiment.initialize(jax.random.key(5))
  state = helpers.to_host(experiment.state)
  assert set(state.backbone_params) == {
    module for module in pretrain_state.online_params if module.startswith('tiny_res_net/')
  }
  jax.tree.map(
    np.testing.assert_array_equal,
    state.backbone_params,
    {m: pretrain_state.online_params[m] for m in state.backbone_params},
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    state.backbone_state,
    {m: pretrain_state.online_state[m] for m in state.backbone_state},
  )


def test_frozen_backbone_leaves_every_encoder_array_unchanged(tmp_path):
  checkpoint, _ = support.write_pretrain_checkpoint(tmp_path)
  experiment = support.linear_eval_experiment(tmp_path, checkpoint, freeze_backbone=True)
  experiment.initialize(jax.random.key(5))
  before = helpers.to_host(experiment.state)
  after, logs = train_steps(experiment)
  jax.tree.map(np.testing.assert_array_equal, after.backbone_params, before.backbone_params)
  jax.tree.map(np.testing.assert_array_equal, after.backbone_state, before.backbone_state)
  assert not np.allclose(after.classif_params['linear']['w'], before.classif_params['linear']['w'])
  assert np.isfinite(logs['loss'])


def test_fine_tuning_trains_encoder_and_its_batchnorm_statistics(tmp_path):
  checkpoint, _ = support.write_pretrain_checkpoint(tmp_path)
  experiment = support.linear_eval_experiment(tmp_path, checkpoint, freeze_backbone=False)
  experiment.initialize(jax.random.key(5))
  before = helpers.to_host(experiment.state)
  after, _ = train_steps(experiment)
  conv = 'tiny_res_net/~/initial_conv'
  assert not np.allclose(after.backbone_params[conv]['w'], before.backbone_params[conv]['w'])
  bn = 'tiny_res_net/~/initial_batchnorm/~/mean_ema'
  assert int(after.backbone_state[bn]['counter']) == int(before.backbone_state[bn]['counter']) + 2


def test_missing_pretrain_checkpoint_is_a_clear_error(tmp_path):
  experiment = support.linear_eval_experiment(tmp_path, None)
  with pytest.raises(checkpointing.CheckpointError, match='Pretrain first'):
    experiment.initialize(jax.random.key(0))


def test_random_encoder_baseline_when_allowed(tmp_path):
  experiment = support.linear_eval_experiment(tmp_path, None, allow_train_from_scratch=True)
  experiment.initialize(jax.random.key(0))
  assert experiment.state is not None


def test_random_encoder_starts_from_batchnorm_statistics_of_real_images(tmp_path):
  # Initialised on zeros, every variance would be 0 and inference-mode BatchNorm would scale each
  # layer by 1/sqrt(eps): the baseline's classifier would see huge embeddings and diverge.
  experiment = support.linear_eval_experiment(tmp_path, None, allow_train_from_scratch=True)
  experiment.initialize(jax.random.key(0))
  state = helpers.to_host(experiment.state)
  variances = [
    state_['average']
    for module, state_ in state.backbone_state.items()
    if module.endswith('/var_ema')
  ]
  assert len(variances) == 13  # TinyResNet: stem, 2 in each of 4 blocks, 4 projection shortcuts.
  assert all(np.all(variance > 1e-3) for variance in variances)
  # Two steps on uniform noise (not the synthetic images the statistics came from): a few nats,
  # where the zero-variance start gave ~1e7.
  _, logs = train_steps(experiment)
  assert logs['loss'] < 10 * np.log(support.NUM_CLASSES)


def test_encoder_mismatch_names_both_networks(tmp_path):
  checkpoint, _ = support.write_pretrain_checkpoint(tmp_path, encoder='TinyResNet')
  experiment = support.linear_eval_experiment(tmp_path, checkpoint, encoder='ResNet18')
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r'holds tiny_res_net width 1, but the config asks for ResNet18 1x',
  ):
    experiment.initialize(jax.random.key(0))


def test_width_mismatch_names_both_widths(tmp_path):
  checkpoint, _ = support.write_pretrain_checkpoint(tmp_path, width=2)
  experiment = support.linear_eval_experiment(tmp_path, checkpoint)
  with pytest.raises(
    checkpointing.CheckpointError,
    match=r'holds tiny_res_net width 2, but the config asks for TinyResNet 1x',
  ):
    experiment.initialize(jax.random.key(0))


def test_linear_evaluation_trains_from_a_2020_release_file(tmp_path):
  _, pretrain_state = support.write_pretrain_checkpoint(tmp_path)
  release_file = support.write_2020_release_file(tmp_path / 'pretrain_res50x1.pkl', pretrain_state)
  experiment = support.linear_eval_experiment(tmp_path, release_file)
  experiment.initialize(jax.random.key(5))
  after, logs = train_steps(experiment)
  jax.tree.map(
    np.testing.assert_array_equal,
    after.backbone_params,
    {module: pretrain_state.online_params[module] for module in after.backbone_params},
  )
  assert np.isfinite(logs['loss'])


def test_pretraining_does_not_resume_from_a_2020_release_file(tmp_path):
  (tmp_path / 'ours').mkdir()
  _, pretrain_state = support.write_pretrain_checkpoint(tmp_path / 'ours')
  support.write_2020_release_file(tmp_path / 'pretrain.pkl', pretrain_state)
  experiment = support.pretrain_experiment(tmp_path)
  with pytest.raises(checkpointing.CheckpointError, match='optimiser state of another layout'):
    experiment.load_checkpoint()


def numpy_classifier_loss_and_grads(embedding, w, b, labels):
  """Mean softmax cross-entropy of `embedding @ w + b` and its gradients, in float64 numpy."""
  embedding, w, b = (np.asarray(x, np.float64) for x in (embedding, w, b))
  logits = embedding @ w + b
  logits = logits - logits.max(axis=-1, keepdims=True)
  probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
  one_hot = np.eye(w.shape[1])[labels]
  loss = -np.mean(np.sum(one_hot * np.log(probs), axis=-1))
  dlogits = (probs - one_hot) / len(labels)  # d mean-loss / d logits.
  return loss, embedding.T @ dlogits, dlogits.sum(axis=0)


def find_momentum_traces(opt_state):
  """The `optax.trace` accumulators inside an optimiser state (one per Nesterov SGD)."""

  def is_trace(node):
    return isinstance(node, optax.TraceState)

  return [node.trace for node in jax.tree.leaves(opt_state, is_leaf=is_trace) if is_trace(node)]


def test_two_linear_evaluation_steps_match_numpy_nesterov_sgd(tmp_path):
  # SPEC 9: SGD with Nesterov momentum 0.9, base LR 0.2 scaled by batch/256, cosine decay without
  # warm-up, no weight decay; only the classifier is trained while the backbone is frozen.
  # A random encoder (the baseline) spares pretraining a checkpoint: the optimiser is the same.
  experiment = support.linear_eval_experiment(
    tmp_path, None, freeze_backbone=True, allow_train_from_scratch=True
  )
  experiment.initialize(jax.random.key(5))
  before = helpers.to_host(experiment.state)  # `update` donates its state: copy it first.
  config = support.linear_eval_config(tmp_path, None)
  momentum = config['optimizer_config']['momentum']
  assert momentum == 0.9 and config['optimizer_config']['nesterov']
  assert config['lr_schedule_config']['warmup_steps'] == 0

  rng = np.random.default_rng(3)
  batches = [
    dict(
      images=rng.uniform(size=(8, support.IMAGE_SIZE, support.IMAGE_SIZE, 3)).astype(np.float32),
      labels=rng.integers(0, support.NUM_CLASSES, 8).astype(np.int32),
    )
    for _ in range(2)
  ]
  # Steps a quarter into the run: at step 0 the cosine factor is 1 and would check no schedule.
  steps = (config['max_steps'] // 4, config['max_steps'] // 4 + 1)

  # The numpy reference. The encoder is run by the experiment's own (frozen, inference-mode)
  # backbone: its embedding is the classifier's input, and everything after it is numpy.
  # Inference-mode BatchNorm treats each image alone, so both batches go through in one call.
  backbone = jax.jit(experiment._backbone.apply, static_argnames='is_training')
  embeddings, _ = backbone(
    before.backbone_params,
    before.backbone_state,
    np.concatenate([batch['images'] for batch in batches]),
    is_training=False,
  )
  embeddings = np.split(np.asarray(embeddings), len(batches))
  w = before.classif_params['linear']['w'].astype(np.float64)
  b = before.classif_params['linear']['b'].astype(np.float64)
  mu_w, mu_b = np.zeros_like(w), np.zeros_like(b)
  expected_losses, expected_rates = [], []
  for batch, step, embedding in zip(batches, steps, embeddings):
    loss, grad_w, grad_b = numpy_classifier_loss_and_grads(embedding, w, b, batch['labels'])
    scaled_rate = config['lr_schedule_config']['base_learning_rate'] * config['batch_size'] / 256
    rate = scaled_rate * 0.5 * (1 + np.cos(np.pi * step / config['max_steps']))
    # optax.trace(nesterov=True): mu <- g + momentum * mu; update = -lr * (g + momentum * mu).
    mu_w, mu_b = grad_w + momentum * mu_w, grad_b + momentum * mu_b
    w = w - rate * (grad_w + momentum * mu_w)
    b = b - rate * (grad_b + momentum * mu_b)
    expected_losses.append(loss)
    expected_rates.append(rate)

  state = experiment.state
  losses, rates = [], []
  for batch, step in zip(batches, steps):
    state, logs = experiment.update(
      state, helpers.to_global_batch(batch, experiment.batch_sharding), np.int32(step)
    )
    losses.append(float(logs['loss']))
    rates.append(float(logs['learning_rate']))
  after = helpers.to_host(state)

  np.testing.assert_allclose(rates, expected_rates, rtol=1e-6)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  np.testing.assert_allclose(after.classif_params['linear']['w'], w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(after.classif_params['linear']['b'], b, rtol=1e-5, atol=1e-7)
  # The step itself too, not only its sum with the weights (float32 weights round it to ~1e-4).
  w_before = before.classif_params['linear']['w']
  np.testing.assert_allclose(
    after.classif_params['linear']['w'] - w_before, w - w_before, rtol=1e-3, atol=1e-7
  )
  [trace] = find_momentum_traces(after.classif_opt_state)
  np.testing.assert_allclose(trace['linear']['w'], mu_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(trace['linear']['b'], mu_b, rtol=1e-5, atol=1e-7)
  # Frozen: the encoder's parameters and BatchNorm statistics are bit-for-bit unchanged.
  jax.tree.map(np.testing.assert_array_equal, after.backbone_params, before.backbone_params)
  jax.tree.map(np.testing.assert_array_equal, after.backbone_state, before.backbone_state)
