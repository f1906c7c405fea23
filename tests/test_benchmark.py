"""The benchmark's rows: what each measures, and XLA's FLOP count against the formula."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from byol import benchmark
from byol.configs import datasets
import support  # This folder is on the path.


def test_flop_count_of_a_matrix_product_is_2nkm():
  a = jnp.ones((8, 16), jnp.float32)
  b = jnp.ones((16, 4), jnp.float32)
  assert benchmark._flops(jax.jit(jnp.dot), a, b) == 2 * 8 * 16 * 4


def test_rows_of_a_tiny_run_hold_positive_figures():
  # The update rows alone are checked without TensorFlow below; here, with the input rows.
  synthetic = datasets.describe('synthetic')
  experiment = benchmark.pretraining('TinyResNet', synthetic, 32, 8)
  rows = (
    benchmark.pretrain_update(
      experiment, 'TinyResNet 32px batch 8', image_size=32, batch_size=8, num_classes=10, steps=1
    )
    + benchmark.input_pipeline('synthetic', 32, 8, steps=1)
    + benchmark.end_to_end(
      experiment, 'TinyResNet 32px batch 8, on synthetic', batch_size=8, steps=1
    )
  )
  assert [row['what'].split(',')[0] for row in rows] == [
    'pretrain update',
    'device augmentations of both views',
    'tf.data pretrain batches',
    'tf.data linear_train batches',
    'tf.data eval batches',
    'pretraining loop end to end',
  ]
  for row in rows:
    assert all(value > 0 for key, value in row.items() if key != 'what'), row
    assert np.isfinite(row.get('ms', row.get('images_per_s')))
  pretrain, augmentations = rows[0], rows[1]
  np.testing.assert_allclose(pretrain['images_per_s'], 8 / (pretrain['ms'] / 1e3))
  assert 0 < augmentations['share_of_update']
  assert benchmark._format(pretrain).startswith('pretrain update, TinyResNet 32px batch 8')


# Runs the benchmark with TensorFlow and TFDS unimportable, as on a GPU host with JAX alone.
_WITHOUT_TENSORFLOW = """
import sys
for name in ('tensorflow', 'tensorflow_datasets'):
  sys.modules[name] = None  # `import tensorflow` now raises ImportError.
from absl import app
from byol import benchmark
benchmark.define_flags()
try:
  app.run(benchmark.main, argv=sys.argv)
finally:
  loaded = [n for n, module in sys.modules.items() if n.startswith('tensorflow') and module]
  print('tensorflow modules loaded:', loaded)
"""


def test_the_update_rows_run_without_tensorflow(tmp_path):
  output = tmp_path / 'rows.json'
  result = subprocess.run(
    [sys.executable, '-c', _WITHOUT_TENSORFLOW, '--encoder=TinyResNet', '--image_size=32']
    + ['--batch_size=8', '--steps=1', f'--output={output}'],
    env=support.environment(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'tensorflow modules loaded: []' in result.stdout
  assert 'Input rows skipped: tensorflow is not installed' in result.stdout
  figures = json.loads(output.read_text())
  assert figures['input_rows_skipped'] == 'tensorflow is not installed'
  assert [row['what'].split(',')[0] for row in figures['rows']] == [
    'matrix product 2048^3 fp32',
    '3x3 convolution',
    '3x3 conv on 2x2 maps',
    '3x3 conv on 2x2 maps',
    'pretrain update',
    'device augmentations of both views',
    'linear-eval update (frozen)',
    'pretrain update',  # Without the CPU-only routes (plain ops), for the ratio.
    'device augmentations of both views',
  ]
  for row in figures['rows']:
    assert all(value > 0 for key, value in row.items() if key != 'what'), row
  routes, plain = figures['rows'][4], figures['rows'][7]
  assert figures['cpu_kernels'] and 'plain ops' in plain['what']
  assert routes['gflop_per_s'] > 0 and 0 < routes['conv_share']
  assert routes['gflop_per_step'] == plain['gflop_per_step']  # The model's arithmetic, once.
  np.testing.assert_allclose(routes['speedup_over_plain_ops'], plain['ms'] / routes['ms'])
  assert 'x the plain ops' in result.stdout
