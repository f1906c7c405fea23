"""Exact resume: a train worker killed by SIGKILL and started again ends bit-identical to a run that
was never stopped, its checkpoint whole at every instant, with an eval worker reading beside it
(pretraining on 2 devices, linear evaluation on 1).

Every run here is a process of its own (`python -m byol.main_loop` on the embedded synthetic set),
as a killed run must be; `BYOL_FAULT_INJECTION_KILLS=30 pytest tests/test_resume.py` runs the
fault-injection test at full size (30 kills; by default 3, one at each point of
`main_loop_killed_at.py`).
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from byol.utils import checkpointing
import support

# The synthetic preset's TinyResNet at its narrowest (the preset's is 4 times as wide).
_ENCODER = ['--encoder=TinyResNet', '--override=network_config.encoder_config.width_multiplier=1']
_TINY = [
  '--dataset=synthetic',
  *_ENCODER,
  '--image_size=16',
  '--batch_size=8',
  '--eval_batch_size=100',
  '--log_tensors_interval=0',
  '--save_checkpoint_interval=0',
  '--override=network_config.projector_hidden_size=32',
  '--override=network_config.projector_output_size=16',
  '--override=network_config.predictor_hidden_size=32',
  '--override=evaluation_config.knn.k=0',
]
# Without pretraining's own overrides.
_LINEAR_EVAL_TINY = [flag for flag in _TINY if '--override' not in flag or flag in _ENCODER]
_KILL_POINTS = ('checkpoint_write', 'checkpoint_rename', 'input_position')


def _start(root, *flags, devices=1, kill_at=None):
  """The train (or eval) worker of `flags` in `root`, in a process of its own."""
  extra = {} if kill_at is None else {'BYOL_KILL_AT': kill_at}
  return subprocess.Popen(
    [sys.executable, str(support.ROOT / 'tests' / 'main_loop_killed_at.py')]
    + [f'--checkpoint_root={root}', *flags],
    cwd=support.ROOT,
    env=support.environment(devices=devices, **extra),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _checkpoint(root, name='pretrain.pkl'):
  """The checkpoint in `root`: None if there is none, else it must load whole."""
  path = os.path.join(root, name)
  if not os.path.exists(path):
    return None
  return checkpointing.load_checkpoint(path)  # Raises on a partial or damaged file.


def _assert_same_run(reference_root, root, name):
  """The same final checkpoint, bit for bit, and the same scalars logged at every step."""
  expected, got = _checkpoint(reference_root, name), _checkpoint(root, name)
  assert got['step'] == expected['step']
  np.testing.assert_array_equal(got['rng'], expected['rng'])
  expected_leaves = jax.tree_util.tree_leaves_with_path(expected['experiment_state'])
  got_leaves = jax.tree.leaves(got['experiment_state'])
  assert len(got_leaves) == len(expected_leaves)
  for (path, want), have in zip(expected_leaves, got_leaves):
    np.testing.assert_array_equal(have, want, err_msg=jax.tree_util.keystr(path))
  log = name.replace('.pkl', '_train.jsonl')

  def scalars(folder):  # Per step, the last logged (a resumed run logs some steps again).
    entries = [json.loads(line) for line in open(os.path.join(folder, log))]
    return {
      e['step']: {k: v for k, v in e.items() if k not in ('time', 'images_per_second')}
      for e in entries
    }

  assert scalars(root) == scalars(reference_root)


def _kill_after_checkpoint(root, flags, step, *, devices=1, name='pretrain.pkl'):
  """Starts the train worker and kills it (SIGKILL) once a checkpoint of `step` or later exists;
  returns the step of the checkpoint it left."""
  trainer = _start(root, '--worker_mode=train', *flags, devices=devices)
  try:
    deadline = time.time() + 240
    while (checkpoint := _checkpoint(root, name)) is None or checkpoint['step'] < step:
      assert trainer.poll() is None, trainer.communicate()[0]
      assert time.time() < deadline, 'no checkpoint written in time'
      time.sleep(0.05)
  finally:
    trainer.send_signal(signal.SIGKILL)
    trainer.communicate()
  return _checkpoint(root, name)['step']


# Pretraining, on 2 devices: `test_killed_at_any_instant_the_run_ends_as_if_never_stopped`.
@pytest.mark.parametrize('mode, devices', [('linear-eval', 1)])
def test_a_killed_run_resumes_as_if_it_had_never_stopped(tmp_path, mode, devices):
  steps = 8
  tiny = _TINY if mode == 'pretrain' else _LINEAR_EVAL_TINY
  flags = [f'--experiment_mode={mode}', f'--max_steps={steps}', *tiny]
  name = f'{mode}.pkl'
  roots = {run: tmp_path / run for run in ('uninterrupted', 'killed')}
  for root in roots.values():
    root.mkdir()
    if mode == 'linear-eval':  # The same random encoder to evaluate, in both folders.
      support.write_pretrain_checkpoint(root)
  code, output = support.finish(
    _start(roots['uninterrupted'], '--worker_mode=train', *flags, devices=devices)
  )
  assert code == 0, output

  saved = _kill_after_checkpoint(roots['killed'], flags, 3, devices=devices, name=name)
  assert saved < steps
  code, output = support.finish(
    _start(roots['killed'], '--worker_mode=train', *flags, devices=devices)
  )
  assert code == 0, output
  assert f'at step {saved} of {steps}' in output
  assert 'No saved input position' not in output
  _assert_same_run(roots['uninterrupted'], roots['killed'], name)


def _kill_plan(kills: int, rng: random.Random) -> list[tuple[str, float]]:
  """(point, n) pairs: each point of `main_loop_killed_at.py` once, then points and instants
  (point 'instant': n seconds after the start) drawn at random, in a seeded order."""
  plan = [(point, rng.randint(1, 3)) for point in _KILL_POINTS]
  while len(plan) < kills:
    if rng.random() < 0.5:
      plan.append(('instant', rng.uniform(1.0, 12.0)))
    else:
      plan.append((rng.choice(_KILL_POINTS), rng.randint(1, 3)))
  rng.shuffle(plan)
  return plan[:kills]


def test_killed_at_any_instant_the_run_ends_as_if_never_stopped(tmp_path):
  kills = int(os.environ.get('BYOL_FAULT_INJECTION_KILLS', '3'))
  plan = _kill_plan(kills, random.Random(0))
  steps = 10 + 3 * kills  # Enough checkpoints for every kill, however little each run trains.
  flags = ['--experiment_mode=pretrain', f'--max_steps={steps}', *_TINY]
  reference, root = tmp_path / 'uninterrupted', tmp_path / 'killed'
  code, output = support.finish(_start(reference, '--worker_mode=train', *flags, devices=2))
  assert code == 0, output

  # An eval worker beside the train worker all along, polling as fast as it can.
  evaluator = _start(root, '--worker_mode=eval', '--eval_poll_interval=0.05', *flags, devices=2)
  survived, lost = 0, []
  try:
    for point, n in [*plan, ('none', 0)]:
      kill_at = f'{point}:{n}' if point in _KILL_POINTS else None
      trainer = _start(root, '--worker_mode=train', *flags, devices=2, kill_at=kill_at)
      if point == 'instant':
        try:
          trainer.wait(timeout=n)
        except subprocess.TimeoutExpired:
          trainer.send_signal(signal.SIGKILL)
      code, output = support.finish(trainer)
      checkpoint = _checkpoint(root)  # Absent, or whole: it loads.
      if code == 0:
        break  # The run is complete (a kill planned after its last step does not happen).
      assert code == -signal.SIGKILL, output
      trained = max([int(step) for step in re.findall(r'step (\d+)/', output)], default=0)
      lost.append(trained - (checkpoint['step'] if checkpoint else 0))
      survived += 1
    assert code == 0, output
    eval_code, eval_output = support.finish(evaluator)
  finally:
    evaluator.kill()
  assert eval_code == 0, eval_output  # It never read a partial file.
  evaluated = [json.loads(line)['step'] for line in open(root / 'pretrain_eval.jsonl')]
  assert len(evaluated) == len(set(evaluated)) and evaluated[-1] == steps  # Each step once.
  _assert_same_run(reference, root, 'pretrain.pkl')
  assert survived >= min(kills, 3)
  kinds = sorted({point for point, _ in plan[:survived]})
  print(
    f'{survived} kills survived ({", ".join(kinds)}); steps lost to one kill: at most '
    f'{max(lost, default=0)}, {sum(lost)} in all over {steps} steps.'
  )
