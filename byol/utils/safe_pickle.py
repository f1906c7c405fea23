"""Reads a pickle as data, without running code from it: the reader of checkpoints (SPEC section 8).

`pickle.load` calls whatever a file names. Overriding `Unpickler.find_class` only narrows what a
file can name: the unpickler still calls `__new__` on any type it is handed (NEWOBJ), and
`__setstate__`, `setattr` or `__dict__` updates on any object on its stack (BUILD), so every class
or function on an allow-list is a door of its own. Here no global a file names is ever resolved to
a Python object. The standard library's `pickletools.genops` parses the opcodes, and a small stack
machine evaluates a closed set of them: a global becomes an inert marker, and a marker does
something only in one of the steps written out below. What those steps make is data:

| global in the file | the only thing it can make here |
|---|---|
| `numpy.core.multiarray._reconstruct`, `numpy.ndarray` | a numeric array, filled by a BUILD |
| `numpy.dtype` | with a BUILD of its byte order: a bool, int, float or complex dtype |
| `numpy.core.multiarray.scalar` | a numeric numpy scalar from a dtype and its bytes |
| `_codecs.encode` | bytes from latin-1 text (how protocol 2 stores bytes) |
| `dill._dill._create_array` | the same numeric array, dill's way |
| `dill._dill._create_namedtuple` | a state class (name, fields, module), applied by NEWOBJ |
| `byol.<module>.<Name>State`, `optax.<module>.<Name>State` | a state class named by reference |

(numpy 2 names its modules `numpy._core`; both spellings are read.) State classes are found by
name only, never by importing what a file names (`state_classes`). A loaded value is None, a bool,
int, float, str or bytes, a tuple, list or dict of values, a numeric numpy array or scalar, or a
state tuple of values; nothing else gets out. Errors are `pickle.UnpicklingError`, and
`UnsafePickleError` for a file that names or builds something other than data.
"""

import dataclasses
import math
import pickle
import pickletools
import re
import reprlib
from typing import Any

import numpy as np

from byol.utils import state_classes

# A checkpoint nests containers about ten deep and holds a few thousand values. These bounds refuse
# cycles, and shared containers that would expand into a huge tree, long before they cost time.
_MAX_DEPTH = 64
_MAX_VALUES = 1_000_000
_MAX_DIMENSIONS = 32

_NUMERIC_KINDS = 'biufc'  # bool, signed and unsigned int, float, complex.
_NUMERIC_TYPE_CODE = re.compile(r'[biufc][0-9]{1,2}')  # numpy's pickled type codes, e.g. 'f4'.
# numpy's pickled dtype state beyond its version and byte order, for a plain (non-structured) dtype.
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)
_BYTE_ORDERS = ('<', '>', '=', '|')

# Numpy 1.x pickles (the 2020 release files) name `numpy.core`, which numpy 2 calls `numpy._core`.
_RENAMED_MODULES = {'numpy.core.multiarray': 'numpy._core.multiarray'}
_NDARRAY = 'numpy.ndarray'
_RECONSTRUCT = 'numpy._core.multiarray._reconstruct'


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names or builds something that is not data: a function, a class, a module, ..."""


@dataclasses.dataclass(frozen=True)
class _Global:
  """A global named by the file, e.g. 'numpy.dtype': inert until a step below applies it."""

  name: str


@dataclasses.dataclass(frozen=True)
class _StateClass:
  """A state class named by the file; `fields` is None when named by reference (no field names)."""

  module: str
  name: str
  fields: tuple[str, ...] | None


class _Pending:
  """An array or dtype made by REDUCE that the file's next BUILD fills; `value` once filled."""

  __slots__ = ('dtype', 'value')

  def __init__(self, dtype: np.dtype | None = None):
    self.dtype = dtype  # None for an array; for a dtype, the dtype before its byte order is set.
    self.value: Any = None


def _expect(value: Any, kind: type, what: str) -> Any:
  if type(value) is not kind:  # Exactly: a bool is no int here, a numpy scalar no float.
    raise pickle.UnpicklingError(
      f'expected {what} of type {kind.__name__}, not {type(value).__name__}'
    )
  return value


