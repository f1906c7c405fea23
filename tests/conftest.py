"""Shared test setup: quiet TensorFlow, one compilation cache, the real images of ../shared/data."""

import os
import pathlib
import shutil
import subprocess
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


# The longest tests (measured on 2 cores: 20 s to 100 s each; most others take under 5 s), longest
# first, then every other test in file order. `.ci/run` hands tests to its two workers one at a
# time in this order (`--dist load --maxschedchunk=1`), so the long ones run side by side at the
# start and the workers end together on short ones, instead of one of them running a long test
# alone at the end (worksteal's initial halves gave one worker every long test).
# Prefixes of `tests/`-relative node ids.
_LONGEST_FIRST = (
  'test_multi_process.py::test_two_processes_of_two_devices',
  # Starts the process of four devices whose results the file's other tests read later.
  'test_multi_device.py::test_update_on_four_devices',
  'test_main_loop.py::test_quick_start_reports',
  'test_main_loop.py::test_real_image_folder',
  'test_benchmark.py::',
  'test_resume.py::test_killed_at_any_instant',
  'test_resume.py::test_a_killed_run_resumes',
  'test_byol_experiment.py::test_bfloat16_updates',
  'test_main_loop.py::test_train_worker_checkpoints',
  'test_main_loop.py::test_linear_eval_trains',
  'test_main_loop.py::test_a_non_finite_loss',
)


def pytest_collection_modifyitems(items):
  def rank(item):
    node_id = item.nodeid.split('/', 1)[-1]
    for index, prefix in enumerate(_LONGEST_FIRST):
      if node_id.startswith(prefix):
        return index
    return len(_LONGEST_FIRST)

  items.sort(key=rank)  # Stable: the order within each file is kept.


# Beside the project, never in it (see ../shared/data/README.md); BYOL_SHARED_DATA overrides.
SHARED_DATA = pathlib.Path(
  os.environ.get(
    'BYOL_SHARED_DATA', pathlib.Path(__file__).resolve().parent.parent.parent / 'shared' / 'data'
  )
)


_REAL_ARCHIVES = {  # name: (archive in SHARED_DATA, the folder it holds)
  'imagenette': ('imagenette2-160.tar', 'imagenette2-160'),
  'cifar10': ('cifar10-jpg.tar.gz', 'cifar10_jpg'),
}


class RealFolders:
  """`real_folders[name]`: the '--dataset' value of the JPEG folder of Imagenette or CIFAR-10.

  Each archive is extracted when a test first asks for it, once per session
  (`support.once_per_session`): two workers of `pytest -n` can extract the two side by side. A
  test whose archive is absent is skipped, saying so.
  """

  def __init__(self, tmp_path_factory: pytest.TempPathFactory):
    self._tmp_path_factory = tmp_path_factory

  def __getitem__(self, name: str) -> str:
    archive, folder = _REAL_ARCHIVES[name]
    if not (SHARED_DATA / archive).exists():
      pytest.skip(f'{SHARED_DATA / archive} is absent: real-data tests need ../shared/data.')

    def extract(target):
      # GNU tar, not `tarfile`: a tenth of the CPU time on CIFAR-10's 60,000 files. It keeps
      # every member inside `target` (it refuses names with '..' and strips a leading '/').
      subprocess.run(
        ['tar', '-xf', SHARED_DATA / archive, '-C', target, '--no-same-owner'], check=True
      )

    target = support.once_per_session(self._tmp_path_factory, f'real_{name}', extract)
    return f'folder:{target / folder}'


@pytest.fixture(scope='session')
def real_folders(tmp_path_factory) -> RealFolders:
  """The real image folders of ../shared/data, extracted on first use (see `RealFolders`)."""
  return RealFolders(tmp_path_factory)
