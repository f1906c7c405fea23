"""A checkpoint cannot run code: the allow-list entry by entry, crafted payloads, fuzzed files.

Pickles are written here opcode by opcode (`call`, `new`, `build`, ...) so that a test can name any
global with any arguments, as an attacker would. Each payload is first shown to be live: the plain
unpickler runs it and creates its marker file. Then `load_checkpoint` must refuse it, and the marker
must never appear.
"""

import os
import pickle
import struct
import sys
import time
import types
from typing import Any, NamedTuple

import dill
import jax
import numpy as np
import optax
import pytest

from byol import byol_experiment
from byol import export_encoder
from byol.utils import checkpointing
from byol.utils import optimizers
from byol.utils import safe_pickle
import support

RECONSTRUCT = 'numpy._core.multiarray._reconstruct'


# --- Pickles written opcode by opcode (protocol 2, as the 2020 release files).


def global_(qualified_name: str) -> bytes:
  module, name = qualified_name.rsplit('.', 1)
  return pickle.GLOBAL + f'{module}\n{name}\n'.encode()


def text(value: str) -> bytes:
  data = value.encode('utf-8', 'surrogatepass')
  return pickle.BINUNICODE + struct.pack('<I', len(data)) + data


def raw(value: bytes) -> bytes:
  return pickle.BINBYTES + struct.pack('<I', len(value)) + value


def integer(value: int) -> bytes:
  return pickle.BININT + struct.pack('<i', value)


def tuple_(*items: bytes) -> bytes:
  return pickle.MARK + b''.join(items) + pickle.TUPLE


def call(function: bytes, *arguments: bytes) -> bytes:
  return function + tuple_(*arguments) + pickle.REDUCE


def new(cls: bytes, *arguments: bytes) -> bytes:
  return cls + tuple_(*arguments) + pickle.NEWOBJ


def build(target: bytes, state: bytes) -> bytes:
  return target + state + pickle.BUILD


def pickled(value: Any) -> bytes:
  """`value` as an expression: Python's own protocol 2 pickle without its header and STOP."""
  return pickle.dumps(value, protocol=2)[2:-1]


def whole(expression: bytes) -> bytes:
  return pickle.PROTO + b'\x02' + expression + pickle.STOP


def dtype_state(byte_order: str = '<') -> tuple[bytes, ...]:
  """The items of numpy's pickled state of a plain dtype."""
  return (
    integer(3),
    text(byte_order),
    pickle.NONE,
    pickle.NONE,
    pickle.NONE,
    integer(-1),
    integer(-1),
    integer(0),
  )


def float32_dtype(byte_order: str = '<') -> bytes:
  return build(
    call(global_('numpy.dtype'), text('f4'), pickle.NEWFALSE, pickle.NEWTRUE),
    tuple_(*dtype_state(byte_order)),
  )


def array_state(values: np.ndarray, dtype: bytes) -> bytes:
  return tuple_(integer(1), pickled(values.shape), dtype, pickle.NEWFALSE, raw(values.tobytes()))


def reconstruct_arguments() -> tuple[bytes, ...]:
  return global_('numpy.ndarray'), tuple_(integer(0)), raw(b'b')


def contains_code(value: Any) -> bool:
  """Whether `value` is or holds something callable: a type, function, code object or module."""
  if isinstance(
    value,
    (
      type,
      types.FunctionType,
      types.BuiltinFunctionType,
      types.CodeType,
      types.ModuleType,
      types.MethodType,
    ),
  ) or callable(value):
    return True
  if isinstance(value, dict):
    return any(contains_code(key) or contains_code(item) for key, item in value.items())
  if isinstance(value, (list, tuple)):
    return any(contains_code(item) for item in value)
  return False


# --- Every entry of the allow-list: what it makes from the arguments its writers give it.

VALUES = np.arange(6, dtype=np.float32).reshape(2, 3)