def _short(value: Any) -> str:
  """`repr(value)` cut short: error messages quote values from the file, which may be huge."""
  return reprlib.repr(value)


def _is_global(value: Any, name: str) -> bool:
  return isinstance(value, _Global) and value.name == name


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> _Pending:
  """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array for the BUILD that follows."""
  if (
    not _is_global(subtype, _NDARRAY)
    or type(shape) is not tuple
    or shape != (0,)
    or type(dtype_code) is not bytes
    or dtype_code != b'b'
  ):
    raise UnsafePickleError(
      f'calls `{_RECONSTRUCT}` with ({_short(subtype)}, {_short(shape)}, {_short(dtype_code)}), '
      "not with (numpy.ndarray, (0,), b'b') as numpy does"
    )
  return _Pending()


def _array(state: Any) -> np.ndarray:
  """A numeric array from numpy's pickled state `(1, shape, dtype, fortran_order, bytes)`."""
  version, shape, dtype, fortran_order, data = _expect(state, tuple, 'array state')
  if type(version) is not int or version != 1 or type(fortran_order) is not bool:
    raise pickle.UnpicklingError(f'array state {_short((version, shape, dtype, fortran_order))}')
  if (
    type(shape) is not tuple
    or len(shape) > _MAX_DIMENSIONS
    or not all(type(size) is int and size >= 0 for size in shape)
  ):
    raise pickle.UnpicklingError(f'array shape {_short(shape)}')
  if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
    raise UnsafePickleError(f'builds an array of {_short(dtype)}; only numeric arrays are data')
  data = _expect(data, bytes, 'array data')
  if len(data) != math.prod(shape) * dtype.itemsize:
    raise pickle.UnpicklingError(
      f'{len(data)} bytes for an array of shape {shape} and dtype {dtype}'
    )
  order = 'F' if fortran_order else 'C'
  # A copy, so the array owns writable memory rather than viewing the file's bytes.
  return np.ndarray(shape, dtype=dtype, buffer=data, order=order).copy(order='K')


def _dtype(code: Any, align: Any, copy: Any) -> _Pending:
  """numpy's `dtype(code, False, True)` for a numeric type code such as 'f4': see `_build_dtype`."""
  if (
    type(code) is not str
    or not _NUMERIC_TYPE_CODE.fullmatch(code)
    or align is not False
    or copy is not True
  ):
    raise UnsafePickleError(
      f'calls `numpy.dtype` with ({_short(code)}, {_short(align)}, {_short(copy)}); only '
      'numeric dtypes are data'
    )
  dtype = np.dtype(code)  # A TypeError for codes numpy does not know, such as 'i3'.
  if dtype.kind not in _NUMERIC_KINDS:
    raise UnsafePickleError(f'builds the dtype {dtype}; only numeric dtypes are data')
  return _Pending(dtype)


def _build_dtype(pending: _Pending, state: Any) -> np.dtype:
  """The dtype with the byte order of numpy's pickled state `(3, order, None, ..., -1, -1, 0)`."""
  state = _expect(state, tuple, 'dtype state')
  if (
    len(state) != 8
    or type(state[0]) is not int
    or state[0] != 3
    or type(state[1]) is not str
    or state[1] not in _BYTE_ORDERS
    or any(
      type(item) is not type(plain) or item != plain
      for item, plain in zip(state[2:], _PLAIN_DTYPE_STATE)
    )
  ):
    raise UnsafePickleError(
      f'sets the dtype state {_short(state)}; only plain numeric dtypes are data'
    )
  return pending.dtype.newbyteorder(state[1])


def _scalar(dtype: Any, data: Any) -> np.generic:
  """numpy's `scalar(dtype, bytes)`: one numeric value."""
  if not isinstance(dtype, np.dtype):
    raise pickle.UnpicklingError(f'a numpy scalar of {_short(dtype)}')
  if len(_expect(data, bytes, 'scalar data')) != dtype.itemsize:
    raise pickle.UnpicklingError(f'{len(data)} bytes for a scalar of {dtype}')
  return _array((1, (), dtype, False, data))[()]


