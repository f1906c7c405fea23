r"""Entry point: a train or eval worker of BYOL pretraining, linear evaluation or fine-tuning
(SPEC section 2).

  python -m byol.main_loop --experiment_mode=pretrain --worker_mode=train \
      --checkpoint_root=/tmp/byol --pretrain_epochs=300 --batch_size=4096
  python -m byol.main_loop --experiment_mode=pretrain --worker_mode=eval \
      --checkpoint_root=/tmp/byol --pretrain_epochs=300 --batch_size=4096

The train worker resumes from `<checkpoint_root>/pretrain.pkl` when it exists and saves it every
`--save_checkpoint_interval` seconds and at the end. The eval worker, started with the same flags,
evaluates every new checkpoint once and exits after the final step's. With
`--experiment_mode=linear-eval` the same workers train and evaluate a linear classifier on the
encoder of `<checkpoint_root>/pretrain.pkl`, checkpointing to `linear-eval.pkl`, and
`--experiment_mode=fine-tune` trains the encoder too (the paper's semi-supervised recipe, into
`fine-tune.pkl`), on `--label_fraction` of the labels; with `--base_learning_rates` the train worker
runs the paper's protocol (choose on VALID, report on TEST). `--dataset` picks the images (ImageNet
by default), `--override key.path=value` any entry of the config.
"""

import os
import sys
from typing import Any

from absl import app
from absl import flags

from byol import workers
from byol.configs import byol as byol_config
from byol.configs import config_file
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol.utils import distributed
from byol.utils import networks
from byol.utils import precision
from byol.utils import console
from byol.utils import data_service

FLAGS = flags.FLAGS

flags.DEFINE_enum(
  'experiment_mode',
  'pretrain',
  ['pretrain', 'linear-eval', 'fine-tune'],
  'Pretrain with BYOL, evaluate a pretrained encoder linearly, or fine-tune it with a classifier.',
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
  list(precision.COMPUTE_DTYPES),
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
flags.DEFINE_string(
  'data_service_address',
  None,
  'grpc://HOST:PORT of a tf.data service dispatcher (python -m byol.data_service): training '
  "input is read, decoded and cropped on the service's workers. Evaluation reads locally.",
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
  "Linear evaluation or fine-tuning with the paper's protocol (train worker only): one run "
  'per base learning rate trained on TRAIN, the best on VALID reported on TEST, and the table '
  'of all runs written to <checkpoint_root>/<mode>-sweep.json.',
)
flags.DEFINE_float(
  'label_fraction',
  1.0,
  'Linear evaluation and fine-tuning: train on this share of each class of the training split '
  '(e.g. 0.01, 0.1: a seeded draw recorded in <checkpoint_root>/<mode>.labels.json). For '
  'ImageNet use --dataset=imagenet2012_subset/1pct or /10pct, the subsets the paper used.',
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


def _is_service_address(value: str | None) -> bool:
  try:
    return value is None or bool(data_service.parse_address(value))
  except data_service.DataServiceError:
    return False


flags.register_validator(
  'data_service_address',
  _is_service_address,
  message='--data_service_address must be grpc://HOST:PORT, e.g. grpc://10.0.0.5:5050.',
)
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
    or (values['experiment_mode'] != 'pretrain' and values['worker_mode'] == 'train')
  ),
  message='--base_learning_rates runs the protocol of linear evaluation and fine-tuning: use it '
  'with --experiment_mode=linear-eval or fine-tune, and --worker_mode=train.',
)
flags.register_validator(
  'label_fraction',
  lambda value: 0 < value <= 1,
  message='--label_fraction must be in (0, 1], e.g. 0.01 for 1% of the labels.',
)
flags.register_multi_flags_validator(
  ['label_fraction', 'experiment_mode'],
  lambda values: values['label_fraction'] == 1 or values['experiment_mode'] != 'pretrain',
  message='--label_fraction is for --experiment_mode=linear-eval or fine-tune (pretraining '
  'reads every image).',
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

# The flags that set one entry of the config each, applied before `--override`.
_CONFIG_FLAGS = {
  'encoder': 'network_config.encoder_class',
  'compute_dtype': 'network_config.compute_dtype',
  'image_size': 'dataset_config.image_size',
  'data_service_address': 'dataset_config.data_service_address',
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
    config = eval_config.get_config(
      pretrain_checkpoint,
      fine_tune=FLAGS.experiment_mode == 'fine-tune',
      label_fraction=FLAGS.label_fraction,
      **arguments,
    )
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  console.use_clean_lines()
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
      workers.sweep_loop(
        config,
        rates,
        experiment_mode=FLAGS.experiment_mode,
        log_interval=FLAGS.log_tensors_interval,
      )
    elif FLAGS.worker_mode == 'train':
      workers.train_loop(config, FLAGS.experiment_mode, log_interval=FLAGS.log_tensors_interval)
    else:
      workers.eval_loop(config, FLAGS.experiment_mode, poll_interval=FLAGS.eval_poll_interval)
  except workers.USER_ERRORS as error:
    sys.exit(f'error: {error}')


def run() -> None:
  """Console entry point (`byol ...`), the same as `python -m byol.main_loop ...`."""
  app.run(main)


if __name__ == '__main__':
  run()
