r"""Transfer by linear probe: a pretrained encoder's features of another dataset, classified.

  python -m byol.transfer --checkpoint_root=/tmp/byol --dataset=cifar10 --output_dir=/tmp/transfer

The paper's transfer protocol (section 4.3, after Kornblith et al. 2019). The encoder of the
pretraining checkpoint in `--checkpoint_root` (ours, with the encoder and width read from its
`pretrain.config.json`, or a 2020 release file renamed `pretrain.pkl`, with `--encoder` and
`--override` giving them) computes the features of every image of the target dataset's TRAIN,
VALID and TEST splits, centre-cropped at the target's image size (`--image_size`, default the
dataset's own) with no augmentation and BatchNorm in inference mode. Then, for each value of the
regularisation (`--l2_values`: by default 45 log-spaced values from 1e-6 to 1e5, the paper's grid),
an L2-regularised multinomial logistic regression (`byol.utils.logistic_regression`) is fitted on
TRAIN and scored on VALID; the best on VALID is fitted again on TRAIN and VALID together and scored
on TEST, the only score on TEST. `--random_encoder` does the same with a randomly initialised
encoder (the baseline).

The features are cached in `--output_dir` (`features_<split>.npz`, plain arrays, with the identity
of the encoder and images they came from: the checkpoint file's SHA-256, the encoder config, the
dataset and image size); a later run with the same identity reads them, any change computes them
again. The table of the sweep goes to `<output_dir>/transfer.json`.

Features are standardised (each dimension to mean 0 and variance 1 on the split the classifier is
fitted on) before the regression: it conditions L-BFGS, and makes one grid of regularisation serve
every encoder.
"""

from collections.abc import Sequence
import hashlib
import json
import os
import sys
import time
from typing import Any
import zipfile

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from byol import eval_experiment
from byol import workers
from byol.configs import config_file
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol.utils import checkpointing
from byol.utils import console
from byol.utils import helpers
from byol.utils import logistic_regression
from byol.utils import networks

# The paper's grid of regularisation (appendix: 45 log-spaced values from 1e-6 to 1e5).
PAPER_L2_VALUES = tuple(float(v) for v in np.logspace(-6, 5, 45))
_SPLITS = ('train', 'valid', 'test')


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def encoder_identity(config: dict[str, Any]) -> str:
  """What the features of a run depend on: the checkpoint file's SHA-256 (or 'random, seed S'),
  the encoder's config, the dataset and its image size."""
  checkpoint = config['checkpoint_to_evaluate']
  weights = (
    f'random, seed {config["random_seed"]}'
    if config['allow_train_from_scratch']
    else f'{os.path.abspath(checkpoint)} sha256 {_sha256(checkpoint)}'
  )
  network = config['network_config']
  return json.dumps(
    dict(
      weights=weights,
      encoder_class=network['encoder_class'],
      encoder_config=network['encoder_config'],
      dataset=config['dataset_config']['name'],
      image_size=config['dataset_config']['image_size'],
    ),
    sort_keys=True,
  )


