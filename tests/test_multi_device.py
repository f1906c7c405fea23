"""Data parallelism: one update is the same on one device and on four; evaluation on any count."""

import json
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_side_by_side(
  script: str, device_counts: tuple[int, ...], folder: pathlib.Path, suffix: str
) -> list[pathlib.Path]:
  """Runs `tests/<script> COUNT OUTPUT` for each device count at once; returns the outputs."""
  outputs = [folder / f'{pathlib.Path(script).stem}_{count}{suffix}' for count in device_counts]
  processes = [
    subprocess.Popen(
      [sys.executable, str(ROOT / 'tests' / script), str(count), str(output)], cwd=ROOT
    )
    for count, output in zip(device_counts, outputs)
  ]
  try:
    assert [process.wait(timeout=300) for process in processes] == [0] * len(processes)
  finally:
    for process in processes:
      process.kill()
  return outputs


def one_update_each(device_counts: tuple[int, ...], folder: pathlib.Path) -> list[dict]:
  """The state after `one_update.py` on each device count, the processes running side by side."""
  results = []
  for output in run_side_by_side('one_update.py', device_counts, folder, '.npz'):
    with np.load(output) as arrays:
      results.append(dict(arrays))
  return results


def test_update_on_four_devices_equals_the_update_on_one(tmp_path):
  one, four = one_update_each((1, 4), tmp_path)
  assert one.keys() == four.keys()
  # Parameters, BatchNorm statistics over the global batch, and the logged scalars.
  assert any('online_state' in key and 'var_ema' in key for key in one)
  for key in one:
    np.testing.assert_allclose(four[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  largest = max(float(np.max(np.abs(four[key] - one[key]))) for key in one)
  print(f'largest difference between 1 and 4 devices: {largest:.3g}')


def test_every_presets_evaluation_batch_is_rounded_up_to_the_devices_and_counts_each_example(
  tmp_path,
):
  # Imagenette's evaluation batch (25) divides neither 2 nor 4 devices: it is rounded up to 26 and
  # 28, and the padding is masked out, so the 1000 synthetic test images are each counted once.
  for count, output in zip(
    (2, 4), run_side_by_side('evaluate_on_devices.py', (2, 4), tmp_path, '.json')
  ):
    results = json.loads(output.read_text())
    assert '25' in results
    for preset_batch_size, result in results.items():
      assert result['batch_size'] % count == 0
      assert int(preset_batch_size) <= result['batch_size'] < int(preset_batch_size) + count
      assert result['num_examples'] == 1000, (count, preset_batch_size, result)
