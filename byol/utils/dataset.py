"""Input pipeline: encoded images in, numpy batches of cropped images out (SPEC 6, 7).

The images come from TFDS (`imagenet2012`, `imagenette`, `cifar10` or any TFDS name), from a
class-per-folder tree (`folder:PATH`) or from the embedded `synthetic` set; each is a source of
encoded examples `{'image': bytes, 'label': int64}` with a train and a test split. Everything here
runs in tf.data on the host CPU: decoding, the random resized crops of the pretraining views, the
centre crop of evaluation, batching. The colour augmentations run later, on the accelerator
(`byol.utils.augmentations`).
"""

from collections.abc import Callable, Sequence
import math
import os
from typing import Any, Mapping

import jax
import numpy as np

from byol.utils import data_service
from byol.utils import helpers
from byol.utils import input_spec
from byol.utils import sources
from byol.utils.tensorflow_quiet import tf

Batch = dict[str, np.ndarray]
IntLike = int | tf.Tensor  # A Python int or a scalar integer tensor.
# Maps (image height, image width) to a crop window [offset_y, offset_x, height, width].
CropWindowFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
Example = dict[str, tf.Tensor]

_CROP_AREA_RANGE = (0.08, 1.0)  # Fraction of the image area.
_CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)  # Width / height, sampled log-uniformly.
_IMAGE_KEYS = ('view1', 'view2', 'images')  # The image entries of the training modes' batches.

# The names this pipeline shares with code that must import without TensorFlow.
Split = input_spec.Split
PreprocessMode = input_spec.PreprocessMode
# Raised by `num_examples`, `num_classes`, `default_image_size` and `load` for bad datasets.
DatasetError = input_spec.DatasetError
DatasetNotFoundError = input_spec.DatasetNotFoundError


def num_examples(
  split: Split, dataset_name: str = 'imagenet2012', data_dir: str | None = None
) -> int:
  """Number of examples of `split` of a dataset.

  VALID is the first `min(10,000, n / 10)` examples of the train split and TRAIN the rest (for
  ImageNet: 10,000 and 1,271,167); TEST is the dataset's evaluation split.
  """
  _, start, end = _split_range(sources.get_source(dataset_name, data_dir), split)
  return end - start


def split_labels(
  split: Split, dataset_name: str = 'imagenet2012', data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The positions int64 [N] of `split`'s examples in the dataset and their labels int64 [N].

  A TFDS split's labels are read from its files, which reads the whole split from disk (images
  undecoded): seconds for CIFAR-10 or Imagenette. ImageNet's labelled subsets are TFDS datasets
  of their own (`imagenet2012_subset/1pct`, `/10pct`).
  """
  source = sources.get_source(dataset_name, data_dir)
  source_split, start, end = _split_range(source, split)
  return np.arange(start, end), np.asarray(source.labels(source_split)[start:end], np.int64)


def num_classes(dataset_name: str = 'imagenet2012', data_dir: str | None = None) -> int:
  """Number of classes of the dataset's labels."""
  return sources.get_source(dataset_name, data_dir).num_classes


def default_image_size(dataset_name: str = 'imagenet2012', data_dir: str | None = None) -> int:
  """The side of the crops that suits the images: 224 for TFDS datasets, 32 for synthetic, and for
  a folder its first image's short side (at most 224). Configs take the dataset's preset first
  (`byol.configs.datasets`: 128 for imagenette, 32 for cifar10).
  """
  return sources.get_source(dataset_name, data_dir).default_image_size()


