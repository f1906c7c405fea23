"""Checkpoints: round trip, atomic writes, clear errors (security: test_checkpoint_security.py)."""

import os
import pickle
from typing import NamedTuple

import dill
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# As in byol.main_loop: a file naming the state class by reference, without its fields, gets the
# real class only from a module already imported (the reader never imports what a file names).
from byol import byol_experiment
from byol.utils import checkpointing
import pickle_like_2020


RNG = np.array([0, 42], np.uint32)  # The raw data of a PRNG key, as checkpoints store it.


def make_state():
  params = {'layer': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}}
  opt_state = jax.tree.map(np.asarray, optax.chain(optax.trace(0.9)).init(params))
  return {'params': params, 'opt_state': opt_state, 'count': np.int32(3)}


def test_save_then_restore_round_trips_state_step_and_key(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  state = make_state()
  rng = jax.random.key(42)
  checkpointer.save(state, step=7, rng=rng)
  restored = checkpointer.restore()
  assert restored['step'] == 7
  np.testing.assert_array_equal(jax.random.key_data(restored['rng']), jax.random.key_data(rng))
  np.testing.assert_array_equal(
    restored['experiment_state']['params']['layer']['w'], state['params']['layer']['w']
  )
  assert type(restored['experiment_state']['opt_state'][0]).__name__ == 'TraceState'


def test_restore_without_checkpoint_returns_none(tmp_path):
  assert checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl').restore() is None


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  checkpointer.save(make_state(), step=1, rng=jax.random.key(0))

  def dump_then_die(obj, f, protocol=None):
    f.write(b'partial bytes')
    raise KeyboardInterrupt('killed mid-write')

  monkeypatch.setattr(checkpointing.dill, 'dump', dump_then_die)
  with pytest.raises(KeyboardInterrupt):
    checkpointer.save(make_state(), step=2, rng=jax.random.key(0))
  assert checkpointer.restore()['step'] == 1
  assert os.listdir(tmp_path) == ['pretrain.pkl']


def test_background_save_writes_the_state_as_it_was_when_saved(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  state = {'w': jnp.arange(4.0)}
  checkpointer.save(state, step=3, rng=jax.random.key(0), block=False)
  # The next update may reuse the saved arrays' buffers while the file is being written.
  state = jax.jit(lambda tree: jax.tree.map(lambda x: x + 10.0, tree), donate_argnums=0)(state)
  checkpointer.wait()
  restored = checkpointer.restore()
  assert restored['step'] == 3
  np.testing.assert_array_equal(restored['experiment_state']['w'], [0.0, 1.0, 2.0, 3.0])


def test_a_failed_background_save_raises_later_and_keeps_the_previous_checkpoint(
  tmp_path, monkeypatch
):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  checkpointer.save(make_state(), step=1, rng=jax.random.key(0))

  def disk_full(obj, f, protocol=None):
    raise OSError('No space left on device')

  with monkeypatch.context() as patch:
    patch.setattr(checkpointing.dill, 'dump', disk_full)
    checkpointer.save(make_state(), step=2, rng=jax.random.key(0), block=False)
    # The folder and the cause, and that nothing was lost.
    with pytest.raises(checkpointing.CheckpointError) as error:
      checkpointer.wait()
  assert str(tmp_path) in str(error.value) and 'No space left' in str(error.value)
  assert 'left as it was' in str(error.value) and 'resumes' in str(error.value)
  assert checkpointer.restore()['step'] == 1
  assert os.listdir(tmp_path) == ['pretrain.pkl']
  checkpointer.save(make_state(), step=3, rng=jax.random.key(0))  # The error is not raised twice.
  assert checkpointer.restore()['step'] == 3


def test_check_writable_removes_temporary_files_of_interrupted_writes(tmp_path):
  (tmp_path / 'pretrain.pkl.k2j4_x.tmp').write_bytes(b'half a checkpoint')
  (tmp_path / 'other.pkl.k2j4_x.tmp').write_bytes(b'not ours')
  checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl').check_writable()
  assert os.listdir(tmp_path) == ['other.pkl.k2j4_x.tmp']


@pytest.mark.parametrize('bad_value', [np.nan, np.inf])
def test_a_state_with_non_finite_values_is_not_saved(tmp_path, bad_value):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  checkpointer.save(make_state(), step=1, rng=jax.random.key(0))
  state = make_state()
  state['params']['layer']['w'][1, 2] = bad_value
  with pytest.raises(FloatingPointError, match=r"Step 2 has non-finite values in .*'w'"):
    checkpointer.save(state, step=2, rng=jax.random.key(0))
  assert checkpointer.restore()['step'] == 1
  assert os.listdir(tmp_path) == ['pretrain.pkl']


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  checkpointer.save(make_state(), step=1, rng=jax.random.key(0))
  data = open(checkpointer.path, 'rb').read()
  with open(checkpointer.path, 'wb') as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(checkpointing.CheckpointError, match='truncated or not a checkpoint'):
    checkpointer.restore()


def test_non_checkpoint_pickle_is_a_clear_error(tmp_path):
  path = tmp_path / 'other.pkl'
  path.write_bytes(pickle.dumps([1, 2, 3]))
  with pytest.raises(checkpointing.CheckpointError, match='not a checkpoint'):
    checkpointing.load_checkpoint(str(path))


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match='No checkpoint'):
    checkpointing.load_checkpoint(str(tmp_path / 'absent.pkl'))


def test_numpy_1x_module_names_are_accepted(tmp_path):
  # Numpy 1.x pickles name `numpy.core.multiarray`; such files must load on numpy 2.
  data = pickle.dumps(
    {'experiment_state': np.ones(3, np.float32), 'step': 0, 'rng': RNG}, protocol=2
  )
  data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
  assert b'numpy.core.multiarray' in data
  path = tmp_path / 'old.pkl'
  path.write_bytes(data)
  np.testing.assert_array_equal(
    checkpointing.load_checkpoint(str(path))['experiment_state'], np.ones(3, np.float32)
  )


class _LocalState(NamedTuple):
  params: dict


def test_state_namedtuples_outside_allowed_modules_are_refused(tmp_path):
  path = tmp_path / 'local.pkl'
  path.write_bytes(pickle.dumps({'experiment_state': _LocalState({}), 'step': 0, 'rng': RNG}))
  with pytest.raises(checkpointing.CheckpointError, match='_LocalState'):
    checkpointing.load_checkpoint(str(path))


def test_unwritable_folder_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  checkpointer = checkpointing.Checkpointer(str(blocker / 'sub'), 'pretrain.pkl')
  with pytest.raises(checkpointing.CheckpointError, match='--checkpoint_root'):
    checkpointer.check_writable()


def test_dill_namedtuples_of_other_modules_are_refused(tmp_path):
  # dill pickles NamedTuples through `_create_namedtuple`, which would import the named module.
  path = tmp_path / 'local.pkl'
  path.write_bytes(dill.dumps({'experiment_state': _LocalState({}), 'step': 0, 'rng': RNG}))
  with pytest.raises(checkpointing.CheckpointError, match='_LocalState'):
    checkpointing.load_checkpoint(str(path))


@pytest.mark.parametrize('mode', ['global', 'create_namedtuple'])
def test_2020_release_file_loads_with_stand_ins_for_removed_classes(tmp_path, mode):
  online_params = {'res_net50/~/initial_conv': {'w': np.arange(6, dtype=np.float32)}}
  online_state = {
    'res_net50/~/initial_batchnorm/~/mean_ema': {
      'counter': np.int32(7),
      'average': np.full((1, 1, 1, 3), 0.5, np.float32),
    }
  }
  path = str(tmp_path / 'pretrain_res50x1.pkl')
  pickle_like_2020.write(
    dict(
      online_params=online_params,
      target_params=online_params,
      online_state=online_state,
      target_state=online_state,
    ),
    path,
    mode,
  )

  checkpoint = checkpointing.load_checkpoint(path)
  state = checkpoint['experiment_state']
  assert type(state) is byol_experiment._ByolExperimentState
  jax.tree.map(np.testing.assert_array_equal, state.online_params, online_params)
  jax.tree.map(np.testing.assert_array_equal, state.online_state, online_state)
  # byol no longer defines the 2020 LARS states: stand-ins keep their names and values.
  decay_state, lars_state, _ = state.opt_state
  assert (type(decay_state).__name__, type(lars_state).__name__) == (
    'AddWeightDecayState',
    'ScaleByLarsState',
  )
  jax.tree.map(
    np.testing.assert_array_equal, lars_state[0], jax.tree.map(np.zeros_like, online_params)
  )
  assert checkpoint['step'] == 5004
  np.testing.assert_array_equal(checkpoint['rng'], np.array([0, 42], np.uint32))


def test_existing_function_of_byol_is_refused(tmp_path):
  path = tmp_path / 'function.pkl'
  path.write_bytes(pickle.dumps({'experiment_state': checkpointing.load_checkpoint}, protocol=2))
  with pytest.raises(
    checkpointing.CheckpointError,
    match='Refusing to load .* names `byol.utils.checkpointing.load_checkpoint`',
  ):
    checkpointing.load_checkpoint(str(path))