def _encode(text: Any, encoding: Any) -> bytes:
  """`_codecs.encode(text, 'latin1')`: how protocol 2 writes bytes. Any other codec is refused."""
  if type(encoding) is not str or encoding not in ('latin1', 'latin-1'):
    raise UnsafePickleError(f'calls `_codecs.encode` with the codec {_short(encoding)}, not latin1')
  return _expect(text, str, 'encoded text').encode('latin-1')


def _create_array(
  reconstruct: Any, arguments: Any, state: Any, instance_dict: Any = None
) -> np.ndarray:
  """dill's `_create_array(_reconstruct, (ndarray, (0,), b'b'), state, None)`: a numeric array."""
  if not _is_global(reconstruct, _RECONSTRUCT) or instance_dict is not None:
    raise UnsafePickleError(
      f'calls `dill._dill._create_array` with {_short(reconstruct)} and {_short(instance_dict)}, '
      f'not with `{_RECONSTRUCT}` and None'
    )
  _reconstruct(*_expect(arguments, tuple, '_create_array arguments'))
  return _array(state)


def _create_namedtuple(name: Any, fields: Any, module: Any, defaults: Any = None) -> _StateClass:
  """dill's `_create_namedtuple(name, fields, module)`: a state class, by its name and fields."""
  del defaults  # Checkpoints store every field.
  fields = _expect(fields, tuple, 'namedtuple fields')
  if not state_classes.are_field_names(fields):
    raise pickle.UnpicklingError(f'namedtuple fields {_short(fields)}')
  return _state_class(module, name, fields)


# What applying each global to arguments (REDUCE) makes; `numpy.ndarray` is only an argument.
_REDUCERS = {
  _RECONSTRUCT: _reconstruct,
  'numpy.dtype': _dtype,
  'numpy._core.multiarray.scalar': _scalar,
  '_codecs.encode': _encode,
  'dill._dill._create_array': _create_array,
  'dill._dill._create_namedtuple': _create_namedtuple,
}
ALLOWED_GLOBALS = frozenset({*_REDUCERS, _NDARRAY})


def _state_class(module: Any, name: Any, fields: tuple[str, ...] | None) -> _StateClass:
  """The marker of the state class `module.name`; refuses any other name, naming it."""
  if type(module) is not str or type(name) is not str:
    raise pickle.UnpicklingError(f'a class named by {_short(module)} and {_short(name)}')
  if not state_classes.is_state_class_name(module, name):
    qualified_name = f'{module}.{name}'
    if len(qualified_name) > 200:
      qualified_name = qualified_name[:200] + '...'
    raise UnsafePickleError(
      f'names `{qualified_name}`; a checkpoint may name numpy arrays, dtypes and scalars, '
      'latin-1 bytes and the state NamedTuples (<Name>State) of byol and optax, nothing else'
    )
  return _StateClass(module, name, fields)


def _make_state(state_class: _StateClass, values: Any) -> tuple:
  """The state tuple of `values`: of the real class when it is loaded and fits, else a stand-in."""
  values = _expect(values, tuple, 'state values')
  return state_classes.make(state_class.module, state_class.name, state_class.fields, values)


def _find_global(module: Any, name: Any) -> _Global | _StateClass:
  """GLOBAL and STACK_GLOBAL: a marker of an allowed global or of a state class, else refused."""
  if type(module) is str and type(name) is str:
    module = _RENAMED_MODULES.get(module, module)
    if f'{module}.{name}' in ALLOWED_GLOBALS:
      return _Global(f'{module}.{name}')
  return _state_class(module, name, fields=None)


def _apply(function: Any, arguments: Any) -> Any:
  """REDUCE: `function(*arguments)` for the globals of `_REDUCERS` and state classes only."""
  arguments = _expect(arguments, tuple, 'REDUCE arguments')
  if isinstance(function, _StateClass):
    return _make_state(function, arguments)
  if not isinstance(function, _Global):
    raise UnsafePickleError(f'calls a {type(function).__name__}')
  reducer = _REDUCERS.get(function.name)
  if reducer is None:
    raise UnsafePickleError(
      f'calls `{function.name}`, which is only an argument of `{_RECONSTRUCT}`'
    )
  return reducer(*arguments)


