"""Tests of the tf.data input pipeline: crop windows, batch layout, exact evaluation, sharding."""

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from byol.configs import datasets
from byol.utils import dataset
from byol.utils import input_spec
from byol.utils import sources
from byol.utils import synthetic
import support  # This folder is on the path.

IMAGE_SIZE = 32
TINY_TRAIN_SIZE = 25
TINY_TEST_SIZE = 7
TEST_LABEL_OFFSET = 50  # Labels are unique: train examples 0..24, test examples 50..56.


def tiny_image(label: int) -> np.ndarray:
  """The image of the example with this label: random pixels, portrait or landscape."""
  rng = np.random.default_rng(label)
  return rng.integers(0, 256, size=(12 + label % 7, 15 + label % 4 * 3, 3), dtype=np.uint8)


class DatasetTestTinyImages(tfds.core.GeneratorBasedBuilder):
  """A real, prepared TFDS dataset of PNG images: unlike TFDS mocks, it honours split slices."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
          'label': tfds.features.ClassLabel(num_classes=100),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
      'train': self._generate_examples(range(TINY_TRAIN_SIZE)),
      'validation': self._generate_examples(
        range(TEST_LABEL_OFFSET, TEST_LABEL_OFFSET + TINY_TEST_SIZE)
      ),
    }

  def _generate_examples(self, labels):
    for label in labels:
      yield label, {'image': tiny_image(label), 'label': label}


@pytest.fixture(scope='module')
def tiny_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  DatasetTestTinyImages(data_dir=data_dir).download_and_prepare()
  return data_dir


def load_tiny(split, data_dir, **kwargs):
  kwargs.setdefault('image_size', IMAGE_SIZE)
  return dataset.load(split, dataset_name=DatasetTestTinyImages.name, data_dir=data_dir, **kwargs)


def real_labels(batches):
  return np.concatenate([batch['labels'][batch['mask'] == 1] for batch in batches])


# ------------------------------------------------------------------------------- crop windows


@pytest.mark.parametrize(
  'height, width, image_size',
  [(160, 213, 224), (500, 375, 224), (37, 41, 32), (160, 160, 128), (9, 300, 64)],
)
def test_center_crop_window_follows_formula(height, width, image_size):
  side = int(image_size / (image_size + 32) * min(height, width))
  expected = [(height - side + 1) // 2, (width - side + 1) // 2, side, side]
  window = dataset._center_crop_window(height, width, image_size).numpy()
  np.testing.assert_array_equal(window, expected)


def test_center_crop_window_of_224_keeps_seven_eighths_of_short_side():
  # 0.875 * 160 = 140; offsets (160 - 140 + 1) // 2 = 10 and (213 - 140 + 1) // 2 = 37.
  np.testing.assert_array_equal(
    dataset._center_crop_window(160, 213, 224).numpy(), [10, 37, 140, 140]
  )


def sample_windows(height, width, count=400):
  return np.stack(
    [
      dataset._distorted_crop_window(height, width, tf.constant([7, seed])).numpy()
      for seed in range(count)
    ]
  )


@pytest.mark.parametrize('height, width', [(1000, 1000), (10, 1000), (1000, 10), (1, 1), (5, 7)])
def test_distorted_crop_window_stays_inside_image(height, width):
  offset_y, offset_x, crop_height, crop_width = sample_windows(height, width, count=200).T
  assert np.all(offset_y >= 0) and np.all(offset_x >= 0)
  assert np.all(crop_height >= 1) and np.all(crop_width >= 1)
  assert np.all(offset_y + crop_height <= height) and np.all(offset_x + crop_width <= width)


def test_distorted_crop_window_area_and_aspect_ratio_span_their_ranges():
  # On a large square image the clipping to the image keeps the aspect ratio in range; rounding
  # to whole pixels moves area and ratio by well under 1%.
  _, _, crop_height, crop_width = sample_windows(1000, 1000).T
  area_fraction = crop_height * crop_width / 1000**2
  aspect_ratio = crop_width / crop_height
  assert area_fraction.min() >= 0.08 * 0.99 and area_fraction.max() <= 1.0
  assert aspect_ratio.min() >= 3 / 4 * 0.99 and aspect_ratio.max() <= 4 / 3 * 1.01
  # The draws cover the ranges rather than sitting at one value.
  assert area_fraction.min() < 0.12 and area_fraction.max() > 0.9
  assert aspect_ratio.min() < 0.78 and aspect_ratio.max() > 1.28


def test_distorted_crop_window_offsets_are_uniform():
  offset_y, offset_x, crop_height, crop_width = sample_windows(1000, 1000).T
  # Relative position of the window in its free range: uniform on [0, 1] has mean 1/2.
  relative_y = offset_y / np.maximum(1000 - crop_height, 1)
  relative_x = offset_x / np.maximum(1000 - crop_width, 1)
  assert abs(relative_y.mean() - 0.5) < 0.06 and abs(relative_x.mean() - 0.5) < 0.06


def test_distorted_crop_window_depends_only_on_seed():
  first = dataset._distorted_crop_window(100, 80, tf.constant([1, 2])).numpy()
  again = dataset._distorted_crop_window(100, 80, tf.constant([1, 2])).numpy()
  other = dataset._distorted_crop_window(100, 80, tf.constant([1, 3])).numpy()
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_jpeg_and_png_images_are_cropped_to_the_same_window():
  image = tiny_image(3)  # [12 + 3, 15 + 9, 3]
  window = tf.constant([2, 5, 9, 11])
  # Without chroma subsampling, decoding a window equals cropping the decoded image exactly.
  jpeg_bytes = tf.io.encode_jpeg(image, chroma_downsampling=False)
  decoded_jpeg = tf.io.decode_jpeg(jpeg_bytes).numpy()  # JPEG is lossy: compare to its decoding.
  cropped_jpeg = dataset._decode_and_crop(jpeg_bytes, lambda height, width: window).numpy()
  cropped_png = dataset._decode_and_crop(
    tf.io.encode_png(image), lambda height, width: window
  ).numpy()
  np.testing.assert_array_equal(cropped_jpeg, decoded_jpeg[2:11, 5:16])
  np.testing.assert_array_equal(cropped_png, image[2:11, 5:16])


# ----------------------------------------------------------------------------- batch layout


def test_pretrain_batches_hold_two_different_views_in_unit_range():
  with tfds.testing.mock_data(num_examples=10):
    batch = next(
      dataset.load(
        dataset.Split.TRAIN_AND_VALID,
        preprocess_mode=dataset.PreprocessMode.PRETRAIN,
        batch_dims=[2, 3],
        image_size=IMAGE_SIZE,
        seed=0,
      )
    )
  assert set(batch) == {'view1', 'view2', 'labels'}
  for view in (batch['view1'], batch['view2']):
    assert view.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE, 3) and view.dtype == np.float32
    assert view.min() >= 0.0 and view.max() <= 1.0
  assert batch['labels'].shape == (2, 3) and batch['labels'].dtype == np.int32
  # Independent crops of the same image differ, image by image.
  assert all(
    not np.allclose(view1, view2)
    for view1, view2 in zip(batch['view1'].reshape(6, -1), batch['view2'].reshape(6, -1))
  )


def test_linear_train_batches_hold_one_image_per_label():
  with tfds.testing.mock_data(num_examples=10):
    batch = next(
      dataset.load(
        dataset.Split.TRAIN,
        preprocess_mode=dataset.PreprocessMode.LINEAR_TRAIN,
        batch_dims=[4],
        image_size=IMAGE_SIZE,
      )
    )
  assert set(batch) == {'images', 'labels'}
  assert batch['images'].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch['images'].dtype == np.float32
  assert batch['images'].min() >= 0.0 and batch['images'].max() <= 1.0
  assert batch['labels'].shape == (4,) and batch['labels'].dtype == np.int32


def test_training_batches_repeat_past_the_end_of_the_split(tiny_data_dir):
  # Seeded, so deterministic: without a seed, a shuffle buffer of 100 over epochs of 25 examples
  # leaves a few labels out of the first batches now and then.
  batches = load_tiny(
    dataset.Split.TRAIN_AND_VALID,
    tiny_data_dir,
    preprocess_mode=dataset.PreprocessMode.LINEAR_TRAIN,
    batch_dims=[10],
    seed=0,
  )
  labels = np.concatenate([next(batches)['labels'] for _ in range(10)])  # 100 of 25 examples.
  assert set(labels) == set(range(TINY_TRAIN_SIZE))


def test_eval_batches_have_batch_dims_layout():
  with tfds.testing.mock_data(num_examples=8):
    batches = list(
      dataset.load(
        dataset.Split.TEST,
        preprocess_mode=dataset.PreprocessMode.EVAL,
        batch_dims=[2, 2],
        image_size=IMAGE_SIZE,
      )
    )
  assert len(batches) == 2
  for batch in batches:
    assert batch['images'].shape == (2, 2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch['labels'].shape == (2, 2) and batch['mask'].shape == (2, 2)
    assert batch['mask'].dtype == np.float32


# -------------------------------------------------------------------------- exact evaluation


def test_eval_counts_every_example_once_and_masks_zero_padding(tiny_data_dir):
  batches = list(
    load_tiny(
      dataset.Split.TEST, tiny_data_dir, preprocess_mode=dataset.PreprocessMode.EVAL, batch_dims=[3]
    )
  )
  assert len(batches) == 3  # ceil(7 / 3)
  masks = np.concatenate([batch['mask'] for batch in batches])
  np.testing.assert_array_equal(masks, [1.0] * TINY_TEST_SIZE + [0.0] * 2)
  np.testing.assert_array_equal(
    np.sort(real_labels(batches)), np.arange(TEST_LABEL_OFFSET, TEST_LABEL_OFFSET + TINY_TEST_SIZE)
  )
  last = batches[-1]
  assert np.all(last['images'][1:] == 0.0) and np.all(last['labels'][1:] == 0)


def test_eval_images_are_resized_centre_crops(tiny_data_dir):
  batch = next(
    load_tiny(
      dataset.Split.TEST,
      tiny_data_dir,
      preprocess_mode=dataset.PreprocessMode.EVAL,
      batch_dims=[TINY_TEST_SIZE],
    )
  )
  for image, label in zip(batch['images'], batch['labels']):
    source = tiny_image(label)
    height, width, _ = source.shape
    side = int(IMAGE_SIZE / (IMAGE_SIZE + 32) * min(height, width))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    crop = source[top : top + side, left : left + side].astype(np.float32)
    expected = tf.image.resize(crop, [IMAGE_SIZE, IMAGE_SIZE], method='bicubic').numpy()
    np.testing.assert_allclose(image, np.clip(expected / 255.0, 0.0, 1.0), atol=1e-6)


def test_eval_shards_of_two_processes_are_disjoint_and_equally_long(tiny_data_dir):
  per_process = [
    list(
      load_tiny(
        dataset.Split.TEST,
        tiny_data_dir,
        preprocess_mode=dataset.PreprocessMode.EVAL,
        batch_dims=[3],
        shards=[index],
        num_shards=2,
      )
    )
    for index in range(2)
  ]
  # Shards of 4 and 3 examples: both processes step through ceil(4 / 3) = 2 batches.
  assert [len(batches) for batches in per_process] == [2, 2]
  assert sum(batch['mask'].sum() for batches in per_process for batch in batches) == TINY_TEST_SIZE
  labels0, labels1 = (real_labels(batches) for batches in per_process)
  assert len(labels0) == 4 and len(labels1) == 3
  assert not set(labels0) & set(labels1)
  assert set(labels0) | set(labels1) == set(
    range(TEST_LABEL_OFFSET, TEST_LABEL_OFFSET + TINY_TEST_SIZE)
  )


# Scattered positions of the tiny train split: TFDS cannot slice them, so the source reads the
# spanning range and filters it.
SUBSET = np.array([1, 2, 6, 7, 8, 13, 20, 21])


def tiny_labels_at(positions, data_dir):
  """The (unique) labels of the tiny train split's examples at `positions`."""
  all_positions, labels = dataset.split_labels(
    dataset.Split.TRAIN_AND_VALID, DatasetTestTinyImages.name, data_dir
  )
  np.testing.assert_array_equal(all_positions, np.arange(TINY_TRAIN_SIZE))
  assert len(set(labels)) == TINY_TRAIN_SIZE
  return labels[positions]


