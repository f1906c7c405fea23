"""Lists and validates a class-per-folder image tree: `train/<class>/*` and `val/` or `test/`.

The listing is what `byol.utils.dataset` serves for `dataset_name='folder:PATH'`: file paths and
int64 labels, checked once so that a bad tree fails with a clear message before any training.
"""

import functools
import os
from typing import NamedTuple

import numpy as np

# Lower case; file names are matched case-insensitively (`.JPEG` in ImageNet-style trees).
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
# Leading bytes of the formats TensorFlow decodes: JPEG, PNG, GIF, BMP.
_MAGIC_BYTES = (b'\xff\xd8\xff', b'\x89PNG', b'GIF8', b'BM')
_TEST_FOLDERS = ('val', 'test')  # The first that exists is the evaluation part.
_MAX_NAMED_PATHS = 5  # Bad files named in an error message.
_LAYOUT = 'train/<class>/* and val/<class>/* (or test/<class>/*), one sub-folder per class'


class ImageFolderError(ValueError):
  """The folder is missing, not laid out one sub-folder per class, or holds unreadable files."""


class LabelledFiles(NamedTuple):
  paths: np.ndarray  # str [N]
  labels: np.ndarray  # int64 [N]: index of the class name in `ImageFolder.class_names`.


class ImageFolder(NamedTuple):
  class_names: tuple[str, ...]  # Sorted sub-folder names of `train/`.
  train: LabelledFiles  # In a fixed random order, so that prefixes and shards mix the classes.
  eval: LabelledFiles  # Sorted by class, then by file name.


def list_image_folder(path: str) -> ImageFolder:
  """The checked listing of the tree at `path`; listed once per process and absolute path.

  Raises ImageFolderError when the tree is missing or malformed, or when a file with an image
  extension does not start like a JPEG, PNG, GIF or BMP file.
  """
  return _list_image_folder(os.path.abspath(os.path.expanduser(path)))


@functools.lru_cache(maxsize=None)
def _list_image_folder(root: str) -> ImageFolder:
  if not os.path.isdir(root):
    raise ImageFolderError(f'No folder {root}; it must hold {_LAYOUT}.')
  train_root = os.path.join(root, 'train')
  test_root = next(
    (os.path.join(root, name) for name in _TEST_FOLDERS if os.path.isdir(os.path.join(root, name))),
    None,
  )
  if not os.path.isdir(train_root) or test_root is None:
    raise ImageFolderError(f'{root} must hold {_LAYOUT}.')

  class_names = _class_names(train_root)
  test_class_names = _class_names(test_root)
  unknown = sorted(set(test_class_names) - set(class_names))
  if unknown:
    raise ImageFolderError(
      f'{test_root} has classes that train/ lacks: {unknown}; every evaluation class must also '
      'be a training class (same folder name).'
    )
  train = _labelled_files(train_root, class_names, class_names)
  test = _labelled_files(test_root, test_class_names, class_names)
  _check_image_bytes(np.concatenate([train.paths, test.paths]))
  # Listings are sorted by class: without this permutation the VALID hold-out (a prefix) and the
  # per-process contiguous shards would each hold only a few classes.
  order = np.random.default_rng(0).permutation(len(train.paths))
  return ImageFolder(class_names, LabelledFiles(train.paths[order], train.labels[order]), test)


def _class_names(part_root: str) -> tuple[str, ...]:
  """Sorted names of the sub-folders of `part_root`."""
  names = tuple(sorted(entry.name for entry in os.scandir(part_root) if entry.is_dir()))
  if not names:
    raise ImageFolderError(f'{part_root} has no class sub-folders; it must hold {_LAYOUT}.')
  return names


def _labelled_files(
  part_root: str, folder_names: tuple[str, ...], class_names: tuple[str, ...]
) -> LabelledFiles:
  """The image files of `part_root/<name>/` for each name, sorted, labelled by `class_names`."""
  paths, labels = [], []
  for name in folder_names:
    class_root = os.path.join(part_root, name)
    files = sorted(
      entry.name
      for entry in os.scandir(class_root)
      if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
      raise ImageFolderError(
        f'{class_root} holds no images (files ending in {", ".join(IMAGE_EXTENSIONS)}, any '
        'case); add its images or remove the folder.'
      )
    paths.extend(os.path.join(class_root, file) for file in files)
    labels.extend([class_names.index(name)] * len(files))
  return LabelledFiles(np.array(paths, dtype=str), np.array(labels, dtype=np.int64))


def _check_image_bytes(paths: np.ndarray) -> None:
  """Raises ImageFolderError naming the files whose first bytes are no known image format."""
  bad_paths = []
  for path in paths:
    with open(path, 'rb') as file:
      if not file.read(4).startswith(_MAGIC_BYTES):
        bad_paths.append(str(path))
  if bad_paths:
    raise ImageFolderError(
      f'{len(bad_paths)} files with an image extension are not JPEG, PNG, GIF or BMP images (by '
      f'their first bytes), e.g. {bad_paths[:_MAX_NAMED_PATHS]}; delete or convert them.'
    )
