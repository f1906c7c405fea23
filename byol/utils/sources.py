"""Where a dataset's images come from: TFDS, a class-per-folder tree, or the synthetic set.

Each source serves encoded examples `{'image': <JPEG/PNG/... bytes>, 'label': int64}` of a 'train'
and a 'test' split, knows their sizes and class count, and the image size and evaluation crop that
suit it. `byol.utils.dataset` carves our splits out of them and preprocesses the images.
"""

from collections.abc import Callable
import functools
from typing import NamedTuple

import numpy as np

from byol.utils import image_folder
from byol.utils import input_spec
from byol.utils import synthetic
from byol.utils.tensorflow_quiet import tf
from byol.utils.tensorflow_quiet import tfds

# The evaluation centre crop keeps S / (S + 32) of the short side (SPEC 7).
CENTER_CROP_PADDING = 32
# Names of datasets with their own defaults; other names are TFDS datasets like ImageNet.
_TFDS_ALIASES = {'imagenette': 'imagenette/160px-v2'}
_FOLDER_PREFIX = 'folder:'
_MAX_DEFAULT_IMAGE_SIZE = 224
_TINY_IMAGE_SIDE = 64  # Folders of images this small or smaller are evaluated uncropped.
_LABEL_BATCH = 4096  # Labels read at a time when listing a TFDS split's labels.
# Encoded images held to shuffle a subset of a TFDS split (they are saved with an input position).
_SUBSET_SHUFFLE_BUFFER = 1000


class Source(NamedTuple):
  """Where a dataset's encoded examples `{'image': bytes, 'label': int64}` come from."""

  num_classes: int
  split_sizes: dict[str, int]  # 'train' and 'test'.
  # (split, positions, shuffle, seed) -> the examples of 'train' or 'test' at `positions` (sorted,
  # int64 [n]); in that order unless `shuffle`, which changes the order in every pass.
  read: Callable[[str, np.ndarray, bool, int | None], tf.data.Dataset]
  labels: Callable[[str], np.ndarray]  # split -> the labels int64 [N] of all its examples.
  default_image_size: Callable[[], int]
  center_crop_padding: int = CENTER_CROP_PADDING


def get_source(dataset_name: str, data_dir: str | None) -> Source:
  """The source of `dataset_name` (see the module docstring).

  Folder listings and synthetic images are made once per process; TFDS sources are cheap to make
  and are not cached, as TFDS mocks in tests change them.
  """
  # Before TensorFlow's first op, which would initialise (and take memory on) the accelerators.
  _hide_accelerators_from_tensorflow()
  if dataset_name.startswith(_FOLDER_PREFIX):
    return _folder_source(dataset_name[len(_FOLDER_PREFIX) :])
  if dataset_name == 'synthetic':
    return _synthetic_source()
  return _tfds_source(dataset_name, data_dir)


