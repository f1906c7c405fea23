"""Checkpoints (SPEC section 8): dill pickles written atomically, read back without running code.

A checkpoint is `{'experiment_state': <state NamedTuple of numpy arrays>, 'step': int, 'rng': key}`
where `rng` is the raw uint32 data of the training loop's PRNG key. Only process 0 writes it.

Loading uses an allow-list unpickler: a pickle can name any callable (`os.system`, `eval`) and a plain
`pickle.load` would call it, while checkpoints are downloaded and shared between people. Only numpy
arrays and dtypes, builtin containers and scalars, and experiment/optimiser state NamedTuples may be
named; anything else is refused with an error that names it.
"""

import collections
import importlib
import io
import os
import pickle
import tempfile
from typing import Any, NamedTuple

import dill
import jax
import numpy as np

# Globals a checkpoint may name, besides state NamedTuples (see `_SafeUnpickler.find_class`).
_ALLOWED_GLOBALS = frozenset({
    'builtins.dict', 'builtins.list', 'builtins.tuple', 'builtins.set', 'builtins.frozenset',
    'builtins.int', 'builtins.float', 'builtins.complex', 'builtins.bool', 'builtins.str',
    'builtins.bytes', 'builtins.bytearray', 'collections.OrderedDict',
    # Protocol 2 pickles carry array bytes as latin-1 strings re-encoded by this function.
    '_codecs.encode',
    'numpy.ndarray', 'numpy.dtype',
    'numpy._core.multiarray._reconstruct', 'numpy._core.multiarray.scalar',
    # dill rebuilds arrays as `_create_array(f, args, state)`; `f` itself is resolved through this
    # allow-list, and `_load_type` only maps names to builtin types.
    'dill._dill._create_array', 'dill._dill._load_type',
})

# Modules whose NamedTuple classes (experiment and optimiser states) a checkpoint may name.
_STATE_MODULE_PREFIXES = ('byol.', 'optax.')

# Numpy 1.x pickles name `numpy.core`, which numpy 2 keeps only as a deprecated alias.
_RENAMED_MODULES = {'numpy.core.multiarray': 'numpy._core.multiarray'}


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, truncated, unsafe or of the wrong kind."""


def _is_namedtuple_class(cls: Any) -> bool:
  return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, '_fields')


def _state_class(module: str, name: str) -> type | None:
  """The NamedTuple class `module.name` if it is a state class of an allowed module, else None."""
  if not module.startswith(_STATE_MODULE_PREFIXES):
    return None
  try:
    cls = getattr(importlib.import_module(module), name, None)
  except ImportError:
    return None
  return cls if _is_namedtuple_class(cls) else None


def _namedtuple_class(
    name: str, fieldnames: tuple[str, ...], modulename: str, defaults: Any = None) -> type:
  """Stands in for dill's `_create_namedtuple`, which would import any module the file names.

  Returns the real state class when it exists with these fields, else a plain namedtuple with the
  same name and fields (for state classes that the installed byol/optax no longer have).
  """
  del defaults  # Checkpoints always store every field.
  if not modulename.startswith(_STATE_MODULE_PREFIXES):
    raise CheckpointError(
        f'Refusing to load the class `{modulename}.{name}`: only experiment and optimiser states '
        f'({", ".join(_STATE_MODULE_PREFIXES)}*) may appear in a checkpoint.')
  cls = _state_class(modulename, name)
  if cls is not None and tuple(cls._fields) == tuple(fieldnames):
    return cls
  return collections.namedtuple(name, fieldnames, module=modulename)


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals."""

  def find_class(self, module: str, name: str) -> Any:
    module = _RENAMED_MODULES.get(module, module)
    qualified_name = f'{module}.{name}'
    if qualified_name == 'dill._dill._create_namedtuple':
      return _namedtuple_class
    if qualified_name in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    cls = _state_class(module, name)
    if cls is not None:
      return cls
    raise CheckpointError(
        f'Refusing to load `{qualified_name}`: a checkpoint may only hold arrays, builtin '
        'containers and experiment state, and this file names something else. Do not load files '
        'from sources you do not trust.')