def cached_features(path: str, identity: str, compute: Any) -> tuple[dict[str, np.ndarray], bool]:
  """The features in `path` if they were computed for `identity`, else `compute()`'s, written there
  (atomically) for the next run. Returns them and whether they were computed now. A file that is
  not such a cache (damaged, or holding anything but plain arrays) is computed again."""
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as cached:  # Plain arrays only: nothing runs.
        if str(cached['identity']) == identity:
          return dict(features=cached['features'], labels=cached['labels']), False
      logging.info('%s holds features of another encoder or dataset: computing them again.', path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
      logging.warning('%s cannot be read (%s): computing the features again.', path, error)
  features = compute()
  if jax.process_index() == 0:
    checkpointing.write_atomically(
      path, lambda f: np.savez(f, identity=np.array(identity), **features)
    )
  return features, True


def _standardised(fit_on: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
  """`fit_on` and `others` [N, D], less `fit_on`'s mean, over its standard deviation (per
  dimension; a constant dimension is left at 0)."""
  mean = fit_on.mean(axis=0)
  std = fit_on.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return tuple(((x - mean) / std).astype(np.float32) for x in (fit_on, *others))


def sweep(
  splits: dict[str, dict[str, np.ndarray]],
  num_classes: int,
  l2_values: Sequence[float],
  *,
  max_iterations: int = 500,
) -> dict[str, Any]:
  """The protocol on features: fit on TRAIN per l2 (strongest first, each warm-started from the
  last), choose on VALID, fit the chosen l2 on TRAIN + VALID (from the chosen fit), score it on
  TEST; returns the table. Each fit stops at `max_iterations` of L-BFGS if not converged before
  (the table gives the iterations taken)."""
  train, valid, test = (splits[name] for name in _SPLITS)
  x_train, x_valid = _standardised(train['features'], valid['features'])
  classifier = logistic_regression.zeros(x_train.shape[1], num_classes)
  runs, classifiers = [], []
  for l2 in sorted(set(l2_values), reverse=True):
    classifier, iterations = logistic_regression.fit(
      x_train, train['labels'], l2, classifier, max_iterations=max_iterations
    )
    classifiers.append(classifier)
    runs.append(
      dict(
        l2=l2,
        iterations=int(iterations),
        train_top1=logistic_regression.top1_accuracy(classifier, x_train, train['labels']),
        valid_top1=logistic_regression.top1_accuracy(classifier, x_valid, valid['labels']),
      )
    )
    logging.info(
      'l2 %.3g: train top-1 %.4f, valid top-1 %.4f (%d iterations)',
      l2,
      runs[-1]['train_top1'],
      runs[-1]['valid_top1'],
      iterations,
    )
  # Ties go to the stronger regularisation (listed first).
  best = max(range(len(runs)), key=lambda index: runs[index]['valid_top1'])
  chosen = runs[best]
  both = np.concatenate([train['features'], valid['features']])
  both_labels = np.concatenate([train['labels'], valid['labels']])
  x_both, x_test = _standardised(both, test['features'])
  # Warm-started from the chosen TRAIN fit: the solution moves little with a tenth more data.
  final, iterations = logistic_regression.fit(
    x_both, both_labels, chosen['l2'], classifiers[best], max_iterations=max_iterations
  )
  return dict(
    protocol='fit on TRAIN per l2, choose on VALID (top-1), fit on TRAIN+VALID, report on TEST',
    chosen_l2=chosen['l2'],
    test_top1=logistic_regression.top1_accuracy(final, x_test, test['labels']),
    final_iterations=int(iterations),
    num_examples={name: int(len(splits[name]['labels'])) for name in _SPLITS},
    feature_dimension=int(x_train.shape[1]),
    runs=runs,
  )


def transfer_config(
  checkpoint_root: str,
  dataset: datasets.Dataset,
  *,
  output_dir: str,
  random_encoder: bool = False,
  batch_size: int | None = None,
  overrides: Sequence[str] = (),
) -> dict[str, Any]:
  """The linear-evaluation config whose experiment computes the features: the target dataset's
  splits, the encoder of the pretraining run in `checkpoint_root` (its `pretrain.config.json`, if
  any, decides the encoder; `overrides` may not contradict it) on the target's image size."""
  overrides = list(overrides)
  if random_encoder:
    overrides.append('allow_train_from_scratch=true')
  checkpoint = None if random_encoder else os.path.join(checkpoint_root, 'pretrain.pkl')
  config = eval_config.get_config(
    checkpoint, batch_size, dataset=dataset, checkpoint_root=output_dir, overrides=overrides
  )
  pretraining = config_file.read(checkpoint_root, 'pretrain') if checkpoint_root else None
  if pretraining is not None:
    # The encoder only: the images are the target's, at its own size.
    config_file.inherit(
      config,
      pretraining,
      explicit={
        tuple(text.partition('=')[0].split('.')): f'--override {text.partition("=")[0]}'
        for text in overrides
      },
      source=config_file.path(checkpoint_root, 'pretrain'),
      key_paths=config_file.ENCODER,
    )
  return config


def transfer(
  config: dict[str, Any], l2_values: Sequence[float] = PAPER_L2_VALUES, max_iterations: int = 500
) -> dict:
  """Features of the target's splits (cached), the sweep, and its table written to
  `<output_dir>/transfer.json`; returns the table."""
  output_dir = config['checkpointing_config']['checkpoint_dir']
  os.makedirs(output_dir, exist_ok=True)
  experiment = eval_experiment.EvalExperiment(**config)
  # The classifier's state is never trained: a batch of zeros of the right shape creates it.
  size = config['dataset_config']['image_size']
  shape = (jax.local_device_count(), size, size, 3)
  experiment.initialize(
    jax.random.key(config['random_seed']),
    helpers.to_global_batch(
      dict(images=np.zeros(shape, np.float32), labels=np.zeros(shape[:1], np.int32)),
      experiment.batch_sharding,
    ),
  )
  identity = encoder_identity(config)
  splits = {}
  for name in _SPLITS:
    path = os.path.join(output_dir, f'features_{name}.npz')
    start = time.time()

    def compute(name: str = name) -> dict[str, np.ndarray]:
      logging.info('Computing the features of the %s split (each image once)...', name)
      return experiment.split_features(name)

    splits[name], computed = cached_features(path, identity, compute)
    logging.info(
      '%s the features of the %s split, %s, in %.0f s.',
      'Computed' if computed else 'Read',
      name,
      'x'.join(map(str, splits[name]['features'].shape)),
      time.time() - start,
    )
  table = sweep(splits, config['num_classes'], l2_values, max_iterations=max_iterations)
  table = dict(encoder=json.loads(identity), **table)
  path = os.path.join(output_dir, 'transfer.json')
  if jax.process_index() == 0:
    checkpointing.write_atomically(path, lambda f: f.write(json.dumps(table, indent=2).encode()))
  return table


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The program's flags, defined when it runs as a program only (several share their names with
  `byol.main_loop`'s, and both are imported by the tests)."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_string('checkpoint_root', None, 'Folder of the pretraining pretrain.pkl.', **define)
  flags.DEFINE_string('dataset', 'cifar10', 'Target dataset, as in byol.main_loop.', **define)
  flags.DEFINE_string('data_dir', None, 'TFDS data folder of --dataset.', **define)
  flags.DEFINE_string(
    'output_dir', None, 'Where the features and transfer.json go.', required=True, **define
  )
  flags.DEFINE_integer(
    'image_size', None, "Side of the crops (default: the dataset's own).", lower_bound=8, **define
  )
  flags.DEFINE_enum(
    'encoder',
    None,
    sorted(networks.ENCODERS),
    'Encoder class, for checkpoints without pretrain.config.json (the 2020 release).',
    **define,
  )
  flags.DEFINE_integer('batch_size', None, 'Images per batch of features.', lower_bound=1, **define)
  flags.DEFINE_bool('random_encoder', False, "A random encoder, not the checkpoint's.", **define)
  flags.DEFINE_list('l2_values', None, "Regularisation values (default: the paper's 45).", **define)
  flags.DEFINE_integer(
    'max_iterations', 500, 'L-BFGS iterations at most per fit.', lower_bound=1, **define
  )
  flags.DEFINE_multi_string('override', [], 'key.path=value entries of the config.', **define)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  console.use_clean_lines()
  if FLAGS.checkpoint_root is None and not FLAGS.random_encoder:
    sys.exit('error: give --checkpoint_root (a pretraining folder), or --random_encoder.')
  try:
    l2_values = [float(v) for v in FLAGS.l2_values] if FLAGS.l2_values else PAPER_L2_VALUES
  except ValueError:
    sys.exit(f'error: --l2_values takes numbers, got {",".join(FLAGS.l2_values)}.')
  overrides = [
    *([f'network_config.encoder_class={FLAGS.encoder}'] if FLAGS.encoder else []),
    *([f'dataset_config.image_size={FLAGS.image_size}'] if FLAGS.image_size else []),
    *FLAGS.override,
  ]
  try:
    config = transfer_config(
      FLAGS.checkpoint_root,
      datasets.describe(FLAGS.dataset, FLAGS.data_dir),
      output_dir=FLAGS.output_dir,
      random_encoder=FLAGS.random_encoder,
      batch_size=FLAGS.batch_size,
      overrides=overrides,
    )
    table = transfer(config, l2_values, FLAGS.max_iterations)
  except workers.USER_ERRORS as error:
    sys.exit(f'error: {error}')
  print(
    f'Transfer to {FLAGS.dataset} at {config["dataset_config"]["image_size"]} px: test top-1 '
    f'{100 * table["test_top1"]:.1f}% (l2 {table["chosen_l2"]:.3g}, chosen on VALID; table '
    f'{os.path.join(FLAGS.output_dir, "transfer.json")}).'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
