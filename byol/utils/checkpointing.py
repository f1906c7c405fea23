"""Checkpoints (SPEC section 8): dill pickles written atomically, read back without running code.

A checkpoint is `{'experiment_state': <state NamedTuple of numpy arrays>, 'step': int, 'rng': key}`
where `rng` is the raw uint32 data of the training loop's PRNG key. Only process 0 writes it, and
only process 0 reads it: in a run of several processes the others get the bytes it read.

Checkpoints are downloaded and shared between people, and a pickle can name any callable
(`os.system`, `eval`) that `pickle.load` would call. They are read by `safe_pickle.loads`, which
evaluates the file as data only: numeric numpy arrays and scalars, builtin containers and scalars,
and experiment/optimiser state NamedTuples; a file that names anything else is refused with an error
that names it, before anything of it has run.

DeepMind's 2020 release files (dill protocol 2, numpy 1.x) name state classes that today's byol and
optax no longer define (`byol.utils.optimizers.ScaleByLarsState`, `optax._src.transform.ScaleState`,
...): those load as stand-in tuples of the same names and fields that keep their values, so that
`online_params` and `online_state` can be used whatever became of the optimiser's classes.
"""

import os
import pickle
import tempfile
import threading
from typing import Any, BinaryIO, Callable, Mapping, NamedTuple

from absl import logging
import dill
import jax
import numpy as np

from byol.utils import distributed
from byol.utils import safe_pickle

# A write goes through `<checkpoint file name>.<random>.tmp`, renamed over the file at the end.
_TEMPORARY_SUFFIX = '.tmp'
# dill writes our NamedTuples with their field names (`_create_namedtuple`) and arrays as numpy does
# (`_create_array`): the globals of the 2020 release files, all that `safe_pickle` needs. Protocol 4
# (Python 3.4+) is pinned so that files do not change with the Python that writes them.
_PROTOCOL = 4


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable, truncated, unsafe or of the wrong kind."""


def _temporary_prefix(path: str) -> str:
  """Start of the names of the temporary files a write of `path` goes through: 'pretrain.pkl.'."""
  return os.path.basename(path) + '.'


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write` on a temporary file beside `path`, syncs it, and renames it over `path`.

  A crash at any point leaves the previous file intact; the temporary file is
  `<file name>.<random>.tmp`, removed if `write` raises.
  """
  folder = os.path.dirname(path) or '.'
  with tempfile.NamedTemporaryFile(
    dir=folder, prefix=_temporary_prefix(path), suffix=_TEMPORARY_SUFFIX, delete=False
  ) as f:
    try:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    except BaseException:
      os.unlink(f.name)
      raise
  os.replace(f.name, path)
  sync(folder)  # Makes the rename itself durable.


