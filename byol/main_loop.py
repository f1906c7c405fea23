r"""Entry point: a train or eval worker of BYOL pretraining or linear evaluation (SPEC section 2).

  python -m byol.main_loop --experiment_mode=pretrain --worker_mode=train \
      --checkpoint_root=/tmp/byol --pretrain_epochs=300 --batch_size=4096
  python -m byol.main_loop --experiment_mode=pretrain --worker_mode=eval \
      --checkpoint_root=/tmp/byol --pretrain_epochs=300 --batch_size=4096

The train worker resumes from `<checkpoint_root>/pretrain.pkl` when it exists and saves it every
`--save_checkpoint_interval` seconds and at the end. The eval worker, started with the same flags,
evaluates every new checkpoint once and exits after the final step's. With
`--experiment_mode=linear-eval` the same workers train and evaluate a linear classifier on the
encoder of `<checkpoint_root>/pretrain.pkl`, checkpointing to `linear-eval.pkl`; with
`--base_learning_rates` the train worker runs the paper's protocol (choose on VALID, report on
TEST). `--dataset` picks the images (ImageNet by default), `--override key.path=value` any entry
of the config.
"""

import copy
import json
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from byol import byol_experiment
from byol import eval_experiment
from byol.configs import byol as byol_config
from byol.configs import config_file
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol.configs import override
from byol.utils import checkpointing
from byol.utils import dataset
from byol.utils import distributed
from byol.utils import experiment as experiment_lib
from byol.utils import helpers
from byol.utils import networks
from byol.utils import summaries

FLAGS = flags.FLAGS

flags.DEFINE_enum(
  'experiment_mode',
  'pretrain',
  ['pretrain', 'linear-eval'],
  'Pretrain with BYOL, or evaluate a pretrained encoder linearly.',
)
flags.DEFINE_enum(
  'worker_mode',
  'train',
  ['train', 'eval'],
  'Train and checkpoint, or evaluate each new checkpoint.',
)
flags.DEFINE_string(
  'checkpoint_root',
  byol_config.DEFAULT_CHECKPOINT_ROOT,
  'Folder of the checkpoints (pretrain.pkl) and scalar logs.',
)
flags.DEFINE_integer(
  'pretrain_epochs', 1000, f'Pretraining length; one of the presets {sorted(byol_config.PRESETS)}.'
)
flags.DEFINE_string(
  'dataset',
  'imagenet2012',
  'imagenet2012, imagenette (TFDS imagenette/160px-v2), cifar10, '
  'synthetic (embedded, no download), folder:PATH (PATH/train/<class>/* and PATH/val/<class>/* '
  'or PATH/test/<class>/* images) or any TFDS dataset name.',
)
flags.DEFINE_integer(
  'batch_size',
  None,
  'Total batch size over all devices and hosts (default '
  f"{datasets.DEFAULT_BATCH_SIZE}, or the dataset preset's).",
)
flags.DEFINE_integer('log_tensors_interval', 60, 'Seconds between two logs of the scalars.')
flags.DEFINE_integer(
  'max_steps',
  None,
  'Overrides the preset number of steps (the warm-up keeps its share of the run).',
  lower_bound=1,
)
flags.DEFINE_enum('encoder', None, sorted(networks.ENCODERS), 'Overrides the preset encoder.')
flags.DEFINE_enum(
  'compute_dtype',
  None,
  list(networks.COMPUTE_DTYPES),
  'Overrides the dtype the networks compute in (float32): bfloat16 for '
  'accelerators; parameters, optimiser and BatchNorm statistics stay float32.',
)
flags.DEFINE_integer(
  'image_size',
  None,
  "Side of the crops (default: 224 for ImageNet, the dataset's own otherwise).",
  lower_bound=8,
)
flags.DEFINE_string(
  'data_dir', None, 'TFDS data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).'
)
flags.DEFINE_integer(
  'eval_batch_size',
  None,
  'Evaluation batch size (default 100, or the '
  "dataset preset's), rounded up to a multiple of the device count.",
  lower_bound=1,
)
flags.DEFINE_integer(
  'save_checkpoint_interval', 300, 'Seconds between two checkpoints.', lower_bound=0
)
flags.DEFINE_float(
  'eval_poll_interval', 10.0, 'Seconds between two looks for a new checkpoint.', lower_bound=0.0
)
flags.DEFINE_multi_string(
  'override',
  [],
  'key.path=value: sets any entry of the config (repeatable, applied last), e.g. '
  'network_config.encoder_config.width_multiplier=2 or freeze_backbone=false.',
)
flags.DEFINE_string(
  'coordinator_address',
  None,
  'A run of several processes (e.g. one per host): host:port of process 0, '
  'where the others join it. Needs --num_processes and --process_id.',
)
flags.DEFINE_integer('num_processes', None, 'The number of processes of the run.', lower_bound=1)
flags.DEFINE_integer('process_id', None, "This process's index in the run, from 0.", lower_bound=0)
flags.DEFINE_bool(
  'distributed',
  False,
  "Join a run of several processes, taking from the cluster's environment (Cloud "
  'TPU pod, SLURM, Open MPI) whatever of --coordinator_address, --num_processes '
  'and --process_id is not given.',
)
flags.DEFINE_list(
  'base_learning_rates',
  None,
  "Linear evaluation with the paper's protocol (train worker only): one classifier "
  'per base learning rate trained on TRAIN, the best on VALID reported on TEST, '
  'and the table of all runs written to <checkpoint_root>/linear-eval-sweep.json.',
)