WHAT_EACH_GLOBAL_MAKES = {
  RECONSTRUCT: (
    build(
      call(global_(RECONSTRUCT), *reconstruct_arguments()), array_state(VALUES, float32_dtype())
    ),
    VALUES,
  ),
  'numpy.ndarray': (  # Only ever an argument of `_reconstruct` (above) or `_create_array`.
    call(
      global_('dill._dill._create_array'),
      global_(RECONSTRUCT),
      tuple_(*reconstruct_arguments()),
      array_state(VALUES, float32_dtype()),
      pickle.NONE,
    ),
    VALUES,
  ),
  'numpy.dtype': (
    build(
      call(global_(RECONSTRUCT), *reconstruct_arguments()),
      array_state(VALUES.astype('>f4'), float32_dtype('>')),
    ),
    VALUES.astype('>f4'),
  ),
  'numpy._core.multiarray.scalar': (
    call(global_('numpy._core.multiarray.scalar'), float32_dtype(), raw(b'\x00\x00\x80?')),
    np.float32(1.0),
  ),
  '_codecs.encode': (
    call(global_('_codecs.encode'), text('\x00\xff'), text('latin1')),
    b'\x00\xff',
  ),
  'dill._dill._create_array': (
    call(
      global_('dill._dill._create_array'),
      global_(RECONSTRUCT),
      tuple_(*reconstruct_arguments()),
      array_state(VALUES, float32_dtype()),
    ),
    VALUES,
  ),
  'dill._dill._create_namedtuple': (
    new(
      call(
        global_('dill._dill._create_namedtuple'),
        text('ScaleByLarsState'),
        tuple_(text('mu')),
        text('byol.utils.optimizers'),
      ),
      integer(7),
    ),
    ('ScaleByLarsState', ('mu',), (7,)),
  ),
}


def test_the_allow_list_is_exactly_the_documented_globals():
  assert safe_pickle.ALLOWED_GLOBALS == set(WHAT_EACH_GLOBAL_MAKES)


@pytest.mark.parametrize('name', sorted(WHAT_EACH_GLOBAL_MAKES))
def test_each_allowed_global_makes_data(name):
  expression, expected = WHAT_EACH_GLOBAL_MAKES[name]
  value = safe_pickle.loads(whole(expression))
  if isinstance(value, np.ndarray):
    assert value.dtype == expected.dtype and value.flags.writeable
    np.testing.assert_array_equal(value, expected)
  elif name == 'dill._dill._create_namedtuple':
    assert (type(value).__name__, value._fields, tuple(value)) == expected
  else:
    assert type(value) is type(expected) and value == expected
  assert not contains_code(value)


def test_a_state_class_named_by_reference_makes_a_state_tuple():
  value = safe_pickle.loads(whole(new(global_('optax._src.transform.ScaleState'), integer(1))))
  assert isinstance(value, tuple) and type(value).__name__ == 'ScaleState' and tuple(value) == (1,)
  # The real class when an imported module defines it: training can resume with it.
  trace = safe_pickle.loads(
    whole(new(global_(f'{optax.TraceState.__module__}.TraceState'), integer(2)))
  )
  assert type(trace) is optax.TraceState and trace.trace == 2


class Use(NamedTuple):
  """How writers use a global: `function` applied by `opcode` to `arguments`, then a BUILD."""

  function: bytes
  opcode: bytes  # pickle.REDUCE or pickle.NEWOBJ.
  arguments: tuple[bytes, ...]
  state: tuple[bytes, ...] | None = None  # The items of the BUILD's state tuple, if any.