@pytest.mark.parametrize('num_shards', [1, 2, 3])
def test_a_subset_is_read_whole_once_over_any_number_of_shards(tiny_data_dir, num_shards):
  labels = [
    real_labels(
      load_tiny(
        dataset.Split.TRAIN_AND_VALID,
        tiny_data_dir,
        preprocess_mode=dataset.PreprocessMode.EVAL,
        batch_dims=[2],
        shards=[shard],
        num_shards=num_shards,
        subset=SUBSET,
      )
    )
    for shard in range(num_shards)
  ]
  # Contiguous shards of the subset, each in reading order.
  np.testing.assert_array_equal(np.concatenate(labels), tiny_labels_at(SUBSET, tiny_data_dir))


def test_training_on_a_subset_repeats_only_its_examples(tiny_data_dir):
  batches = load_tiny(
    dataset.Split.TRAIN_AND_VALID,
    tiny_data_dir,
    preprocess_mode=dataset.PreprocessMode.LINEAR_TRAIN,
    batch_dims=[4],
    seed=0,
    subset=SUBSET,
  )
  # 5 epochs of 8 (the shuffle buffer mixes neighbouring epochs).
  labels = np.concatenate([next(batches)['labels'] for _ in range(10)])
  np.testing.assert_array_equal(np.unique(labels), np.sort(tiny_labels_at(SUBSET, tiny_data_dir)))


