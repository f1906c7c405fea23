"""Shared test setup: quiet TensorFlow, and the real image folders of ../shared/data."""
import os
import pathlib
import tarfile

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


# Beside the project, never in it (see ../shared/data/README.md); BYOL_SHARED_DATA overrides.
SHARED_DATA = pathlib.Path(os.environ.get(
    'BYOL_SHARED_DATA', pathlib.Path(__file__).resolve().parent.parent.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def real_folders(tmp_path_factory):
  """Imagenette and CIFAR-10 JPEG folders extracted from ../shared/data (skipped if absent)."""
  folders = {}
  for name, archive, folder in (('imagenette', 'imagenette2-160.tar', 'imagenette2-160'),
                                ('cifar10', 'cifar10-jpg.tar.gz', 'cifar10_jpg')):
    if not (SHARED_DATA / archive).exists():
      pytest.skip(f'{SHARED_DATA / archive} is absent: real-data tests need ../shared/data.')
    target = tmp_path_factory.mktemp(name)
    with tarfile.open(SHARED_DATA / archive) as tar:
      tar.extractall(target, filter='data')
    folders[name] = f'folder:{target / folder}'
  return folders
