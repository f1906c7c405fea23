"""Shared test setup: quiet TensorFlow, one compilation cache, the real images of ../shared/data."""

import os
import pathlib
import tarfile

import jax
import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the session, in this process and its subprocesses.

  The end-to-end tests start many workers that compile the same small networks; each compiles a
  program only the first time it is seen in the session. Every session starts with an empty cache.
  """
  folder = str(tmp_path_factory.mktemp('jax_compilation_cache'))
  os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  jax.config.update('jax_compilation_cache_dir', folder)
  yield folder


# Beside the project, never in it (see ../shared/data/README.md); BYOL_SHARED_DATA overrides.
SHARED_DATA = pathlib.Path(
  os.environ.get(
    'BYOL_SHARED_DATA', pathlib.Path(__file__).resolve().parent.parent.parent / 'shared' / 'data'
  )
)


@pytest.fixture(scope='session')
def real_folders(tmp_path_factory):
  """Imagenette and CIFAR-10 JPEG folders extracted from ../shared/data (skipped if absent)."""
  folders = {}
  for name, archive, folder in (
    ('imagenette', 'imagenette2-160.tar', 'imagenette2-160'),
    ('cifar10', 'cifar10-jpg.tar.gz', 'cifar10_jpg'),
  ):
    if not (SHARED_DATA / archive).exists():
      pytest.skip(f'{SHARED_DATA / archive} is absent: real-data tests need ../shared/data.')
    target = tmp_path_factory.mktemp(name)
    with tarfile.open(SHARED_DATA / archive) as tar:
      tar.extractall(target, filter='data')
    folders[name] = f'folder:{target / folder}'
  return folders
