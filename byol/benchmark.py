r"""Speed of the BYOL pretraining update on batches already on the device.

  python -m byol.benchmark --encoder=ResNet18 --image_size=64 --batch_size=64 --steps=5

Prints compile time, time per step and images per second, and writes them as JSON to `--output`.
The batch is random and fixed, so only the compute (augmentations included) is measured.
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from byol import byol_experiment
from byol.configs import byol as byol_config
from byol.utils import helpers
from byol.utils import networks

FLAGS = flags.FLAGS
flags.DEFINE_enum('encoder', 'ResNet18', sorted(networks.ENCODERS), 'Encoder to benchmark.')
flags.DEFINE_integer('image_size', 64, 'Side of the input images.', lower_bound=8)
flags.DEFINE_integer('batch_size', 64, 'Total batch size.', lower_bound=1)
flags.DEFINE_integer('steps', 5, 'Timed steps (after one compile step).', lower_bound=1)
flags.DEFINE_string('output', None, 'Where to write the figures as JSON.')


def benchmark_pretrain_update(
    encoder: str, image_size: int, batch_size: int, steps: int) -> dict[str, float]:
  """Compile time, median seconds per step and images/s of the jitted pretraining update."""
  config = byol_config.get_config(100, batch_size)
  config['network_config']['encoder_class'] = encoder
  # `initialize` reads one batch: the embedded set needs no download (the timed batch is random).
  config['dataset_config'].update(name='synthetic', image_size=image_size)
  experiment = byol_experiment.ByolExperiment(**config)
  experiment.initialize(jax.random.key(0))
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, batch_size, image_size, image_size, 3)).astype(np.float32)
  inputs = helpers.to_global_batch(
      dict(view1=images[0], view2=images[1],
           labels=rng.integers(0, config['num_classes'], batch_size).astype(np.int32)),
      experiment.batch_sharding)
  state = experiment.state

  start = time.perf_counter()
  state, logs = experiment.update(state, inputs, jax.random.key(1), np.int32(0))
  jax.block_until_ready(logs)
  compile_seconds = time.perf_counter() - start

  times = []
  for step in range(1, steps + 1):
    start = time.perf_counter()
    state, logs = experiment.update(state, inputs, jax.random.key(1), np.int32(step))
    jax.block_until_ready(logs)
    times.append(time.perf_counter() - start)
  seconds_per_step = float(np.median(times))
  return dict(
      encoder=encoder, image_size=image_size, batch_size=batch_size,
      devices=jax.device_count(), compile_and_first_step_s=compile_seconds,
      ms_per_step=1e3 * seconds_per_step, images_per_s=batch_size / seconds_per_step)


def main(argv: list[str]) -> None:
  del argv
  result = benchmark_pretrain_update(
      FLAGS.encoder, FLAGS.image_size, FLAGS.batch_size, FLAGS.steps)
  print(f'pretrain update | {result["encoder"]} {result["image_size"]}px batch '
        f'{result["batch_size"]} on {result["devices"]} {jax.devices()[0].platform} device(s) | '
        f'compile+first step {result["compile_and_first_step_s"]:.1f} s | '
        f'{result["ms_per_step"]:.0f} ms/step | {result["images_per_s"]:.1f} images/s')
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
