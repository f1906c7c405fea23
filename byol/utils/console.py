"""What the programs print: this package's log lines, clean, and other libraries' only if they
matter.

absl prefixes every line with its level, date, time, thread and source line, and JAX, TFDS and
optax log their own notices (no TPU found, datasets constructed, schedule shapes) at the same
INFO level. By default (`--verbosity=0`) the console shows

  16:19:45 step 2/600 | 34.9 images/s | ETA 0h05m12s | loss=6.699, ...
  16:19:52 WARNING: Training a linear classifier on a RANDOM encoder (a baseline).

that is, the time and message of this package's lines, and other libraries' warnings and errors.
`-v 1` (`--verbosity=1`) and above keep absl's own format, with every library's lines.

TensorFlow's C++ start-up notices (oneDNN is on; the CPU instructions it was built for) are written
to the process's standard error as it loads, before any flag is parsed, and TF_CPP_MIN_LOG_LEVEL no
longer silences them (TensorFlow 2.21). `held_back_start_up_notices` holds them back while
TensorFlow is imported; `use_clean_lines` prints them at `-v 1` and above.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

from absl import logging as absl_logging

_PACKAGE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../byol

# What C++ libraries print as they load that is information, not a problem: absl's INFO lines
# (`I0000 00:00:1796403131.825092   18735 port.cc:153] ...`: before absl is set up, the seconds
# count from 1970), the line absl prints before them, and the second line of TensorFlow's
# CPU-instructions notice.
_START_UP_NOTICE = re.compile(
  r'I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] '
  r'|WARNING: All log messages before absl::InitializeLog\(\) is called'
  r'|To enable the following instructions: '
)
_held_notices: list[str] = []  # Printed by `use_clean_lines` at `-v 1` and above.


class _Format(logging.Formatter):
  """`HH:MM:SS message`, with the level named when it is not INFO."""

  def format(self, record: logging.LogRecord) -> str:
    level = '' if record.levelno == logging.INFO else f'{record.levelname}: '
    return f'{self.formatTime(record, "%H:%M:%S")} {level}{record.getMessage()}'


class _OwnOrImportant(logging.Filter):
  """Keeps this package's records, and every library's warnings and errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_FOLDER)


@contextlib.contextmanager
def held_back_start_up_notices() -> Iterator[None]:
  """Sends standard error (the file descriptor, which C++ writes to) to a file for the block.

  On exit, the start-up notices written meanwhile are kept for `use_clean_lines`; anything else
  (C++ warnings and errors, Python tracebacks) is written to standard error at once.
  """
  sys.stderr.flush()
  console_fd = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(console_fd, 2)
      os.close(console_fd)
      held.seek(0)
      written = held.read().decode(errors='replace')
  for line in written.splitlines(keepends=True):
    if _START_UP_NOTICE.match(line):
      _held_notices.append(line)
    else:
      sys.stderr.write(line)
  sys.stderr.flush()


def use_clean_lines() -> None:
  """Sets absl's console handler to the clean lines above, unless `--verbosity` is 1 or more.

  Call in a program's `main`, after absl has parsed the flags. Logs written to files by absl
  (`--log_dir`) are formatted by the same handler.
  """
  if absl_logging.get_verbosity() >= 1:
    sys.stderr.writelines(_held_notices)
    _held_notices.clear()
    return
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_Format())
  if not any(isinstance(existing, _OwnOrImportant) for existing in handler.filters):
    handler.addFilter(_OwnOrImportant())