@pytest.mark.parametrize('subset', [[0, 1, 2], [3, 3, 4], [], [10, 26]], ids=str)
def test_a_subset_outside_the_split_or_unsorted_is_a_clear_error(tiny_data_dir, subset):
  # TRAIN is positions [2, 25) of the train split: VALID holds out the first 2 (a tenth, floored).
  with pytest.raises(dataset.DatasetError, match=r'increasing positions in \[2, 25\)'):
    load_tiny(
      dataset.Split.TRAIN,
      tiny_data_dir,
      preprocess_mode=dataset.PreprocessMode.EVAL,
      batch_dims=[2],
      subset=np.array(subset, np.int64),
    )


@pytest.mark.parametrize('source', ['tfds', 'folder', 'synthetic'])
def test_split_labels_are_the_labels_each_position_is_read_with(tiny_data_dir, tmp_path, source):
  if source == 'tfds':
    name, data_dir = DatasetTestTinyImages.name, tiny_data_dir
  elif source == 'folder':
    support.write_image_folder(tmp_path, {'train': {'a': 3, 'b': 4}, 'val': {'a': 1, 'b': 1}})
    name, data_dir = f'folder:{tmp_path}', None
  else:
    name, data_dir = 'synthetic', None
  positions, labels = dataset.split_labels(dataset.Split.TRAIN, name, data_dir)
  picked = positions[::3][:6]
  batches = dataset.load(
    dataset.Split.TRAIN,
    preprocess_mode=dataset.PreprocessMode.EVAL,
    batch_dims=[2],
    image_size=IMAGE_SIZE,
    dataset_name=name,
    data_dir=data_dir,
    subset=picked,
  )
  np.testing.assert_array_equal(real_labels(batches), labels[::3][:6])
  assert len(positions) == dataset.num_examples(dataset.Split.TRAIN, name, data_dir)


