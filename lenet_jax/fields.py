"""Config fields as the command line names and parses them, without absl.

Every dataclass field of `config.Config` (and its model/optim/data sections)
but the input shape and the seed is a field here: its flag name is its last
dotted part ('model.channels' -> 'channels'), its help is the comment beside
it in config.py, and `parse_values` reads its values from flag text, as the
command line, the report's --baseline and a sweep's recorded axes all do.
"""
import dataclasses
import inspect
import re
import types
import typing

from lenet_jax import config as config_lib

NOT_FLAGS = ('model.input_shape', 'seed')  # set from the data / by --seeds


def _field_comments(cls) -> dict[str, str]:
  """The one-line comment beside each field in the dataclass source."""
  comments = {}
  for line in inspect.getsource(cls).splitlines():
    m = re.match(r'\s+(\w+): [^#]*#\s*(.*)$', line)
    if m:
      comments[m.group(1)] = m.group(2)
  return comments


def _field_types() -> dict[str, tuple[type, str]]:
  """config key -> (type, help) for every field that has a flag."""
  out = {}
  for section, cls in (('model', config_lib.ModelConfig), ('optim', config_lib.OptimConfig),
                       ('data', config_lib.DataConfig), ('', config_lib.Config)):
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
      key = f'{section}.{f.name}' if section else f.name
      if key in NOT_FLAGS or f.name in ('model', 'optim', 'data'):
        continue
      out[key] = (f.type, comments.get(f.name, ''))
  return out


FIELDS = _field_types()


def flag_name(key: str) -> str:
  return key.split('.')[-1]


def is_tuple_field(key: str) -> bool:
  return typing.get_origin(FIELDS[key][0]) is tuple


def _scalar(key: str, text: str, kind) -> typing.Any:
  """Parses one value of type `kind` (bool, int, float, str, str | int, str | None)."""
  text = text.strip()
  if kind is bool:  # only the two words: '1' or 'yes' would be a guess
    if text.lower() in ('true', 'false'):
      return text.lower() == 'true'
    raise ValueError(f'--{flag_name(key)}: {text!r} is not a valid bool; use true or false.')
  options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
  if type(None) in options and text.lower() == 'none':
    return None
  # Numbers before strings: padding '1' is one pixel, not the string '1'.
  for option in sorted(options, key=lambda o: o is str):
    if option is int:
      try:
        return int(text)
      except ValueError:
        pass
    elif option is float:
      try:
        return float(text)
      except ValueError:
        pass
    elif option is str:
      return text
  expected = ' or '.join(o.__name__ for o in options if o is not type(None))
  raise ValueError(f'--{flag_name(key)}: {text!r} is not a valid {expected}.')


def parse_values(key: str, occurrences: list[str]) -> list[typing.Any]:
  """The sweep values of one flag, from each time it was given."""
  kind, _ = FIELDS[key]
  if is_tuple_field(key):
    item = typing.get_args(kind)[0]
    values = []
    for text in occurrences:
      items = [] if text.strip().lower() in ('', 'none') else text.split(',')
      values.append(tuple(_scalar(key, t, item) for t in items))
    return values
  return [_scalar(key, t, kind) for text in occurrences for t in text.split(',')]
