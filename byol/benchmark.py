r"""Speed of the BYOL updates on batches already on the device, beside the machine's own rates.

  python -m byol.benchmark --encoder=ResNet18 --image_size=64 --batch_size=64 --steps=5

Prints one table and writes it as JSON to `--output`:
- the machine: an fp32 matrix product and a 3x3 convolution (GFLOP/s), the ceilings to compare with;
- the small-map trap: a 3x3 convolution over 2x2 maps (forward and backward), as XLA:CPU computes
  it and as the ResNets compute it on CPU (patches times a matrix,
  `cpu_kernels.conv_as_patch_product`);
- the pretraining update: compile time, ms/step, images/s, and its FLOPs (XLA's count of the
  forward and backward passes, with plain ops) per second as a share of the convolution rate;
- the device augmentations alone, as a share of the update;
- the linear-evaluation update (frozen encoder);
- the tf.data pipeline alone, per preprocessing mode, on `--dataset` (images/s);
- the end-to-end pretraining loop on `--dataset`, as a share of the compute-only update: below
  100%, input or host work limits training.
The update rows use a random batch already on the device, so they measure the compute alone.
`--compute_dtype=bfloat16` runs the networks in bfloat16 (parameters stay float32), for
accelerators; on CPU it is slower than float32. `--cpu_kernels=off` times the updates without the
CPU-only routes of `byol.utils.cpu_kernels` (`auto`, the default: on for the CPU backend only).
Where the routes are on, the pretraining update is also timed without them ('plain ops': what the
original computes), in the same run, and the update row gives the ratio of the two.
"""

import functools
import importlib
import json
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from byol import byol_experiment
from byol import eval_experiment
from byol.configs import byol as byol_config
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol.utils import augmentations
from byol.utils import console
from byol.utils import cpu_kernels
from byol.utils import helpers
from byol.utils import input_spec
from byol.utils import networks
from byol.utils import precision

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The benchmark's flags, defined when it runs as a program only: several share their names
  with `byol.main_loop`'s (with other defaults), and both modules are imported by the tests."""
  flags.DEFINE_enum('encoder', 'ResNet18', sorted(networks.ENCODERS), 'Encoder to benchmark.')
  flags.DEFINE_integer('image_size', 64, 'Side of the input images.', lower_bound=8)
  flags.DEFINE_integer('batch_size', 64, 'Total batch size.', lower_bound=1)
  flags.DEFINE_integer('steps', 5, 'Timed steps (after one compile step).', lower_bound=1)
  flags.DEFINE_string(
    'dataset',
    'synthetic',
    'Images of the input rows: synthetic (embedded), '
    'folder:PATH, imagenette, or any dataset of --dataset in byol.main_loop.',
  )
  flags.DEFINE_string(
    'data_dir',
    None,
    'TFDS data folder of --dataset (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).',
  )
  flags.DEFINE_enum(
    'compute_dtype',
    'float32',
    list(precision.COMPUTE_DTYPES),
    'Dtype the networks compute in (parameters stay float32).',
  )
  flags.DEFINE_enum(
    'cpu_kernels',
    'auto',
    list(cpu_kernels.SWITCH_VALUES),
    'Take the CPU-only routes (byol.utils.cpu_kernels): on, off, or auto (on for the '
    'CPU backend only).',
  )
  flags.DEFINE_string('output', None, 'Where to write the figures as JSON.')


Row = dict[str, Any]


