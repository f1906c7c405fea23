"""Shared test setup: quiet TensorFlow, one compilation cache, the real images of ../shared/data."""

import fcntl
import os
import pathlib
import shutil
import tarfile
import tempfile

import jax
import pytest

import support  # This folder is on the path.

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# The suite compiles hundreds of small programs and runs each a few times, so compiling them fast
# matters more than running them fast: LLVM's optimisation of XLA:CPU's code costs more than it
# saves here (measured: the pretraining and linear-evaluation test files take 30% less time without
# it), and XLA:CPU's older element-wise emitters compile a tiny pretraining update in half the time
# of its MLIR fusion emitters (2.8 s against 5.5 s, measured here; the whole suite's CPU time fell
# by a quarter to a third). Set before JAX starts its backend; the processes the tests start get it
# too (`support.environment`). The same HLO, optimised by XLA as always; its element-wise code may
# round differently in the last bit.
os.environ['XLA_FLAGS'] = ' '.join(
  [os.environ.get('XLA_FLAGS', ''), support.TEST_XLA_FLAGS]
).strip()


_CACHE_VARIABLE = 'JAX_COMPILATION_CACHE_DIR'
_OWN_CACHE = pytest.StashKey[str]()  # The cache folder this process made (and removes).


def pytest_configure(config):
  """One persistent XLA compilation cache for the session, in this process and its subprocesses.

  Most tests build small experiments whose programs take seconds to compile on a CPU and are the
  same from one test to the next (and in the workers the end-to-end tests start): each is compiled
  once in the session and read from the cache afterwards, however short its compilation. Set
  before the first compilation, which would otherwise find the cache off for this process. The
  workers of `pytest -n` inherit the folder of the process that started them.
  """
  if not (os.environ.get('PYTEST_XDIST_WORKER') and os.environ.get(_CACHE_VARIABLE)):
    folder = tempfile.mkdtemp(prefix='byol_test_jax_cache_')
    config.stash[_OWN_CACHE] = folder
    os.environ[_CACHE_VARIABLE] = folder
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_VARIABLE])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def pytest_unconfigure(config):
  folder = config.stash.get(_OWN_CACHE, None)
  if folder is not None:
    shutil.rmtree(folder, ignore_errors=True)


# Files whose tests start processes or run whole workers: the longest, run first so that the
# workers of `pytest -n` end together instead of one finishing them alone at the end.
_LONGEST_FIRST = ('test_multi_process.py', 'test_multi_device.py', 'test_main_loop.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

  items.sort(key=rank)  # Stable: the order within each file is kept.


# Beside the project, never in it (see ../shared/data/README.md); BYOL_SHARED_DATA overrides.
SHARED_DATA = pathlib.Path(
  os.environ.get(
    'BYOL_SHARED_DATA', pathlib.Path(__file__).resolve().parent.parent.parent / 'shared' / 'data'
  )
)


@pytest.fixture(scope='session')
def real_folders(tmp_path_factory):
  """Imagenette and CIFAR-10 JPEG folders extracted from ../shared/data (skipped if absent).

  Extracted once per session: the workers of `pytest -n` share one copy, under a lock.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # Shared by the workers of one session.
  folders = {}
  for name, archive, folder in (
    ('imagenette', 'imagenette2-160.tar', 'imagenette2-160'),
    ('cifar10', 'cifar10-jpg.tar.gz', 'cifar10_jpg'),
  ):
    if not (SHARED_DATA / archive).exists():
      pytest.skip(f'{SHARED_DATA / archive} is absent: real-data tests need ../shared/data.')
    target = root / f'real_{name}'
    with open(root / f'real_{name}.lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
      if not (target / 'complete').exists():
        shutil.rmtree(target, ignore_errors=True)
        with tarfile.open(SHARED_DATA / archive) as tar:
          tar.extractall(target, filter='data')
        (target / 'complete').touch()
    folders[name] = f'folder:{target / folder}'
  return folders
