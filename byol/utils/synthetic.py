"""An embedded labelled image set, generated on the fly, for a first run with no download.

Each class is a shape (disk, ring, square, frame, plus, cross, horizontal or vertical bar,
triangle, checker) tiled over the image, at a random tile size and phase, black on white or white
on black, with pixel noise. Tile size, position and polarity carry no information about the class;
only the shape does, and BYOL's crops (rescaled views of a few tiles) and flips keep it: all classes
are symmetric under horizontal flips. The images are grey, so colour augmentations only change
their brightness and contrast.
"""

from collections.abc import Callable

import numpy as np

IMAGE_SIZE = 32
CLASS_NAMES = (
  'disk',
  'ring',
  'square',
  'frame',
  'plus',
  'cross',
  'horizontal_bar',
  'vertical_bar',
  'triangle',
  'checker',
)
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_SIZES = {'train': 5000, 'test': 1000}

# Different streams for the two splits: no test image is a train image.
_SPLIT_SEEDS = {'train': 0, 'test': 1}
_CELL_SIZE_RANGE = (12.0, 20.0)  # Pixels per tile side: shapes survive the stem's 4x reduction.
_SHAPE_EXTENT = 0.85  # Half the side of a shape's box, in half-cells: gaps between tiles.


def make_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, IMAGE_SIZE, IMAGE_SIZE, 3] and int64 labels [N] of 'train' or 'test'."""
  if split not in SPLIT_SIZES:
    raise ValueError(f'The synthetic dataset has splits {sorted(SPLIT_SIZES)}, not {split!r}.')
  size = SPLIT_SIZES[split]
  rng = np.random.default_rng([seed, _SPLIT_SEEDS[split]])
  labels = np.arange(size) % NUM_CLASSES  # Balanced classes...
  rng.shuffle(labels)  # ...in random order.

  # The shape is tiled: every pixel has coordinates in its own cell, the shape spans [-1, 1] around
  # the cell's centre and fills most of it. Cell size and phase vary per image.
  cell = rng.uniform(*_CELL_SIZE_RANGE, (size, 1, 1)).astype(np.float32)
  phase = rng.uniform(0.0, 1.0, (size, 2, 1, 1)).astype(np.float32) * cell[:, None]
  pixels = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
  offset_y = (pixels[None, :, None] - phase[:, 0]) / cell  # [N, S, 1], in cells, from -1
  offset_x = (pixels[None, None, :] - phase[:, 1]) / cell  # [N, 1, S]

  def in_cell(offset):
    return (offset % 1.0 * 2.0 - 1.0) / _SHAPE_EXTENT

  grid = (size, IMAGE_SIZE, IMAGE_SIZE)
  dy, dx = np.broadcast_to(in_cell(offset_y), grid), np.broadcast_to(in_cell(offset_x), grid)
  mask = np.empty(grid, bool)  # [N, S, S]
  for label, shape in enumerate(_SHAPES):
    chosen = labels == label
    mask[chosen] = shape(dy[chosen], dx[chosen])

  # One polarity per image, black on white or white on black: grey levels say nothing of the class
  # and, unlike colours, nothing of the image (one bit), so that only the shape tells two views of
  # an image from those of others. (Random colours per tile were measured to let BYOL match views
  # by their colours: its kNN accuracy stayed at chance.)
  white_on_black = rng.random((size, 1, 1)) < 0.5  # [N, 1, 1]
  images = np.repeat((mask == white_on_black)[..., None].astype(np.float64), 3, axis=-1)
  # In place: each float64 temporary of the training split is 120 MB.
  images += rng.normal(0.0, 0.06, images.shape)
  np.clip(images, 0.0, 1.0, out=images)
  images *= 255
  return np.round(images, out=images).astype(np.uint8), labels.astype(np.int64)


_Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Per class, in CLASS_NAMES order: (dy, dx) [n, S, S] offsets from the tile centre -> mask.
_SHAPES: tuple[_Mask, ...] = (
  lambda dy, dx: dy**2 + dx**2 <= 1.0,
  lambda dy, dx: (dy**2 + dx**2 <= 1.0) & (dy**2 + dx**2 >= 0.55**2),
  lambda dy, dx: np.maximum(np.abs(dy), np.abs(dx)) <= 0.85,
  lambda dy, dx: np.abs(np.maximum(np.abs(dy), np.abs(dx)) - 0.7) <= 0.15,
  lambda dy, dx: (
    (np.minimum(np.abs(dy), np.abs(dx)) <= 0.25) & (np.maximum(np.abs(dy), np.abs(dx)) <= 1.0)
  ),
  lambda dy, dx: (
    (np.minimum(np.abs(dx - dy), np.abs(dx + dy)) <= 0.35)
    & (np.maximum(np.abs(dy), np.abs(dx)) <= 0.9)
  ),
  lambda dy, dx: (np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0),
  lambda dy, dx: (np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0),
  lambda dy, dx: (np.abs(dy) <= 0.9) & (np.abs(dx) <= (dy + 0.9) / 2.0),  # Apex up.
  lambda dy, dx: (np.maximum(np.abs(dy), np.abs(dx)) <= 0.9) & ((dy > 0) == (dx > 0)),
)