# Each entry of the allow-list as its writers use it: the starting points of the attacks below.
# (`numpy.ndarray` is only ever an argument: of `_reconstruct` and `_create_array` here, and among
# the attacks on every argument.)
USES = {
  RECONSTRUCT: Use(
    global_(RECONSTRUCT),
    pickle.REDUCE,
    reconstruct_arguments(),
    (integer(1), pickled((2, 3)), float32_dtype(), pickle.NEWFALSE, raw(VALUES.tobytes())),
  ),
  'numpy.dtype': Use(
    global_('numpy.dtype'),
    pickle.REDUCE,
    (text('f4'), pickle.NEWFALSE, pickle.NEWTRUE),
    dtype_state(),
  ),
  'numpy._core.multiarray.scalar': Use(
    global_('numpy._core.multiarray.scalar'),
    pickle.REDUCE,
    (float32_dtype(), raw(b'\x00\x00\x80?')),
  ),
  '_codecs.encode': Use(global_('_codecs.encode'), pickle.REDUCE, (text('ab'), text('latin1'))),
  'dill._dill._create_array': Use(
    global_('dill._dill._create_array'),
    pickle.REDUCE,
    (
      global_(RECONSTRUCT),
      tuple_(*reconstruct_arguments()),
      array_state(VALUES, float32_dtype()),
      pickle.NONE,
    ),
  ),
  'dill._dill._create_namedtuple': Use(
    global_('dill._dill._create_namedtuple'),
    pickle.REDUCE,
    (text('ScaleByLarsState'), tuple_(text('mu')), text('byol.utils.optimizers')),
  ),
  'a state class by reference': Use(
    global_('byol.byol_experiment._ByolExperimentState'), pickle.NEWOBJ, (pickle.NONE,) * 5
  ),
  'a state class made by _create_namedtuple': Use(
    call(
      global_('dill._dill._create_namedtuple'),
      text('ScaleByLarsState'),
      tuple_(text('mu')),
      text('byol.utils.optimizers'),
    ),
    pickle.NEWOBJ,
    (integer(7),),
  ),
}

# What an attacker may put in their place: names of dangerous things, the other globals of the list,
# a state class, arrays and dtypes under construction, odd numbers and containers.
ATTACKS = (
  text('os'),
  text('system'),
  text('FunctionType'),
  text('CodeType'),
  text('builtins'),
  text('byol.utils.checkpointing'),
  text('EvilState'),
  text('f4'),
  text('O8'),
  text('V8'),
  text('latin1'),
  text('rot13'),
  text('zlib_codec'),
  raw(b'b'),
  raw(b'\x00' * 4),
  integer(0),
  integer(-1),
  integer(2**31 - 1),
  pickle.NONE,
  pickle.NEWTRUE,
  pickle.NEWFALSE,
  pickle.EMPTY_TUPLE,
  tuple_(integer(0)),
  tuple_(integer(-1), integer(2**31 - 1)),
  tuple_(text('__new__'), text('__reduce__')),
  pickle.EMPTY_DICT,
  pickled({'__new__': 'os'}),
  pickle.EMPTY_LIST,
  *map(global_, sorted(safe_pickle.ALLOWED_GLOBALS)),
  global_('byol.byol_experiment._ByolExperimentState'),
  float32_dtype(),
  call(global_(RECONSTRUCT), *reconstruct_arguments()),
  call(global_('numpy.dtype'), text('f4'), pickle.NEWFALSE, pickle.NEWTRUE),
  tuple_(*dtype_state()),
  tuple_(*dtype_state('>')),
)


def attacked(use: Use, rng: np.random.Generator) -> bytes:
  """`use` with some of its arguments or state replaced, dropped or added, or another opcode."""

  def attack(items: tuple[bytes, ...]) -> list[bytes]:
    items = list(items)
    choice = rng.integers(4)
    if choice == 0 and items:
      del items[rng.integers(len(items))]
    elif choice == 1:
      items.insert(rng.integers(len(items) + 1), ATTACKS[rng.integers(len(ATTACKS))])
    else:
      for _ in range(choice - 1):  # One or two replaced.
        if items:
          items[rng.integers(len(items))] = ATTACKS[rng.integers(len(ATTACKS))]
    return items

  arguments, state, opcode = use.arguments, use.state, use.opcode
  target = rng.integers(3)
  if target == 0:
    arguments = attack(arguments)
  elif target == 1:
    state = attack(state or ())
  else:
    opcode = pickle.NEWOBJ if opcode == pickle.REDUCE else pickle.REDUCE
  expression = use.function + tuple_(*arguments) + opcode
  return whole(expression if state is None else build(expression, tuple_(*state)))


