r"""BYOL against a random encoder, from one command: pretraining, then linear evaluation of both.

  python -m byol.quickstart [--checkpoint_root=/tmp/byol_quickstart]      # embedded images
  python -m byol.quickstart --dataset=folder:/data/cifar10_jpg --pretrain_steps=900 ...

Runs what these commands of the project run (each is printed as it starts, so that it can be
repeated or changed by hand), by default on the embedded synthetic images (no download):
  1. BYOL pretraining: the train worker in this process, to `<root>/byol/pretrain.pkl`, and an eval
     worker beside it (a second process, its lines in `<root>/byol/eval_worker.log`) that scores
     each checkpoint, the random initialisation at step 0 included: the learning curve;
  2. linear evaluation of that encoder (train worker, then eval worker on the test split);
  3. the same linear evaluation of a random encoder (`allow_train_from_scratch`), in
     `<root>/random`;
and ends with one line comparing the two encoders' kNN and linear top-1 accuracies on the test
split. A run that is interrupted resumes where it stopped when started again with the same root.
"""

from collections.abc import Mapping, Sequence
import json
import os
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags

from byol import plot
from byol import workers
from byol.configs import byol as byol_config
from byol.configs import config_file
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol.utils import console

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The quick start's flags, defined when it runs as a program only: some share their names
  with `byol.main_loop`'s (with other defaults), and both modules are imported by the tests."""
  flags.DEFINE_string(
    'checkpoint_root',
    '/tmp/byol_quickstart',
    'Folder of the runs (created if needed).',
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    'dataset',
    'synthetic',
    "As byol.main_loop's --dataset: 'synthetic' (embedded), a TFDS name or folder:PATH.",
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
    "Batch size of every stage (default: the dataset's preset).",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
    'override',
    [],
    'key.path=value of the pretraining config, as byol.main_loop takes it (repeatable); the '
    'linear evaluations rebuild the encoder and image size it sets.',
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'save_checkpoint_interval',
    60,
    'Seconds between two pretraining checkpoints, each a point of the learning curve.',
    lower_bound=0,
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    'log_tensors_interval',
    20,
    'Seconds between two progress lines.',
    lower_bound=0,
    flag_values=flag_values,
  )


class StageError(RuntimeError):
  """A stage of the quick start that did not finish (its message says where to look)."""


def _print_command(arguments: Sequence[str]) -> None:
  print('$ python -m byol.main_loop ' + ' '.join(arguments), flush=True)


def _command_line(
  dataset: datasets.Dataset,
  experiment_mode: str,
  root: str,
  *,
  steps: int,
  batch_size: int | None,
  overrides: Sequence[str],
  extra_flags: Sequence[str] = (),
) -> list[str]:
  """The flags of `byol.main_loop` for a stage, less `--worker_mode`."""
  arguments = [
    f'--dataset={dataset.name}',
    f'--experiment_mode={experiment_mode}',
    f'--checkpoint_root={root}',
    f'--max_steps={steps}',
  ]
  if batch_size is not None:
    arguments.append(f'--batch_size={batch_size}')
  return [*arguments, *extra_flags, *(f'--override={text}' for text in overrides)]


def _last_evaluation(root: str, experiment_mode: str) -> Mapping[str, Any]:
  with open(os.path.join(root, f'{experiment_mode}_eval.jsonl')) as f:
    return json.loads(f.readlines()[-1])


def _pretrain(
  root: str,
  dataset: datasets.Dataset,
  *,
  steps: int,
  batch_size: int | None,
  overrides: Sequence[str],
  save_interval: int,
  log_interval: float,
) -> None:
  """BYOL's train worker here, its eval worker in a second process; returns when both are done."""
  config = byol_config.get_config(
    batch_size=batch_size,
    dataset=dataset,
    max_steps=steps,
    checkpoint_root=root,
    # As byol.main_loop applies --save_checkpoint_interval: before the overrides.
    overrides=[f'checkpointing_config.save_checkpoint_interval={save_interval}', *overrides],
  )
  arguments = _command_line(
    dataset,
    'pretrain',
    root,
    steps=steps,
    batch_size=batch_size,
    overrides=overrides,
    extra_flags=[f'--save_checkpoint_interval={save_interval}'],
  )
  _print_command([*arguments, '--worker_mode=train'])
  os.makedirs(root, exist_ok=True)
  log_path = os.path.join(root, 'eval_worker.log')
  eval_arguments = [*arguments, '--worker_mode=eval', '--eval_poll_interval=1']
  _print_command(eval_arguments)
  print(f'  (the eval worker, beside the train worker; its lines go to {log_path})', flush=True)
  with open(log_path, 'ab') as log:
    eval_worker = subprocess.Popen(
      [sys.executable, '-m', 'byol.main_loop', *eval_arguments],
      stdout=log,
      stderr=subprocess.STDOUT,
    )
  try:
    workers.train_loop(config, 'pretrain', log_interval=log_interval)
  except BaseException:
    eval_worker.kill()
    eval_worker.wait()
    raise
  # It exits once it has evaluated the final checkpoint.
  if eval_worker.wait() != 0:
    raise StageError(
      f'The pretraining eval worker stopped with exit status {eval_worker.returncode}; its '
      f'lines are in {log_path}.'
    )


