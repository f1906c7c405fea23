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

import support  # This folder is on the path.


if __name__ == '__main__':
  num_devices, output = int(sys.argv[1]), sys.argv[2]
  assert jax.device_count() == num_devices, jax.devices()
  np.savez(os.path.join(output, 'update.npz'), **support.one_update(output))
  with open(os.path.join(output, 'evaluations.json'), 'w') as f:
    json.dump(support.evaluations(output), f)
