"""What the input pipeline hands the networks, without the pipeline: the splits, the
preprocessing modes, the normalisation of the images and the errors of a dataset.

Importable without TensorFlow (unlike `byol.utils.dataset`, the tf.data pipeline), so that the
experiments, networks and benchmark compute rows run on a host that has only JAX.
"""

import enum
from typing import TypeVar

import jax
import numpy as np

ImageArray = TypeVar('ImageArray', np.ndarray, jax.Array)

# ImageNet's test labels were never released: its TFDS `validation` split is our TEST split, and
# the first 10,000 images of TFDS `train` are held out as our VALID split. Smaller sets hold out a
# tenth of their train split.
VALID_HOLDOUT = 10_000
VALID_HOLDOUT_FRACTION = 10
_MEAN_RGB = (0.485, 0.456, 0.406)
_STDDEV_RGB = (0.229, 0.224, 0.225)


class DatasetError(ValueError):
  """A dataset that cannot be read as asked: missing, malformed, or too small for the batch."""


class DatasetNotFoundError(DatasetError):
  """The dataset is unknown or not downloaded and prepared in the data folder."""


class Split(enum.Enum):
  """Our splits of ImageNet, carved out of the TFDS splits `train` and `validation`."""

  TRAIN_AND_VALID = 1
  TRAIN = 2
  VALID = 3
  TEST = 4

  @classmethod
  def from_string(cls, name: str) -> 'Split':
    """The split named `name` (any case); 'validation' is accepted for VALID."""
    name = name.upper()
    if name == 'VALIDATION':
      return cls.VALID
    if name not in cls.__members__:
      raise ValueError(f'Unknown split {name!r}; expected one of {list(cls.__members__)}.')
    return cls[name]

  @property
  def num_examples(self) -> int:
    """Number of examples of this split of `imagenet2012` (`dataset.num_examples()` for others)."""
    return {
      Split.TRAIN_AND_VALID: 1_281_167,
      Split.TRAIN: 1_271_167,
      Split.VALID: VALID_HOLDOUT,
      Split.TEST: 50_000,
    }[self]


class PreprocessMode(enum.Enum):
  """What `dataset.load` makes of each image."""

  PRETRAIN = 1  # Two independent random crops: {'view1', 'view2', 'labels'}.
  LINEAR_TRAIN = 2  # One random crop, randomly flipped: {'images', 'labels'}.
  EVAL = 3  # The centre crop, every example once: {'images', 'labels', 'mask'}.


def normalize_images(images: ImageArray) -> ImageArray:
  """Standardises RGB images in [0, 1] with the ImageNet statistics; numpy or jax, `[..., 3]`."""
  mean = np.asarray(_MEAN_RGB, dtype=images.dtype)
  stddev = np.asarray(_STDDEV_RGB, dtype=images.dtype)
  return (images - mean) / stddev
