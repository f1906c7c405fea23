"""Data parallelism: one update is the same on one device and on four; evaluation on any count.

One device is this process's; the four are fake CPU devices of a process of their own. (Two
devices per process, and an evaluation batch rounded up over the devices of two processes, are
`test_multi_process.py`'s.)
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from byol import byol_experiment
import on_devices  # This folder is on the path.
import support

NUM_DEVICES = 4  # Against this process's one device.


@pytest.fixture(scope='module')
def output(tmp_path_factory):
  """The folder of `tests/on_devices.py 4 FOLDER`, run in a process of four devices once per
  session (the workers of `pytest -n` share it)."""

  def run_on_devices(folder):
    subprocess.run(
      [sys.executable, str(support.ROOT / 'tests' / 'on_devices.py'), str(NUM_DEVICES), folder],
      cwd=support.ROOT,
      env=support.environment(devices=NUM_DEVICES),
      timeout=400,  # Killed then.
      check=True,
    )

  return support.once_per_session(tmp_path_factory, f'devices_{NUM_DEVICES}', run_on_devices)


def test_update_on_four_devices_equals_the_update_on_one(output, tmp_path):
  assert jax.device_count() == 1
  one = support.one_update(tmp_path)
  four = dict(np.load(output / 'update.npz'))
  assert one.keys() == four.keys()
  # Parameters, BatchNorm statistics over the global batch, and the logged scalars.
  assert any('online_state' in key and 'var_ema' in key for key in one)
  for key in one:
    np.testing.assert_allclose(four[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  largest = max(float(np.max(np.abs(four[key] - one[key]))) for key in one)
  print(f'largest difference between 1 and 4 devices: {largest:.3g}')


def test_every_presets_evaluation_batch_is_rounded_up_to_the_devices_and_counts_each_example(
  output,
):
  # Imagenette's evaluation batch (25) does not divide 4 devices: it is rounded up to 28, and the
  # padding is masked out, so the 1000 synthetic test images are each counted once.
  # (On one device nothing is rounded; the end-to-end tests count every example there.)
  results = json.loads((output / 'evaluations.json').read_text())
  assert '25' in results
  for preset_batch_size, result in results.items():
    assert result['batch_size'] % NUM_DEVICES == 0
    assert int(preset_batch_size) <= result['batch_size'] < int(preset_batch_size) + NUM_DEVICES
    assert result['num_examples'] == 1000, (preset_batch_size, result)


def test_evaluation_on_four_devices_equals_the_evaluation_on_one(output):
  # The state the four devices evaluated, evaluated here on one: the classifier's accuracies and
  # loss, and the kNN monitor's accuracy over a bank of every training image, whose rows the four
  # devices gathered in another order. The devices embed batches of 7 images, not 25, which may
  # round differently in the last bit; the random initialisation's 8-d embeddings have near-ties
  # (`test_evaluation.py`), so a kNN vote may flip: one test image in 1000 did once.
  four = json.loads((output / 'evaluations.json').read_text())[str(on_devices.KNN_BATCH_SIZE)]
  experiment = byol_experiment.ByolExperiment(
    **support.pretrain_config(
      output, overrides=[f'evaluation_config.batch_size={on_devices.KNN_BATCH_SIZE}']
    )
  )
  assert experiment.load_checkpoint()[0] == 0
  one = experiment.evaluate(global_step=0)
  assert one.keys() == four.keys() - {'batch_size'}
  assert 'knn_top1_accuracy' in one
  for name, value in one.items():
    assert four[name] == pytest.approx(value, rel=1e-5, abs=0.002 if 'knn' in name else 0), name
