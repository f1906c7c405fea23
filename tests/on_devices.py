"""A tiny pretraining experiment on N fake CPU devices: one update, and evaluations.

  python tests/on_devices.py NUM_DEVICES OUTPUT_FOLDER

Run in its own process, started with NUM_DEVICES CPU devices (`support.environment`): the device
count is set before JAX starts. Writes
- `update.npz`: the state and scalars after one update on a fixed global batch (the batch, keys
  and config do not depend on the device count, so every count must give the same state);
- `evaluations.json`: for each preset's evaluation batch size, the batch size the experiment
  evaluated with and its results (examples counted, classifier and kNN accuracies) for the state
  it saved to OUTPUT_FOLDER.
"""

import json
import os
import sys

import jax
import numpy as np

from byol import byol_experiment
from byol.configs import byol as byol_config
from byol.configs import datasets
import support  # This folder is on the path.

KNN_BATCH_SIZE = 25  # The one evaluation batch size (Imagenette's) with the kNN monitor too.


def evaluations(folder: os.PathLike | str) -> dict[int, dict[str, float]]:
  """For each dataset preset's evaluation batch size: the batch size a pretraining experiment
  evaluates with on this process's devices, and its results.

  One state, initialised once and saved to `folder`, is evaluated by each (as eval workers do).
  """
  default = byol_config.get_config()['evaluation_config']['batch_size']
  batch_sizes = {preset.get('eval_batch_size', default) for preset in datasets.PRESETS.values()}
  results = {}
  for batch_size in sorted(batch_sizes):
    overrides = [f'evaluation_config.batch_size={batch_size}']
    if batch_size != KNN_BATCH_SIZE:
      overrides.append('evaluation_config.knn.k=0')  # Once is enough for the kNN monitor.
    config = support.pretrain_config(folder, overrides=overrides)
    experiment = byol_experiment.ByolExperiment(**config)
    if experiment.load_checkpoint() is None:
      experiment.initialize(jax.random.key(0))
      experiment.save_checkpoint(global_step=0, rng=jax.random.key(1))
    scalars = experiment.evaluate(global_step=0)
    results[batch_size] = dict(scalars, batch_size=experiment._evaluation_config['batch_size'])
  return results


if __name__ == '__main__':
  num_devices, output = int(sys.argv[1]), sys.argv[2]
  assert jax.device_count() == num_devices, jax.devices()
  np.savez(os.path.join(output, 'update.npz'), **support.one_update(output))
  with open(os.path.join(output, 'evaluations.json'), 'w') as f:
    json.dump(evaluations(output), f)