def load_checkpoint(path: str) -> dict[str, Any]:
  """Reads a checkpoint written by `Checkpointer.save`, without executing code from the file."""
  if not os.path.isfile(path):
    raise CheckpointError(f'No checkpoint at {path}.')
  try:
    with open(path, 'rb') as f:
      checkpoint = _SafeUnpickler(io.BufferedReader(f)).load()
  except CheckpointError:
    raise
  except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
          ImportError, IndexError, KeyError) as error:
    raise CheckpointError(
        f'{path} is truncated or not a checkpoint ({type(error).__name__}: {error}). Delete or '
        'replace it to start afresh.') from None
  if not isinstance(checkpoint, dict) or 'experiment_state' not in checkpoint:
    raise CheckpointError(
        f'{path} is a pickle but not a checkpoint: expected a dict with `experiment_state`, '
        f'`step` and `rng`.')
  return checkpoint


class Checkpointer:
  """Saves and restores `<checkpoint_root>/<filename>`; only process 0 writes."""

  def __init__(self, checkpoint_root: str, filename: str):
    self._path = os.path.join(checkpoint_root, filename)

  @property
  def path(self) -> str:
    """Where the checkpoint lives."""
    return self._path

  def check_writable(self) -> None:
    """Creates the checkpoint folder and checks that a file can be written there."""
    if jax.process_index() != 0:
      return
    folder = os.path.dirname(self._path) or '.'
    try:
      os.makedirs(folder, exist_ok=True)
      with tempfile.TemporaryFile(dir=folder):
        pass
    except OSError as error:
      raise CheckpointError(
          f'Cannot write checkpoints to {folder} ({error.strerror}). Pass a writable '
          '--checkpoint_root.') from None

  def save(self, experiment_state: NamedTuple, step: int, rng: jax.Array) -> None:
    """Writes the checkpoint atomically: a crash at any point leaves the previous one intact."""
    if jax.process_index() != 0:
      return
    checkpoint = {
        'experiment_state': jax.tree.map(np.asarray, jax.device_get(experiment_state)),
        'step': int(step),
        'rng': np.asarray(jax.random.key_data(rng)),
    }
    folder = os.path.dirname(self._path) or '.'
    with tempfile.NamedTemporaryFile(
        dir=folder, prefix=os.path.basename(self._path) + '.', suffix='.tmp', delete=False) as f:
      try:
        dill.dump(checkpoint, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
      except BaseException:
        os.unlink(f.name)
        raise
    os.replace(f.name, self._path)
    # Make the rename itself durable.
    directory = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(directory)
    finally:
      os.close(directory)

  def restore(self) -> dict[str, Any] | None:
    """The checkpoint with `rng` as a PRNG key, or None when there is none yet."""
    if not os.path.exists(self._path):
      return None
    checkpoint = load_checkpoint(self._path)
    checkpoint['rng'] = jax.random.wrap_key_data(checkpoint['rng'])
    return checkpoint


def check_parameter_shapes(found: Any, wanted: Any, *, path: str, wanted_networks: str) -> None:
  """Refuses parameters from `path` whose names or shapes differ from those this config builds.

  `wanted_networks` describes the config's networks for the message (encoder, width, classes).
  """
  def signature(params: Any) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(key_path): tuple(np.shape(leaf))
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
  found_signature, wanted_signature = signature(found), signature(wanted)
  if found_signature != wanted_signature:
    # Haiku params are {module path: {name: array}}; the first path component names the network.
    networks = sorted({module.split('/')[0] for module in found}) if isinstance(found, dict) else []
    differing = sorted(set(found_signature.items()) ^ set(wanted_signature.items()))[:4]
    raise CheckpointError(
        f'{path} holds other networks ({", ".join(networks)}) than this config builds '
        f'({wanted_networks}); first differences (path, shape): {differing}. Use the same '
        '--encoder and dataset as the run that wrote it, or another --checkpoint_root.')
