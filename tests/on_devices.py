"""A tiny pretraining experiment on N fake CPU devices: one update, and evaluations.

  python tests/on_devices.py NUM_DEVICES OUTPUT_FOLDER

Run in its own process, started with NUM_DEVICES CPU devices (`support.environment`): the device
count is set before JAX starts. Writes
- `update.npz`: the state and scalars after one update on a fixed global batch (the batch, keys
  and config do not depend on the device count, so every count must give the same state);
- `evaluations.json`: for each preset's evaluation batch size, the batch size the experiment
  evaluated with and the number of test examples it counted.
"""

import json
import os
import sys

import jax
import numpy as np

from byol import byol_experiment
from byol.configs import byol as byol_config
from byol.configs import datasets
from byol.utils import helpers
import support  # This folder is on the path.


def write_one_update(output: str) -> None:
  experiment = support.pretrain_experiment(output)
  experiment.initialize(jax.random.key(0))
  batch = support.random_views(experiment)
  state, logs = experiment.update(experiment.state, batch, jax.random.key(1), np.int32(3))
  state, logs = helpers.to_host((state, logs))
  leaves = jax.tree_util.tree_leaves_with_path(
    dict(
      online_params=state.online_params,
      online_state=state.online_state,
      target_params=state.target_params,
      target_state=state.target_state,
      logs=logs,
    )
  )
  arrays = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}
  np.savez(os.path.join(output, 'update.npz'), **arrays)


def write_evaluations(output: str) -> None:
  default = byol_config.get_config()['evaluation_config']['batch_size']
  results = {}
  for preset_batch_size in sorted(
    {preset.get('eval_batch_size', default) for preset in datasets.PRESETS.values()}
  ):
    config = support.pretrain_config(
      output, overrides=[f'evaluation_config.batch_size={preset_batch_size}']
    )
    experiment = byol_experiment.ByolExperiment(**config)
    experiment.initialize(jax.random.key(0))
    scalars = experiment.evaluate(global_step=0)
    results[preset_batch_size] = dict(
      batch_size=experiment._evaluation_config['batch_size'], num_examples=scalars['num_examples']
    )
  with open(os.path.join(output, 'evaluations.json'), 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  num_devices, output = int(sys.argv[1]), sys.argv[2]
  assert jax.device_count() == num_devices, jax.devices()
  write_one_update(output)
  write_evaluations(output)
