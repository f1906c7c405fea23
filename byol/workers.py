"""The loops of the workers: a train worker trains and checkpoints, an eval worker evaluates each
new checkpoint, and the paper's protocol for linear evaluation and fine-tuning sweeps learning
rates (SPEC 2, 9).

They take a complete config (`byol.configs.byol.get_config`, `byol.configs.eval.get_config`) and
explicit settings, never flags: `byol.main_loop` runs them for the command line, `byol.quickstart`
and the tests call them directly.
"""

import contextlib
import copy
import json
import math
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import numpy as np

from byol import byol_experiment
from byol import eval_experiment
from byol.configs import config_file
from byol.configs import override
from byol.utils import checkpointing
from byol.utils import dataset
from byol.utils import distributed
from byol.utils import experiment as experiment_lib
from byol.utils import helpers
from byol.utils import label_subset
from byol.utils import summaries

# Errors that come from the user's input (flags, config, data, checkpoints) or a diverging run;
# programs report them in one line, without a traceback.
USER_ERRORS = (
  dataset.DatasetError,
  checkpointing.CheckpointError,
  distributed.DistributedError,
  helpers.BatchSizeError,
  override.OverrideError,
  config_file.ConfigError,
  label_subset.LabelSubsetError,
  FloatingPointError,
)

# The experiment class of each experiment mode.
EXPERIMENTS = {
  'pretrain': byol_experiment.ByolExperiment,
  'linear-eval': eval_experiment.EvalExperiment,
  'fine-tune': eval_experiment.EvalExperiment,  # With `freeze_backbone=False`.
}


def _format_scalars(scalars: Mapping[str, float]) -> str:
  return ', '.join(f'{name}={value:.4g}' for name, value in sorted(scalars.items()))


# In a run of several processes, every process saves its input's position at the steps of process
# 0's checkpoints: process 0's clock decides, and tells the others (a host sync) every this many
# steps only.
_SAVE_DECISION_STEPS = 20


def _save_is_due(elapsed: float, save_interval: float, step: int) -> bool:
  """Whether to schedule a checkpoint, `elapsed` seconds after the last one; the same answer in
  every process of the run."""
  if save_interval <= 0 or jax.process_count() == 1:
    return elapsed >= save_interval
  if step % _SAVE_DECISION_STEPS:
    return False
  return bool(distributed.from_process_0(np.asarray(elapsed >= save_interval)))


def train_loop(
  config: Mapping[str, Any], experiment_mode: str, *, log_interval: float = 60.0
) -> experiment_lib.Experiment:
  """Trains until `max_steps`, resuming from the checkpoint, saving at the start of a fresh run,
  periodically and at the end.

  Args:
    config: the experiment's config (`get_config`).
    experiment_mode: 'pretrain', or 'linear-eval' or 'fine-tune' (which start from the config's
      `checkpoint_to_evaluate`).
    log_interval: seconds between two progress lines and scalar logs.

  Returns:
    The experiment, holding the final state.
  """
  experiment = EXPERIMENTS[experiment_mode](**config)
  experiment.check_writable()
  max_steps = config['max_steps']
  checkpoint_dir = config['checkpointing_config']['checkpoint_dir']
  save_interval = config['checkpointing_config']['save_checkpoint_interval']
  scalar_log = summaries.ScalarLog(checkpoint_dir, f'{experiment_mode}_train')

  restored = experiment.load_checkpoint()
  if restored is None:
    init_rng, loop_rng = jax.random.split(jax.random.key(config['random_seed']))
    experiment.initialize(init_rng)
    step = 0
    logging.info(
      'No checkpoint to resume from at %s; starting %s: %d steps of batch %d.',
      experiment.checkpoint_path,
      experiment_mode,
      max_steps,
      config['batch_size'],
    )
    # The initial state, written while the first update compiles: an eval worker's curve then
    # starts at step 0, the run's random initialisation (the baseline of its kNN and classifier).
    experiment.save_checkpoint(global_step=0, rng=loop_rng, block=False)
  else:
    step, loop_rng = restored
    logging.info('Resumed from %s at step %d of %d.', experiment.checkpoint_path, step, max_steps)
  if jax.process_index() == 0:  # Once the checkpoints it starts from have been read.
    config_file.write(config, checkpoint_dir, experiment_mode)

  last_log_time = last_save_time = time.time()
  last_log_step = step
  next_save = None  # The step of the next periodic checkpoint, once scheduled.
  try:
    # Each checkpoint is saved with the input's position at its step, asked for before the input
    # (which runs ahead of training) passes it: a run resumed from it is fed what this one would
    # have been. The final checkpoint's first, then each periodic one's when it falls due.
    if step < max_steps:
      experiment.schedule_checkpoint(max_steps)
    while step < max_steps:
      if next_save is None and _save_is_due(time.time() - last_save_time, save_interval, step):
        next_save = experiment.schedule_checkpoint(step + 1)  # This step's, or a later one's.
      logs = experiment.step(global_step=step, rng=jax.random.fold_in(loop_rng, step))
      step += 1
      now = time.time()
      log_due = now - last_log_time >= log_interval or step == max_steps
      save_due = step == next_save and step < max_steps
      if save_due:
        next_save = None
      if not (log_due or save_due):
        continue  # No host sync: the next step is dispatched while this one runs.
      scalars = {name: float(value) for name, value in helpers.to_host(logs).items()}
      if not math.isfinite(scalars['loss']):
        raise FloatingPointError(
          f'The loss became {scalars["loss"]} at step {step}; stopping without saving. The last '
          f'good checkpoint is {experiment.checkpoint_path}.'
        )
      if log_due:
        now = time.time()
        images_per_second = (step - last_log_step) * config['batch_size'] / (now - last_log_time)
        eta = (max_steps - step) * config['batch_size'] / images_per_second
        logging.info(
          'step %d/%d | %.1f images/s | ETA %s | %s',
          step,
          max_steps,
          images_per_second,
          _format_duration(eta),
          _format_scalars(scalars),
        )
        scalar_log.write(step, dict(scalars, images_per_second=images_per_second))
        last_log_time, last_log_step = now, step
      if save_due:
        # Written by a background thread while the next steps train.
        experiment.save_checkpoint(global_step=step, rng=loop_rng, block=False)
        last_save_time = time.time()
  except BaseException:
    # The last good checkpoint reaches the disk before the error is reported (its own write
    # error, if any, is the lesser news).
    with contextlib.suppress(Exception):
      experiment.wait_for_checkpoint()
    raise
  experiment.save_checkpoint(global_step=step, rng=loop_rng)
  logging.info('Training done at step %d; checkpoint %s.', step, experiment.checkpoint_path)
  return experiment


