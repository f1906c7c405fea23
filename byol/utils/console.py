"""What the programs print: this package's log lines, clean, and other libraries' only if they
matter.

absl prefixes every line with its level, date, time, thread and source line, and JAX, TFDS and
optax log their own notices (no TPU found, datasets constructed, schedule shapes) at the same
INFO level. By default (`--verbosity=0`) the console shows

  16:19:45 step 2/600 | 34.9 images/s | ETA 0h05m12s | loss=6.699, ...
  16:19:52 WARNING: Training a linear classifier on a RANDOM encoder (a baseline).

that is, the time and message of this package's lines, and other libraries' warnings and errors.
`-v 1` (`--verbosity=1`) and above keep absl's own format, with every library's lines.
"""

import logging
import os

from absl import logging as absl_logging

_PACKAGE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../byol


class _Format(logging.Formatter):
  """`HH:MM:SS message`, with the level named when it is not INFO."""

  def format(self, record: logging.LogRecord) -> str:
    level = '' if record.levelno == logging.INFO else f'{record.levelname}: '
    return f'{self.formatTime(record, "%H:%M:%S")} {level}{record.getMessage()}'


class _OwnOrImportant(logging.Filter):
  """Keeps this package's records, and every library's warnings and errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_FOLDER)


def use_clean_lines() -> None:
  """Sets absl's console handler to the clean lines above, unless `--verbosity` is 1 or more.

  Call in a program's `main`, after absl has parsed the flags. Logs written to files by absl
  (`--log_dir`) are formatted by the same handler.
  """
  if absl_logging.get_verbosity() >= 1:
    return
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_Format())
  if not any(isinstance(existing, _OwnOrImportant) for existing in handler.filters):
    handler.addFilter(_OwnOrImportant())
