r"""Exports a trained encoder (parameters and BatchNorm state) to one `.npz` file.

  python -m byol.export_encoder --checkpoint=/tmp/byol/pretrain.pkl --output=/tmp/encoder.npz

The checkpoint may be a pretraining checkpoint of ours (the online encoder is exported, without
the projector, predictor and classifier), a linear-evaluation or fine-tuning checkpoint (its
backbone, plus the trained linear classifier) or a 2020 release file of DeepMind's. The `.npz`
holds plain numpy arrays, so any framework can read it:

  params/<haiku module path>/<name>   e.g. params/res_net50/~/initial_conv/w  [7, 7, 3, 64] (HWIO)
  state/<haiku module path>/<name>    BatchNorm moving statistics (mean_ema, var_ema)
  classifier/linear/{w,b}             only when exported from linear evaluation or fine-tuning
  description                         e.g. 'res_net50 width 1'

`load_encoder(path)` rebuilds the Haiku `(params, state)` pair; see the README for a full example.
"""

import os
import sys
import tempfile
from typing import Any, Mapping

from absl import app
from absl import flags
import numpy as np

from byol.utils import checkpointing

FLAGS = flags.FLAGS
Tree = dict[str, dict[str, np.ndarray]]

_PARTS = ('params', 'state', 'classifier')


def _flatten(prefix: str, tree: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
  return {
    f'{prefix}/{module}/{name}': np.asarray(value)
    for module, values in tree.items()
    for name, value in values.items()
  }


def export_encoder(checkpoint_path: str, output_path: str) -> str:
  """Writes the encoder of `checkpoint_path` to `output_path` (atomically); returns its description.

  Raises CheckpointError for a missing, truncated or unsafe file, or one without an encoder; the
  output is then left untouched.
  """
  experiment_state = checkpointing.load_checkpoint(checkpoint_path)['experiment_state']
  params, state = checkpointing.encoder_from_state(experiment_state, path=checkpoint_path)
  arrays = {**_flatten('params', params), **_flatten('state', state)}
  classifier = getattr(experiment_state, 'classif_params', None)
  if isinstance(classifier, Mapping):
    arrays.update(_flatten('classifier', classifier))
  description = checkpointing.describe_networks(params)
  arrays['description'] = np.asarray(description)

  folder = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(folder, exist_ok=True)
  # A crash mid-write must not leave a truncated file under the requested name.
  with tempfile.NamedTemporaryFile(dir=folder, suffix='.npz.tmp', delete=False) as f:
    try:
      np.savez(f, **arrays)
    except BaseException:
      os.unlink(f.name)
      raise
  os.replace(f.name, output_path)
  return description


def load_encoder(path: str) -> tuple[Tree, Tree]:
  """The Haiku `(params, state)` of an encoder written by `export_encoder`.

  Apply them to the same encoder class and width, with `is_training=False`; the classifier of a
  linear-evaluation export is under `load_classifier`.
  """
  trees = _load_trees(path)
  return trees['params'], trees['state']


def load_classifier(path: str) -> Tree:
  """The `linear` classifier's Haiku parameters of an export from a linear-evaluation checkpoint."""
  classifier = _load_trees(path)['classifier']
  if not classifier:
    raise ValueError(f'{path} holds no classifier: it was exported from a pretraining checkpoint.')
  return classifier


def _load_trees(path: str) -> dict[str, Tree]:
  trees: dict[str, Tree] = {part: {} for part in _PARTS}
  with np.load(path, allow_pickle=False) as arrays:
    for key in arrays.files:
      part, _, rest = key.partition('/')
      if part in trees:
        module, _, name = rest.rpartition('/')
        trees[part].setdefault(module, {})[name] = arrays[key]
  return trees


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The command line's flags, defined when it runs as a program only, so that `load_encoder`
  can be imported into any program without adding flags to it."""
  flags.DEFINE_string(
    'checkpoint',
    None,
    'Checkpoint to export from (pretrain.pkl, linear-eval.pkl, fine-tune.pkl or a 2020 release '
    'file).',
    required=True,
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    'output', None, 'The .npz file to write.', required=True, flag_values=flag_values
  )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    description = export_encoder(FLAGS.checkpoint, FLAGS.output)
  except checkpointing.CheckpointError as error:
    sys.exit(f'error: {error}')
  print(f'Wrote {description} to {FLAGS.output}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