def _build(target: Any, state: Any) -> Any:
  """BUILD: fills an array or dtype made by REDUCE; no other object may have its state set."""
  if not isinstance(target, _Pending) or target.value is not None:
    raise UnsafePickleError(
      f'sets the state of {_describe(target)}; only arrays and dtypes have a state to set'
    )
  if target.dtype is None:
    target.value = _array(state)
  else:
    target.value = _build_dtype(target, state)
  return target.value


def _filled(value: Any) -> Any:
  """What the memo holds for `value`: an array or dtype that BUILD has filled is its value."""
  return value.value if isinstance(value, _Pending) and value.value is not None else value


# Opcodes that push their argument, or a constant.
_ARGUMENT_OPCODES = frozenset(
  {
    'BININT',
    'BININT1',
    'BININT2',
    'LONG1',
    'BINFLOAT',
    'BINUNICODE',
    'SHORT_BINUNICODE',
    'BINUNICODE8',
    'BINBYTES',
    'SHORT_BINBYTES',
    'BINBYTES8',
  }
)
_CONSTANT_OPCODES = {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False}
_TUPLE_OPCODES = {'TUPLE1': 1, 'TUPLE2': 2, 'TUPLE3': 3}


def _evaluate(data: bytes) -> Any:
  """The value of the pickle `data`, evaluating only the opcodes that checkpoints use.

  These are those of protocols 2 to 5 for the values above: no protocol 0/1 text opcodes, no sets,
  no out-of-band buffers, no INST, OBJ, NEWOBJ_EX, extensions or persistent ids. Dict keys are
  strings, whose hashes Python randomises: keys chosen to collide cannot make loading quadratic.
  """
  stack: list[Any] = []
  marks: list[list[Any]] = []  # The stacks below each MARK.
  memo: dict[int, Any] = {}

  def pop_mark() -> list[Any]:
    nonlocal stack
    items, stack = stack, marks.pop()
    return items

  for opcode, argument, _ in pickletools.genops(data):
    name = opcode.name
    if name in _ARGUMENT_OPCODES:
      stack.append(argument)
    elif name in _CONSTANT_OPCODES:
      stack.append(_CONSTANT_OPCODES[name])
    elif name == 'PROTO':
      if not 2 <= argument <= 5:
        raise pickle.UnpicklingError(f'pickle protocol {argument}; checkpoints use 2 to 5')
    elif name == 'FRAME':
      pass  # Protocol 4 frames only group the opcodes that follow.
    elif name == 'MARK':
      marks.append(stack)
      stack = []
    elif name == 'POP':
      stack.pop()
    elif name == 'POP_MARK':
      pop_mark()
    elif name == 'EMPTY_TUPLE':
      stack.append(())
    elif name in _TUPLE_OPCODES:
      size = _TUPLE_OPCODES[name]
      if len(stack) < size:
        raise pickle.UnpicklingError(f'{name} on a stack of {len(stack)}')
      items = tuple(stack[len(stack) - size :])
      del stack[len(stack) - size :]
      stack.append(items)
    elif name == 'TUPLE':
      items = pop_mark()  # Before `stack.` is read: the stack below the mark is pushed to.
      stack.append(tuple(items))
    elif name == 'EMPTY_LIST':
      stack.append([])
    elif name == 'APPEND':
      item = stack.pop()
      _expect(stack[-1], list, 'APPEND target').append(item)
    elif name == 'APPENDS':
      items = pop_mark()
      _expect(stack[-1], list, 'APPENDS target').extend(items)
    elif name == 'EMPTY_DICT':
      stack.append({})
    elif name == 'SETITEM':
      value, key = stack.pop(), stack.pop()
      _expect(stack[-1], dict, 'SETITEM target')[_expect(key, str, 'dict key')] = value
    elif name == 'SETITEMS':
      items = pop_mark()
      target = _expect(stack[-1], dict, 'SETITEMS target')
      if len(items) % 2:
        raise pickle.UnpicklingError('SETITEMS with a key and no value')
      for index in range(0, len(items), 2):
        target[_expect(items[index], str, 'dict key')] = items[index + 1]
    elif name == 'MEMOIZE':
      memo[len(memo)] = stack[-1]
    elif name in ('BINPUT', 'LONG_BINPUT'):
      memo[argument] = stack[-1]
    elif name in ('BINGET', 'LONG_BINGET'):
      stack.append(_filled(memo[argument]))
    elif name == 'GLOBAL':
      module, _, global_name = argument.partition(' ')
      stack.append(_find_global(module, global_name))
    elif name == 'STACK_GLOBAL':
      global_name, module = stack.pop(), stack.pop()
      stack.append(_find_global(module, global_name))
    elif name == 'REDUCE':
      arguments, function = stack.pop(), stack.pop()
      stack.append(_apply(function, arguments))
    elif name == 'NEWOBJ':
      arguments, cls = stack.pop(), stack.pop()
      if not isinstance(cls, _StateClass):
        raise UnsafePickleError(f'instantiates {_describe(cls)}; only state classes are')
      stack.append(_make_state(cls, arguments))
    elif name == 'BUILD':
      state = stack.pop()
      stack[-1] = _build(stack[-1], state)
    elif name == 'STOP':
      if len(stack) != 1 or marks:
        raise pickle.UnpicklingError(f'STOP with {len(stack)} values and {len(marks)} marks')
      return stack[0]
    else:
      raise UnsafePickleError(
        f'uses the pickle opcode {name} ({_short(argument)}), which checkpoints never contain'
      )
  raise pickle.UnpicklingError('the pickle ends before STOP')