def test_more_shards_than_examples_pad_with_fully_masked_batches(tiny_data_dir):
  # 7 examples over 5 shards: shards of 2, 2, 1, 1, 1; each makes 2 batches of 1.
  batches = list(
    load_tiny(
      dataset.Split.TEST,
      tiny_data_dir,
      preprocess_mode=dataset.PreprocessMode.EVAL,
      batch_dims=[1],
      shards=[4],
      num_shards=5,
    )
  )
  np.testing.assert_array_equal([batch['mask'][0] for batch in batches], [1.0, 0.0])


@pytest.mark.parametrize('preprocess_mode', list(dataset.PreprocessMode))
def test_batches_of_two_shards_in_one_process_are_those_of_two_processes(
  tiny_data_dir, preprocess_mode
):
  """A global batch depends on the shards (devices), not on how processes share them out."""

  def first_batches(shards):
    batches = load_tiny(
      dataset.Split.TRAIN_AND_VALID
      if preprocess_mode is not dataset.PreprocessMode.EVAL
      else dataset.Split.TEST,
      tiny_data_dir,
      preprocess_mode=preprocess_mode,
      batch_dims=[2 * len(shards)],
      shards=shards,
      num_shards=2,
      seed=3,
    )
    return [next(batches) for _ in range(2)]

  together = first_batches([0, 1])
  apart = [first_batches([0]), first_batches([1])]
  for step, batch in enumerate(together):
    for key, value in batch.items():
      np.testing.assert_array_equal(
        value, np.concatenate([apart[0][step][key], apart[1][step][key]]), err_msg=key
      )