def _linear_evaluation(
  root: str,
  dataset: datasets.Dataset,
  *,
  steps: int,
  batch_size: int | None,
  overrides: Sequence[str],
  log_interval: float,
) -> Mapping[str, Any]:
  """Trains and evaluates a linear classifier in `root`; returns its evaluation's scalars."""
  config = eval_config.get_config(
    os.path.join(root, 'pretrain.pkl'),
    batch_size,
    dataset=dataset,
    max_steps=steps,
    checkpoint_root=root,
    overrides=overrides,
  )
  arguments = _command_line(
    dataset, 'linear-eval', root, steps=steps, batch_size=batch_size, overrides=overrides
  )
  _print_command([*arguments, '--worker_mode=train'])
  workers.train_loop(config, 'linear-eval', log_interval=log_interval)
  _print_command([*arguments, '--worker_mode=eval'])
  workers.eval_loop(config, 'linear-eval', poll_interval=1.0)
  return _last_evaluation(root, 'linear-eval')


def _percent(scalars: Mapping[str, Any], name: str) -> str:
  return f'{100 * scalars[name]:.1f}%' if name in scalars else 'n/a'


def run(
  root: str,
  *,
  dataset_name: str = 'synthetic',
  pretrain_steps: int = 600,
  linear_eval_steps: int = 300,
  batch_size: int | None = None,
  overrides: Sequence[str] = (),
  save_interval: int = 60,
  log_interval: float = 20.0,
) -> str:
  """The quick start in `root`; returns its last line (also printed): the kNN and linear top-1
  accuracies of BYOL's encoder and of a random one on the test split.

  `overrides` apply to the pretraining config; those of the entries linear evaluation inherits
  from it (`config_file.INHERITED`: the encoder, the image size) apply to both linear evaluations.
  """
  start = time.time()
  dataset = datasets.describe(dataset_name)
  byol_root = os.path.join(root, 'byol')
  random_root = os.path.join(root, 'random')
  inherited = ['.'.join(key_path) for key_path in config_file.INHERITED]
  encoder_overrides = [text for text in overrides if text.partition('=')[0] in inherited]
  print(f'[1/3] BYOL pretraining on {dataset.name}, {pretrain_steps} steps.', flush=True)
  _pretrain(
    byol_root,
    dataset,
    steps=pretrain_steps,
    batch_size=batch_size,
    overrides=overrides,
    save_interval=save_interval,
    log_interval=log_interval,
  )
  evaluation = dict(steps=linear_eval_steps, batch_size=batch_size, log_interval=log_interval)
  print('[2/3] Linear evaluation of the BYOL encoder.', flush=True)
  byol = _linear_evaluation(byol_root, dataset, overrides=encoder_overrides, **evaluation)
  print('[3/3] Linear evaluation of a random encoder (the baseline).', flush=True)
  random = _linear_evaluation(
    random_root,
    dataset,
    overrides=[*encoder_overrides, 'allow_train_from_scratch=true'],
    **evaluation,
  )
  print(f'Curves of the BYOL pretraining: {plot.plot(byol_root)}', flush=True)
  minutes = (time.time() - start) / 60
  line = (
    f'Top-1 on the {dataset.name} test split, BYOL vs random encoder: '
    f'kNN {_percent(byol, "knn_top1_accuracy")} vs {_percent(random, "knn_top1_accuracy")}, '
    f'linear {_percent(byol, "top1_accuracy")} vs {_percent(random, "top1_accuracy")} '
    f'({minutes:.1f} min).'
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
      dataset_name=FLAGS.dataset,
      pretrain_steps=FLAGS.pretrain_steps,
      linear_eval_steps=FLAGS.linear_eval_steps,
      batch_size=FLAGS.batch_size,
      overrides=FLAGS.override,
      save_interval=FLAGS.save_checkpoint_interval,
      log_interval=FLAGS.log_tensors_interval,
    )
  except (*workers.USER_ERRORS, StageError) as error:
    sys.exit(f'error: {error}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
