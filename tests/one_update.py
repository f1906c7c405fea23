"""One pretraining update on a fixed global batch, on N fake CPU devices; writes the new state.

  python tests/one_update.py NUM_DEVICES OUTPUT.npz

Run in its own process: the device count must be set before JAX starts. The batch, keys and
config do not depend on the device count, so every count must give the same state.
"""

import os
import sys

num_devices, output = int(sys.argv[1]), sys.argv[2]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

from byol.utils import helpers  # noqa: E402
import support  # noqa: E402  (this folder is on the path)


def main() -> None:
  assert jax.device_count() == num_devices, jax.devices()
  experiment = support.pretrain_experiment(os.path.dirname(output))
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
  np.savez(output, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves})


if __name__ == '__main__':
  main()
