"""Worker plumbing shared by pretraining and linear evaluation.

An experiment subclass supplies its pure functions (`_init_fn`, `_update_fn`,
`_embedding_and_logits`), its state NamedTuple and which parameters a checkpoint must match; this
base class holds what the train and eval workers need around them: devices and shardings, the
learning rate, the training input, evaluation over a split (the classifier's accuracy and the kNN
accuracy of the embedding), and checkpoints that are checked before they are used.
"""

from typing import TYPE_CHECKING, Any, Iterator, Mapping
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from byol.utils import checkpointing
from byol.utils import cpu_kernels
from byol.utils import evaluation
from byol.utils import helpers
from byol.utils import input_spec
from byol.utils import networks
from byol.utils import precision
from byol.utils import schedules

if TYPE_CHECKING:
  from byol.utils import input_state

Batch = Mapping[str, jax.Array]
Scalars = dict[str, jax.Array]


class Experiment:
  """Base of `ByolExperiment` and `EvalExperiment`: everything but the model's own functions."""

  # Set by subclasses: the state NamedTuple, the preprocessing of training batches, and what the
  # checkpoint is called in messages.
  _state_class: type[tuple]
  _train_preprocess_mode: input_spec.PreprocessMode
  _checkpoint_kind: str

  def __init__(
    self,
    *,
    random_seed: int,
    num_classes: int,
    batch_size: int,
    max_steps: int,
    network_config: Mapping[str, Any],
    lr_schedule_config: Mapping[str, Any],
    dataset_config: Mapping[str, Any],
    evaluation_config: Mapping[str, Any],
    checkpointing_config: Mapping[str, Any],
  ):
    helpers.check_batch_size(batch_size)
    eval_batch_size = helpers.round_up_to_devices(evaluation_config['batch_size'])
    if eval_batch_size != evaluation_config['batch_size']:
      logging.info(
        'Evaluating in batches of %d, the evaluation batch size %d rounded up to a '
        'multiple of the %d devices (the extra examples are padding, masked out).',
        eval_batch_size,
        evaluation_config['batch_size'],
        jax.device_count(),
      )
    if max_steps <= 0:
      raise ValueError(f'max_steps must be positive, got {max_steps}.')
    self._random_seed = random_seed
    self._num_classes = num_classes
    self._batch_size = batch_size
    self._max_steps = max_steps
    self._network_config = dict(network_config)
    self._encoder_class = networks.get_encoder(network_config['encoder_class'])
    precision.check_compute_dtype(network_config['compute_dtype'])
    self._compute_dtype = network_config['compute_dtype']
    # Resolved here, once: traced code only sees the resulting bool.
    self._use_cpu_kernels = cpu_kernels.resolve_switch(network_config['cpu_kernels'])
    self._lr_schedule_config = dict(lr_schedule_config)
    self._dataset_config = dict(dataset_config)
    self._evaluation_config = dict(evaluation_config, batch_size=eval_batch_size)
    # Validates the warm-up against the run length now rather than at the first step.
    self._learning_rate(0)

    self._checkpointer = checkpointing.Checkpointer(
      checkpointing_config['checkpoint_dir'], checkpointing_config['filename']
    )
    mesh = helpers.make_mesh()
    self._replicated = helpers.replicated(mesh)
    self._batch_sharding = helpers.batch_sharded(mesh)
    self._state: tuple | None = None
    self._train_input: 'input_state.DeviceInput | None' = None
    # Training batches the state has used: the initialisation takes one, then one per step.
    self._input_batches_used = 0
    self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=self._replicated)
    self._embed_batch = jax.jit(
      self._embed_batch_fn, out_shardings=self._replicated, static_argnames='normalise'
    )

  # ------------------------------------------------------------------------------- subclass hooks

  def _init_fn(self, rng: jax.Array, inputs: Batch) -> tuple:
    """The initial state, from a key and the first training batch."""
    raise NotImplementedError

  def _checked_params(self, state: tuple) -> Any:
    """The parts of a state whose names and shapes a checkpoint must match."""
    raise NotImplementedError

  def _embedding_and_logits(self, state: tuple, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The evaluated encoder's embedding [B, D] and the classifier's logits [B, C] of `images`
    [B, H, W, 3], in inference mode, both in float32."""
    raise NotImplementedError

  def _labelled_subset(self, split: input_spec.Split) -> np.ndarray | None:
    """The positions of the examples of the training `split` whose labels the run uses (for its
    training batches and its kNN bank), or None for all of them."""
    del split
    return None

  # ------------------------------------------------------------------------------- shared

  def _learning_rate(self, global_step: jax.typing.ArrayLike) -> jax.Array:
    return schedules.learning_schedule(
      global_step,
      batch_size=self._batch_size,
      base_learning_rate=self._lr_schedule_config['base_learning_rate'],
      total_steps=self._max_steps,
      warmup_steps=self._lr_schedule_config['warmup_steps'],
    )

  def _describe_networks(self) -> str:
    """The config's networks as in checkpoint errors, e.g. 'ResNet50 1x, 1000 classes'."""
    encoder_config = self._network_config['encoder_config']
    version = ' v2' if encoder_config.get('resnet_v2') else ''
    stem = ' small-image stem' if encoder_config.get('small_image_stem') else ''
    return (
      f'{self._network_config["encoder_class"]} {encoder_config["width_multiplier"]}x'
      f'{version}{stem}, {self._num_classes} classes'
    )

  def _current_state(self, method: str) -> tuple:
    if self._state is None:
      raise RuntimeError(f'Call initialize(rng) or load_checkpoint() before {method}().')
    return self._state

  def _next_train_batch(self) -> Batch:
    """The next training batch on the devices."""
    return next(self._training_input())

  def _training_input(self) -> 'input_state.DeviceInput':
    """The training input; started on first use, where the loaded checkpoint's run stood."""
    # Imported where the input is built: the networks and updates run without TensorFlow.
    from byol.utils import dataset
    from byol.utils import input_state

    if self._train_input is None:
      split = input_spec.Split.from_string(self._dataset_config['train_split'])
      shards, num_shards = helpers.local_shards(self._batch_sharding.mesh)
      subset = self._labelled_subset(split)
      # What decides the order of the batches and this process's rows of them.
      layout = dict(
        dataset=self._dataset_config['name'],
        split=split.name,
        preprocessing=self._train_preprocess_mode.name,
        image_size=self._dataset_config['image_size'],
        batch_size=self._batch_size,
        seed=self._random_seed,
        shards=shards,
        num_shards=num_shards,
      )
      if subset is not None:  # Only then: positions saved before subsets existed still match.
        layout['subset_crc32'] = zlib.crc32(subset.tobytes())
      self._train_input = input_state.DeviceInput(
        dataset.load_for_devices(
          split,
          preprocess_mode=self._train_preprocess_mode,
          global_batch_size=self._batch_size,
          dataset_config=self._dataset_config,
          sharding=self._batch_sharding,
          seed=self._random_seed,
          subset=subset,
          data_service_address=self._dataset_config['data_service_address'],
        ),
        self._batch_sharding,
        checkpoint_path=self._checkpointer.path,
        layout=layout,
      )
      input_state.resume(
        self._train_input, self._input_batches_used, checkpoint_path=self._checkpointer.path
      )
    return self._train_input

  def _eval_batches(self, split_name: str, *, labelled_only: bool = False) -> Iterator[Batch]:
    """Every example of a split once (or of its labelled subset), centre-cropped, in evaluation
    batches on the devices."""
    from byol.utils import dataset  # As in `_training_input`: only where the input is built.

    split = input_spec.Split.from_string(split_name)
    batches = dataset.load_for_devices(
      split,
      preprocess_mode=input_spec.PreprocessMode.EVAL,
      global_batch_size=self._evaluation_config['batch_size'],
      dataset_config=self._dataset_config,
      sharding=self._batch_sharding,
      subset=self._labelled_subset(split) if labelled_only else None,
    )
    return helpers.prefetch_to_device(batches, self._batch_sharding)

  def _eval_batch_fn(self, state: tuple, batch: Batch, bank: Batch | None) -> Scalars:
    """Sums over the real (unmasked) examples of a batch: counts, correct top-1/5 and loss, and
    correct kNN top-1 over `bank` (`evaluation.knn_bank`) unless it is None."""
    embedding, logits = self._embedding_and_logits(state, batch['images'])
    sums = evaluation.masked_classification_sums(
      logits, batch['labels'], batch['mask'], self._num_classes
    )
    if bank is not None:
      knn = self._evaluation_config['knn']
      votes = evaluation.knn_votes(
        embedding,
        bank['features'],
        bank['labels'],
        num_classes=self._num_classes,
        k=knn['k'],
        temperature=knn['temperature'],
      )  # [B, num_classes]
      correct = helpers.topk_accuracy(votes, batch['labels'], topk=1)  # [B]
      sums['knn_top1_correct'] = jnp.sum(batch['mask'] * correct)
    return sums

  def _embed_batch_fn(self, state: tuple, batch: Batch, normalise: bool = True) -> Batch:
    """The embedding [B, D] of a batch (L2-normalised unless told not), its labels and mask."""
    embedding, _ = self._embedding_and_logits(state, batch['images'])
    if normalise:
      embedding = helpers.l2_normalize(embedding, axis=-1)
    return dict(embedding=embedding, labels=batch['labels'], mask=batch['mask'])

  # ------------------------------------------------------------------------------- worker API
  # What the train and eval workers of byol.main_loop call: `initialize` or `load_checkpoint`,
  # then `step` and `save_checkpoint` (train worker), or `load_checkpoint` and `evaluate` (eval).

  def initialize(self, rng: jax.Array, first_batch: Batch | None = None) -> None:
    """Creates the initial state from `rng` (the same key on every host) and the first training
    batch, or `first_batch` without reading the input."""
    raise NotImplementedError

  def step(self, *, global_step: int, rng: jax.Array) -> Scalars:
    """Trains on the next batch; returns the step's scalars as device arrays (no host sync)."""
    raise NotImplementedError

  def evaluate(self, *, global_step: int) -> dict[str, float]:
    """Top-1, top-5, mean loss and example count of the classifier over the evaluation split, and
    the weighted kNN top-1 of the encoder's embedding (unless `evaluation_config.knn.k` is 0)."""
    state = self._current_state('evaluate')
    bank = None
    name = self._dataset_config['name']
    if self._evaluation_config['knn']['k'] > 0:
      train_split = self._dataset_config['train_split']
      bank = evaluation.knn_bank(
        lambda batch: self._embed_batch(state, batch),
        self._eval_batches(train_split, labelled_only=True),
        bank_per_class=self._evaluation_config['knn']['bank_per_class'],
        mesh=self._batch_sharding.mesh,
        num_classes=self._num_classes,
        split_name=f'{train_split} split of {name}',
      )
    subset = self._evaluation_config['subset']
    return evaluation.evaluate_split(
      lambda batch: self._eval_batch(state, batch, bank),
      self._eval_batches(subset),
      global_step=global_step,
      split_name=f'{subset} split of {name}',
    )

  def split_features(self, split_name: str) -> dict[str, np.ndarray]:
    """The evaluated encoder's embedding (not normalised) of every image of a split, centre-cropped
    as for evaluation, in reading order: `features` [N, D] and `labels` [N], on every process."""
    state = self._current_state('compute features')
    rows = list(
      evaluation.real_rows(
        lambda batch: self._embed_batch(state, batch, normalise=False),
        self._eval_batches(split_name),
      )
    )
    if not rows:
      raise ValueError(f'The {split_name} split of {self._dataset_config["name"]} is empty.')
    features, labels = zip(*rows)
    return dict(features=np.concatenate(features), labels=np.concatenate(labels).astype(np.int32))

  @property
  def state(self) -> tuple | None:
    """The current experiment state (None before `initialize` or `load_checkpoint`)."""
    return self._state

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    """How input batches are laid out over the devices (split along the batch axis)."""
    return self._batch_sharding

  @property
  def use_cpu_kernels(self) -> bool:
    """Whether the networks and augmentations take the routes of `cpu_kernels`."""
    return self._use_cpu_kernels

  @property
  def checkpoint_path(self) -> str:
    """Where `save_checkpoint` writes and `load_checkpoint` reads."""
    return self._checkpointer.path

  def schedule_checkpoint(self, global_step: int) -> int:
    """Has the training input save its position for the checkpoint of `global_step`, or of the
    first later step it still can, and returns that step.

    The input runs batches ahead of training, so its position at a step must be asked for before
    the input passes it; a checkpoint saved at that step then resumes exactly (`input_state`).
    """
    train_input = self._training_input()
    batches = max(global_step + 1, train_input.next_position)  # Used by the state at that step.
    return train_input.request_position(batches) - 1

  def save_checkpoint(self, *, global_step: int, rng: jax.Array, block: bool = True) -> None:
    """Writes the state, step and loop key (process 0 only, atomically).

    With `block=False` the file is written in the background (see `Checkpointer.save`).
    """
    self._checkpointer.save(self._state, global_step, rng, block=block)

  def wait_for_checkpoint(self) -> None:
    """Returns once a background checkpoint write is done; raises its error if it failed."""
    self._checkpointer.wait()

  def load_checkpoint(self) -> tuple[int, jax.Array] | None:
    """Restores the state from the checkpoint; returns (step, loop key), or None if there is none.

    A checkpoint of another kind, or for other networks than the config builds, is refused.
    """
    checkpoint = self._checkpointer.restore()
    if checkpoint is None:
      return None
    state = checkpoint['experiment_state']
    fields = tuple(getattr(state, '_fields', ()))
    if fields != self._state_class._fields:
      raise checkpointing.CheckpointError(
        f'{self._checkpointer.path} is not a {self._checkpoint_kind} checkpoint (its state has '
        f'fields {fields or type(state).__name__}).'
      )
    expected = jax.eval_shape(self._init_fn, jax.random.key(0), self._train_batch_shapes())
    checkpointing.check_parameter_shapes(
      self._checked_params(state),
      self._checked_params(expected),
      path=self._checkpointer.path,
      wanted_networks=self._describe_networks(),
    )
    if jax.tree.structure(tuple(state)) != jax.tree.structure(tuple(expected)):
      raise checkpointing.CheckpointError(
        f'{self._checkpointer.path} has the right networks but an optimiser state of another '
        'layout (a file written by another version, such as a 2020 release checkpoint), so '
        'training cannot resume from it. Its encoder can still be evaluated: put it in '
        'another folder as pretrain.pkl and run --experiment_mode=linear-eval there.'
      )
    self._state = jax.device_put(self._state_class(*state), self._replicated)
    self._train_input = None  # Training goes on from this checkpoint's input position.
    self._input_batches_used = checkpoint['step'] + 1
    return checkpoint['step'], checkpoint['rng']

  def _train_batch_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a training batch: what `_init_fn` is traced with when no data is read."""
    size = self._dataset_config['image_size']
    images = jax.ShapeDtypeStruct((self._batch_size, size, size, 3), jnp.float32)  # [B, H, W, 3]
    labels = jax.ShapeDtypeStruct((self._batch_size,), jnp.int32)  # [B]
    if self._train_preprocess_mode is input_spec.PreprocessMode.PRETRAIN:
      return dict(view1=images, view2=images, labels=labels)
    return dict(images=images, labels=labels)

  def check_writable(self) -> None:
    """Fails early, with the folder in the message, if checkpoints cannot be written."""
    self._checkpointer.check_writable()
