"""`--override key.path=value`: set any entry of a config dict from the command line, type-checked.

  apply(config, ['optimizer_config.weight_decay=1e-5', 'freeze_backbone=false'])

The key path walks the nested dicts returned by `get_config`; the value is parsed as the type of the
entry it replaces (bool, int, float or str), so a typo in a key or a value of the wrong type is an
error that lists what is allowed, never a silently ignored setting.
"""

from typing import Any, MutableMapping, Sequence

_TRUE = ('true', 'yes', '1')
_FALSE = ('false', 'no', '0')


class OverrideError(ValueError):
  """An --override that names no config entry or gives a value of the wrong type."""


def apply(config: MutableMapping[str, Any], assignments: Sequence[str]) -> None:
  """Sets each `key.path=value` of `assignments` in `config`, in order (the last one wins)."""
  for assignment in assignments:
    key_path, separator, text = assignment.partition('=')
    if not separator or not key_path:
      raise OverrideError(f'--override {assignment!r} is not of the form key.path=value.')
    *parents, key = key_path.split('.')
    node = config
    for depth, parent in enumerate(parents):
      node = node.get(parent) if isinstance(node, MutableMapping) else None
      if not isinstance(node, MutableMapping):
        raise OverrideError(
          f'--override {key_path}: `{".".join(parents[: depth + 1])}` is not a group of the '
          f'config; groups at that level: {_groups(config, parents[:depth])}.'
        )
    if key not in node:
      raise OverrideError(
        f'--override {key_path}: unknown key `{key}`; the keys there are: '
        f'{", ".join(sorted(node))}.'
      )
    if isinstance(node[key], MutableMapping):
      raise OverrideError(
        f'--override {key_path}: `{key_path}` is a group; set one of its keys: '
        f'{", ".join(sorted(node[key]))}.'
      )
    node[key] = _parse(text, node[key], key_path)


def _groups(config: MutableMapping[str, Any], path: Sequence[str]) -> str:
  node = config
  for parent in path:
    node = node[parent]
  return ', '.join(sorted(key for key, value in node.items() if isinstance(value, MutableMapping)))


def _parse(text: str, current: Any, key_path: str) -> Any:
  """`text` as a value of the type of `current` (free text where the entry is None or a str)."""
  if isinstance(current, bool):  # Before int: bool is a subclass of int.
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    expected = 'true or false'
  elif isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      expected = 'an integer'
  elif isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      expected = 'a number'
  elif current is None or isinstance(current, str):
    return None if text.lower() == 'none' else text
  else:
    raise OverrideError(
      f'--override {key_path}: a {type(current).__name__} entry cannot be set '
      'from the command line.'
    )
  raise OverrideError(f'--override {key_path}={text}: expected {expected} (it is {current!r} now).')
