"""The console's lines: this package's messages, clean, and other libraries' only when they warn."""

import ast
import logging
import os
import pathlib

from absl import logging as absl_logging
import pytest

import byol
from byol.utils import console


@pytest.fixture
def handler():
  """absl's console handler, restored afterwards (it is shared by every test of this process)."""
  handler = absl_logging.get_absl_handler()
  formatter, filters = handler.python_handler.formatter, list(handler.filters)
  verbosity = absl_logging.get_verbosity()
  yield handler
  absl_logging.set_verbosity(verbosity)
  handler.setFormatter(formatter)
  handler.filters[:] = filters


def record(level, path, message):
  return logging.LogRecord('absl', level, path, 1, message, None, None)


def test_own_lines_are_clean_and_other_libraries_show_only_warnings(handler):
  absl_logging.set_verbosity(absl_logging.INFO)
  console.use_clean_lines()
  console.use_clean_lines()  # Twice (two programs in one process): still one filter.
  own = os.path.join(os.path.dirname(byol.__file__), 'workers.py')
  library = '/site-packages/jax/_src/xla_bridge.py'

  step = record(logging.INFO, own, 'step 2/600 | 34.9 images/s')
  assert handler.filter(step)
  assert (
    handler.format(step)
    == f'{logging.Formatter().formatTime(step, "%H:%M:%S")} step 2/600 | 34.9 images/s'
  )
  warning = record(logging.WARNING, own, 'RANDOM encoder')
  assert handler.format(warning).endswith(' WARNING: RANDOM encoder')
  assert not handler.filter(record(logging.INFO, library, "Unable to initialize backend 'tpu'"))
  assert handler.filter(record(logging.WARNING, library, 'a warning of JAX'))


def test_verbosity_1_keeps_absls_lines_with_every_library(handler):
  absl_logging.set_verbosity(absl_logging.DEBUG)  # -v 1
  formatter, filters = handler.python_handler.formatter, list(handler.filters)
  console.use_clean_lines()
  assert handler.python_handler.formatter is formatter and handler.filters == filters


# TensorFlow 2.21's first lines on import, as C++ writes them to file descriptor 2.
TENSORFLOW_START_UP = (
  'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'
  'I0000 00:00:1796403131.825092   18735 port.cc:153] oneDNN custom operations are on.\n'
  'I0000 00:00:1796403131.860754   18735 cpu_feature_guard.cc:227] This TensorFlow binary is '
  'optimized to use available CPU instructions in performance-critical operations.\n'
  'To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n'
)


def test_start_up_notices_are_held_back_until_verbosity_1_and_problems_pass(handler, capfd):
  problem = 'E0000 00:00:1796403131.9 18735 cuda_dnn.cc:8] Could not load cuDNN\n'
  with console.held_back_start_up_notices():
    os.write(2, (TENSORFLOW_START_UP + problem).encode())
  assert capfd.readouterr().err == problem  # A problem is shown at once, and only it.

  absl_logging.set_verbosity(absl_logging.INFO)  # The default, -v 0: the notices stay held.
  console.use_clean_lines()
  assert capfd.readouterr().err == ''
  absl_logging.set_verbosity(absl_logging.DEBUG)  # -v 1
  console.use_clean_lines()
  assert capfd.readouterr().err == TENSORFLOW_START_UP


def test_only_the_quiet_import_imports_tensorflow():
  # Whichever module imports TensorFlow first decides whether its notices are held back.
  package = pathlib.Path(byol.__file__).parent
  importers = []
  for path in package.rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
      if any(name.split('.')[0] in ('tensorflow', 'tensorflow_datasets') for name in names):
        importers.append(path.relative_to(package).as_posix())
  assert set(importers) == {'utils/tensorflow_quiet.py'}