@pytest.mark.parametrize('name', sorted(USES))
def test_no_arguments_make_an_allowed_global_return_code(name):
  """Each entry, attacked 300 ways: what it returns (before the final check) is never code."""
  use = USES[name]
  unattacked = whole(
    use.function
    + tuple_(*use.arguments)
    + use.opcode
    + (b'' if use.state is None else tuple_(*use.state) + pickle.BUILD)
  )
  assert not contains_code(safe_pickle._evaluate(unattacked))  # Writers' use evaluates.
  rng = np.random.default_rng(sorted(USES).index(name))
  outcomes = {'refused': 0, 'data': 0}
  for _ in range(300):
    data = attacked(use, rng)
    try:
      # What the machine itself returns, before `loads` checks it is data: the entries' output.
      assert not contains_code(safe_pickle._evaluate(data))
      value = safe_pickle.loads(data)
    except pickle.UnpicklingError:
      outcomes['refused'] += 1
    except Exception:  # Malformed bytes: `loads` turns these into UnpicklingError.
      with pytest.raises(pickle.UnpicklingError):
        safe_pickle.loads(data)
      outcomes['refused'] += 1
    else:
      outcomes['data'] += 1
      assert not contains_code(value)
  assert outcomes['refused'] > 0


# --- Crafted payloads: each is live under the plain unpickler, and refused by `load_checkpoint`.


def _a_valid_state(payload: Any = None, in_optimiser: bool = False) -> NamedTuple:
  """A small pretraining state with our classes and optax's, `payload` inside it if given."""
  params = {'encoder/~/conv': {'w': np.ones((3, 3), np.float32), 'b': np.zeros(3, np.float32)}}
  opt_state = jax.tree.map(
    np.asarray,
    optimizers.lars(
      0.1, weight_decay=1e-6, weight_decay_mask=optimizers.exclude_bias_and_norm
    ).init(params),
  )
  if payload is not None and in_optimiser:
    opt_state = (*opt_state[:2], optax.TraceState(trace=payload), *opt_state[3:])
  elif payload is not None:
    params = {'encoder/~/conv': {'w': payload, 'b': params['encoder/~/conv']['b']}}
  return byol_experiment._ByolExperimentState(
    online_params=params,
    target_params=params,
    online_state={},
    target_state={},
    opt_state=opt_state,
  )


def _code_built_from_a_code_object(marker: str) -> bytes:
  """The route through the old allow-list: `FunctionType(CodeType(...), {})()`, via `_load_type`."""
  code = compile(f'open({marker!r}, "w").close()', '<payload>', 'exec')
  arguments = (
    code.co_argcount,
    code.co_posonlyargcount,
    code.co_kwonlyargcount,
    code.co_nlocals,
    code.co_stacksize,
    code.co_flags,
    code.co_code,
    code.co_consts,
    code.co_names,
    code.co_varnames,
    code.co_filename,
    code.co_name,
    code.co_qualname,
    code.co_firstlineno,
    code.co_linetable,
    code.co_exceptiontable,
    code.co_freevars,
    code.co_cellvars,
  )
  code_object = (
    global_('dill._dill._load_type')
    + tuple_(text('CodeType'))
    + pickle.REDUCE
    + (pickled(arguments) + pickle.REDUCE)
  )
  function = call(
    call(global_('dill._dill._load_type'), text('FunctionType')), code_object, pickle.EMPTY_DICT
  )
  return whole(function + pickle.EMPTY_TUPLE + pickle.REDUCE)


def _dill_function(marker: str) -> bytes:
  """A function pickled by value by dill (`_create_function`, `_create_code`), then called."""
  namespace = {'__name__': '__main__'}
  exec(f'def touch():\n  open({marker!r}, "w").close()', namespace)
  return (
    dill.dumps(namespace['touch'], protocol=2)[:-1]
    + pickle.EMPTY_TUPLE
    + pickle.REDUCE
    + (pickle.STOP)
  )


def _class_attribute_set_by_build(marker: str) -> bytes:
  """BUILD on a state class, setting its `__new__` (what the old factory types allowed)."""
  state_class = call(
    global_('dill._dill._create_namedtuple'),
    text('EvilState'),
    tuple_(text('a')),
    text('byol.evil'),
  )
  attributes = tuple_(pickle.NONE, pickled({'__new__': marker}))
  return whole(build(state_class, attributes))


