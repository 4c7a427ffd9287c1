"""Writing files so that a reader (or a crash) never sees half of one, and checking them later."""

import json
import os
import zlib


def atomic_write(path: str, data: bytes | str) -> None:
  """Writes `data` to `path` through a temporary file renamed over it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data.encode("utf-8") if isinstance(data, str) else data)
  os.replace(tmp, path)


def atomic_write_json(path: str, value) -> None:
  """`value` as indented JSON, atomically."""
  atomic_write(path, json.dumps(value, indent=2) + "\n")


def size_and_crc32(path: str) -> tuple[int, int]:
  """(bytes, CRC32) of a file, read in 4 MiB pieces."""
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      crc = zlib.crc32(chunk, crc)
  return os.path.getsize(path), crc
