"""Shared test setup: quiet TensorFlow, one compilation cache, the real images of ../shared/data."""

import os
import pathlib
import shutil
import tarfile
import tempfile

import jax
import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def pytest_configure(config):
  """One persistent XLA compilation cache for the session, in this process and its subprocesses.

  Most tests build small experiments whose programs take seconds to compile on a CPU and are the
  same from one test to the next (and in the workers the end-to-end tests start): each is compiled
  once in the session and read from the cache afterwards, however short its compilation. Set
  before the first compilation, which would otherwise find the cache off for this process.
  """
  del config
  folder = tempfile.mkdtemp(prefix='byol_test_jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def pytest_unconfigure(config):
  del config
  shutil.rmtree(os.environ.pop('JAX_COMPILATION_CACHE_DIR', ''), ignore_errors=True)


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