def test_training_batches_are_the_same_in_every_run_with_a_seed(tiny_data_dir):
  def batches(seed):
    loaded = load_tiny(
      dataset.Split.TRAIN_AND_VALID,
      tiny_data_dir,
      preprocess_mode=dataset.PreprocessMode.PRETRAIN,
      batch_dims=[6],
      shards=[0, 1],
      num_shards=2,
      seed=seed,
    )
    return [next(loaded) for _ in range(5)]  # Past the end of the shards (13 and 12 examples).

  first, again, other_seed = batches(0), batches(0), batches(1)
  for batch, batch_again in zip(first, again):
    for key in batch:
      np.testing.assert_array_equal(batch[key], batch_again[key], err_msg=key)
  assert not all(
    np.array_equal(batch['view1'], other['view1']) for batch, other in zip(first, other_seed)
  )


@pytest.mark.parametrize('source', ['tfds', 'folder', 'synthetic'])
@pytest.mark.parametrize(
  'mode', [dataset.PreprocessMode.PRETRAIN, dataset.PreprocessMode.LINEAR_TRAIN]
)
def test_a_saved_position_restores_the_batches_that_follow_it(
  tiny_data_dir, tmp_path, source, mode
):
  name = {
    'tfds': DatasetTestTinyImages.name,
    'folder': support.write_image_folder(
      tmp_path / 'images', {'train': {'a': 9, 'b': 8}, 'test': {'a': 2}}
    ),
    'synthetic': 'synthetic',
  }[source]

  def load():
    return dataset.load(
      dataset.Split.TRAIN_AND_VALID,
      dataset_name=name,
      data_dir=tiny_data_dir,
      image_size=IMAGE_SIZE,
      preprocess_mode=mode,
      batch_dims=[6],
      shards=[0, 1],
      num_shards=2,
      seed=0,
    )

  run = load()
  for _ in range(3):  # Past the end of the shards' first epoch (and their shuffle buffers' fill).
    next(run)
  run.save(str(tmp_path / 'position' / 'at_3'))
  expected = [next(run) for _ in range(3)]
  resumed = load()
  resumed.restore(str(tmp_path / 'position' / 'at_3'))
  for batch, batch_again in zip(expected, [next(resumed) for _ in range(3)]):
    for key in batch:
      np.testing.assert_array_equal(batch[key], batch_again[key], err_msg=key)


def test_a_missing_or_damaged_position_is_a_clear_error(tmp_path):
  def load():
    return support.synthetic_train_batches(dataset.PreprocessMode.PRETRAIN)

  with pytest.raises(dataset.DatasetError, match='Cannot read the input position'):
    load().restore(str(tmp_path / 'nothing'))
  saved = load()
  next(saved)
  saved.save(str(tmp_path / 'position'))
  data_file = next(tmp_path.glob('position.data-*'))
  data_file.write_bytes(data_file.read_bytes()[:100])  # Truncated.
  with pytest.raises(dataset.DatasetError, match='Delete its folder'):
    load().restore(str(tmp_path / 'position'))


# ----------------------------------------------------------------------------------- splits