PAYLOADS = {
  'os.system': (
    lambda marker: pickle.dumps(support.RunsACommand(f'touch {marker}'), protocol=2),
    'system',
  ),
  'eval': (
    lambda marker: whole(call(global_('builtins.eval'), text(f'open({marker!r}, "w").close()'))),
    'builtins.eval',
  ),
  'getattr': (
    lambda marker: whole(
      call(
        call(
          global_('builtins.getattr'),
          call(global_('builtins.__import__'), text('os')),
          text('system'),
        ),
        text(f'touch {marker}'),
      )
    ),
    'builtins.getattr',
  ),
  'import_module': (
    lambda marker: whole(
      call(global_('importlib.import_module'), text('os'))
      + pickle.BINPUT
      + b'\x01'
      + pickle.POP
      + call(
        call(global_('builtins.getattr'), pickle.BINGET + b'\x01', text('system')),
        text(f'touch {marker}'),
      )
    ),
    'importlib.import_module',
  ),
  'type through _load_type, then called': (_code_built_from_a_code_object, 'dill._dill._load_type'),
  'function from a code object': (_dill_function, 'dill._dill._create_'),
  'payload in experiment_state': (
    lambda marker: pickle.dumps(
      {
        'experiment_state': _a_valid_state(support.RunsACommand(f'touch {marker}')),
        'step': 1,
        'rng': np.zeros(2, np.uint32),
      },
      protocol=2,
    ),
    'system',
  ),
  'payload in an optimiser state (dill)': (
    lambda marker: dill.dumps(
      {
        'experiment_state': _a_valid_state(
          support.RunsACommand(f'touch {marker}'), in_optimiser=True
        ),
        'step': 1,
        'rng': np.zeros(2, np.uint32),
      },
      protocol=4,
    ),
    'system',
  ),
}


@pytest.mark.parametrize('name', sorted(PAYLOADS))
def test_crafted_payloads_run_under_pickle_and_are_refused_by_load_checkpoint(tmp_path, name):
  make_payload, named_global = PAYLOADS[name]
  marker = tmp_path / 'pwned'
  path = tmp_path / 'pretrain.pkl'
  path.write_bytes(make_payload(str(marker)))

  try:
    dill.loads(path.read_bytes())  # The payload is live...
  except Exception:  # What a payload returns may be no checkpoint at all; it has run by then.
    pass
  assert marker.exists(), 'the payload should run under the plain unpickler'
  marker.unlink()

  with pytest.raises(checkpointing.CheckpointError, match=f'Refusing to load .*{named_global}'):
    checkpointing.load_checkpoint(str(path))
  assert not marker.exists()  # ...and never runs here.
  assert sorted(os.listdir(tmp_path)) == ['pretrain.pkl']


@pytest.mark.parametrize(
  'expression, message',
  [
    (_class_attribute_set_by_build('x')[2:-1], 'sets the state of the class'),
    (new(global_('numpy.dtype'), text('f4')), 'instantiates `numpy.dtype`'),
    (call(global_('numpy.ndarray'), tuple_(integer(1))), 'calls `numpy.ndarray`'),
    (call(global_('_codecs.encode'), text('x'), text('zlib_codec')), 'codec'),
    (call(global_('numpy.dtype'), text('O8'), pickle.NEWFALSE, pickle.NEWTRUE), 'numeric dtypes'),
    (pickled(np.array(['a'], dtype=object)), 'numeric dtypes'),
    (
      call(
        global_('dill._dill._create_namedtuple'),
        text('FunctionType'),
        pickle.EMPTY_TUPLE,
        text('types'),
      ),
      'names `types.FunctionType`',
    ),
    (
      global_('byol.utils.checkpointing.load_checkpoint'),
      'names `byol.utils.checkpointing.load_checkpoint`',
    ),
    (global_('optax._src.base.GradientTransformation'), 'GradientTransformation'),
    (global_('numpy.dtype'), '`numpy.dtype` itself'),
    (call(global_(RECONSTRUCT), *reconstruct_arguments()), 'never set'),
    (pickle.MARK + global_('os.system') + pickle.POP_MARK + pickle.NONE, 'names `os.system`'),
    (b'i' + b'os\nsystem\n', 'opcode INST'),
  ],
)
def test_what_is_not_data_is_refused_naming_it(expression, message):
  with pytest.raises(safe_pickle.UnsafePickleError, match=message):
    safe_pickle.loads(whole(expression))


