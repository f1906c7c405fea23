"""Linear evaluation and fine-tuning of a pretrained encoder (SPEC section 9).

The encoder's parameters and BatchNorm state come from the online network of a pretraining
checkpoint; a fresh linear classifier is trained on its embedding with SGD and Nesterov momentum.
With `freeze_backbone` (linear evaluation) the encoder runs in inference mode and never changes;
without it (fine-tuning) the encoder is trained too and its BatchNorm statistics are updated.
"""

import os
from typing import Any, Mapping, NamedTuple

from absl import logging
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from byol.utils import checkpointing
from byol.utils import input_spec
from byol.utils import experiment
from byol.utils import helpers
from byol.utils import label_subset
from byol.utils import precision

Batch = Mapping[str, jax.Array]
Scalars = dict[str, jax.Array]


class _EvalExperimentState(NamedTuple):
  """Everything that changes during linear evaluation (and is checkpointed)."""

  backbone_params: hk.Params
  classif_params: hk.Params
  backbone_state: hk.State
  backbone_opt_state: optax.OptState  # Empty-like while the backbone is frozen.
  classif_opt_state: optax.OptState


class EvalExperiment(experiment.Experiment):
  """Trains a linear classifier on a pretrained encoder; `evaluate` scores it."""

  _state_class = _EvalExperimentState
  _train_preprocess_mode = input_spec.PreprocessMode.LINEAR_TRAIN
  _checkpoint_kind = 'linear-evaluation'

  def __init__(
    self,
    random_seed: int,
    num_classes: int,
    batch_size: int,
    max_steps: int,
    checkpoint_to_evaluate: str | None,
    allow_train_from_scratch: bool,
    freeze_backbone: bool,
    network_config: Mapping[str, Any],
    optimizer_config: Mapping[str, Any],
    lr_schedule_config: Mapping[str, Any],
    dataset_config: Mapping[str, Any],
    evaluation_config: Mapping[str, Any],
    checkpointing_config: Mapping[str, Any],
  ):
    super().__init__(
      random_seed=random_seed,
      num_classes=num_classes,
      batch_size=batch_size,
      max_steps=max_steps,
      network_config=network_config,
      lr_schedule_config=lr_schedule_config,
      dataset_config=dataset_config,
      evaluation_config=evaluation_config,
      checkpointing_config=checkpointing_config,
    )
    self._checkpoint_to_evaluate = checkpoint_to_evaluate
    self._allow_train_from_scratch = allow_train_from_scratch
    self._freeze_backbone = freeze_backbone
    label_subset.check_fraction(dataset_config['label_fraction'])
    self._labelled_subsets: dict[input_spec.Split, np.ndarray] = {}
    self._optimizer_config = dict(optimizer_config)
    self._backbone = hk.without_apply_rng(hk.transform_with_state(self._backbone_fn))
    self._classifier = hk.without_apply_rng(hk.transform(self._classifier_fn))
    self.update = jax.jit(self._update_fn, out_shardings=self._replicated, donate_argnums=(0,))
    """`update(state, inputs, global_step) -> (state, scalars)`, jitted; donates `state`."""

  # ------------------------------------------------------------------------------- networks

  def _backbone_fn(self, images: jax.Array, is_training: bool) -> jax.Array:
    """The pretrained encoder, under the same module name as in pretraining: [B,H,W,3] -> [B,D]."""
    config = self._network_config
    encoder = self._encoder_class(
      bn_config=config['bn_config'],
      **config['encoder_config'],
      use_cpu_kernels=self._use_cpu_kernels,
    )
    with precision.mixed_precision(self._compute_dtype):
      embedding = encoder(
        input_spec.normalize_images(images).astype(self._compute_dtype), is_training=is_training
      )
    return embedding.astype(jnp.float32)  # The classifier and its loss in float32.

  def _classifier_fn(self, embedding: jax.Array) -> jax.Array:
    return hk.Linear(output_size=self._num_classes)(embedding)  # [B, num_classes]

  # ------------------------------------------------------------------------------- optimiser

  def _optimizer(self, learning_rate: jax.typing.ArrayLike) -> optax.GradientTransformation:
    # Momentum first, then the step's learning rate, as in the original.
    return optax.sgd(
      learning_rate,
      momentum=self._optimizer_config['momentum'],
      nesterov=self._optimizer_config['nesterov'],
    )

  # ------------------------------------------------------------------------------- pure functions

  def _init_fn(self, rng: jax.Array, inputs: Batch) -> _EvalExperimentState:
    """Random encoder and classifier (the encoder is replaced by the pretrained one if given).

    As in the original, `inputs` is the first training batch: a random encoder's BatchNorm
    averages start at its statistics. From zeros they would be 0 and, in inference mode, scale
    every layer by 1/sqrt(eps), ruining the random-encoder baseline.
    """
    backbone_rng, classif_rng = jax.random.split(rng)
    images = inputs['images']  # [B, H, W, 3]
    backbone_params, backbone_state = self._backbone.init(backbone_rng, images, is_training=True)
    embedding = jax.eval_shape(
      lambda: self._backbone.apply(backbone_params, backbone_state, images, is_training=False)
    )
    classif_params = self._classifier.init(classif_rng, jnp.zeros(embedding[0].shape, jnp.float32))
    return self._state_with_optimisers(backbone_params, classif_params, backbone_state)

  def _state_with_optimisers(
    self, backbone_params: hk.Params, classif_params: hk.Params, backbone_state: hk.State
  ) -> _EvalExperimentState:
    optimizer = self._optimizer(0.0)  # The optimiser state does not depend on the rate.
    backbone_opt_state = optimizer.init({} if self._freeze_backbone else backbone_params)
    return _EvalExperimentState(
      backbone_params,
      classif_params,
      backbone_state,
      backbone_opt_state,
      optimizer.init(classif_params),
    )

  def _loss_fn(
    self,
    backbone_params: hk.Params,
    classif_params: hk.Params,
    backbone_state: hk.State,
    inputs: Batch,
  ) -> tuple[jax.Array, tuple[hk.State, Scalars]]:
    """Mean softmax cross-entropy of the classifier on the (frozen or trained) embedding."""
    embedding, new_backbone_state = self._backbone.apply(
      backbone_params, backbone_state, inputs['images'], is_training=not self._freeze_backbone
    )
    if self._freeze_backbone:
      # Inference-mode BatchNorm keeps its statistics; no gradient reaches the encoder.
      embedding = jax.lax.stop_gradient(embedding)
      new_backbone_state = backbone_state
    logits = self._classifier.apply(classif_params, embedding)
    labels = inputs['labels']
    loss = jnp.mean(
      helpers.softmax_cross_entropy(logits, jax.nn.one_hot(labels, self._num_classes))
    )
    logs = dict(
      loss=loss,
      top1_accuracy=jnp.mean(helpers.topk_accuracy(logits, labels, topk=1)),
      top5_accuracy=jnp.mean(helpers.topk_accuracy(logits, labels, topk=5)),
    )
    return loss, (new_backbone_state, logs)

  def _update_fn(
    self, state: _EvalExperimentState, inputs: Batch, global_step: jax.Array
  ) -> tuple[_EvalExperimentState, Scalars]:
    """One SGD step on the classifier (and the encoder when fine-tuning)."""
    grad_fn = jax.grad(self._loss_fn, argnums=(0, 1), has_aux=True)
    (backbone_grads, classif_grads), (backbone_state, logs) = grad_fn(
      state.backbone_params, state.classif_params, state.backbone_state, inputs
    )
    learning_rate = self._learning_rate(global_step)
    optimizer = self._optimizer(learning_rate)

    classif_updates, classif_opt_state = optimizer.update(
      classif_grads, state.classif_opt_state, state.classif_params
    )
    classif_params = optax.apply_updates(state.classif_params, classif_updates)
    if self._freeze_backbone:
      backbone_params, backbone_opt_state = state.backbone_params, state.backbone_opt_state
    else:
      backbone_updates, backbone_opt_state = optimizer.update(
        backbone_grads, state.backbone_opt_state, state.backbone_params
      )
      backbone_params = optax.apply_updates(state.backbone_params, backbone_updates)

    logs.update(learning_rate=learning_rate)
    new_state = _EvalExperimentState(
      backbone_params, classif_params, backbone_state, backbone_opt_state, classif_opt_state
    )
    return new_state, logs

  def _embedding_and_logits(
    self, state: _EvalExperimentState, images: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """The encoder's embedding [B, D] and the linear classifier's logits [B, C]."""
    embedding, _ = self._backbone.apply(
      state.backbone_params, state.backbone_state, images, is_training=False
    )
    return embedding, self._classifier.apply(state.classif_params, embedding)

  # ------------------------------------------------------------------------------- worker API

  def _checked_params(self, state: tuple) -> tuple[hk.Params, hk.Params]:
    return state[0], state[1]  # backbone_params, classif_params

  def initialize(self, rng: jax.Array, first_batch: Batch | None = None) -> None:
    """A fresh classifier on the pretrained encoder (or a random one, if allowed).

    Consumes the first training batch, as the original did: training starts on the second.
    `first_batch` (benchmarks) is used instead, and the input is not read.
    """
    batch = self._next_train_batch() if first_batch is None else first_batch
    # Checked against the shapes: a checkpoint of other networks is refused before compiling.
    pretrained = self._pretrained_backbone(jax.eval_shape(self._init_fn, rng, batch))
    state = jax.jit(self._init_fn)(rng, batch)
    if pretrained is None:
      if not self._allow_train_from_scratch:
        where = f' at {self._checkpoint_to_evaluate}' if self._checkpoint_to_evaluate else ''
        raise checkpointing.CheckpointError(
          f'No pretraining checkpoint to evaluate{where}. Pretrain first '
          '(--experiment_mode=pretrain with the same --checkpoint_root), or allow a random '
          'encoder.'
        )
      logging.warning('Training a linear classifier on a RANDOM encoder (a baseline).')
    else:
      backbone_params, backbone_state = pretrained
      state = self._state_with_optimisers(backbone_params, state.classif_params, backbone_state)
    self._state = jax.device_put(state, self._replicated)

  def step(self, *, global_step: int, rng: jax.Array) -> Scalars:
    """Trains on the next batch; returns the step's scalars as device arrays (no host sync)."""
    del rng  # The input pipeline draws the crops and flips.
    state = self._current_state('step')
    self._state, logs = self.update(state, self._next_train_batch(), np.int32(global_step))
    return logs

  # ------------------------------------------------------------------------------- internals

  def _labelled_subset(self, split: input_spec.Split) -> np.ndarray | None:
    """`dataset_config.label_fraction` of the split's examples, recorded beside the checkpoint as
    `<name>.labels.json` (`byol.utils.label_subset`); None when the fraction is 1."""
    fraction = self._dataset_config['label_fraction']
    if fraction == 1:
      return None
    if split not in self._labelled_subsets:
      from byol.utils import dataset  # Only where the input is built (the update needs no TF).

      name, data_dir = self._dataset_config['name'], self._dataset_config['data_dir']
      self._labelled_subsets[split] = label_subset.load_or_choose(
        os.path.splitext(self._checkpointer.path)[0] + '.labels.json',
        description=dict(
          dataset=name,
          split=split.name.lower(),
          split_size=dataset.num_examples(split, name, data_dir),
        ),
        fraction=fraction,
        seed=self._dataset_config['label_seed'],
        split_labels=lambda: dataset.split_labels(split, name, data_dir),
      )
    return self._labelled_subsets[split]

  def _pretrained_backbone(
    self, fresh_state: _EvalExperimentState
  ) -> tuple[hk.Params, hk.State] | None:
    """The encoder's parameters and BatchNorm state from the pretraining checkpoint, if any."""
    path = self._checkpoint_to_evaluate
    checkpoint = None if path is None else checkpointing.load_checkpoint(path, missing_ok=True)
    if checkpoint is None:
      return None
    params, state = checkpointing.encoder_from_state(checkpoint['experiment_state'], path=path)
    checkpointing.check_parameter_shapes(
      params, fresh_state.backbone_params, path=path, wanted_networks=self._describe_networks()
    )
    if set(state) != set(fresh_state.backbone_state):
      raise checkpointing.CheckpointError(f'{path} lacks BatchNorm statistics of the encoder.')
    logging.info('Loaded the pretrained encoder from %s.', path)
    return jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, state)
