"""Runs `python -m byol.main_loop <flags>`; a train worker then writes this process's copies of the
final state to `$BYOL_STATE_FOLDER/state_<process index>.npz` and, if `$BYOL_THEN_EVALUATE` is
set, goes on as the eval worker of the same run.

Only process 0 writes checkpoints, so this is how a test sees what the other processes of a run
hold: every device's copy of every array of the state, keyed `<path>@<device id>`. Evaluating in
the same processes, once the final checkpoint is written, spares a test the start of as many
processes again (each imports TensorFlow and JAX and compiles its programs anew).
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


def train_loop_keeping_state(config, experiment_mode, **kwargs):
  experiment = train_loop(config, experiment_mode, **kwargs)
  copies = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(experiment.state):
    for shard in leaf.addressable_shards:
      copies[f'{jax.tree_util.keystr(path)}@{shard.device.id}'] = np.asarray(shard.data)
  np.savez(
    os.path.join(os.environ['BYOL_STATE_FOLDER'], f'state_{jax.process_index()}.npz'), **copies
  )
  if os.environ.get('BYOL_THEN_EVALUATE'):
    # A pretraining run's eval worker has the train worker's config (`main_loop.get_config`).
    workers.eval_loop(config, experiment_mode, poll_interval=main_loop.FLAGS.eval_poll_interval)
  return experiment


if __name__ == '__main__':
  train_loop = workers.train_loop
  workers.train_loop = train_loop_keeping_state
  app.run(main_loop.main)
