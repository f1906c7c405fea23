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

from byol import byol_experiment  # noqa: E402
from byol.configs import byol as byol_config  # noqa: E402
from byol.utils import helpers  # noqa: E402

BATCH_SIZE = 8
IMAGE_SIZE = 16


def main() -> None:
  assert jax.device_count() == num_devices, jax.devices()
  config = byol_config.get_config(100, BATCH_SIZE, train_images=80, num_classes=5)
  config['network_config'].update(
      encoder_class='TinyResNet', projector_hidden_size=32, projector_output_size=16,
      predictor_hidden_size=32)
  config['dataset_config'].update(name='synthetic', image_size=IMAGE_SIZE)
  config['evaluation_config']['batch_size'] = BATCH_SIZE
  config['checkpointing_config']['checkpoint_dir'] = os.path.dirname(output)
  experiment = byol_experiment.ByolExperiment(**config)
  experiment.initialize(jax.random.key(0))

  rng = np.random.default_rng(0)
  views = rng.uniform(size=(2, BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  batch = helpers.to_global_batch(
      dict(view1=views[0], view2=views[1], labels=rng.integers(0, 5, BATCH_SIZE).astype(np.int32)),
      experiment.batch_sharding)
  state, logs = experiment.update(experiment.state, batch, jax.random.key(1), np.int32(3))
  state, logs = helpers.to_host((state, logs))
  leaves = jax.tree_util.tree_leaves_with_path(
      dict(online_params=state.online_params, online_state=state.online_state,
           target_params=state.target_params, target_state=state.target_state, logs=logs))
  np.savez(output, **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves})


if __name__ == '__main__':
  main()