def _describe(value: Any) -> str:
  if isinstance(value, _Global):
    return f'`{value.name}` itself'
  if isinstance(value, _StateClass):
    return f'the class `{value.module}.{value.name}` itself'
  if isinstance(value, _Pending):
    return (
      'an array or dtype whose state was never set'
      if value.value is None
      else (f'a {type(value.value).__name__} whose state was already set')
    )
  return f'a {type(value).__name__}'


def _check_data(root: Any) -> None:
  """Refuses a value of `root` that is not data, and trees too deep or too large to be checkpoints.

  Shared containers are counted each time they appear, as tree functions would visit them.
  """
  count = 0

  def visit(value: Any, depth: int) -> None:
    nonlocal count
    count += 1
    if count > _MAX_VALUES or depth > _MAX_DEPTH:
      raise pickle.UnpicklingError(
        f'more than {_MAX_VALUES} values or {_MAX_DEPTH} levels of nesting (a cycle?)'
      )
    kind = type(value)
    if value is None or kind in (bool, int, float, str, bytes):
      return
    if kind is np.ndarray or isinstance(value, np.generic):
      if value.dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError(f'holds an array of {value.dtype}')
      return
    if kind is dict or kind is list or kind is tuple or state_classes.is_state_class(kind):
      for item in value.values() if kind is dict else value:  # Keys are str (see SETITEM).
        visit(item, depth + 1)
      return
    raise UnsafePickleError(f'holds {_describe(value)}, which is not data')

  visit(root, 0)


def loads(data: bytes) -> Any:
  """The data pickled in `data`; `UnsafePickleError` if it names or builds anything else.

  Any other fault of the bytes (truncated, corrupted, not a pickle) is a `pickle.UnpicklingError`.
  """
  try:
    value = _evaluate(data)
    _check_data(value)
  except pickle.UnpicklingError:
    raise
  except Exception as error:
    # Nothing from the file runs here, so any other error is the parser's or numpy's verdict on
    # malformed bytes (an unknown opcode, a short read, an empty stack, an unhashable key, ...).
    raise pickle.UnpicklingError(f'{type(error).__name__}: {error}') from None
  return value