def eval_loop(
  config: Mapping[str, Any], experiment_mode: str, *, poll_interval: float = 10.0
) -> None:
  """Evaluates each new checkpoint once; returns after evaluating the one of the final step.

  Looks for a new checkpoint every `poll_interval` seconds.
  """
  experiment = EXPERIMENTS[experiment_mode](**config)
  max_steps = config['max_steps']
  checkpoint_dir = config['checkpointing_config']['checkpoint_dir']
  scalar_log = summaries.ScalarLog(checkpoint_dir, f'{experiment_mode}_eval')
  path = experiment.checkpoint_path
  last_seen_version = last_evaluated_step = None
  logging.info('Waiting for checkpoints at %s.', path)
  while True:
    version = _checkpoint_version(path)
    if version is not None and version != last_seen_version:
      last_seen_version = version
      step, _ = experiment.load_checkpoint()
      if step != last_evaluated_step:
        scalars = experiment.evaluate(global_step=step)
        logging.info('eval step %d | %s', step, _format_scalars(scalars))
        scalar_log.write(step, scalars)
        last_evaluated_step = step
      if step >= max_steps:
        logging.info('Evaluated the final step %d; done.', step)
        return
      continue
    time.sleep(poll_interval)


def sweep_loop(
  config: Mapping[str, Any],
  base_learning_rates: Sequence[float],
  *,
  experiment_mode: str = 'linear-eval',
  log_interval: float = 60.0,
) -> None:
  """The paper's protocol over `--base_learning_rates` (SPEC section 9), for 'linear-eval' or
  'fine-tune'.

  One run per base learning rate is trained on TRAIN, in its own folder
  `<checkpoint_root>/<mode>-sweep/lr_<rate>` (so an interrupted sweep resumes where it stopped)
  and scored on VALID; the best one on VALID is then scored on TEST. Only the chosen run is ever
  evaluated on TEST. The table of all runs goes to `<checkpoint_root>/<mode>-sweep.json`.
  """
  root = config['checkpointing_config']['checkpoint_dir']
  runs, run_configs = [], {}
  for rate in sorted(set(base_learning_rates)):
    run_config = run_configs[rate] = copy.deepcopy(dict(config))
    run_config['lr_schedule_config']['base_learning_rate'] = rate
    run_config['dataset_config']['train_split'] = 'train'
    run_config['evaluation_config']['subset'] = 'valid'
    run_config['checkpointing_config']['checkpoint_dir'] = os.path.join(
      root, f'{experiment_mode}-sweep', f'lr_{rate:g}'
    )
    logging.info('Sweep: base learning rate %g.', rate)
    experiment = train_loop(run_config, experiment_mode, log_interval=log_interval)
    valid = experiment.evaluate(global_step=run_config['max_steps'])
    logging.info('Sweep: base learning rate %g | VALID %s', rate, _format_scalars(valid))
    runs.append(
      dict(base_learning_rate=rate, checkpoint=experiment.checkpoint_path, valid=valid, test=None)
    )

  chosen = max(runs, key=lambda run: run['valid']['top1_accuracy'])
  # The chosen run's own config, scored on TEST: its kNN bank is still TRAIN (labelled part).
  test_config = copy.deepcopy(run_configs[chosen['base_learning_rate']])
  test_config['evaluation_config']['subset'] = 'test'
  experiment = eval_experiment.EvalExperiment(**test_config)
  step, _ = experiment.load_checkpoint()
  chosen['test'] = experiment.evaluate(global_step=step)
  table = dict(
    protocol='train on TRAIN, choose on VALID (top-1), report on TEST',
    chosen_base_learning_rate=chosen['base_learning_rate'],
    runs=runs,
  )
  path = os.path.join(root, f'{experiment_mode}-sweep.json')
  if jax.process_index() == 0:
    with open(path + '.tmp', 'w') as f:
      json.dump(table, f, indent=2)
    os.replace(path + '.tmp', path)
  logging.info(
    'Sweep: chose base learning rate %g on VALID | TEST %s | table %s',
    chosen['base_learning_rate'],
    _format_scalars(chosen['test']),
    path,
  )


def _checkpoint_version(path: str) -> tuple[int, int] | None:
  """(inode, mtime) of the checkpoint as process 0 sees it, on every process; None if absent.

  The file is replaced atomically, so a new version means a new, complete checkpoint. Every
  process of a multi-process eval worker takes process 0's view, so that all of them load and
  evaluate the same checkpoints.
  """
  version = np.full(2, -1, np.int64)
  if jax.process_index() == 0:
    try:
      stat = os.stat(path)
      version[:] = stat.st_ino, stat.st_mtime_ns
    except FileNotFoundError:
      pass
  version = distributed.from_process_0(version)
  return None if version[0] < 0 else (int(version[0]), int(version[1]))


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'