def sync(path: str) -> None:
  """Flushes the file or folder (its entries) at `path` to the disk."""
  descriptor = os.open(path, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def load_checkpoint(path: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
  """Reads a checkpoint written by `Checkpointer.save`, without executing code from the file.

  In a run of several processes, process 0 reads the file and every process gets its contents.
  A missing file is an error, or None with `missing_ok`.
  """
  try:
    data = distributed.read_on_process_0(path)
  except OSError as error:
    raise CheckpointError(f'Cannot read the checkpoint {path} ({error}).') from None
  if data is None:
    if missing_ok:
      return None
    raise CheckpointError(f'No checkpoint at {path}.')
  try:
    checkpoint = safe_pickle.loads(data)
  except safe_pickle.UnsafePickleError as error:
    raise CheckpointError(
      f'Refusing to load {path}: the file {error}. Nothing from it was run. Do not load files '
      'from sources you do not trust.'
    ) from None
  except pickle.UnpicklingError as error:
    raise CheckpointError(
      f'{path} is truncated or not a checkpoint ({error}). Delete or replace it to start afresh.'
    ) from None
  if (
    not isinstance(checkpoint, dict)
    or 'experiment_state' not in checkpoint
    or type(checkpoint.get('step')) is not int
    or not _is_key_data(checkpoint.get('rng'))
  ):
    raise CheckpointError(
      f'{path} is a pickle but not a checkpoint: expected a dict with `experiment_state`, '
      '`step` (an int) and `rng` (the uint32 data of a PRNG key).'
    )
  return checkpoint


def _is_key_data(rng: Any) -> bool:
  """Whether `rng` is the raw data of a PRNG key, as `Checkpointer.save` writes it."""
  return isinstance(rng, np.ndarray) and rng.dtype == np.uint32 and rng.ndim == 1 and rng.size > 0


class Checkpointer:
  """Saves and restores `<checkpoint_root>/<filename>`; only process 0 writes and reads the file."""

  def __init__(self, checkpoint_root: str, filename: str):
    self._path = os.path.join(checkpoint_root, filename)
    self._writer: threading.Thread | None = None  # The background write in progress, if any.
    self._write_error: BaseException | None = None  # What made the last background write fail.

  @property
  def path(self) -> str:
    """Where the checkpoint lives."""
    return self._path

  def check_writable(self) -> None:
    """Creates the checkpoint folder, checks it is writable, removes interrupted writes' files."""
    if jax.process_index() != 0:
      return
    folder = os.path.dirname(self._path) or '.'
    try:
      os.makedirs(folder, exist_ok=True)
      with tempfile.TemporaryFile(dir=folder):
        pass
      for name in os.listdir(folder):
        if name.startswith(_temporary_prefix(self._path)) and name.endswith(_TEMPORARY_SUFFIX):
          os.unlink(os.path.join(folder, name))
    except OSError as error:
      raise CheckpointError(
        f'Cannot write checkpoints to {folder} ({error.strerror}). Pass a writable '
        '--checkpoint_root.'
      ) from None

  def save(
    self, experiment_state: NamedTuple, step: int, rng: jax.Array, *, block: bool = True
  ) -> None:
    """Writes the checkpoint atomically: a crash at any point leaves the previous one intact.

    The state is fetched to the host before `save` returns, so the next update may go on at once
    (JAX does not reuse a buffer that a host array still views). With `block=False` the file is
    written by a background thread while training goes on; a write that fails raises its error
    from the next `save` or `wait`.
    A state with a non-finite value is not written (FloatingPointError): it would replace the last
    good checkpoint with one that cannot be trained or evaluated.
    """
    if jax.process_index() != 0:
      return
    self.wait()  # One write at a time, in order.
    checkpoint = {
      'experiment_state': jax.tree.map(np.asarray, jax.device_get(experiment_state)),
      'step': int(step),
      'rng': np.asarray(jax.random.key_data(rng)),
    }
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(checkpoint['experiment_state']):
      if np.issubdtype(leaf.dtype, np.inexact) and not np.all(np.isfinite(leaf)):
        raise FloatingPointError(
          f'Step {step} has non-finite values in {jax.tree_util.keystr(key_path)}; not saving '
          f'it. The last good checkpoint is {self._path}.'
        )
    if block:
      self._write(checkpoint)
    else:
      self._writer = threading.Thread(
        target=self._write_in_background, args=(checkpoint,), name='checkpoint-writer'
      )
      self._writer.start()

  def wait(self) -> None:
    """Returns once no background write is in progress; raises the error of one that failed."""
    if self._writer is not None:
      self._writer.join()
      self._writer = None
    if self._write_error is not None:
      error, self._write_error = self._write_error, None
      raise error

  def _write_in_background(self, checkpoint: dict[str, Any]) -> None:
    try:
      self._write(checkpoint)
    except BaseException as error:  # Raised in the training thread by the next save or wait.
      self._write_error = error

  def _write(self, checkpoint: dict[str, Any]) -> None:
    """Pickles `checkpoint` over the checkpoint file, atomically (`write_atomically`)."""
    try:
      write_atomically(self._path, lambda f: dill.dump(checkpoint, f, protocol=_PROTOCOL))
    except OSError as error:  # A full disk, a folder made read-only or removed.
      folder = os.path.dirname(self._path) or '.'
      raise CheckpointError(
        f'Cannot write the checkpoint of step {checkpoint["step"]} to {folder} '
        f'({error.strerror or error}); {self._path} is left as it was. Free space there or pass '
        'a writable --checkpoint_root, then start the run again: it resumes from that checkpoint.'
      ) from None
    logging.info('Saved step %d to %s.', checkpoint['step'], self._path)

  def restore(self) -> dict[str, Any] | None:
    """The checkpoint with `rng` as a PRNG key, or None when there is none yet."""
    checkpoint = load_checkpoint(self._path, missing_ok=True)
    if checkpoint is None:
      return None
    try:
      checkpoint['rng'] = jax.random.wrap_key_data(checkpoint['rng'])
    except (TypeError, ValueError) as error:
      raise CheckpointError(
        f'{self._path} holds no PRNG key of this JAX ({error}). Delete it to start afresh.'
      ) from None
    return checkpoint


# Haiku modules of our networks that are not part of the encoder, with their output layer.
_CLASSIFIER_MODULES = ('classifier', 'linear')
HEAD_MODULES = ('projector', 'predictor', *_CLASSIFIER_MODULES)


def _weights_shape(params: Mapping[Any, Any], module: str, ndim: int) -> tuple[int, ...] | None:
  """The shape of `params[module]['w']` if it is an array (or `jax.ShapeDtypeStruct`) of `ndim`
  dimensions, else None.

  The parameters may come from any file: a module that is not a dict, or weights that are not an
  array of that rank, are described as absent rather than read. So is anything else with a
  `shape` that is not a tuple of integers (a state tuple of the file's own fields can have one).
  """
  values = params.get(module)
  shape = getattr(values.get('w'), 'shape', None) if isinstance(values, Mapping) else None
  if not (isinstance(shape, tuple) and all(isinstance(size, int) for size in shape)):
    return None
  return shape if len(shape) == ndim else None


def describe_networks(params: Any) -> str:
  """What a Haiku parameter tree of ours holds: 'res_net50 width 2, classifier of 1000 classes'.

  The encoder is named by its top-level module; its width multiplier is read from the initial
  convolution, which has 64 x width output channels in every encoder of `byol.utils.networks`,
  and a 3x3 kernel with the small-image stem (7x7 otherwise).
  """
  if not isinstance(params, Mapping):
    return f'no Haiku parameters (a {type(params).__name__})'
  parts = []
  for network in sorted({module.split('/')[0] for module in params} - set(HEAD_MODULES)):
    conv = _weights_shape(params, f'{network}/~/initial_conv', ndim=4)  # [kh, kw, 3, 64 x width]
    if conv is None:
      parts.append(network)
      continue
    stem = ' small-image stem' if conv[0] == 3 else ''
    parts.append(f'{network} width {conv[-1] // 64}{stem}')
  for module in _CLASSIFIER_MODULES:
    weights = _weights_shape(params, module, ndim=2)  # [D, classes]
    if weights is not None:
      parts.append(f'{module} of {weights[-1]} classes')
  return ', '.join(parts) or 'no network'


def encoder_from_state(experiment_state: Any, *, path: str) -> tuple[dict, dict]:
  """The encoder's parameters and BatchNorm state held by a pretraining or linear-eval state.

  A pretraining state keeps the encoder in its online network, next to the projector, predictor
  and classifier heads, which are left out; a linear-evaluation state keeps it as its backbone.
  """
  for params_field, state_field in (
    ('online_params', 'online_state'),
    ('backbone_params', 'backbone_state'),
  ):
    params = getattr(experiment_state, params_field, None)
    state = getattr(experiment_state, state_field, None)
    if isinstance(params, Mapping) and isinstance(state, Mapping):
      return (
        _encoder_part(params, path=path, field=params_field),
        _encoder_part(state, path=path, field=state_field),
      )
  raise CheckpointError(
    f'{path} holds no encoder (online_params and online_state, or backbone_params and '
    'backbone_state): is it a pretraining or linear-evaluation checkpoint?'
  )


def _encoder_part(tree: Mapping[Any, Any], *, path: str, field: str) -> dict[str, Any]:
  """The encoder's modules of a Haiku tree, {module: {name: array}}, the heads left out.

  Raises CheckpointError unless each is a dict of numeric arrays: a file may hold any data the
  safe loader accepts (its dict keys are strings), and what is exported must be what Haiku built.
  """
  encoder = {}
  for module, values in tree.items():
    if module.split('/')[0] in HEAD_MODULES:
      continue
    if not isinstance(values, Mapping) or not all(
      isinstance(value, np.ndarray) and value.dtype.kind in 'biuf' for value in values.values()
    ):
      raise CheckpointError(
        f'{path}: {field}[{module!r}] is not a dict of numeric arrays, as Haiku writes; the '
        'file is damaged or not a checkpoint of this project.'
      )
    encoder[module] = dict(values)
  return encoder


def check_parameter_shapes(found: Any, wanted: Any, *, path: str, wanted_networks: str) -> None:
  """Refuses parameters from `path` whose names or shapes differ from those this config builds.

  `wanted_networks` describes the config's networks for the message (e.g. 'ResNet50 1x, 1000
  classes'); the checkpoint's are described from its parameters (`describe_networks`).
  """

  def signature(params: Any) -> dict[str, tuple[int, ...]]:
    return {
      jax.tree_util.keystr(key_path): tuple(np.shape(leaf))
      for key_path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }

  found_signature, wanted_signature = signature(found), signature(wanted)
  if found_signature != wanted_signature:
    differing = sorted(set(found_signature.items()) ^ set(wanted_signature.items()))[:4]
    raise CheckpointError(
      f'{path} holds {describe_networks(found)}, but the config asks for {wanted_networks}; '
      f'first differences (path, shape): {differing}. Use the same --encoder, width and '
      'dataset as the run that wrote it, or another --checkpoint_root.'
    )
