"""The console's lines: this package's messages, clean, and other libraries' only when they warn."""

import logging
import os

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