def load(
  split: Split,
  *,
  preprocess_mode: PreprocessMode,
  batch_dims: Sequence[int],
  image_size: int = 224,
  dataset_name: str = 'imagenet2012',
  data_dir: str | None = None,
  shards: Sequence[int] | None = None,
  num_shards: int | None = None,
  seed: int | None = None,
  subset: np.ndarray | None = None,
  data_service_address: str | None = None,
) -> 'HostBatches':
  """Batches of this process's shards of `split` (or of its examples in `subset`), as numpy arrays.

  The split is cut into `num_shards` contiguous shards, by default one per device of the run, and
  this process reads `shards`, by default those of its own devices (`helpers.local_shards`). A batch
  of `batch_dims` is made of equal parts of these shards, in their order: with one shard per device,
  each device gets its own shard's examples, so the global batch depends on the seed and the number
  of devices but not on how the devices are spread over processes.

  Images are float32 in [0, 1], shaped `[*batch_dims, image_size, image_size, 3]`; labels are
  int32 `[*batch_dims]`. Training modes repeat forever, each shard shuffled with its own seed;
  for a given `seed`, the batches are the same in every run. EVAL makes one pass in order and
  counts every example exactly once: each shard is completed with zero images whose float32
  `mask` is 0 (1 for real examples) up to the batch count of the largest, so every process yields
  the same number of batches.

  `subset` (some of the positions `split_labels` gives, e.g. a labelled subset chosen by
  `byol.utils.label_subset`) restricts the split to those examples: they are then what is
  sharded, repeated and counted.

  `data_service_address` (training modes only) runs the pipeline up to the host batches on the
  workers of the tf.data service there (`byol.utils.data_service`). Each worker then reads these
  shards with random seeds of its own (`seed` is not used) and shuffles within each pass over a
  shard, so every pass of every worker holds each example exactly once; the batches keep their
  layout, but which worker's batch comes next, and so the order, is not reproducible, and the
  position cannot be saved (`HostBatches.saveable` is False).

  Raises DatasetNotFoundError when the dataset is not prepared in `data_dir`, and DatasetError
  when a shard of a training split is smaller than its part of a batch or the service does not
  answer, before any work.
  """
  batch_dims = [int(size) for size in batch_dims]
  if not batch_dims or min(batch_dims) <= 0:
    raise ValueError(f'batch_dims must be positive sizes, got {batch_dims}.')
  if image_size <= 0:
    raise ValueError(f'image_size must be positive, got {image_size}.')
  if shards is None or num_shards is None:
    default_shards, default_num_shards = helpers.local_shards(helpers.make_mesh())
    shards = default_shards if shards is None else shards
    num_shards = default_num_shards if num_shards is None else num_shards
  shards = [int(shard) for shard in shards]
  if not shards or not all(0 <= shard < num_shards for shard in shards):
    raise ValueError(f'shards {shards} must be some of the shards [0, {num_shards}).')
  batch_size = math.prod(batch_dims)  # Of this process.
  if batch_size % len(shards):
    raise ValueError(f'A batch of {batch_size} does not split over the {len(shards)} shards.')
  shard_batch_size = batch_size // len(shards)

  source = sources.get_source(dataset_name, data_dir)
  source_split, start, end = _split_range(source, split)
  positions = np.arange(start, end)  # Of the examples read, in the source's split.
  split_name = f'The {split.name} split of {dataset_name}'
  if subset is not None:
    positions = np.asarray(subset, np.int64)
    if (
      positions.ndim != 1
      or np.any(np.diff(positions) <= 0)
      or not (len(positions) and start <= positions[0] and positions[-1] < end)
    ):
      raise DatasetError(
        f'A subset of the {split.name} split of {dataset_name} must be increasing positions in '
        f'[{start}, {end}).'
      )
    split_name = f'The subset of the {split.name} split of {dataset_name}'
  split_size = len(positions)
  ranges = [_shard_range(split_size, shard, num_shards) for shard in shards]
  if min(shard_end - shard_start for shard_start, shard_end in ranges) == 0:
    raise DatasetError(
      f'{split_name} has {split_size} examples, fewer than the {num_shards} shards (one per '
      'device) it is read in; use fewer devices or another split.'
    )
  is_training = preprocess_mode is not PreprocessMode.EVAL
  if is_training and split_size // num_shards < shard_batch_size:
    raise DatasetError(
      f'{split_name} has {split_size} examples, fewer than one batch of '
      f'{shard_batch_size * num_shards}: use a smaller --batch_size.'
    )
  if data_service_address is not None and not is_training:
    raise ValueError('Evaluation reads locally: it counts every example exactly once.')
  # Last of the checks: it may wait for a dispatcher that is starting.
  service = (
    None if data_service_address is None else data_service.check_reachable(data_service_address)
  )

  def read_shard(shard: int, shard_start: int, shard_end: int) -> tf.data.Dataset:
    shard_size = shard_end - shard_start
    shard_positions = positions[shard_start:shard_end]
    if not is_training:
      ds = source.read(source_split, shard_positions, False, None)
      # The padding below assumes exactly `shard_size` examples.
      ds = ds.take(shard_size).map(
        _eval_fn(image_size, source.center_crop_padding), num_parallel_calls=tf.data.AUTOTUNE
      )
      largest_shard_size = math.ceil(split_size / num_shards)
      padded_size = math.ceil(largest_shard_size / shard_batch_size) * shard_batch_size
      padding = tf.data.Dataset.from_tensors(
        {
          'images': tf.zeros([image_size, image_size, 3], tf.float32),
          'labels': tf.constant(0, tf.int32),
          'mask': tf.constant(0.0, tf.float32),
        }
      ).repeat(padded_size - shard_size)
      return ds.concatenate(padding)
    shard_seed = None if seed is None or service is not None else seed * num_shards + shard
    ds = source.read(source_split, shard_positions, True, shard_seed)
    shuffle_buffer = 10 * shard_batch_size
    if service is not None:
      # Shuffled within each pass: every pass of each worker holds each example exactly once
      # (the trainer cannot count passes over several workers' interleaved batches otherwise).
      ds = ds.shuffle(shuffle_buffer, seed=None).repeat()
    else:
      ds = ds.repeat().shuffle(shuffle_buffer, seed=shard_seed)
    # One stateless seed [2] per example: the crops are reproducible for a given `seed`.
    example_seeds = tf.data.Dataset.random(seed=shard_seed).batch(2)
    preprocess = _pretrain_fn if preprocess_mode is PreprocessMode.PRETRAIN else _linear_train_fn
    return tf.data.Dataset.zip(ds, example_seeds).map(
      preprocess(image_size), num_parallel_calls=tf.data.AUTOTUNE
    )

  shard_datasets = [read_shard(shard, *shard_range) for shard, shard_range in zip(shards, ranges)]
  if len(shard_datasets) == 1:
    ds = shard_datasets[0]
  else:
    # Shard 0's part of the batch, then shard 1's, ...: [0] * n + [1] * n + ..., repeated.
    choices = (
      tf.data.Dataset.range(len(shards))
      .map(lambda shard: tf.fill([shard_batch_size], shard))
      .unbatch()
      .repeat()
    )
    ds = tf.data.Dataset.choose_from_datasets(shard_datasets, choices, stop_on_empty_dataset=True)
  ds = ds.with_options(_options(on_service=service is not None))

  # Innermost first: [per_device] then [devices, per_device] for batch_dims [devices, per_device].
  for size in reversed(batch_dims):
    ds = ds.batch(size, drop_remainder=True)
  if service is not None:
    # Sent as 8-bit images: float32 ones are 4x the bytes, and receiving them cost the trainer as
    # much CPU time as reading locally (224 px, 2 cores: 2.5 ms an image; 270 against 740
    # images/s). The rounding moves a pixel by at most 1/510.
    ds = data_service.distribute(ds.map(_images_to_uint8), service)
    ds = ds.map(_images_to_unit_range, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.with_options(_options(on_service=False))  # The trainer's own part.
  # Training: two batches ahead (the devices get two more ahead of the step, `input_state`). A
  # saved position holds the batches in flight (`HostBatches.save`): measured for Imagenette at
  # 128 px, batch 64, 57 MB against 155 MB for an AUTOTUNE buffer, whose reading is 10% faster
  # (2,010 against 2,240 images/s on 2 cores, the input alone; training reads at a fraction of
  # that here). tf.data's symbolic checkpointing, which leaves the elements in flight out, made
  # this pipeline 7x slower (300 images/s).
  ds = ds.prefetch(2 if is_training else tf.data.AUTOTUNE)
  return HostBatches(ds, saveable=service is None)


class HostBatches:
  """An iterator of numpy batches from a tf.data pipeline, whose position can be saved.

  `save` writes the pipeline's state (read positions, shuffle buffers, random streams and the
  elements in flight in its buffers) with tf.data's own iterator checkpointing, and `restore`
  puts a pipeline built the same way back where it was: the batches that follow are the ones the
  saved iterator would have produced, whatever number of batches came before. Batches from the
  tf.data service are not `saveable`: the service cannot save its workers' iterators.
  """

  def __init__(self, ds: tf.data.Dataset, *, saveable: bool = True):
    self._iterator = iter(ds)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self.saveable = saveable

  def __iter__(self) -> 'HostBatches':
    return self

  def __next__(self) -> Batch:
    return {name: value.numpy() for name, value in next(self._iterator).items()}

  def save(self, prefix: str) -> None:
    """Writes the position to the files `<prefix>.index` and `<prefix>.data-*`."""
    if not self.saveable:
      raise RuntimeError('The position of batches from the tf.data service cannot be saved.')
    try:
      self._checkpoint.write(prefix)
    except tf.errors.OpError as error:  # A full disk, a folder that cannot be written.
      raise DatasetError(f'cannot write {prefix}: {error.message}') from None

  def restore(self, prefix: str) -> None:
    """Moves to the position saved at `prefix` by `save` of a pipeline built the same way."""
    if not self.saveable:
      raise RuntimeError('Batches from the tf.data service cannot be moved to a saved position.')
    try:
      self._checkpoint.read(prefix).assert_consumed()
    # TensorFlow's reader fails in many ways on a damaged file (OpError, AssertionError,
    # IndexError on a truncated one, ...): each is the same problem to the user.
    except Exception as error:
      raise DatasetError(
        f'Cannot read the input position saved at {prefix} ({error}). Delete its folder to '
        'start the input again from its seed.'
      ) from None


def load_for_devices(
  split: Split,
  *,
  preprocess_mode: PreprocessMode,
  global_batch_size: int,
  dataset_config: Mapping[str, Any],
  sharding: jax.sharding.NamedSharding,
  seed: int | None = None,
  subset: np.ndarray | None = None,
  data_service_address: str | None = None,
) -> HostBatches:
  """This process's rows of the global batches of `split` laid out by `sharding`, on the host.

  This process reads its devices' shards (`helpers.local_shards`) and contributes their rows of
  each global batch of `global_batch_size`; `dataset_config` gives the dataset's name, data
  folder and image size. Otherwise as `load`.
  """
  shards, num_shards = helpers.local_shards(sharding.mesh)
  return load(
    split,
    preprocess_mode=preprocess_mode,
    batch_dims=[global_batch_size // num_shards * len(shards)],
    image_size=dataset_config['image_size'],
    dataset_name=dataset_config['name'],
    data_dir=dataset_config['data_dir'],
    shards=shards,
    num_shards=num_shards,
    seed=seed,
    subset=subset,
    data_service_address=data_service_address,
  )


def _split_range(source: sources.Source, split: Split) -> tuple[str, int, int]:
  """The source split ('train' or 'test') holding `split`, and `split`'s [start, end) within it."""
  if split is Split.TEST:
    return 'test', 0, source.split_sizes['test']
  train_size = source.split_sizes['train']
  holdout = min(input_spec.VALID_HOLDOUT, train_size // input_spec.VALID_HOLDOUT_FRACTION)
  return 'train', *{
    Split.TRAIN_AND_VALID: (0, train_size),
    Split.TRAIN: (holdout, train_size),
    Split.VALID: (0, holdout),
  }[split]


def _shard_range(size: int, index: int, count: int) -> tuple[int, int]:
  """[start, end) of shard `index` of `count` contiguous shards of `size` examples."""
  # The first `size % count` shards take one example more, as in numpy.array_split.
  quotient, remainder = divmod(size, count)
  start = index * quotient + min(index, remainder)
  return start, start + quotient + (index < remainder)


def _center_crop_window(
  height: IntLike, width: IntLike, image_size: int, padding: int = sources.CENTER_CROP_PADDING
) -> tf.Tensor:
  """[offset_y, offset_x, side, side] of the square centre crop resized to `image_size`.

  The crop keeps `S / (S + padding)` of the short side (the whole of it for a padding of 0).
  """
  # float64, so the side is exactly int(S / (S + 32) * min(h, w)) as in the spec's formula.
  short_side = tf.cast(tf.minimum(height, width), tf.float64)
  side = tf.cast(image_size / (image_size + padding) * short_side, tf.int32)
  offset_y = (height - side + 1) // 2
  offset_x = (width - side + 1) // 2
  return tf.stack([offset_y, offset_x, side, side])


def _distorted_crop_window(height: IntLike, width: IntLike, seed: tf.Tensor) -> tf.Tensor:
  """[offset_y, offset_x, crop_height, crop_width] of a random resized crop (stateless `seed`).

  Area fraction U(0.08, 1) and log-uniform aspect ratio in [3/4, 4/3], then the width and height
  are clipped to the image (one draw, no rejection, as in the original), and the offset is
  uniform over the positions where the window fits.
  """
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  area_draw, ratio_draw, offset_y_draw, offset_x_draw = tf.unstack(
    tf.random.stateless_uniform([4], seed)
  )
  area = tf.cast(height * width, tf.float32)
  target_area = area * (
    _CROP_AREA_RANGE[0] + (_CROP_AREA_RANGE[1] - _CROP_AREA_RANGE[0]) * area_draw
  )
  log_low, log_high = (math.log(ratio) for ratio in _CROP_ASPECT_RATIO_RANGE)
  aspect_ratio = tf.exp(log_low + (log_high - log_low) * ratio_draw)
  crop_width = tf.cast(tf.round(tf.sqrt(target_area * aspect_ratio)), tf.int32)
  crop_height = tf.cast(tf.round(tf.sqrt(target_area / aspect_ratio)), tf.int32)
  # At least one pixel, for images so small that the rounding reaches 0.
  crop_width = tf.clip_by_value(crop_width, 1, width)
  crop_height = tf.clip_by_value(crop_height, 1, height)

  def uniform_offset(draw: tf.Tensor, slack: tf.Tensor) -> tf.Tensor:  # An integer in [0, slack].
    offset = tf.cast(draw * tf.cast(slack + 1, tf.float32), tf.int32)
    return tf.minimum(offset, slack)  # float32 rounding may reach slack + 1.

  return tf.stack(
    [
      uniform_offset(offset_y_draw, height - crop_height),
      uniform_offset(offset_x_draw, width - crop_width),
      crop_height,
      crop_width,
    ]
  )


def _decode_and_crop(image_bytes: tf.Tensor, crop_window_fn: CropWindowFn) -> tf.Tensor:
  """Decodes the window `crop_window_fn(height, width)` of an encoded image; uint8 [h, w, 3]."""

  def jpeg() -> tf.Tensor:
    # Only the kept window is decoded, which makes JPEG crops much cheaper.
    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = crop_window_fn(shape[0], shape[1])
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other_format() -> tf.Tensor:  # PNG, GIF, BMP: decode everything, then crop.
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    shape = tf.shape(image)
    offset_y, offset_x, crop_height, crop_width = tf.unstack(crop_window_fn(shape[0], shape[1]))
    return tf.slice(image, [offset_y, offset_x, 0], [crop_height, crop_width, 3])

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other_format)
  image.set_shape([None, None, 3])
  return image


def _resize_to_unit_range(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bicubic resize of a uint8 image to float32 [image_size, image_size, 3] in [0, 1]."""
  # Bicubic interpolation overshoots (values below 0 and above 255 near edges), hence the clip.
  image = tf.image.resize(image, [image_size, image_size], tf.image.ResizeMethod.BICUBIC)
  return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def _options(*, on_service: bool) -> tf.data.Options:
  """The tf.data options of a pipeline run here, or on the tf.data service's workers."""
  options = tf.data.Options()
  # Parallelism comes from the parallel map over examples; one thread per op avoids
  # oversubscribing the few host cores.
  options.threading.max_intra_op_parallelism = 1
  # In order, in training too: the batches are then a function of the seed (reproducible runs).
  # The service's workers draw their own seeds: order does not matter there.
  options.deterministic = not on_service
  # No autotuning here. Dropping an autotuned iterator (the end of each evaluation pass, a kNN
  # bank that stops early, the end of a run or of a test) made the dropping thread wait, idle, for
  # the timed sleep of the autotuner's thread to end: up to a minute, at random (seen in stack
  # dumps of the test suite, whose machine then sat idle a quarter of the time), and the
  # autotuner's periodic work took a sixth of the suite's CPU time. Without it each parallel map
  # runs one call per core of the runner thread pool (autotuning's own ceiling) and the prefetch
  # buffers keep their own growth; the pretraining pipeline reads as fast (Imagenette at 128 px on
  # 2 cores, alternated: 2,330 against 2,170 images/s with autotuning).
  # The service's workers are other machines, with their own core counts, and their iterators
  # live as long as the job: there tf.data sizes the parallel maps, starting from this count.
  options.autotune.enabled = on_service
  options.autotune.initial_parallelism = os.cpu_count() or 1
  return options


def _images_to_uint8(batch: Example) -> Example:
  """The float32 images in [0, 1] of a batch (not its labels or mask) as uint8."""
  return {
    name: tf.cast(tf.round(value * 255.0), tf.uint8) if name in _IMAGE_KEYS else value
    for name, value in batch.items()
  }


def _images_to_unit_range(batch: Example) -> Example:
  """The inverse of `_images_to_uint8`: float32 images in [0, 1]."""
  return {
    name: tf.cast(value, tf.float32) / 255.0 if name in _IMAGE_KEYS else value
    for name, value in batch.items()
  }


def _random_crop(image_bytes: tf.Tensor, image_size: int, seed: tf.Tensor) -> tf.Tensor:
  def window_fn(height, width):
    return _distorted_crop_window(height, width, seed)

  return _resize_to_unit_range(_decode_and_crop(image_bytes, window_fn), image_size)


def _pretrain_fn(image_size: int) -> Callable[[Example, tf.Tensor], Example]:
  def preprocess(example: Example, seed: tf.Tensor) -> Example:
    view1_seed, view2_seed = tf.unstack(tf.random.split(seed, 2))
    return {
      'view1': _random_crop(example['image'], image_size, view1_seed),
      'view2': _random_crop(example['image'], image_size, view2_seed),
      'labels': tf.cast(example['label'], tf.int32),
    }

  return preprocess


def _linear_train_fn(image_size: int) -> Callable[[Example, tf.Tensor], Example]:
  def preprocess(example: Example, seed: tf.Tensor) -> Example:
    crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
    image = _random_crop(example['image'], image_size, crop_seed)
    return {
      'images': tf.image.stateless_random_flip_left_right(image, flip_seed),
      'labels': tf.cast(example['label'], tf.int32),
    }

  return preprocess


def _eval_fn(image_size: int, center_crop_padding: int) -> Callable[[Example], Example]:
  def preprocess(example: Example) -> Example:
    def window_fn(height, width):
      return _center_crop_window(height, width, image_size, center_crop_padding)

    image = _decode_and_crop(example['image'], window_fn)
    return {
      'images': _resize_to_unit_range(image, image_size),
      'labels': tf.cast(example['label'], tf.int32),
      'mask': tf.constant(1.0, tf.float32),
    }

  return preprocess
