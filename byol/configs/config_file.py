"""The config a run trained with, kept beside its checkpoint: `<root>/<mode>.config.json`.

A train worker writes it when it starts. Linear evaluation and the eval workers take the encoder
and the image size of the pretraining run from `pretrain.config.json`, so `--encoder`, the width
and `--image_size` need not be repeated; a value given on the command line that contradicts the
file is an error naming both. Folders without the file (DeepMind's 2020 release, runs of earlier
versions) take the flags as before.
"""

import json
import os
from typing import Any, Mapping, MutableMapping, Sequence

from byol.utils import checkpointing
from byol.utils import distributed

# The entries that decide the encoder a run on a pretraining checkpoint rebuilds.
ENCODER = (
  ('network_config', 'encoder_class'),
  ('network_config', 'encoder_config', 'resnet_v2'),
  ('network_config', 'encoder_config', 'width_multiplier'),
  ('network_config', 'encoder_config', 'zero_init_residual'),
  ('network_config', 'encoder_config', 'small_image_stem'),
)
# Entries a run on a pretraining checkpoint must share with the pretraining run: the encoder it
# rebuilds, and the images it was trained on. (Transfer to another dataset takes the encoder's
# alone.)
INHERITED = (*ENCODER, ('dataset_config', 'image_size'))


class ConfigError(ValueError):
  """A config file that cannot be read, or a flag that contradicts the pretraining run's config."""


def path(checkpoint_root: str, experiment_mode: str) -> str:
  """Where the config of `experiment_mode` ('pretrain', 'linear-eval', 'fine-tune') lives."""
  return os.path.join(checkpoint_root, f'{experiment_mode}.config.json')


def write(config: Mapping[str, Any], checkpoint_root: str, experiment_mode: str) -> None:
  """Writes `config` as JSON beside the checkpoint, atomically (a temporary file, then a rename)."""
  data = json.dumps(config, indent=2, sort_keys=True).encode()
  checkpointing.write_atomically(path(checkpoint_root, experiment_mode), lambda f: f.write(data))


def read(checkpoint_root: str, experiment_mode: str) -> dict[str, Any] | None:
  """The config written by `write`, or None when there is none; read by process 0 for all."""
  config_path = path(checkpoint_root, experiment_mode)
  data = distributed.read_on_process_0(config_path)
  if data is None:
    return None
  try:
    config = json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ConfigError(f'{config_path} is not a config ({error}); delete it.') from None
  if not isinstance(config, dict):
    raise ConfigError(f'{config_path} is not a config (not a JSON object); delete it.')
  return config


def _get(config: Mapping[str, Any], key_path: tuple[str, ...]) -> Any:
  for key in key_path:
    if not isinstance(config, Mapping) or key not in config:
      raise KeyError(key_path)
    config = config[key]
  return config


def inherit(
  config: MutableMapping[str, Any],
  pretraining: Mapping[str, Any],
  *,
  explicit: Mapping[tuple[str, ...], str],
  source: str,
  key_paths: Sequence[tuple[str, ...]] = INHERITED,
) -> None:
  """Sets the `key_paths` entries of `config` (by default `INHERITED`) to those of the pretraining
  run's config.

  Args:
    config: the config being assembled, with the command line applied.
    pretraining: the pretraining run's config (`read(..., 'pretrain')`), from `source`.
    explicit: the entries the command line set, with the flag that set each, e.g.
      `{('network_config', 'encoder_class'): '--encoder'}`: these must agree with `pretraining`.
    source: the file `pretraining` came from, for messages.
    key_paths: the entries to inherit.

  Raises:
    ConfigError: an explicit entry differs from the pretraining run's.
  """
  for key_path in key_paths:
    try:
      wanted = _get(pretraining, key_path)
    except KeyError:
      continue  # A file of an older version without this entry: the flags decide.
    name = '.'.join(key_path)
    if key_path in explicit and _get(config, key_path) != wanted:
      raise ConfigError(
        f'{explicit[key_path]} gives {name}={_get(config, key_path)!r}, but the pretraining run '
        f'used {wanted!r} ({source}). Leave the flag out (it is read from there), or use another '
        '--checkpoint_root.'
      )
    *parents, key = key_path
    node = config
    for parent in parents:
      node = node[parent]
    node[key] = wanted