flags.register_validator(
  'pretrain_epochs',
  lambda value: value in byol_config.PRESETS,
  message=f'--pretrain_epochs must be one of {sorted(byol_config.PRESETS)}.',
)
flags.register_validator(
  'batch_size', lambda value: value is None or value > 0, message='--batch_size must be positive.'
)


def _are_positive_numbers(values: list[str] | None) -> bool:
  try:
    return values is None or (bool(values) and all(float(value) > 0 for value in values))
  except ValueError:
    return False


flags.register_validator(
  'base_learning_rates',
  _are_positive_numbers,
  message='--base_learning_rates must be a comma-separated list of positive numbers, '
  'e.g. 0.1,0.2,0.4.',
)
flags.register_multi_flags_validator(
  ['base_learning_rates', 'experiment_mode', 'worker_mode'],
  lambda values: (
    values['base_learning_rates'] is None
    or (values['experiment_mode'] == 'linear-eval' and values['worker_mode'] == 'train')
  ),
  message='--base_learning_rates runs the linear-evaluation protocol: use it with '
  '--experiment_mode=linear-eval --worker_mode=train.',
)

_PROCESS_FLAGS = ('coordinator_address', 'num_processes', 'process_id')
flags.register_multi_flags_validator(
  [*_PROCESS_FLAGS, 'distributed'],
  # All three given, or none (one process), unless the cluster's environment supplies them.
  lambda values: (
    values['distributed'] or len({values[name] is None for name in _PROCESS_FLAGS}) == 1
  ),
  message='A run of several processes needs all of --coordinator_address, --num_processes and '
  '--process_id, or --distributed to detect them from the cluster.',
)
flags.register_multi_flags_validator(
  ['num_processes', 'process_id'],
  lambda values: (
    None in (values['num_processes'], values['process_id'])
    or (values['process_id'] < values['num_processes'])
  ),
  message='--process_id must be below --num_processes (processes count from 0).',
)

# Errors that come from the user's input; they are reported in one line, without a traceback.
_USER_ERRORS = (
  dataset.DatasetError,
  checkpointing.CheckpointError,
  distributed.DistributedError,
  helpers.BatchSizeError,
  override.OverrideError,
  config_file.ConfigError,
  FloatingPointError,
)


# The experiment class of each --experiment_mode.
_EXPERIMENTS = {
  'pretrain': byol_experiment.ByolExperiment,
  'linear-eval': eval_experiment.EvalExperiment,
}