def _timed(run: Callable[[int], Any], steps: int) -> tuple[float, float]:
  """(seconds of the first call, which compiles; median seconds of the next `steps` calls)."""
  start = time.perf_counter()
  jax.block_until_ready(run(0))
  first = time.perf_counter() - start
  times = []
  for step in range(1, steps + 1):
    start = time.perf_counter()
    jax.block_until_ready(run(step))
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def _flops(jitted: Any, *args: Any) -> float:
  """XLA's count of the floating-point operations of one call (forward and backward passes)."""
  cost = jitted.lower(*args).cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def _xla_convolution(images: jax.Array, kernel: jax.Array) -> jax.Array:
  """XLA's own SAME convolution, stride 1: [B, H, W, C] x [kh, kw, C, O] -> [B, H, W, O]."""
  return jax.lax.conv_general_dilated(
    images, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def machine_rates(steps: int) -> list[Row]:
  """The machine's fp32 matrix-product and 3x3-convolution rates (GFLOP/s)."""
  rng = np.random.default_rng(0)
  size = 2048
  a, b = (jnp.asarray(rng.normal(size=(size, size)), jnp.float32) for _ in range(2))
  matmul = jax.jit(jnp.dot)
  _, matmul_s = _timed(lambda _: matmul(a, b), steps)
  images = jnp.asarray(rng.normal(size=(16, 56, 56, 64)), jnp.float32)  # [B, H, W, C]
  kernel = jnp.asarray(rng.normal(size=(3, 3, 64, 64)), jnp.float32)  # [kh, kw, C, O]
  conv = jax.jit(_xla_convolution)
  _, conv_s = _timed(lambda _: conv(images, kernel), steps)
  return [
    dict(
      what=f'matrix product {size}^3 fp32',
      ms=1e3 * matmul_s,
      gflop_per_s=2 * size**3 / matmul_s / 1e9,
    ),
    dict(
      what='3x3 convolution, 64 channels, 56x56, batch 16',
      ms=1e3 * conv_s,
      gflop_per_s=_flops(conv, images, kernel) / conv_s / 1e9,
    ),
  ]


def small_map_convolution(batch_size: int, steps: int) -> list[Row]:
  """A 3x3 convolution over 2x2 maps, 512 -> 512 channels, forward and backward, both ways."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch_size, 2, 2, 512)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 512, 512)), jnp.float32) / 48.0

  def forward_backward(conv: Callable[..., jax.Array]) -> Callable[..., Any]:
    return jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))

  rows = []
  for name, conv in (
    ('XLA convolution', _xla_convolution),
    ('patch product (ours)', lambda x, w: cpu_kernels.conv_as_patch_product(x, w, (1, 1), 'SAME')),
  ):
    step = forward_backward(conv)
    _, seconds = _timed(lambda _: step(images, kernel), steps)
    rows.append(
      dict(
        what=f'3x3 conv on 2x2 maps, 512 channels, batch {batch_size}, fwd+bwd: {name}',
        ms=1e3 * seconds,
      )
    )
  return rows


def _network_overrides(
  encoder: str, image_size: int, compute_dtype: str, cpu_kernels_setting: str
) -> list[str]:
  """The config entries (as `--override`) of the network a benchmark row times."""
  return [
    f'network_config.encoder_class={encoder}',
    f'network_config.compute_dtype={compute_dtype}',
    f'network_config.cpu_kernels={cpu_kernels_setting}',
    f'dataset_config.image_size={image_size}',
  ]


def random_batch(
  preprocess_mode: input_spec.PreprocessMode,
  *,
  batch_size: int,
  image_size: int,
  num_classes: int,
  sharding: jax.sharding.NamedSharding,
  seed: int = 0,
) -> dict[str, jax.Array]:
  """A training batch of uniform noise images on the devices, as the input would deliver it."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(2, batch_size, image_size, image_size, 3)).astype(np.float32)
  batch = dict(labels=rng.integers(0, num_classes, batch_size).astype(np.int32))
  if preprocess_mode is input_spec.PreprocessMode.PRETRAIN:
    batch.update(view1=images[0], view2=images[1])
  else:
    batch.update(images=images[0])
  return helpers.to_global_batch(batch, sharding)


def pretraining(
  encoder: str,
  dataset: datasets.Dataset,
  image_size: int,
  batch_size: int,
  compute_dtype: str = 'float32',
  cpu_kernels_setting: str = 'auto',
) -> byol_experiment.ByolExperiment:
  """A pretraining experiment on `dataset`, initialised from a random batch (no input read).

  `cpu_kernels_setting` is the config's `network_config.cpu_kernels` ('auto', 'on' or 'off').
  """
  config = byol_config.get_config(
    100,
    batch_size,
    dataset=dataset,
    overrides=_network_overrides(encoder, image_size, compute_dtype, cpu_kernels_setting),
  )
  experiment = byol_experiment.ByolExperiment(**config)
  first_batch = random_batch(
    input_spec.PreprocessMode.PRETRAIN,
    batch_size=batch_size,
    image_size=image_size,
    num_classes=dataset.num_classes,
    sharding=experiment.batch_sharding,
  )
  experiment.initialize(jax.random.key(0), first_batch)
  return experiment


def pretrain_update(
  experiment: byol_experiment.ByolExperiment,
  description: str,
  *,
  image_size: int,
  batch_size: int,
  num_classes: int,
  steps: int,
) -> list[Row]:
  """The jitted pretraining update on a random batch, and the device augmentations alone."""
  inputs = random_batch(
    input_spec.PreprocessMode.PRETRAIN,
    batch_size=batch_size,
    image_size=image_size,
    num_classes=num_classes,
    sharding=experiment.batch_sharding,
    seed=1,
  )
  flops = _flops(experiment.update, experiment.state, inputs, jax.random.key(1), np.int32(0))
  # A copy: the update donates its state, and the experiment's own is trained on afterwards.
  state = jax.tree.map(jnp.copy, experiment.state)

  def update(step: int) -> Any:
    nonlocal state
    state, logs = experiment.update(state, inputs, jax.random.key(1), np.int32(step))
    return logs

  compile_s, update_s = _timed(update, steps)
  augment = jax.jit(
    functools.partial(augmentations.postprocess, use_cpu_kernels=experiment.use_cpu_kernels)
  )
  _, augment_s = _timed(lambda step: augment(inputs, jax.random.key(step)), steps)
  return [
    dict(
      what=f'pretrain update, {description}',
      compile_and_first_step_s=compile_s,
      ms=1e3 * update_s,
      images_per_s=batch_size / update_s,
      gflop_per_step=flops / 1e9,
      gflop_per_s=flops / update_s / 1e9,
    ),
    dict(
      what=f'device augmentations of both views, {description}',
      ms=1e3 * augment_s,
      share_of_update=augment_s / update_s,
    ),
  ]


def linear_eval_update(
  encoder: str,
  dataset: datasets.Dataset,
  image_size: int,
  batch_size: int,
  steps: int,
  compute_dtype: str = 'float32',
  cpu_kernels_setting: str = 'auto',
) -> list[Row]:
  """The jitted linear-evaluation update on a frozen (random) encoder, for `dataset`'s classes
  (`cpu_kernels_setting` as in `pretraining`)."""
  config = eval_config.get_config(
    None,
    batch_size,
    dataset=dataset,
    overrides=[
      'allow_train_from_scratch=true',
      *_network_overrides(encoder, image_size, compute_dtype, cpu_kernels_setting),
    ],
  )
  experiment = eval_experiment.EvalExperiment(**config)
  inputs = random_batch(
    input_spec.PreprocessMode.LINEAR_TRAIN,
    batch_size=batch_size,
    image_size=image_size,
    num_classes=dataset.num_classes,
    sharding=experiment.batch_sharding,
  )
  experiment.initialize(jax.random.key(0), inputs)
  state = experiment.state

  def update(step: int) -> Any:
    nonlocal state
    state, logs = experiment.update(state, inputs, np.int32(step))
    return logs

  compile_s, update_s = _timed(update, steps)
  return [
    dict(
      what=f'linear-eval update (frozen), {encoder} {image_size}px batch {batch_size}'
      f'{_dtype_suffix(compute_dtype)}',
      compile_and_first_step_s=compile_s,
      ms=1e3 * update_s,
      images_per_s=batch_size / update_s,
    )
  ]


def input_pipeline(
  dataset_name: str, image_size: int, batch_size: int, steps: int, data_dir: str | None = None
) -> list[Row]:
  """Images/s of the tf.data pipeline alone (decode, crops, batching), per preprocessing mode."""
  from byol.utils import dataset  # Imported here: the compute rows run without TensorFlow.

  rows = []
  for mode in input_spec.PreprocessMode:
    split = (
      input_spec.Split.TEST if mode is input_spec.PreprocessMode.EVAL else input_spec.Split.TRAIN
    )
    batches = dataset.load(
      split,
      preprocess_mode=mode,
      batch_dims=[batch_size],
      image_size=image_size,
      dataset_name=dataset_name,
      data_dir=data_dir,
      seed=0,
    )
    next(batches)  # Starts the pipeline's threads.
    start, images = time.perf_counter(), 0
    # Enough batches that the buffers filled meanwhile do not count for much.
    for _ in range(max(steps, 30)):
      try:
        images += len(next(batches)['labels'])
      except StopIteration:  # A small test split.
        break
    rows.append(
      dict(
        what=f'tf.data {mode.name.lower()} batches, {dataset_name} {image_size}px '
        f'batch {batch_size}',
        images_per_s=images / (time.perf_counter() - start),
      )
    )
  return rows


def end_to_end(
  experiment: byol_experiment.ByolExperiment, description: str, *, batch_size: int, steps: int
) -> list[Row]:
  """Images/s of pretraining steps that read the experiment's dataset through the pipeline."""
  start = time.perf_counter()
  jax.block_until_ready(experiment.step(global_step=0, rng=jax.random.key(0)))
  first_s = time.perf_counter() - start
  # As in the train loop: no host sync between steps, so input and compute overlap.
  start = time.perf_counter()
  for step in range(1, steps + 1):
    logs = experiment.step(global_step=step, rng=jax.random.key(step))
  jax.block_until_ready(logs)
  step_s = (time.perf_counter() - start) / steps
  return [
    dict(
      what=f'pretraining loop end to end, {description}',
      first_step_s=first_s,
      ms=1e3 * step_s,
      images_per_s=batch_size / step_s,
    )
  ]


def _dtype_suffix(compute_dtype: str) -> str:
  """' bfloat16' for the rows of a bfloat16 run; float32, the default, goes unsaid."""
  return '' if compute_dtype == 'float32' else f' {compute_dtype}'


def _format(row: Row) -> str:
  figures = []
  for key, unit in (('ms', 'ms'), ('images_per_s', 'images/s'), ('gflop_per_s', 'GFLOP/s')):
    if key in row:
      figures.append(f'{row[key]:.1f} {unit}')
  if 'conv_share' in row:
    figures.append(f'{100 * row["conv_share"]:.0f}% of the convolution rate')
  if 'speedup_over_plain_ops' in row:
    figures.append(f'{row["speedup_over_plain_ops"]:.2f}x the plain ops')
  if 'share_of_compute' in row:
    figures.append(f'{100 * row["share_of_compute"]:.0f}% of the compute-only rate')
  if 'share_of_update' in row:
    figures.append(f'{100 * row["share_of_update"]:.1f}% of the update')
  if 'compile_and_first_step_s' in row:
    figures.append(f'compile+first step {row["compile_and_first_step_s"]:.1f} s')
  if 'first_step_s' in row:
    figures.append(f'first step {row["first_step_s"]:.1f} s')
  return f'{row["what"]:<75} | ' + ' | '.join(figures)


def _input_unavailable() -> str | None:
  """None where the input pipeline can run, else why not (TensorFlow or TFDS not installed)."""
  try:
    importlib.import_module('byol.utils.tensorflow_quiet')
  except ImportError as error:
    return f'{error.name} is not installed'
  return None


def main(argv: list[str]) -> None:
  del argv
  unavailable = _input_unavailable()
  console.use_clean_lines()  # After TensorFlow's import: its notices are shown at -v 1.
  # Without the input pipeline no dataset can be read: the compute rows take ImageNet's facts.
  dataset = datasets.IMAGENET if unavailable else datasets.describe(FLAGS.dataset, FLAGS.data_dir)
  rows = machine_rates(FLAGS.steps)
  rows += small_map_convolution(FLAGS.batch_size, FLAGS.steps)
  # One experiment for the compute-only and the end-to-end rows: the update compiles once.
  experiment = pretraining(
    FLAGS.encoder,
    dataset,
    FLAGS.image_size,
    FLAGS.batch_size,
    FLAGS.compute_dtype,
    FLAGS.cpu_kernels,
  )
  description = (
    f'{FLAGS.encoder} {FLAGS.image_size}px batch {FLAGS.batch_size}'
    f'{_dtype_suffix(FLAGS.compute_dtype)}'
  )
  rows += pretrain_update(
    experiment,
    description,
    image_size=FLAGS.image_size,
    batch_size=FLAGS.batch_size,
    num_classes=dataset.num_classes,
    steps=FLAGS.steps,
  )
  rows += linear_eval_update(
    FLAGS.encoder,
    dataset,
    FLAGS.image_size,
    FLAGS.batch_size,
    FLAGS.steps,
    FLAGS.compute_dtype,
    FLAGS.cpu_kernels,
  )
  conv_rate = rows[1]['gflop_per_s']
  compute = next(row for row in rows if row['what'].startswith('pretrain update'))
  if experiment.use_cpu_kernels:
    # The same update as the original computes it (plain Haiku and XLA ops), in this process, so
    # that the ratio holds on a machine whose speed varies between sessions.
    plain = pretrain_update(
      pretraining(
        FLAGS.encoder, dataset, FLAGS.image_size, FLAGS.batch_size, FLAGS.compute_dtype, 'off'
      ),
      f'{description}, plain ops',
      image_size=FLAGS.image_size,
      batch_size=FLAGS.batch_size,
      num_classes=dataset.num_classes,
      steps=FLAGS.steps,
    )
    rows += plain
    compute['speedup_over_plain_ops'] = plain[0]['ms'] / compute['ms']
    # The model's arithmetic is the plain ops' count: XLA counts the routes' patch extraction
    # (a convolution with a 0/1 kernel) as FLOPs too.
    compute['gflop_per_step'] = plain[0]['gflop_per_step']
    compute['gflop_per_s'] = compute['gflop_per_step'] / compute['ms'] * 1e3
    plain[0]['conv_share'] = plain[0]['gflop_per_s'] / conv_rate
  compute['conv_share'] = compute['gflop_per_s'] / conv_rate
  if unavailable:
    print(f'Input rows skipped: {unavailable} (the compute rows need only JAX).')
  else:
    rows += input_pipeline(
      FLAGS.dataset, FLAGS.image_size, FLAGS.batch_size, FLAGS.steps, FLAGS.data_dir
    )
    rows += end_to_end(
      experiment,
      f'{description}, on {FLAGS.dataset}',
      batch_size=FLAGS.batch_size,
      steps=FLAGS.steps,
    )
    rows[-1]['share_of_compute'] = rows[-1]['images_per_s'] / compute['images_per_s']
  print(
    f'{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}, '
    f'CPU-only routes {"on" if experiment.use_cpu_kernels else "off"}'
  )
  for row in rows:
    print(_format(row))
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(
        dict(
          devices=jax.device_count(),
          platform=jax.devices()[0].platform,
          jax_version=jax.__version__,
          cpu_kernels=experiment.use_cpu_kernels,
          input_rows_skipped=unavailable,
          rows=rows,
        ),
        f,
        indent=2,
      )


if __name__ == '__main__':
  define_flags()
  app.run(main)
