"""What process 0 reads, every process gets: two processes on 127.0.0.1, one file between them."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np

from byol import byol_experiment
from byol.utils import checkpointing
from byol.utils import distributed
import support  # This folder is on the path.

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_process_gets_the_checkpoint_of_process_0_without_a_shared_folder(tmp_path):
  folders = [tmp_path / 'host0', tmp_path / 'host1']
  for folder in folders:
    folder.mkdir()
  state = byol_experiment._ByolExperimentState({'w': np.arange(3.0)}, {}, {}, {}, ())
  checkpointing.Checkpointer(str(folders[0]), 'pretrain.pkl').save(state, 7, jax.random.key(4))
  port = support.free_port()
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        str(ROOT / 'tests' / 'read_on_process_0.py'),
        str(port),
        str(index),
        str(tmp_path / f'read_{index}.json'),
      ],
      cwd=folder,
      env=support.environment(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for index, folder in enumerate(folders)
  ]
  for code, output in support.finish_runs(processes)[0]:
    assert code == 0, output

  expected_rng = np.asarray(jax.random.key_data(jax.random.key(4))).tolist()
  for index in range(2):
    read = json.load(open(tmp_path / f'read_{index}.json'))
    assert read == dict(
      step=7, weights=[0.0, 1.0, 2.0], rng=expected_rng, missing=None, big=[2**40, -3]
    )


def test_one_process_reads_its_own_files(tmp_path):
  path = tmp_path / 'file.bin'
  path.write_bytes(b'\x00\x01bytes')
  assert distributed.read_on_process_0(str(path)) == b'\x00\x01bytes'
  assert distributed.read_on_process_0(str(tmp_path / 'absent')) is None
  value = np.array([[2**40, 1]], np.int64)
  np.testing.assert_array_equal(distributed.from_process_0(value), value)
