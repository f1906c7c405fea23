"""BYOL pretraining (SPEC section 4): state, loss, update and evaluation of the online classifier.

The update is one `jax.jit` over a one-axis mesh of every device of every process: parameters,
optimiser and BatchNorm state are replicated, batches are split along the leading axis. Written as a
computation over the global batch, it averages gradients and takes BatchNorm statistics over all
devices without any explicit collective; XLA inserts the all-reduces.
"""

from typing import Any, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from byol.utils import augmentations
from byol.utils import input_spec
from byol.utils import experiment
from byol.utils import helpers
from byol.utils import networks
from byol.utils import precision
from byol.utils import optimizers
from byol.utils import schedules

Batch = Mapping[str, jax.Array]
Scalars = dict[str, jax.Array]


class _ByolExperimentState(NamedTuple):
  """Everything that changes during pretraining (and is checkpointed)."""

  online_params: hk.Params
  target_params: hk.Params
  online_state: hk.State
  target_state: hk.State
  opt_state: optax.OptState  # LARS state of the online parameters.


class ByolExperiment(experiment.Experiment):
  """BYOL pretraining: `step` trains on the next batch, `evaluate` scores the online classifier."""

  _state_class = _ByolExperimentState
  _train_preprocess_mode = input_spec.PreprocessMode.PRETRAIN
  _checkpoint_kind = 'BYOL pretraining'

  def __init__(
    self,
    random_seed: int,
    num_classes: int,
    batch_size: int,
    max_steps: int,
    base_target_ema: float,
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
    self._base_target_ema = base_target_ema
    self._optimizer_config = dict(optimizer_config)
    self._forward = hk.without_apply_rng(hk.transform_with_state(self._forward_fn))
    # The state is donated: its buffers are reused for the new state, halving peak memory.
    self.update = jax.jit(self._update_fn, out_shardings=self._replicated, donate_argnums=(0,))
    """`update(state, inputs, rng, global_step) -> (state, scalars)`, jitted; donates `state`."""

  # ------------------------------------------------------------------------------- network

  def _forward_fn(self, inputs: Batch, is_training: bool) -> dict[str, Any]:
    """Encoder, projector, predictor and online classifier, on both views when training."""
    config = self._network_config
    encoder = self._encoder_class(
      bn_config=config['bn_config'],
      **config['encoder_config'],
      use_cpu_kernels=self._use_cpu_kernels,
    )
    projector = networks.MLP(
      name='projector',
      hidden_size=config['projector_hidden_size'],
      output_size=config['projector_output_size'],
      bn_config=config['bn_config'],
    )
    predictor = networks.MLP(
      name='predictor',
      hidden_size=config['predictor_hidden_size'],
      output_size=config['projector_output_size'],
      bn_config=config['bn_config'],
    )
    classifier = hk.Linear(output_size=self._num_classes, name='classifier')

    def apply_once(images: jax.Array) -> dict[str, jax.Array]:
      with precision.mixed_precision(self._compute_dtype):
        images = input_spec.normalize_images(images).astype(self._compute_dtype)
        embedding = encoder(images, is_training=is_training)  # [B, D]
        projection = projector(embedding, is_training)  # [B, 256]
        prediction = predictor(projection, is_training)  # [B, 256]
      # The loss and the classifier in float32, whatever the networks computed in.
      embedding, projection, prediction = (
        x.astype(jnp.float32) for x in (embedding, projection, prediction)
      )
      # The classifier only reads the embedding: labels must not shape the representation.
      logits = classifier(jax.lax.stop_gradient(embedding))  # [B, num_classes]
      return dict(embedding=embedding, projection=projection, prediction=prediction, logits=logits)

    if is_training:
      # The views go through separately so that each has its own BatchNorm statistics.
      return dict(view1=apply_once(inputs['view1']), view2=apply_once(inputs['view2']))
    return apply_once(inputs['images'])

  # ------------------------------------------------------------------------------- optimiser

  def _optimizer(self, learning_rate: jax.typing.ArrayLike) -> optax.GradientTransformation:
    config = self._optimizer_config
    mask = optimizers.exclude_bias_and_norm if config['exclude_bias_from_adaption'] else None
    return optimizers.lars(
      learning_rate,
      weight_decay=config['weight_decay'],
      momentum=config['momentum'],
      eta=config['eta'],
      weight_decay_mask=mask,
      trust_ratio_mask=mask,
      clip_trust_ratio=config['clip_trust_ratio'],
    )

  # ------------------------------------------------------------------------------- pure functions

  def _init_fn(self, rng: jax.Array, inputs: Batch) -> _ByolExperimentState:
    """Online and target networks from different keys; the optimiser state of the online one.

    As in the original, `inputs` is the first training batch (its views before the device
    augmentations): the BatchNorm averages start at its statistics, not at those of zeros.
    """
    online_rng, target_rng = jax.random.split(rng)
    views = dict(view1=inputs['view1'], view2=inputs['view2'])
    online_params, online_state = self._forward.init(online_rng, views, is_training=True)
    target_params, target_state = self._forward.init(target_rng, views, is_training=True)
    # The optimiser state does not depend on the learning rate.
    opt_state = self._optimizer(0.0).init(online_params)
    return _ByolExperimentState(online_params, target_params, online_state, target_state, opt_state)

  def _loss_fn(
    self,
    online_params: hk.Params,
    online_state: hk.State,
    target_outputs: Mapping[str, Any],
    inputs: Batch,
  ) -> tuple[jax.Array, tuple[hk.State, Scalars]]:
    """Symmetric BYOL regression loss plus the online classifier's cross-entropy."""
    outputs, online_state = self._forward.apply(
      online_params, online_state, inputs, is_training=True
    )
    target_projection = jax.lax.stop_gradient(
      {view: target_outputs[view]['projection'] for view in ('view1', 'view2')}
    )
    repr_loss = jnp.mean(
      helpers.regression_loss(outputs['view1']['prediction'], target_projection['view2'])
      + helpers.regression_loss(outputs['view2']['prediction'], target_projection['view1'])
    )

    logits = outputs['view1']['logits']  # [B, num_classes]
    labels = inputs['labels']  # [B]
    one_hot = jax.nn.one_hot(labels, self._num_classes)
    classif_loss = jnp.mean(helpers.softmax_cross_entropy(logits, one_hot))
    loss = repr_loss + classif_loss
    logs = dict(
      loss=loss,
      repr_loss=repr_loss,
      classif_loss=classif_loss,
      top1_accuracy=jnp.mean(helpers.topk_accuracy(logits, labels, topk=1)),
      top5_accuracy=jnp.mean(helpers.topk_accuracy(logits, labels, topk=5)),
      # A collapse monitor: the share of the online embedding's entries (both views, [2, B, D])
      # that are exactly 0, i.e. channels whose last ReLU is off over the whole image. Near 1 the
      # encoder has died and BYOL regresses the projector's rescaling of almost nothing (measured:
      # 0.95 for the quick start's 8-channel encoder after 600 steps, 0.5 at initialisation).
      embedding_zero_fraction=jnp.mean(
        jnp.stack([outputs[view]['embedding'] for view in ('view1', 'view2')]) == 0
      ),
    )
    return loss, (online_state, logs)

  def _update_fn(
    self, state: _ByolExperimentState, inputs: Batch, rng: jax.Array, global_step: jax.Array
  ) -> tuple[_ByolExperimentState, Scalars]:
    """One BYOL step: augment, LARS update of the online network, EMA update of the target."""
    inputs = augmentations.postprocess(inputs, rng, use_cpu_kernels=self._use_cpu_kernels)
    target_outputs, target_state = self._forward.apply(
      state.target_params, state.target_state, inputs, is_training=True
    )
    grads, (online_state, logs) = jax.grad(self._loss_fn, has_aux=True)(
      state.online_params, state.online_state, target_outputs, inputs
    )

    learning_rate = self._learning_rate(global_step)
    updates, opt_state = self._optimizer(learning_rate).update(
      grads, state.opt_state, state.online_params
    )
    online_params = optax.apply_updates(state.online_params, updates)

    tau = schedules.target_ema(global_step, self._base_target_ema, self._max_steps)
    target_params = jax.tree.map(
      lambda target, online: target + (1.0 - tau) * (online - target),
      state.target_params,
      online_params,
    )

    logs.update(learning_rate=learning_rate, tau=tau)
    new_state = _ByolExperimentState(
      online_params, target_params, online_state, target_state, opt_state
    )
    return new_state, logs

  def _embedding_and_logits(
    self, state: _ByolExperimentState, images: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """The online encoder's embedding [B, D] and the online classifier's logits [B, C]."""
    outputs, _ = self._forward.apply(
      state.online_params, state.online_state, dict(images=images), is_training=False
    )
    return outputs['embedding'], outputs['logits']

  # ------------------------------------------------------------------------------- worker API

  def _checked_params(self, state: tuple) -> hk.Params:
    return state[0]  # online_params

  def initialize(self, rng: jax.Array, first_batch: Batch | None = None) -> None:
    """Fresh parameters and optimiser state from `rng` (the same key on every host).

    Consumes the first training batch, as the original did: training starts on the second.
    `first_batch` (benchmarks) is used instead, and the input is not read.
    """
    if first_batch is None:
      first_batch = self._next_train_batch()
    self._state = jax.jit(self._init_fn, out_shardings=self._replicated)(rng, first_batch)

  def step(self, *, global_step: int, rng: jax.Array) -> Scalars:
    """Trains on the next batch; returns the step's scalars as device arrays (no host sync)."""
    state = self._current_state('step')
    self._state, logs = self.update(state, self._next_train_batch(), rng, np.int32(global_step))
    return logs