# The flags that set one entry of the config each, applied before `--override`.
_CONFIG_FLAGS = {
  'encoder': 'network_config.encoder_class',
  'compute_dtype': 'network_config.compute_dtype',
  'image_size': 'dataset_config.image_size',
  'eval_batch_size': 'evaluation_config.batch_size',
  'save_checkpoint_interval': 'checkpointing_config.save_checkpoint_interval',
}


def get_config() -> dict[str, Any]:
  """The complete config of `--experiment_mode` for the flags.

  The dataset's facts (classes, training images, image size) are read from it; the other flags
  become arguments or overrides of the experiment's `get_config`. Runs on a pretraining
  checkpoint take its encoder and image size from `pretrain.config.json`, where there is one.
  """
  # (flag, key.path=value), in the order they apply: the last one wins.
  assignments = [
    (f'--{name}', f'{key_path}={FLAGS[name].value}')
    for name, key_path in _CONFIG_FLAGS.items()
    if FLAGS[name].value is not None
  ]
  assignments += [(f'--override {text.partition("=")[0]}', text) for text in FLAGS.override]
  arguments = dict(
    batch_size=FLAGS.batch_size,
    dataset=datasets.describe(FLAGS.dataset, FLAGS.data_dir),
    max_steps=FLAGS.max_steps,
    checkpoint_root=FLAGS.checkpoint_root,
    overrides=[text for _, text in assignments],
  )
  if FLAGS.experiment_mode == 'pretrain':
    config = byol_config.get_config(FLAGS.pretrain_epochs, **arguments)
  else:
    # Read by process 0 when training starts; a random encoder is trained if it is absent and
    # that is allowed.
    pretrain_checkpoint = os.path.join(FLAGS.checkpoint_root, 'pretrain.pkl')
    config = eval_config.get_config(pretrain_checkpoint, **arguments)
  if not (FLAGS.experiment_mode == 'pretrain' and FLAGS.worker_mode == 'train'):
    # Rebuild the encoder of the pretraining run, on images of its size.
    pretraining = config_file.read(FLAGS.checkpoint_root, 'pretrain')
    if pretraining is not None:
      config_file.inherit(
        config,
        pretraining,
        explicit={tuple(text.partition('=')[0].split('.')): flag for flag, text in assignments},
        source=config_file.path(FLAGS.checkpoint_root, 'pretrain'),
      )
  return config


def _format_scalars(scalars: Mapping[str, float]) -> str:
  return ', '.join(f'{name}={value:.4g}' for name, value in sorted(scalars.items()))


def train_loop(
  config: Mapping[str, Any], experiment_mode: str, *, log_interval: float = 60.0
) -> experiment_lib.Experiment:
  """Trains until `max_steps`, resuming from the checkpoint, saving periodically and at the end.

  Args:
    config: the experiment's config (`get_config`).
    experiment_mode: 'pretrain' or 'linear-eval' (which starts a fresh run from the config's
      `checkpoint_to_evaluate`).
    log_interval: seconds between two progress lines and scalar logs.

  Returns:
    The experiment, holding the final state.
  """
  experiment = _EXPERIMENTS[experiment_mode](**config)
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
  else:
    step, loop_rng = restored
    logging.info('Resumed from %s at step %d of %d.', experiment.checkpoint_path, step, max_steps)
  if jax.process_index() == 0:  # Once the checkpoints it starts from have been read.
    config_file.write(config, checkpoint_dir, experiment_mode)

  last_log_time = last_save_time = time.time()
  last_log_step = step
  while step < max_steps:
    logs = experiment.step(global_step=step, rng=jax.random.fold_in(loop_rng, step))
    step += 1
    now = time.time()
    log_due = now - last_log_time >= log_interval or step == max_steps
    save_due = now - last_save_time >= save_interval and step < max_steps
    if not (log_due or save_due):
      continue  # No host sync: the next step is dispatched while this one runs.
    scalars = {name: float(value) for name, value in helpers.to_host(logs).items()}
    if not math.isfinite(scalars['loss']):
      experiment.wait_for_checkpoint()  # The last good step's, if one is being written.
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
  experiment.save_checkpoint(global_step=step, rng=loop_rng)
  logging.info('Training done at step %d; checkpoint %s.', step, experiment.checkpoint_path)
  return experiment