def test_imagenet_splits_partition_its_published_sizes_as_the_configs_count_them():
  # ILSVRC-2012 has 1,281,167 training and 50,000 validation images; VALID is held out of TRAIN.
  sizes = {split: split.num_examples for split in dataset.Split}
  train_and_valid = sizes[dataset.Split.TRAIN_AND_VALID]
  assert sizes[dataset.Split.TRAIN] + sizes[dataset.Split.VALID] == train_and_valid == 1_281_167
  assert sizes[dataset.Split.VALID] == 10_000 and sizes[dataset.Split.TEST] == 50_000
  # The configs size ImageNet runs (epochs to steps) without reading it: with the same count.
  assert datasets.IMAGENET.train_images == train_and_valid


def test_split_from_string_accepts_any_case_and_validation():
  assert dataset.Split.from_string('train_and_valid') is dataset.Split.TRAIN_AND_VALID
  assert dataset.Split.from_string('Validation') is dataset.Split.VALID
  with pytest.raises(ValueError, match='Unknown split'):
    dataset.Split.from_string('dev')


def test_valid_is_held_out_from_the_start_of_train(tiny_data_dir, monkeypatch):
  # ImageNet holds out 10,000 of 1,281,167; here 10 of 25.
  monkeypatch.setattr(input_spec, 'VALID_HOLDOUT', 10)
  monkeypatch.setattr(input_spec, 'VALID_HOLDOUT_FRACTION', 2)
  sizes = {
    split: dataset.num_examples(split, DatasetTestTinyImages.name, tiny_data_dir)
    for split in dataset.Split
  }
  assert sizes == {
    dataset.Split.TRAIN_AND_VALID: 25,
    dataset.Split.TRAIN: 15,
    dataset.Split.VALID: 10,
    dataset.Split.TEST: 7,
  }
  labels = {
    split: set(
      real_labels(
        load_tiny(split, tiny_data_dir, batch_dims=[4], preprocess_mode=dataset.PreprocessMode.EVAL)
      )
    )
    for split in (dataset.Split.TRAIN, dataset.Split.VALID)
  }
  assert len(labels[dataset.Split.TRAIN]) == 15 and len(labels[dataset.Split.VALID]) == 10
  assert labels[dataset.Split.TRAIN] | labels[dataset.Split.VALID] == set(range(25))


def test_small_train_split_holds_out_a_tenth_for_valid(tiny_data_dir):
  sizes = {
    split: dataset.num_examples(split, DatasetTestTinyImages.name, tiny_data_dir)
    for split in (dataset.Split.TRAIN, dataset.Split.VALID)
  }
  assert sizes == {dataset.Split.TRAIN: 23, dataset.Split.VALID: 2}  # 25 // 10 held out.


def test_num_examples_under_tfds_mock_is_the_mock_size():
  with tfds.testing.mock_data(num_examples=6):
    assert dataset.num_examples(dataset.Split.TEST) == 6
    assert dataset.num_examples(dataset.Split.TRAIN_AND_VALID) == 6


# ----------------------------------------------------------------------------------- errors


def test_missing_imagenet_raises_one_clear_error(tmp_path):
  with pytest.raises(dataset.DatasetNotFoundError) as error:
    dataset.load(
      dataset.Split.TEST,
      preprocess_mode=dataset.PreprocessMode.EVAL,
      batch_dims=[4],
      data_dir=str(tmp_path),
    )
  message = str(error.value)
  for fragment in (
    'imagenet2012',
    'manual',
    'ILSVRC2012_img_train.tar',
    f'{tmp_path}/downloads',
    '--data_dir',
    'TFDS_DATA_DIR',
  ):
    assert fragment in message


