"""Runs `python -m byol.main_loop <flags>`; a train worker then writes this process's copies of the
final state to `$BYOL_STATE_FOLDER/state_<process index>.npz`.

Only process 0 writes checkpoints, so this is how a test sees what the other processes of a run
hold: every device's copy of every array of the state, keyed `<path>@<device id>`.
"""

import os
import warnings

from absl import app
import jax
import numpy as np

from byol import main_loop
from byol import workers

# The same rule as pytest.ini, for the code that runs in this subprocess.
warnings.filterwarnings('error', category=DeprecationWarning, module='(jax|haiku|optax|byol)')


def train_loop_keeping_state(*args, **kwargs):
  experiment = train_loop(*args, **kwargs)
  copies = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(experiment.state):
    for shard in leaf.addressable_shards:
      copies[f'{jax.tree_util.keystr(path)}@{shard.device.id}'] = np.asarray(shard.data)
  np.savez(
    os.path.join(os.environ['BYOL_STATE_FOLDER'], f'state_{jax.process_index()}.npz'), **copies
  )
  return experiment


if __name__ == '__main__':
  train_loop = workers.train_loop
  workers.train_loop = train_loop_keeping_state
  app.run(main_loop.main)
