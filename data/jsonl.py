"""Reading JSON Lines files: one object per non-blank line, errors that name PATH:LINE."""

import json
from typing import Iterator

from pretrax.data.errors import InputError


def read_objects(path: str, expected: str) -> Iterator[tuple[str, dict]]:
  """("PATH:LINE", object) of each non-blank line of `path`; `expected` says what an object
  holds (e.g. '"source" and "target"') in the error for a line that is not one."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with {expected}, got "
                         f"{type(record).__name__}")
      yield where, record
