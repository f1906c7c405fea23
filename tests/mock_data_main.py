"""Runs `python -m byol.main_loop <flags>` on TFDS mock data, for the end-to-end tests.

`tfds.testing.mock_data` replaces the dataset's records by random examples, so the real pipeline
and command line run without ImageNet. Its default examples come from a Python generator, whose
tf.data worker threads need the GIL: destroying a pipeline with reads in flight (when the train
worker ends) then deadlocks, as the destroying thread holds the GIL. Real TFDS data is read from
files and has no such problem, so the mock here is built from tensors instead: every split holds
$BYOL_MOCK_NUM_EXAMPLES random JPEG images of various sizes with random labels.
"""

import os
import runpy
import warnings
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# The same rule as pytest.ini, for the code that runs in this subprocess.
warnings.filterwarnings('error', category=DeprecationWarning, module='(jax|haiku|optax|byol)')

NUM_EXAMPLES = int(os.environ['BYOL_MOCK_NUM_EXAMPLES'])


def encoded_examples(
  builder: tfds.core.DatasetBuilder, split: str, decoders=None, read_config=None, **kwargs
) -> tf.data.Dataset:
  """NUM_EXAMPLES examples {'image': JPEG bytes, 'label': int64} (images left encoded, as
  `byol.utils.dataset` reads them with `tfds.decode.SkipDecoding`)."""
  del decoders, read_config, kwargs
  rng = np.random.default_rng(zlib.crc32(str(split).encode()))  # The same data in every run.
  num_classes = builder.info.features['label'].num_classes
  images = [
    tf.io.encode_jpeg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).numpy()
    for height, width in rng.integers(24, 64, (NUM_EXAMPLES, 2))
  ]
  labels = rng.integers(0, num_classes, NUM_EXAMPLES)
  return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})


if __name__ == '__main__':
  with tfds.testing.mock_data(as_dataset_fn=encoded_examples):
    runpy.run_module('byol.main_loop', run_name='__main__', alter_sys=True)
