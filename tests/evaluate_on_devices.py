"""Evaluates a tiny pretraining state with each preset's evaluation batch on N fake CPU devices.

  python tests/evaluate_on_devices.py NUM_DEVICES OUTPUT.json

Run in its own process: the device count must be set before JAX starts. Writes, for each preset's
evaluation batch size, the batch size the experiment evaluated with and the examples it counted.
"""

import json
import os
import sys

num_devices, output = int(sys.argv[1]), sys.argv[2]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'

import jax  # noqa: E402  (after XLA_FLAGS)

from byol import byol_experiment  # noqa: E402
from byol.configs import byol as byol_config  # noqa: E402
from byol.configs import datasets  # noqa: E402
import support  # noqa: E402  (this folder is on the path)


def main() -> None:
  assert jax.device_count() == num_devices, jax.devices()
  default = byol_config.get_config()['evaluation_config']['batch_size']
  results = {}
  for preset_batch_size in sorted(
    {preset.get('eval_batch_size', default) for preset in datasets.PRESETS.values()}
  ):
    config = support.pretrain_config(
      os.path.dirname(output), overrides=[f'evaluation_config.batch_size={preset_batch_size}']
    )
    experiment = byol_experiment.ByolExperiment(**config)
    experiment.initialize(jax.random.key(0))
    scalars = experiment.evaluate(global_step=0)
    results[preset_batch_size] = dict(
      batch_size=experiment._evaluation_config['batch_size'], num_examples=scalars['num_examples']
    )
  with open(output, 'w') as f:
    json.dump(results, f)


if __name__ == '__main__':
  main()
