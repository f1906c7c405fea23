"""Data parallelism: one update of a global batch is the same on one device and on four."""

import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def one_update_each(device_counts: tuple[int, ...], folder: pathlib.Path) -> list[dict]:
  """The state after `one_update.py` on each device count, the processes running side by side."""
  outputs = [folder / f'update_{count}.npz' for count in device_counts]
  processes = [subprocess.Popen([sys.executable, str(ROOT / 'tests' / 'one_update.py'), str(count),
                                 str(output)], cwd=ROOT)
               for count, output in zip(device_counts, outputs)]
  try:
    assert [process.wait(timeout=300) for process in processes] == [0] * len(processes)
  finally:
    for process in processes:
      process.kill()
  results = []
  for output in outputs:
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
