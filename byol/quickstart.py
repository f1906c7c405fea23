r"""A first run with no download: BYOL on the embedded synthetic images, then linear evaluation.

  python -m byol.quickstart [--checkpoint_root=/tmp/byol_quickstart]

Runs the project's own commands (`python -m byol.main_loop ...`, printed as they start) on
`--dataset=synthetic`:
  1. BYOL pretraining (train worker), to `<root>/byol/pretrain.pkl`;
  2. linear evaluation of that encoder (train worker, then eval worker on the test split);
  3. the same linear evaluation on a random encoder (`allow_train_from_scratch`), in
     `<root>/random`;
and ends with one line comparing the two linear top-1 accuracies. A run that is interrupted resumes
where it stopped when started again with the same root.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_CHECKPOINT_ROOT = flags.DEFINE_string(
  'checkpoint_root', '/tmp/byol_quickstart', 'Folder of the runs (created if needed).'
)
_PRETRAIN_STEPS = flags.DEFINE_integer(
  'pretrain_steps', 600, 'Steps of BYOL pretraining.', lower_bound=1
)
_LINEAR_EVAL_STEPS = flags.DEFINE_integer(
  'linear_eval_steps', 300, 'Steps of each linear evaluation.', lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
  'batch_size', None, "Batch size (default: the synthetic preset's).", lower_bound=1
)
_LOG_INTERVAL = flags.DEFINE_integer(
  'log_tensors_interval', 20, 'Seconds between two progress lines.', lower_bound=0
)


def _main_loop(*arguments: str) -> None:
  """Runs `python -m byol.main_loop` on the synthetic set; stops the quick start if it fails."""
  command = [
    sys.executable,
    '-m',
    'byol.main_loop',
    '--dataset=synthetic',
    f'--log_tensors_interval={_LOG_INTERVAL.value}',
    '--eval_poll_interval=1',
    *arguments,
  ]
  if _BATCH_SIZE.value is not None:
    command.append(f'--batch_size={_BATCH_SIZE.value}')
  print('$ python -m byol.main_loop ' + ' '.join(command[3:]), flush=True)
  if subprocess.run(command, check=False).returncode != 0:
    sys.exit('error: the command above failed; its output says why.')


def _linear_evaluation(root: str, *extra: str) -> float:
  """Trains and evaluates a linear classifier in `root`; returns its test top-1 accuracy."""
  flags_ = [f'--checkpoint_root={root}', f'--max_steps={_LINEAR_EVAL_STEPS.value}', *extra]
  _main_loop('--experiment_mode=linear-eval', '--worker_mode=train', *flags_)
  _main_loop('--experiment_mode=linear-eval', '--worker_mode=eval', *flags_)
  with open(os.path.join(root, 'linear-eval_eval.jsonl')) as f:
    return json.loads(f.readlines()[-1])['top1_accuracy']


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  start = time.time()
  byol_root = os.path.join(_CHECKPOINT_ROOT.value, 'byol')
  random_root = os.path.join(_CHECKPOINT_ROOT.value, 'random')
  print(
    f'[1/3] BYOL pretraining on the synthetic images, {_PRETRAIN_STEPS.value} steps.', flush=True
  )
  _main_loop(
    '--experiment_mode=pretrain',
    '--worker_mode=train',
    f'--checkpoint_root={byol_root}',
    f'--max_steps={_PRETRAIN_STEPS.value}',
  )
  print('[2/3] Linear evaluation of the BYOL encoder.', flush=True)
  byol_top1 = _linear_evaluation(byol_root)
  print('[3/3] Linear evaluation of a random encoder (the baseline).', flush=True)
  random_top1 = _linear_evaluation(random_root, '--override=allow_train_from_scratch=true')
  minutes = (time.time() - start) / 60
  print(
    f'Linear top-1 on the synthetic test split: BYOL {100 * byol_top1:.1f}% vs random encoder '
    f'{100 * random_top1:.1f}% ({minutes:.1f} min).',
    flush=True,
  )


if __name__ == '__main__':
  app.run(main)