def _tfds_source(dataset_name: str, data_dir: str | None) -> Source:
  builder = _builder(_TFDS_ALIASES.get(dataset_name, dataset_name), data_dir)
  splits = builder.info.splits
  # ImageNet's and Imagenette's labelled evaluation split is `validation`; others have `test`.
  test_split = 'test' if 'test' in splits and 'validation' not in splits else 'validation'
  if dataset_name == 'cifar10':
    test_split = 'test'
  tfds_splits = {'train': 'train', 'test': test_split}

  def read(split: str, positions: np.ndarray, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    start, end = int(positions[0]), int(positions[-1]) + 1
    contiguous = end - start == len(positions)  # Then TFDS reads just that slice.
    ds = _as_dataset(
      builder,
      f'{tfds_splits[split]}[{start}:{end}]',
      shuffle_files=shuffle and contiguous,
      seed=seed if contiguous else None,
    )
    if contiguous:
      return ds
    # Scattered positions (a labelled subset): TFDS slices cannot list them, so the range that
    # spans them is read in order, without decoding, and filtered.
    wanted = np.zeros(end - start, bool)
    wanted[positions - start] = True
    ds = ds.take(end - start).enumerate()  # TFDS mocks ignore slices: never read past the range.
    ds = ds.filter(lambda position, _: tf.gather(wanted, position)).map(lambda _, example: example)
    if shuffle:  # The read order never changes: shuffle it (a bounded buffer of encoded images).
      ds = ds.shuffle(min(len(positions), _SUBSET_SHUFFLE_BUFFER), seed, True)
    return ds

  def labels(split: str) -> np.ndarray:
    ds = _as_dataset(builder, tfds_splits[split], shuffle_files=False, seed=None)
    batches = ds.map(lambda example: example['label']).batch(_LABEL_BATCH)
    return np.concatenate([batch.numpy() for batch in batches]).astype(np.int64)

  return Source(
    num_classes=builder.info.features['label'].num_classes,
    split_sizes={split: _tfds_split_size(builder, name) for split, name in tfds_splits.items()},
    read=read,
    labels=labels,
    default_image_size=lambda: _MAX_DEFAULT_IMAGE_SIZE,
    # CIFAR-10 images are the crop already: evaluation keeps all of them.
    center_crop_padding=0 if dataset_name == 'cifar10' else CENTER_CROP_PADDING,
  )


def _folder_source(path: str) -> Source:
  if not path:
    raise input_spec.DatasetError('--dataset=folder:PATH needs a PATH, e.g. folder:/data/flowers.')
  try:
    listing = image_folder.list_image_folder(path)
  except image_folder.ImageFolderError as error:
    raise input_spec.DatasetError(str(error)) from None
  files = {'train': listing.train, 'test': listing.eval}

  def read(split: str, positions: np.ndarray, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
      {'path': files[split].paths[positions], 'label': files[split].labels[positions]}
    )
    if shuffle:  # A new order of the file names (cheap) in every epoch.
      ds = ds.shuffle(len(positions), seed=seed, reshuffle_each_iteration=True)
    return ds.map(
      lambda example: {'image': tf.io.read_file(example['path']), 'label': example['label']},
      num_parallel_calls=tf.data.AUTOTUNE,
    )

  first_image = tf.io.decode_image(
    tf.io.read_file(listing.train.paths[0]), channels=3, expand_animations=False
  )
  short_side = int(min(first_image.shape[:2]))
  return Source(
    num_classes=len(listing.class_names),
    split_sizes={split: len(files[split].paths) for split in files},
    read=read,
    labels=lambda split: files[split].labels,
    default_image_size=lambda: min(short_side, _MAX_DEFAULT_IMAGE_SIZE),
    # Tiny images (CIFAR-like) are the object already: evaluation keeps all of them.
    center_crop_padding=0 if short_side <= _TINY_IMAGE_SIDE else CENTER_CROP_PADDING,
  )


def _synthetic_source() -> Source:
  def read(split: str, positions: np.ndarray, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    del shuffle, seed  # In memory: the shuffle buffer of `load` mixes the whole split.
    images, labels = _synthetic_examples(split)
    return tf.data.Dataset.from_tensor_slices(
      {'image': images[positions], 'label': labels[positions]}
    )

  return Source(
    num_classes=synthetic.NUM_CLASSES,
    split_sizes=dict(synthetic.SPLIT_SIZES),
    read=read,
    labels=lambda split: _synthetic_examples(split)[1],
    default_image_size=lambda: synthetic.IMAGE_SIZE,
    center_crop_padding=0,
  )  # The shapes fill the image; a centre crop would cut them.


@functools.cache
def _synthetic_examples(split: str) -> tuple[np.ndarray, np.ndarray]:
  """The synthetic split as PNG bytes [N] and labels [N], encoded once per process."""
  images, labels = synthetic.make_split(split)
  # Uncompressed: encoded in half the time, decoded faster, 20% larger (3 KB an image).
  encoded = np.array(
    [tf.io.encode_png(image, compression=0).numpy() for image in images], dtype=object
  )
  return encoded, labels


def _hide_accelerators_from_tensorflow() -> None:
  """Keeps TensorFlow on the CPU so that it takes no accelerator memory from JAX."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # TensorFlow already initialised its devices; the setting can no longer change.


def _builder(dataset_name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `dataset_name`."""
  try:
    return tfds.builder(dataset_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise input_spec.DatasetNotFoundError(
      f'There is no dataset named {dataset_name!r}: use imagenet2012, imagenette, cifar10, '
      'synthetic, folder:PATH or the name of a TFDS dataset.'
    ) from None


def _as_dataset(
  builder: tfds.core.DatasetBuilder, split_spec: str, *, shuffle_files: bool, seed: int | None
) -> tf.data.Dataset:
  """The encoded examples of `split_spec`; the image stays JPEG (or PNG...) bytes."""
  try:
    return builder.as_dataset(
      split=split_spec,
      shuffle_files=shuffle_files,
      # Decoding is left to the crops, which decode only the window they keep.
      decoders={'image': tfds.decode.SkipDecoding()},
      # No in-memory cache of small datasets: tf.data cannot save the position of a pipeline
      # with one in it other than by writing the whole cache (`dataset.HostBatches.save`), and
      # each evaluation builds its pipeline anew, so a cache would never be read again anyway.
      read_config=tfds.ReadConfig(shuffle_seed=seed, skip_prefetch=True, try_autocache=False),
    )
  except AssertionError:
    if builder.data_path.exists():
      raise
    raise input_spec.DatasetNotFoundError(_not_found_message(builder)) from None


def _not_found_message(builder: tfds.core.DatasetBuilder) -> str:
  data_dir = builder.data_dir_root
  message = f'Dataset {builder.name} was not found in the TFDS data folder {data_dir}. '
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    instructions = ' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    message += (
      f'It needs a manual download (TFDS: "{instructions}"): put the files in '
      f'{data_dir}/downloads/manual/, then run '
      f'`tfds build {builder.name} --data_dir={data_dir}`. '
    )
  else:
    message += f'Download and prepare it with `tfds build {builder.name} --data_dir={data_dir}`. '
  return message + (
    'Point --data_dir (or the TFDS_DATA_DIR environment variable) at the folder '
    'that holds the prepared dataset.'
  )


def _tfds_split_size(builder: tfds.core.DatasetBuilder, tfds_split: str) -> int:
  """Number of examples TFDS returns for its split `tfds_split`."""
  # TFDS sets the cardinality from the split sizes recorded when the dataset was prepared. Asking
  # the dataset rather than `builder.info` also gives the size that TFDS mocks actually yield
  # (`tfds.testing.mock_data` records no sizes).
  ds = _as_dataset(builder, tfds_split, shuffle_files=False, seed=None)
  size = int(ds.cardinality())
  if size < 0:
    raise ValueError(f'TFDS does not know the size of {builder.name} {tfds_split}.')
  return size
