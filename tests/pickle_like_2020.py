"""Writes a pretraining checkpoint the way DeepMind's 2020 release files were written.

  python tests/pickle_like_2020.py ARRAYS.pkl OUTPUT.pkl {global,create_namedtuple}

ARRAYS.pkl is a plain pickle of `{'online_params', 'target_params', 'online_state', 'target_state'}`
(dicts of numpy arrays). OUTPUT.pkl gets `{'experiment_state': _ByolExperimentState(...), 'step',
'rng'}` pickled with protocol 2, its state classes defined under their 2020 module names by
stand-in modules registered here (this process never imports the real byol or optax): the 2020
byol optimiser states (`AddWeightDecayState`, `ScaleByLarsState`, which byol no longer has) and
optax's 2020 `ScaleState`. Arrays carry the numpy 1.x module name `numpy.core.multiarray`.

The two modes are the two ways a pickle can name a NamedTuple class. With `create_namedtuple`,
dill writes `dill._dill._create_namedtuple(name, fields, module)`, as it does for NamedTuples
(and did in 2020). With `global`, the class is named by reference (`GLOBAL module name`), as
pickle does for any importable class.
"""

import os
import pickle
import subprocess
import sys
import types
from typing import Any, NamedTuple

import dill
import numpy as np


def _module(name: str) -> types.ModuleType:
  """An empty module registered as `name` (and its parents), standing in for the 2020 code."""
  parts = name.split('.')
  for depth in range(1, len(parts) + 1):
    sys.modules.setdefault('.'.join(parts[:depth]), types.ModuleType('.'.join(parts[:depth])))
  return sys.modules[name]


def _as_2020_class(cls: type, module_name: str, importable: bool) -> type:
  cls.__module__ = module_name
  cls.__qualname__ = cls.__name__
  if importable:
    setattr(_module(module_name), cls.__name__, cls)
  else:
    _module(module_name)  # The module exists, the class cannot be found in it.
  return cls


class _ByolExperimentState(NamedTuple):
  online_params: Any
  target_params: Any
  online_state: Any
  target_state: Any
  opt_state: Any


class AddWeightDecayState(NamedTuple):
  """Stateless."""


class ScaleByLarsState(NamedTuple):
  mu: Any


class ScaleState(NamedTuple):
  """Stateless."""


def main(arrays_path: str, output_path: str, mode: str) -> None:
  importable = {'global': True, 'create_namedtuple': False}[mode]
  state_class = _as_2020_class(_ByolExperimentState, 'byol.byol_experiment', importable)
  decay_class = _as_2020_class(AddWeightDecayState, 'byol.utils.optimizers', importable)
  lars_class = _as_2020_class(ScaleByLarsState, 'byol.utils.optimizers', importable)
  scale_class = _as_2020_class(ScaleState, 'optax._src.transform', importable)

  with open(arrays_path, 'rb') as f:
    arrays = pickle.load(f)
  momentum = {
    module: {name: np.zeros_like(value) for name, value in params.items()}
    for module, params in arrays['online_params'].items()
  }
  # The 2020 LARS: optax.chain of weight decay, LARS scaling with momentum, and scale(-lr).
  opt_state = (decay_class(), lars_class(mu=momentum), scale_class())
  checkpoint = dict(
    experiment_state=state_class(
      arrays['online_params'],
      arrays['target_params'],
      arrays['online_state'],
      arrays['target_state'],
      opt_state,
    ),
    step=5004,
    rng=np.array([0, 42], dtype=np.uint32),
  )  # A 2020 PRNG key: raw uint32 data.
  dumps = pickle.dumps if importable else dill.dumps
  data = dumps(checkpoint, protocol=2)
  # numpy 2 names its pickling functions `numpy._core.*`; numpy 1.x (2020) wrote `numpy.core.*`.
  data = data.replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')
  with open(output_path, 'wb') as f:
    f.write(data)


def write(arrays: dict[str, Any], output_path: str, mode: str) -> None:
  """Writes OUTPUT.pkl from `arrays` in a fresh process, away from the real byol and optax."""
  arrays_path = output_path + '.arrays'
  with open(arrays_path, 'wb') as f:
    pickle.dump(arrays, f)
  try:
    subprocess.run([sys.executable, __file__, arrays_path, output_path, mode], check=True)
  finally:
    os.unlink(arrays_path)


if __name__ == '__main__':
  main(*sys.argv[1:])