def eval_loop(
  config: Mapping[str, Any], experiment_mode: str, *, poll_interval: float = 10.0
) -> None:
  """Evaluates each new checkpoint once; returns after evaluating the one of the final step.

  Looks for a new checkpoint every `poll_interval` seconds.
  """
  experiment = _EXPERIMENTS[experiment_mode](**config)
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
  config: Mapping[str, Any], base_learning_rates: Sequence[float], *, log_interval: float = 60.0
) -> None:
  """The paper's linear-evaluation protocol over `--base_learning_rates` (SPEC section 9).

  One classifier per base learning rate is trained on TRAIN, in its own folder
  `<checkpoint_root>/linear-eval-sweep/lr_<rate>` (so an interrupted sweep resumes where it
  stopped) and scored on VALID; the best one on VALID is then scored on TEST. Only the chosen run
  is ever evaluated on TEST. The table of all runs goes to
  `<checkpoint_root>/linear-eval-sweep.json`.
  """
  root = config['checkpointing_config']['checkpoint_dir']
  runs = []
  for rate in sorted(set(base_learning_rates)):
    run_config = copy.deepcopy(dict(config))
    run_config['lr_schedule_config']['base_learning_rate'] = rate
    run_config['dataset_config']['train_split'] = 'train'
    run_config['evaluation_config']['subset'] = 'valid'
    run_config['checkpointing_config']['checkpoint_dir'] = os.path.join(
      root, 'linear-eval-sweep', f'lr_{rate:g}'
    )
    logging.info('Sweep: base learning rate %g.', rate)
    experiment = train_loop(run_config, 'linear-eval', log_interval=log_interval)
    valid = experiment.evaluate(global_step=run_config['max_steps'])
    logging.info('Sweep: base learning rate %g | VALID %s', rate, _format_scalars(valid))
    runs.append(
      dict(base_learning_rate=rate, checkpoint=experiment.checkpoint_path, valid=valid, test=None)
    )

  chosen = max(runs, key=lambda run: run['valid']['top1_accuracy'])
  test_config = copy.deepcopy(dict(config))
  test_config['checkpointing_config']['checkpoint_dir'] = os.path.dirname(chosen['checkpoint'])
  test_config['lr_schedule_config']['base_learning_rate'] = chosen['base_learning_rate']
  experiment = eval_experiment.EvalExperiment(**test_config)
  step, _ = experiment.load_checkpoint()
  chosen['test'] = experiment.evaluate(global_step=step)
  table = dict(
    protocol='train on TRAIN, choose on VALID (top-1), report on TEST',
    chosen_base_learning_rate=chosen['base_learning_rate'],
    runs=runs,
  )
  path = os.path.join(root, 'linear-eval-sweep.json')
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      auto_detect=FLAGS.distributed,
    )
    config = get_config()
    if FLAGS.base_learning_rates is not None:
      rates = [float(rate) for rate in FLAGS.base_learning_rates]
      sweep_loop(config, rates, log_interval=FLAGS.log_tensors_interval)
    elif FLAGS.worker_mode == 'train':
      train_loop(config, FLAGS.experiment_mode, log_interval=FLAGS.log_tensors_interval)
    else:
      eval_loop(config, FLAGS.experiment_mode, poll_interval=FLAGS.eval_poll_interval)
  except _USER_ERRORS as error:
    sys.exit(f'error: {error}')


def run() -> None:
  """Console entry point (`byol ...`), the same as `python -m byol.main_loop ...`."""
  app.run(main)


if __name__ == '__main__':
  run()