def test_unknown_dataset_name_raises_dataset_not_found():
  with pytest.raises(dataset.DatasetNotFoundError, match='not_a_dataset'):
    dataset.num_examples(dataset.Split.TEST, dataset_name='not_a_dataset')


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(batch_dims=[0]), 'batch_dims'),
    (dict(batch_dims=[]), 'batch_dims'),
    (dict(image_size=0), 'image_size'),
    (dict(shards=[2], num_shards=2), 'shards'),
    (dict(batch_dims=[3], shards=[0, 1], num_shards=2), 'does not split'),
  ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
  kwargs = dict(dict(batch_dims=[2], image_size=IMAGE_SIZE), **kwargs)
  with tfds.testing.mock_data(num_examples=4), pytest.raises(ValueError, match=match):
    dataset.load(dataset.Split.TEST, preprocess_mode=dataset.PreprocessMode.EVAL, **kwargs)


# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize('to_array', [np.asarray, jnp.asarray])
def test_normalize_images_standardises_each_channel(to_array):
  images = np.random.default_rng(0).uniform(size=(2, 4, 5, 3)).astype(np.float32)
  expected = np.stack(
    [
      (images[..., channel] - mean) / stddev
      for channel, (mean, stddev) in enumerate([(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)])
    ],
    axis=-1,
  )
  normalized = input_spec.normalize_images(to_array(images))
  assert normalized.dtype == np.float32
  np.testing.assert_allclose(np.asarray(normalized), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------- folder and synthetic data


def test_folder_dataset_reads_classes_and_splits_from_the_folders(tmp_path):
  name = support.write_image_folder(
    tmp_path,
    {'train': {'cat': 12, 'dog': 8, 'eel': 10}, 'val': {'cat': 2, 'eel': 3}},
    image_format='jpg',
  )
  assert dataset.num_classes(name) == 3
  sizes = {split: dataset.num_examples(split, name) for split in dataset.Split}
  assert sizes == {
    dataset.Split.TRAIN_AND_VALID: 30,
    dataset.Split.TRAIN: 27,
    dataset.Split.VALID: 3,
    dataset.Split.TEST: 5,
  }
  assert dataset.default_image_size(name) == 20  # The first train image's short side.
  batches = list(
    dataset.load(
      dataset.Split.TEST,
      preprocess_mode=dataset.PreprocessMode.EVAL,
      batch_dims=[4],
      image_size=16,
      dataset_name=name,
    )
  )
  assert sorted(real_labels(batches)) == [0, 0, 2, 2, 2]  # cat = 0, eel = 2 (sorted train names)
  batch = next(
    dataset.load(
      dataset.Split.TRAIN_AND_VALID,
      batch_dims=[8],
      image_size=16,
      preprocess_mode=dataset.PreprocessMode.PRETRAIN,
      dataset_name=name,
    )
  )
  assert batch['view1'].shape == (8, 16, 16, 3) and set(batch['labels']) <= {0, 1, 2}


@pytest.mark.parametrize(
  'layout, match',
  [
    ({'train': {'a': 1}}, r'must hold train/<class>/\* and val/<class>/\*'),
    ({'val': {'a': 1}}, r'must hold train/<class>/\* and val/<class>/\*'),
    ({'train': {}, 'test': {'a': 1}}, 'has no class sub-folders'),
    ({'train': {'a': 1, 'b': 0}, 'test': {'a': 1}}, r'b holds no image'),
    ({'train': {'a': 1}, 'test': {'z': 1}}, r"classes that train/ lacks: \['z'\]"),
  ],
)
def test_malformed_folders_are_clear_errors(tmp_path, layout, match):
  with pytest.raises(dataset.DatasetError, match=match):
    dataset.num_classes(support.write_image_folder(tmp_path, layout))


def test_files_that_are_not_images_are_named(tmp_path):
  name = support.write_image_folder(tmp_path, {'train': {'a': 2}, 'val': {'a': 1}})
  (tmp_path / 'train' / 'a' / 'notes.jpg').write_text('not an image')
  with pytest.raises(
    dataset.DatasetError, match=r'1 files .* not JPEG, PNG, GIF or BMP.*notes.jpg'
  ):
    dataset.num_classes(name)


def test_missing_folder_and_empty_path_are_clear_errors(tmp_path):
  with pytest.raises(dataset.DatasetError, match='No folder'):
    dataset.num_classes(f'folder:{tmp_path / "absent"}')
  with pytest.raises(dataset.DatasetError, match='needs a PATH'):
    dataset.num_classes('folder:')


def test_training_split_smaller_than_one_batch_is_a_clear_error(tmp_path):
  name = support.write_image_folder(tmp_path, {'train': {'a': 3, 'b': 3}, 'val': {'a': 1}})
  with pytest.raises(dataset.DatasetError, match='6 examples, fewer than one batch of 8'):
    dataset.load(
      dataset.Split.TRAIN_AND_VALID,
      preprocess_mode=dataset.PreprocessMode.PRETRAIN,
      batch_dims=[8],
      image_size=16,
      dataset_name=name,
    )


def test_synthetic_dataset_is_embedded():
  assert dataset.num_classes('synthetic') == 10
  assert dataset.default_image_size('synthetic') == 32
  assert dataset.num_examples(dataset.Split.TRAIN_AND_VALID, 'synthetic') == 5000
  assert dataset.num_examples(dataset.Split.VALID, 'synthetic') == 500
  assert dataset.num_examples(dataset.Split.TEST, 'synthetic') == 1000
  batches = dataset.load(
    dataset.Split.TEST,
    preprocess_mode=dataset.PreprocessMode.EVAL,
    batch_dims=[250],
    image_size=32,
    dataset_name='synthetic',
  )
  labels = real_labels(list(batches))
  assert np.bincount(labels).tolist() == [100] * 10


def test_synthetic_classes_are_told_apart_by_shape_not_brightness():
  images, labels = synthetic.make_split('train')
  np.testing.assert_array_equal(synthetic.make_split('train')[0], images)  # Deterministic.
  test_images, _ = synthetic.make_split('test')
  assert not np.array_equal(test_images, images[:1000])
  # Grey images (the channels differ by their noise only)...
  assert np.abs(images[..., 0].astype(float) - images[..., 1]).mean() < 0.1 * 255
  # ...every class in both polarities, with the same mean brightness: only the shape differs.
  brightness = images.reshape(len(images), -1).mean(axis=1)  # [N]
  for label in range(synthetic.NUM_CLASSES):
    chosen = brightness[labels == label]
    assert (chosen > 127.5).mean() > 0.3 and (chosen < 127.5).mean() > 0.3, label
    assert abs(chosen.mean() - 127.5) < 8, label  # Of 255; ~3 is sampling noise.


def test_center_crop_keeps_the_whole_image_without_padding():
  window = dataset._center_crop_window(32, 32, 32, padding=0).numpy()
  assert window.tolist() == [0, 0, 32, 32]
  window = dataset._center_crop_window(32, 32, 32).numpy()  # SPEC 7: 32 / 64 of the short side.
  assert window.tolist() == [8, 8, 16, 16]


# --------------------------------------------------------------- real images in ../shared/data


@pytest.mark.parametrize(
  'name, sizes', [('imagenette', (9469, 946, 3925)), ('cifar10', (50000, 5000, 10000))]
)
def test_real_image_folders_have_their_published_sizes(real_folders, name, sizes):
  folder = real_folders[name]
  assert dataset.num_classes(folder) == 10
  assert (
    tuple(
      dataset.num_examples(split, folder)
      for split in (dataset.Split.TRAIN_AND_VALID, dataset.Split.VALID, dataset.Split.TEST)
    )
    == sizes
  )
  batch = next(
    dataset.load(
      dataset.Split.TRAIN_AND_VALID,
      batch_dims=[4],
      image_size=32,
      preprocess_mode=dataset.PreprocessMode.PRETRAIN,
      dataset_name=folder,
    )
  )
  assert batch['view1'].shape == (4, 32, 32, 3)
  batch = next(
    dataset.load(
      dataset.Split.TEST,
      batch_dims=[4],
      image_size=32,
      preprocess_mode=dataset.PreprocessMode.EVAL,
      dataset_name=folder,
    )
  )
  assert batch['images'].shape == (4, 32, 32, 3) and batch['mask'].tolist() == [1.0] * 4
  # CIFAR's 32 px images are evaluated whole; Imagenette's 160 px get the 32 / 64 centre crop.
  assert sources.get_source(folder, None).center_crop_padding == (0 if name == 'cifar10' else 32)
