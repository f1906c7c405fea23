r"""A first run with no download: BYOL on the embedded synthetic images, then linear evaluation.

  python -m byol.quickstart [--checkpoint_root=/tmp/byol_quickstart]

Runs, in this one process, what these commands of the project run on `--dataset=synthetic` (each
is printed as it starts, so that it can be repeated or changed by hand):
  1. BYOL pretraining (train worker), to `<root>/byol/pretrain.pkl`;
  2. linear evaluation of that encoder (train worker, then eval worker on the test split);
  3. the same linear evaluation on a random encoder (`allow_train_from_scratch`), in
     `<root>/random`;
and ends with one line comparing the two linear top-1 accuracies. A run that is interrupted resumes
where it stopped when started again with the same root.
"""

import json
import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags

from byol import plot
from byol import workers
from byol.configs import byol as byol_config
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol.utils import console

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The quick start's flags, defined when it runs as a program only: three share their names
  with `byol.main_loop`'s (with other defaults), and both modules are imported by the tests."""
  flags.DEFINE_string(
    'checkpoint_root',
    '/tmp/byol_quickstart',
    'Folder of the runs (created if needed).',
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'pretrain_steps', 600, 'Steps of BYOL pretraining.', lower_bound=1, flag_values=flag_values
  )
  flags.DEFINE_integer(
    'linear_eval_steps',
    300,
    'Steps of each linear evaluation.',
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'batch_size',
    None,
    "Batch size (default: the synthetic preset's).",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'log_tensors_interval',
    20,
    'Seconds between two progress lines.',
    lower_bound=0,
    flag_values=flag_values,
  )


def _print_command(*arguments: str) -> None:
  print('$ python -m byol.main_loop --dataset=synthetic ' + ' '.join(arguments), flush=True)


def _linear_evaluation(
  root: str,
  synthetic: datasets.Dataset,
  *,
  steps: int,
  batch_size: int | None,
  log_interval: float,
  overrides: Sequence[str] = (),
) -> float:
  """Trains and evaluates a linear classifier in `root`; returns its test top-1 accuracy."""
  config = eval_config.get_config(
    os.path.join(root, 'pretrain.pkl'),
    batch_size,
    dataset=synthetic,
    max_steps=steps,
    checkpoint_root=root,
    overrides=overrides,
  )
  arguments = [f'--checkpoint_root={root}', f'--max_steps={steps}']
  arguments += [f'--override={text}' for text in overrides]
  if batch_size is not None:
    arguments.append(f'--batch_size={batch_size}')
  _print_command('--experiment_mode=linear-eval', '--worker_mode=train', *arguments)
  workers.train_loop(config, 'linear-eval', log_interval=log_interval)
  _print_command('--experiment_mode=linear-eval', '--worker_mode=eval', *arguments)
  workers.eval_loop(config, 'linear-eval', poll_interval=1.0)
  with open(os.path.join(root, 'linear-eval_eval.jsonl')) as f:
    return json.loads(f.readlines()[-1])['top1_accuracy']


def run(
  root: str,
  *,
  pretrain_steps: int = 600,
  linear_eval_steps: int = 300,
  batch_size: int | None = None,
  log_interval: float = 20.0,
) -> str:
  """The quick start in `root`; returns its last line, BYOL's linear top-1 against a random
  encoder's (also printed)."""
  start = time.time()
  synthetic = datasets.describe('synthetic')
  byol_root = os.path.join(root, 'byol')
  random_root = os.path.join(root, 'random')
  print(f'[1/3] BYOL pretraining on the synthetic images, {pretrain_steps} steps.', flush=True)
  arguments = [f'--checkpoint_root={byol_root}', f'--max_steps={pretrain_steps}']
  if batch_size is not None:
    arguments.append(f'--batch_size={batch_size}')
  _print_command('--experiment_mode=pretrain', '--worker_mode=train', *arguments)
  config = byol_config.get_config(
    batch_size=batch_size, dataset=synthetic, max_steps=pretrain_steps, checkpoint_root=byol_root
  )
  workers.train_loop(config, 'pretrain', log_interval=log_interval)
  evaluation = dict(steps=linear_eval_steps, batch_size=batch_size, log_interval=log_interval)
  print('[2/3] Linear evaluation of the BYOL encoder.', flush=True)
  byol_top1 = _linear_evaluation(byol_root, synthetic, **evaluation)
  print('[3/3] Linear evaluation of a random encoder (the baseline).', flush=True)
  random_top1 = _linear_evaluation(
    random_root, synthetic, overrides=['allow_train_from_scratch=true'], **evaluation
  )
  print(f'Curves of the BYOL pretraining: {plot.plot(byol_root)}', flush=True)
  minutes = (time.time() - start) / 60
  line = (
    f'Linear top-1 on the synthetic test split: BYOL {100 * byol_top1:.1f}% vs random encoder '
    f'{100 * random_top1:.1f}% ({minutes:.1f} min).'
  )
  print(line, flush=True)
  return line


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  console.use_clean_lines()
  try:
    run(
      FLAGS.checkpoint_root,
      pretrain_steps=FLAGS.pretrain_steps,
      linear_eval_steps=FLAGS.linear_eval_steps,
      batch_size=FLAGS.batch_size,
      log_interval=FLAGS.log_tensors_interval,
    )
  except workers.USER_ERRORS as error:
    sys.exit(f'error: {error}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