def test_state_classes_are_found_by_name_without_importing_anything():
  # An importable module, unimported while this runs (the suite may have imported it before).
  unimported = sys.modules.pop('byol.quickstart', None)
  try:
    modules_before = set(sys.modules)
    value = safe_pickle.loads(whole(new(global_('byol.quickstart.HiddenState'), integer(1))))
    assert 'byol.quickstart' not in sys.modules
  finally:
    if unimported is not None:
      sys.modules['byol.quickstart'] = unimported
  assert type(value).__name__ == 'HiddenState' and tuple(value) == (1,)
  value = safe_pickle.loads(
    whole(
      new(
        call(
          global_('dill._dill._create_namedtuple'),
          text('OtherState'),
          tuple_(text('x')),
          text('optax.not_a_module'),
        ),
        integer(2),
      )
    )
  )
  assert value.x == 2
  assert set(sys.modules) - {'byol.quickstart'} == modules_before


def test_a_stand_in_of_a_known_name_with_other_fields_keeps_the_files_fields():
  fields = tuple_(text('mu'), text('nu'))
  value = safe_pickle.loads(
    whole(
      new(
        call(
          global_('dill._dill._create_namedtuple'),
          text('TraceState'),
          fields,
          text(optax.TraceState.__module__),
        ),
        integer(1),
        integer(2),
      )
    )
  )
  assert type(value) is not optax.TraceState and value._fields == ('mu', 'nu')


@pytest.mark.parametrize(
  'expression',
  [
    # A list that holds itself: refused, not a hang or a RecursionError.
    pickle.EMPTY_LIST + pickle.BINPUT + b'\x00' + pickle.BINGET + b'\x00' + pickle.APPEND,
    # 40 levels of [x, x]: 41 lists that a tree function would visit 2**41 times.
    pickle.EMPTY_LIST
    + b''.join(
      pickle.BINPUT
      + b'\x00'
      + pickle.POP
      + pickle.EMPTY_LIST
      + pickle.MARK
      + pickle.BINGET
      + b'\x00'
      + pickle.BINGET
      + b'\x00'
      + pickle.APPENDS
      for _ in range(40)
    ),
  ],
)
def test_cycles_and_exponential_sharing_are_refused_quickly(expression):
  start = time.monotonic()
  with pytest.raises(pickle.UnpicklingError, match='levels of nesting'):
    safe_pickle.loads(whole(expression))
  assert time.monotonic() - start < 5


def test_dict_keys_must_be_strings():
  # Python randomises the hashes of strings, not of ints: 10**5 int keys equal modulo 2**61 - 1
  # would make loading quadratic.
  with pytest.raises(pickle.UnpicklingError, match='dict key of type str, not int'):
    safe_pickle.loads(pickle.dumps({2**61 - 1: 1, 0: 2}))


@pytest.mark.parametrize(
  'initial_conv',
  [
    {'w': np.float32(0)},  # A scalar where a [7, 7, 3, 64] kernel belongs.
    {'w': [1.0, 2.0]},  # A list, not an array.
    [1, 2],  # A module that is not a dict.
  ],
)
def test_an_encoder_of_malformed_arrays_is_refused_by_both_loaders(tmp_path, initial_conv):
  # Data the safe loader accepts, in a tree Haiku could not have written: training refuses it,
  # and so does the export, each with a CheckpointError (never an IndexError or AttributeError).
  path, _ = support.write_pretrain_checkpoint(tmp_path)
  checkpoint = checkpointing.load_checkpoint(path)
  state = checkpoint['experiment_state']
  params = dict(state.online_params, **{'tiny_res_net/~/initial_conv': initial_conv})
  checkpoint['experiment_state'] = state._replace(online_params=params)
  with open(path, 'wb') as f:
    pickle.dump(checkpoint, f)
  with pytest.raises(checkpointing.CheckpointError, match='holds tiny_res_net, classifier of'):
    support.pretrain_experiment(tmp_path).load_checkpoint()
  with pytest.raises(checkpointing.CheckpointError, match='is not a dict of numeric arrays'):
    export_encoder.export_encoder(path, str(tmp_path / 'encoder.npz'))
  assert not (tmp_path / 'encoder.npz').exists()


