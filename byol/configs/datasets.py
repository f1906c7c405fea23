"""What a dataset brings to a config: its recipe (one table) and the facts read from its images.

Both experiment configs (`byol.configs.byol`, `byol.configs.eval`) take a `Dataset`, build their
`dataset_config` with `dataset_config` and finish with `specialise`, so the recipe is applied here
and only here.
"""

from typing import Any, MutableMapping, NamedTuple, Sequence

from byol.configs import override

DEFAULT_BATCH_SIZE = 4096

# What differs from the ImageNet recipe, by dataset kind (`folder:PATH` is 'folder'; other TFDS
# names get ImageNet's). 'imagenette' is the small-scale setup published with the original (SPEC
# 7): ResNet-18 on 128 px crops, base LR 2.0, weight decay 1e-6, batch 256, evaluation batch 25.
# CIFAR-10 and image folders start from it. The synthetic set is sized for a first run of a few
# minutes on a laptop CPU. `image_size` absent: the source's own (a folder's short side, at most
# 224). The pretraining entries (base_learning_rate, base_target_ema, weight_decay) replace those of
# the length's preset, as do the heads' sizes and LARS's eta and clip_trust_ratio where given;
# linear evaluation takes only the encoder (class and width), batch sizes and image size.
PRESETS = {
  'imagenet2012': dict(image_size=224),
  'imagenette': dict(
    encoder_class='ResNet18',
    base_learning_rate=2.0,
    weight_decay=1e-6,
    batch_size=256,
    eval_batch_size=25,
    image_size=128,
  ),
  'cifar10': dict(
    encoder_class='ResNet18',
    base_learning_rate=2.0,
    weight_decay=1e-6,
    batch_size=256,
    eval_batch_size=100,
    image_size=32,
  ),
  'folder': dict(
    encoder_class='ResNet18',
    base_learning_rate=2.0,
    weight_decay=1e-6,
    batch_size=256,
    eval_batch_size=100,
  ),
  # Measured on a 2-core CPU for 600 steps (README): the 8-channel TinyResNet's embedding died (all
  # ReLUs off) at every learning rate tried; 32 channels, small heads and a trust ratio capped at 1
  # (each array moves at most lr * 2% of its norm a step, before momentum), with a faster-moving
  # target, learn in minutes.
  'synthetic': dict(
    encoder_class='TinyResNet',
    width_multiplier=4,
    projector_hidden_size=512,
    projector_output_size=128,
    predictor_hidden_size=512,
    base_learning_rate=1.0,
    eta=0.02,
    clip_trust_ratio=True,
    weight_decay=1e-6,
    base_target_ema=0.99,
    batch_size=64,
    eval_batch_size=250,
  ),
}


class Dataset(NamedTuple):
  """A dataset as a config sees it: its name and the facts that size a run on it."""

  name: str
  num_classes: int
  train_images: int  # Of the TRAIN_AND_VALID split, which training reads.
  image_size: int  # The side of the crops unless a config sets another.
  data_dir: str | None = None  # The TFDS data folder (None: TFDS's default).


# ImageNet's facts, known without reading it (so that its configs can be built anywhere).
IMAGENET = Dataset('imagenet2012', num_classes=1000, train_images=1_281_167, image_size=224)


def preset(name: str) -> dict[str, Any]:
  """The entries of `PRESETS` for a dataset name."""
  kind = 'folder' if name.startswith('folder:') else name
  return dict(PRESETS.get(kind, {}))


def describe(name: str, data_dir: str | None = None) -> Dataset:
  """The `Dataset` of `name` (any `--dataset` value), its sizes read from its source.

  Raises:
    byol.utils.input_spec.DatasetError: the dataset is unknown, missing or malformed; the message
      says how to get it.
  """
  # Imported here, where images are read: configs of known datasets build without TensorFlow.
  from byol.utils import dataset as dataset_lib

  image_size = preset(name).get('image_size') or dataset_lib.default_image_size(name, data_dir)
  return Dataset(
    name=name,
    num_classes=dataset_lib.num_classes(name, data_dir),
    train_images=dataset_lib.num_examples(dataset_lib.Split.TRAIN_AND_VALID, name, data_dir),
    image_size=image_size,
    data_dir=data_dir,
  )


def dataset_config(dataset: Dataset) -> dict[str, Any]:
  """The experiments' `dataset_config` of `dataset`: training reads TRAIN_AND_VALID."""
  return dict(
    name=dataset.name,
    data_dir=dataset.data_dir,
    image_size=dataset.image_size,
    train_split='train_and_valid',
    # grpc://host:port of a tf.data service dispatcher that preprocesses the training input
    # (`byol.utils.data_service`); None reads locally. Evaluation always reads locally.
    data_service_address=None,
  )


def batch_size(dataset: Dataset, requested: int | None) -> int:
  """`requested` (if not None), or the dataset's preset batch size, or `DEFAULT_BATCH_SIZE`."""
  size = requested
  if size is None:
    size = preset(dataset.name).get('batch_size', DEFAULT_BATCH_SIZE)
  if size <= 0:
    raise ValueError(f'batch_size must be positive, got {size}.')
  return size


def specialise(
  config: MutableMapping[str, Any],
  dataset: Dataset,
  *,
  max_steps: int | None,
  overrides: Sequence[str],
) -> dict[str, Any]:
  """Finishes an experiment's `config` for `dataset`; returns it.

  Sets the dataset's encoder (class and width) and evaluation batch; `max_steps` (if given)
  shortens or lengthens the run with the warm-up keeping its share of it, so a short run has the
  preset's schedule shape; then applies `overrides` (`key.path=value`, as `--override`), in order.
  """
  recipe = preset(dataset.name)
  network = config['network_config']
  network['encoder_class'] = recipe.get('encoder_class', network['encoder_class'])
  encoder = network['encoder_config']
  encoder['width_multiplier'] = recipe.get('width_multiplier', encoder['width_multiplier'])
  config['evaluation_config']['batch_size'] = recipe.get(
    'eval_batch_size', config['evaluation_config']['batch_size']
  )
  if max_steps is not None:
    if max_steps <= 0:
      raise ValueError(f'max_steps must be positive, got {max_steps}.')
    schedule = config['lr_schedule_config']
    share = schedule['warmup_steps'] / config['max_steps']
    config['max_steps'] = max_steps
    schedule['warmup_steps'] = int(share * max_steps)
  override.apply(config, overrides)
  return dict(config)
