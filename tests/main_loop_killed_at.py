"""Runs `python -m byol.main_loop <flags>` and kills itself with SIGKILL at a chosen point.

`$BYOL_KILL_AT` is `<point>:<n>`: the process dies the n-th time (from 1) it reaches `<point>`:
- `checkpoint_write`: halfway through writing a checkpoint's bytes to its temporary file;
- `checkpoint_rename`: after the temporary checkpoint file is complete and synced, before it is
  renamed over the checkpoint;
- `input_position`: after an input position is written to its temporary folder, before that folder
  is renamed into place.
Without the variable it is `python -m byol.main_loop`. The points are where a crash could leave a
partial file; killing at random instants (the fault-injection test does both) rarely hits them.
"""

import os
import signal
import warnings

import dill

from byol import main_loop
from byol.utils import checkpointing

# The same rule as pytest.ini, for the code that runs in this subprocess.
warnings.filterwarnings('error', category=DeprecationWarning, module='(jax|haiku|optax|byol)')

_POINT, _, _COUNT = os.environ.get('BYOL_KILL_AT', '').partition(':')
_reached = {'count': 0}


def _reach(point: str) -> None:
  """Dies by SIGKILL if `point` is the chosen one, reached for the chosen time."""
  if point != _POINT:
    return
  _reached['count'] += 1
  if _reached['count'] == int(_COUNT):
    os.kill(os.getpid(), signal.SIGKILL)


class _DillWritingHalf:
  """`checkpointing.dill`, with a `dump` that reaches `checkpoint_write` halfway through."""

  def __getattr__(self, name):
    return getattr(dill, name)

  @staticmethod
  def dump(obj, file, protocol=None):
    data = dill.dumps(obj, protocol=protocol)
    file.write(data[: len(data) // 2])
    file.flush()
    _reach('checkpoint_write')
    file.write(data[len(data) // 2 :])


_replace = os.replace


def _replace_reaching_points(source, destination):
  if str(destination).endswith('.pkl'):
    _reach('checkpoint_rename')
  elif os.path.basename(str(destination)).startswith('batches_'):
    _reach('input_position')
  _replace(source, destination)


if __name__ == '__main__':
  checkpointing.dill = _DillWritingHalf()
  os.replace = _replace_reaching_points
  main_loop.run()
