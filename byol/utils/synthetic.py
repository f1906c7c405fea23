"""An embedded labelled image set, generated on the fly, for a first run with no download.

Each class is a shape (disk, ring, square, frame, plus, cross, stripes of either orientation,
triangle, checker), drawn at a random position and size in a random foreground colour on a random
background colour, with pixel noise. Colour, position and scale carry no information about the
class; only the shape does. BYOL's augmentations (crops, colour jitter, grayscale, blur) teach an
encoder exactly those invariances, so that a linear classifier on its embedding beats one on a
random encoder. All classes are symmetric under horizontal flips, which the augmentations apply.
"""

from collections.abc import Callable

import numpy as np

IMAGE_SIZE = 32
CLASS_NAMES = ('disk', 'ring', 'square', 'frame', 'plus', 'cross', 'horizontal_stripes',
               'vertical_stripes', 'triangle', 'checker')
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_SIZES = {'train': 5000, 'test': 1000}

# Different streams for the two splits: no test image is a train image.
_SPLIT_SEEDS = {'train': 0, 'test': 1}


def make_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, IMAGE_SIZE, IMAGE_SIZE, 3] and int64 labels [N] of 'train' or 'test'."""
  if split not in SPLIT_SIZES:
    raise ValueError(f'The synthetic dataset has splits {sorted(SPLIT_SIZES)}, not {split!r}.')
  size = SPLIT_SIZES[split]
  rng = np.random.default_rng([seed, _SPLIT_SEEDS[split]])
  labels = np.arange(size) % NUM_CLASSES  # Balanced classes...
  rng.shuffle(labels)  # ...in random order.

  # Shape coordinates of every pixel: the shape spans [-1, 1] around its centre.
  centre = rng.uniform(0.3, 0.7, (size, 2, 1, 1)).astype(np.float32) * IMAGE_SIZE
  radius = rng.uniform(0.2, 0.38, (size, 1, 1)).astype(np.float32) * IMAGE_SIZE
  pixels = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
  dy = np.broadcast_to((pixels[None, :, None] - centre[:, 0]) / radius, (size,) + (IMAGE_SIZE,) * 2)
  dx = np.broadcast_to((pixels[None, None, :] - centre[:, 1]) / radius, (size,) + (IMAGE_SIZE,) * 2)
  mask = np.empty((size, IMAGE_SIZE, IMAGE_SIZE), bool)  # [N, S, S]
  for label, shape in enumerate(_SHAPES):
    chosen = labels == label
    mask[chosen] = shape(dy[chosen], dx[chosen])
  mask = mask[..., None]  # [N, S, S, 1]

  foreground, background = _contrasting_colours(rng, size)  # [N, 3] each, in [0, 1]
  images = np.where(mask, foreground[:, None, None], background[:, None, None])
  images = images + rng.normal(0., 0.06, images.shape)
  return np.round(np.clip(images, 0., 1.) * 255).astype(np.uint8), labels.astype(np.int64)


def _stripes(offset: np.ndarray, box: np.ndarray) -> np.ndarray:
  """Five bands across the shape's box, alternately on and off, along `offset`."""
  return (np.floor((offset + 1.) * 2.5) % 2 == 0) & (box <= 0.9)


def _checker(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
  """A 3x3 checkerboard filling the shape's box."""
  cell = lambda offset: np.floor((offset + 0.9) / 0.6)  # Cells 0, 1, 2 (outside: off the box).
  return (np.maximum(np.abs(dy), np.abs(dx)) <= 0.9) & ((cell(dy) + cell(dx)) % 2 == 0)


_Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Per class, in CLASS_NAMES order: (dy, dx) [n, S, S] offsets from the centre in radii -> mask.
_SHAPES: tuple[_Mask, ...] = (
    lambda dy, dx: dy ** 2 + dx ** 2 <= 1.,
    lambda dy, dx: (dy ** 2 + dx ** 2 <= 1.) & (dy ** 2 + dx ** 2 >= 0.55 ** 2),
    lambda dy, dx: np.maximum(np.abs(dy), np.abs(dx)) <= 0.85,
    lambda dy, dx: np.abs(np.maximum(np.abs(dy), np.abs(dx)) - 0.7) <= 0.15,
    lambda dy, dx: (np.minimum(np.abs(dy), np.abs(dx)) <= 0.25)
    & (np.maximum(np.abs(dy), np.abs(dx)) <= 1.),
    lambda dy, dx: (np.minimum(np.abs(dx - dy), np.abs(dx + dy)) <= 0.35)
    & (np.maximum(np.abs(dy), np.abs(dx)) <= 0.9),
    lambda dy, dx: _stripes(dy, np.maximum(np.abs(dy), np.abs(dx))),
    lambda dy, dx: _stripes(dx, np.maximum(np.abs(dy), np.abs(dx))),
    lambda dy, dx: (np.abs(dy) <= 0.9) & (np.abs(dx) <= (dy + 0.9) / 2.),  # Apex up.
    _checker,
)


def _contrasting_colours(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Random foreground and background colours whose brightness differs by at least 0.25."""
  foreground = rng.uniform(0., 1., (size, 3))
  background = rng.uniform(0., 1., (size, 3))
  brightness = lambda colour: colour @ np.array([0.299, 0.587, 0.114])
  too_close = np.abs(brightness(foreground) - brightness(background)) < 0.25
  # Push the two colours apart in brightness, keeping their hues.
  darker = brightness(foreground) < brightness(background)
  shift = np.where(too_close, 0.3, 0.)[:, None]
  foreground = np.clip(foreground + np.where(darker[:, None], -shift, shift), 0., 1.)
  background = np.clip(background + np.where(darker[:, None], shift, -shift), 0., 1.)
  return foreground, background
