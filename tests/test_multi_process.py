"""Several processes on 127.0.0.1 (JAX's CPU collectives) train and evaluate as one run.

Two processes of two devices each must train exactly as one process of four devices (each device
reads its own shard of the data, so the device count must be the same): the same global batches,
replicated parameters that agree between the processes, one writer of checkpoints and logs, and an
evaluation that counts every test example once.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np

import support  # This folder is on the path.

ROOT = pathlib.Path(__file__).resolve().parent.parent
SYNTHETIC_TEST_SIZE = 1000
RUN = [
  '--dataset=synthetic',
  '--encoder=TinyResNet',
  '--override=network_config.encoder_config.width_multiplier=1',  # The preset's is 4.
  '--batch_size=16',
  '--eval_batch_size=25',  # Rounded up to 28, a multiple of the 4 devices of both processes.
  '--max_steps=3',
  '--log_tensors_interval=0',
  '--eval_poll_interval=0.2',
  # A kNN bank of the first 20 training images of each class: both processes must stop reading
  # the training split at the same global batch (a partial bank, as ImageNet's).
  '--override=evaluation_config.knn.bank_per_class=20',
  # Small heads: every process writes each device's copy of the state for the test to compare.
  '--override=network_config.projector_hidden_size=32',
  '--override=network_config.projector_output_size=16',
  '--override=network_config.predictor_hidden_size=32',
]


def start_run(num_processes, devices_per_process, *flags, state_folder=None, then_evaluate=False):
  """The processes of one run of `main_loop_keeping_state.py`, started side by side."""
  port = support.free_port()
  processes = []
  for process_id in range(num_processes):
    distributed = (
      [
        f'--coordinator_address=127.0.0.1:{port}',
        f'--num_processes={num_processes}',
        f'--process_id={process_id}',
      ]
      if num_processes > 1
      else []
    )
    processes.append(
      subprocess.Popen(
        [sys.executable, str(ROOT / 'tests' / 'main_loop_keeping_state.py'), *flags, *distributed],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=support.environment(
          devices=devices_per_process,
          BYOL_STATE_FOLDER=str(state_folder or ROOT),
          BYOL_THEN_EVALUATE='1' if then_evaluate else '',
        ),
      )
    )
  return processes


def load_copies(path):
  """{array path: [every device's copy]} of a state written by `main_loop_keeping_state.py`."""
  copies = {}
  with np.load(path) as arrays:
    for key in sorted(arrays.files):
      copies.setdefault(key.rsplit('@', 1)[0], []).append(arrays[key])
  return copies


def test_two_processes_of_two_devices_train_and_evaluate_as_one_process_of_four(tmp_path):
  roots = {layout: tmp_path / layout for layout in ('2x2', '1x4')}
  for root in roots.values():
    root.mkdir()
  flags = {layout: [f'--checkpoint_root={root}', *RUN] for layout, root in roots.items()}
  # The two processes train, then evaluate the final checkpoint together.
  training, single = support.finish_runs(
    start_run(
      2, 2, '--worker_mode=train', *flags['2x2'], state_folder=roots['2x2'], then_evaluate=True
    ),
    start_run(1, 4, '--worker_mode=train', *flags['1x4'], state_folder=roots['1x4']),
  )
  for code, output in training + single:
    assert code == 0, output

  # Every device of both processes holds the same state, bit for bit...
  states = [load_copies(roots['2x2'] / f'state_{index}.npz') for index in range(2)]
  single = load_copies(roots['1x4'] / 'state_0.npz')
  assert states[0].keys() == states[1].keys() == single.keys()
  assert any('var_ema' in key for key in single)
  largest = 0.0
  for key, copies in single.items():
    two_process_copies = states[0][key] + states[1][key]
    assert len(two_process_copies) == len(copies) == 4, key
    for copy in two_process_copies[1:]:
      np.testing.assert_array_equal(copy, two_process_copies[0], err_msg=key)
    # ... and, close to it, the state of one process of four devices. Not to float tolerance: the
    # collectives sum in another order, and a ReLU or max-pool near-tie that this flips after the
    # first step sends some gradients elsewhere (measured once, with 4096-wide heads: 3 of the 1M
    # momentum entries of a predictor layer off by 1e-4, one BatchNorm's by 1e-3 in 0.1). Another
    # batch or a missing reduction would change every array by about its own size.
    difference = float(np.linalg.norm(two_process_copies[0] - copies[0]))
    size = float(np.linalg.norm(copies[0]))
    # Arrays that are float noise (biases before a BatchNorm) get an absolute allowance.
    assert difference <= 0.05 * size + 1e-5 * np.sqrt(copies[0].size), (key, difference, size)
    if size > 1e-3:
      largest = max(largest, difference / size)
  print(f'largest relative difference between 2 processes x 2 devices and 1 x 4: {largest:.3g}')
  # Every step trained on the same batches: the logged scalars agree closely.
  logs = {
    layout: [json.loads(line) for line in open(root / 'pretrain_train.jsonl')]
    for layout, root in roots.items()
  }
  for step_2x2, step_1x4 in zip(logs['2x2'], logs['1x4'], strict=True):
    for name in ('loss', 'repr_loss', 'classif_loss'):
      np.testing.assert_allclose(step_2x2[name], step_1x4[name], rtol=1e-4, err_msg=name)

  # Process 0 alone wrote the checkpoint and the logs; the other process only trained.
  (_, output0), (_, output1) = training
  assert 'Saved step 3' in output0 and 'Saved step' not in output1
  assert [json.loads(line)['step'] for line in open(roots['2x2'] / 'pretrain_train.jsonl')] == [
    1,
    2,
    3,
  ]
  assert sorted(path.name for path in roots['2x2'].iterdir()) == [
    'pretrain.config.json',
    'pretrain.pkl',
    'pretrain.pkl.input',
    'pretrain_eval.jsonl',
    'pretrain_train.jsonl',
    'state_0.npz',
    'state_1.npz',
    'tensorboard',
  ]
  # Each process saved its own input's position for the final checkpoint (after 4 batches).
  assert sorted(path.name for path in (roots['2x2'] / 'pretrain.pkl.input').iterdir()) == [
    'process_0_of_2',
    'process_1_of_2',
  ]
  for process in range(2):
    folder = roots['2x2'] / 'pretrain.pkl.input' / f'process_{process}_of_2'
    assert [path.name for path in folder.iterdir()] == ['batches_4']
  # The two processes evaluated the final step once, over every test example once (the 1000 test
  # images in 36 batches of 28, the last one padded).
  for _, output in training:
    assert 'Evaluating in batches of 28, the evaluation batch size 25 rounded up' in output
  eval_log = [json.loads(line) for line in open(roots['2x2'] / 'pretrain_eval.jsonl')]
  assert [entry['step'] for entry in eval_log] == [3]
  assert eval_log[0]['num_examples'] == SYNTHETIC_TEST_SIZE
  assert 0.0 <= eval_log[0]['knn_top1_accuracy'] <= 1.0
  for _, output in training:
    assert 'kNN bank of 200 training images (20 to 20 per class)' in output


def test_a_batch_that_does_not_split_over_the_devices_of_all_processes_is_a_clear_error(tmp_path):
  (two,) = support.finish_runs(
    start_run(2, 2, '--worker_mode=train', f'--checkpoint_root={tmp_path}', *RUN, '--batch_size=6')
  )
  for code, output in two:
    support.assert_one_clear_error(
      code, output, 'batch_size=6', 'multiple of the number of devices (4 over 2 process(es))'
    )