def test_weights_of_another_rank_are_not_read_as_a_width_or_a_stem():
  params = {
    'tiny_res_net/~/initial_conv': {'w': np.zeros(3, np.float32)},  # Not [kh, kw, 3, 64 x width].
    'classifier': {'w': np.float32(0)},
  }
  assert checkpointing.describe_networks(params) == 'tiny_res_net'


def test_a_state_tuple_with_a_shape_field_is_not_read_as_weights():
  # A stand-in state tuple of the file's own fields may have one named 'shape', holding anything.
  fake = safe_pickle.loads(
    whole(
      new(
        call(
          global_('dill._dill._create_namedtuple'),
          text('TraceState'),
          tuple_(text('shape')),
          text(optax.TraceState.__module__),
        ),
        tuple_(text('a'), text('b'), text('c'), text('d')),
      )
    )
  )
  assert fake.shape == ('a', 'b', 'c', 'd')
  params = {'res_net18/~/initial_conv': {'w': fake}, 'classifier': {'w': fake}}
  assert checkpointing.describe_networks(params) == 'res_net18'


# --- Real files.


def test_our_checkpoint_names_only_the_globals_of_the_2020_files_and_loads_with_dill(tmp_path):
  state = _a_valid_state()
  checkpointer = checkpointing.Checkpointer(str(tmp_path), 'pretrain.pkl')
  checkpointer.save(state, step=3, rng=jax.random.key(4))

  named = set()

  class Recorder(pickle.Unpickler):
    def find_class(self, module, name):
      named.add(f'{module}.{name}')
      return super().find_class(module, name)

  with open(checkpointer.path, 'rb') as f:
    Recorder(f).load()
  assert named == {
    'dill._dill._create_namedtuple',
    'dill._dill._create_array',
    RECONSTRUCT,
    'numpy.ndarray',
    'numpy.dtype',
  }

  with open(checkpointer.path, 'rb') as f:
    by_dill = dill.load(f)  # As the original read it.
  ours = checkpointing.load_checkpoint(checkpointer.path)
  assert type(by_dill['experiment_state']) is byol_experiment._ByolExperimentState
  assert type(ours['experiment_state']) is byol_experiment._ByolExperimentState
  assert jax.tree.structure(ours) == jax.tree.structure(by_dill)
  jax.tree.map(np.testing.assert_array_equal, ours, by_dill)


def test_fuzzed_checkpoints_load_or_raise_checkpoint_error_quickly_and_do_nothing_else(tmp_path):
  source = tmp_path / 'source'
  checkpointer = checkpointing.Checkpointer(str(source), 'pretrain.pkl')
  checkpointer.check_writable()
  checkpointer.save(_a_valid_state(), step=3, rng=jax.random.key(4))
  original = open(checkpointer.path, 'rb').read()
  folder = tmp_path / 'fuzz'
  folder.mkdir()
  path = folder / 'pretrain.pkl'
  modules_before = set(sys.modules)

  rng = np.random.default_rng(0)
  outcomes = {'loaded': 0, 'refused': 0}
  slowest = 0.0
  for trial in range(int(os.environ.get('BYOL_FUZZ_TRIALS', 400))):
    data = bytearray(original)
    position = int(rng.integers(len(data)))
    kind = trial % 4
    if kind == 0:  # Flip bits of one byte.
      data[position] ^= int(rng.integers(1, 256))
    elif kind == 1:  # Truncate.
      del data[position:]
    elif kind == 2:  # Splice in a piece of the file from elsewhere.
      start = int(rng.integers(len(original)))
      data[position:position] = original[start : start + int(rng.integers(1, 64))]
    else:  # Overwrite a few bytes with random ones.
      data[position : position + 4] = rng.integers(256, size=4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    start_time = time.monotonic()
    try:
      checkpoint = checkpointing.load_checkpoint(str(path))
    except checkpointing.CheckpointError:
      outcomes['refused'] += 1
    else:
      outcomes['loaded'] += 1
      assert isinstance(checkpoint['experiment_state'], tuple)
      assert not contains_code(checkpoint)
    slowest = max(slowest, time.monotonic() - start_time)
  assert slowest < 2.0, slowest
  assert outcomes['loaded'] > 0 and outcomes['refused'] > 0, outcomes
  assert os.listdir(folder) == ['pretrain.pkl']
  assert set(sys.modules) == modules_before
