"""The state NamedTuples a checkpoint may hold, found by name only (SPEC section 8).

A checkpoint names the classes of its experiment and optimiser states (`_ByolExperimentState`,
`optax...TraceState`, and in DeepMind's 2020 files classes that byol and optax no longer define).
`make` gives the real class when a module already imported defines it with those fields (so
training resumes with optax's own state classes), else a stand-in: a NamedTuple of the same name
and fields, or, for a class named without its fields, a tuple of the values registered as a pytree.
No module is ever imported and no code of a state class runs.
"""

import collections
import functools
import keyword
import re
import sys
import types
from typing import Any

import jax

_MODULE = re.compile(r'(byol|optax)(\.[A-Za-z_][A-Za-z0-9_]*)+')
_NAME = re.compile(r'_?[A-Z][A-Za-z0-9]*State')
_FIELD_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*')
_MAX_FIELDS = 64


def is_state_class_name(module: str, name: str) -> bool:
  """Whether `module.name` may be a state class: `<Name>State` in a module of byol or optax."""
  return bool(_MODULE.fullmatch(module)) and bool(_NAME.fullmatch(name))


def are_field_names(fields: tuple[Any, ...]) -> bool:
  """Whether `fields` can name a NamedTuple's fields: distinct identifiers, not keywords."""
  return (
    len(fields) <= _MAX_FIELDS
    and len(set(fields)) == len(fields)
    and all(
      type(field) is str and _FIELD_NAME.fullmatch(field) and not keyword.iskeyword(field)
      for field in fields
    )
  )


def _loaded_class(module: str, name: str) -> type | None:
  """The NamedTuple class `module.name` if a module already imported defines it, else None.

  Only `sys.modules` and the module's own namespace are read: nothing is imported and no code of the
  module runs (a module-level `__getattr__` is not consulted).
  """
  module_object = sys.modules.get(module)
  if type(module_object) is not types.ModuleType:
    return None
  cls = vars(module_object).get(name)
  if (
    isinstance(cls, type)
    and issubclass(cls, tuple)
    and type(vars(cls).get('_fields')) is tuple
    and cls.__module__ == module
    and cls.__qualname__ == name
  ):
    return cls
  return None


class _StandIn(tuple):
  """Base of the stand-ins for state classes named without fields and not loaded."""

  __slots__ = ()

  def __new__(cls, *values: Any) -> '_StandIn':
    return super().__new__(cls, values)

  def __repr__(self) -> str:
    return f'{type(self).__name__}{tuple.__repr__(self)}'


@functools.cache
def _stand_in_class(module: str, name: str, fields: tuple[str, ...] | None) -> type:
  """A NamedTuple (or, without fields, a `_StandIn` pytree) called `module.name`, made once."""
  if fields is not None:
    # Names checked by `is_state_class_name` and `are_field_names`: namedtuple's checks pass.
    return collections.namedtuple(name, fields, module=module)
  cls = type(name, (_StandIn,), {'__slots__': (), '__module__': module, '__qualname__': name})
  jax.tree_util.register_pytree_node(
    cls, lambda stand_in: (tuple(stand_in), None), lambda _, values: cls(*values)
  )
  return cls


def make(module: str, name: str, fields: tuple[str, ...] | None, values: tuple) -> tuple:
  """The state `module.name` of `values`; `fields` as the file gives them (None: not given).

  Raises:
    ValueError: `fields` and `values` differ in number.
  """
  real_class = _loaded_class(module, name)
  if (
    real_class is not None
    and len(values) == len(real_class._fields)
    and (fields is None or fields == real_class._fields)
  ):
    return tuple.__new__(real_class, values)  # As NEWOBJ would, without the class's `__new__`.
  if fields is not None and len(fields) != len(values):
    raise ValueError(f'{len(values)} values for the {len(fields)} fields of {name}')
  return _stand_in_class(module, name, fields)(*values)


def is_state_class(kind: type) -> bool:
  """Whether `kind` is a class that `make` may return (real or stand-in)."""
  return (
    issubclass(kind, tuple)
    and type(vars(kind).get('_fields', ())) is tuple
    and bool(_MODULE.fullmatch(kind.__module__))
  )
