"""`local_text`: a user's text as a TFDS dataset, given as `text:PATHS` in `config.data.source`.

The rules:
  * PATHS is one or more files or directories, comma-separated.
  * A `.txt` file named directly is read as `data.txt_documents` says:
      stream (default)  continuous text, the way a book or a play is one text: it is cut at line
                        boundaries into pieces of about CHUNK_BYTES (fewer for a small file) that
                        only exist so that training can shuffle them; every line break, blank
                        ones included, is kept.
      paragraphs        documents at blank lines (one or more lines that are empty or
                        whitespace only).
      anything else     a separator string, e.g. `<|endoftext|>`: the documents between them.
  * A `.jsonl` file holds one JSON object per line whose "text" field (a string) is a document;
    empty lines are skipped.
  * A `.txt` or `.jsonl` file may be compressed: `NAME.txt.gz`, `NAME.jsonl.zst` (gzip or
    Zstandard), read as a stream, never whole into memory; a damaged one is an error naming it.
  * A `.parquet` file: each value of its string column "text" (PARQUET_COLUMN) is a document,
    read PARQUET_BATCH_ROWS rows at a time; null values are skipped. Zstandard and Parquet need
    the `data` extra (zstandard, pyarrow).
  * A directory is walked recursively in sorted order, skipping hidden entries: each `.txt` file
    is ONE document, each `.jsonl` record and each Parquet row one document; other files are
    ignored.
  * Text is decoded as UTF-8. Invalid bytes become U+FFFD and a warning names the file and how
    many characters were replaced; a file whose characters are more than MAX_NOT_TEXT (25%)
    replaced or NUL is an error (a binary file). Line endings become "\\n".
  * Empty (whitespace-only) documents are dropped. Paragraphs, separated and whole-file documents
    lose their leading blank lines and trailing whitespace; JSONL text and stream pieces are kept
    as they are.
  * The LAST `validation_fraction` of the documents, in the order above, is the `validation`
    split (at least one document); the rest is `train`. For a stream that is the last
    `validation_fraction` of its bytes, cut at a line boundary. Fewer than 2 documents is an
    error.
  * The builder config is named by a hash of the absolute paths, sizes and mtimes of the files,
    `validation_fraction` and `txt_documents`: editing a file rebuilds the dataset, an unchanged
    corpus is reused.
Document ids are `FILE:LINE` for stream pieces, paragraphs, separated documents and JSONL records
(LINE is 1-based: where it starts), `FILE:ROW` for Parquet rows (1-based) and `FILE` for
whole-file documents.
"""

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import time
from typing import Iterator

import tensorflow_datasets as tfds

from pretrax.data import corpora
from pretrax.data.errors import InputError
log = logging.getLogger(__name__)

COMPRESSIONS = (".gz", ".zst")  # a .txt or .jsonl file may be compressed, read as a stream
_TEXT_SUFFIXES = tuple(base + c for base in (".txt", ".jsonl") for c in ("",) + COMPRESSIONS)
_SUFFIXES = _TEXT_SUFFIXES + (".parquet",)
PARQUET_COLUMN = "text"        # the column of a Parquet file that holds the documents
PARQUET_BATCH_ROWS = 1024      # rows decoded at a time: memory stays bounded on any file
CHUNK_BYTES = 1024       # a stream's pieces: small enough that shuffled batches mix the text
MIN_STREAM_PIECES = 20   # a smaller file is cut into this many (so it has a validation split)
TXT_MODES = ("stream", "paragraphs")  # data.txt_documents; any other value is a separator


def _split_paths(paths: str | list[str]) -> list[str]:
  parts = paths.split(",") if isinstance(paths, str) else list(paths)
  parts = [p.strip() for p in parts if p.strip()]
  if not parts:
    raise InputError("text source: no paths given; expected text:PATH[,PATH...] with "
                     ".txt/.jsonl/.parquet files or directories")
  return parts


def _uncompressed_name(name: str) -> str:
  """`name` lower-cased, without a .gz/.zst suffix."""
  name = name.lower()
  for compression in COMPRESSIONS:
    name = name.removesuffix(compression)
  return name


def _kind(name: str, txt_kind: str) -> str | None:
  """How a file called `name` is read (None: not a corpus file): jsonl | parquet | txt_kind."""
  if not name.lower().endswith(_SUFFIXES):
    return None
  if name.lower().endswith(".parquet"):
    return "parquet"
  return "jsonl" if _uncompressed_name(name).endswith(".jsonl") else txt_kind


def _local_files(paths: str | list[str],
                 txt_documents: str = "stream") -> list[tuple[str, str, str]]:
  """(given path, file, kind) in reading order; kind is stream | paragraphs | separated |
  document | jsonl | parquet.

  Raises ValueError for a missing path, a directory without corpus files, another file type, or
  a file listed twice.
  """
  files = []
  for path in _split_paths(paths):
    if os.path.isdir(path):
      found = []
      for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
          kind = _kind(name, "document")
          if not name.startswith(".") and kind:
            found.append((path, os.path.join(root, name), kind))
      found.sort(key=lambda entry: corpora.tree_order(entry[1], path))
      if not found:
        raise InputError(f"{path}: directory has no .txt, .jsonl or .parquet files (searched "
                         "recursively); put text in NAME.txt files, JSONL records in NAME.jsonl "
                         "files (either may end in .gz or .zst) or Parquet files with a "
                         f"\"{PARQUET_COLUMN}\" column")
      files += found
    elif os.path.isfile(path):
      kind = _kind(path, txt_documents if txt_documents in TXT_MODES else "separated")
      if kind is None:
        raise InputError(f"{path}: not a .txt, .jsonl or .parquet file (.txt and .jsonl may end "
                         "in .gz or .zst); rename it to .txt (text) or .jsonl (one "
                         "{\"text\": ...} per line)")
      files.append((path, path, kind))
    else:
      raise InputError(f"{path}: no such file or directory (text:PATH takes .txt, .jsonl or "
                       ".parquet files or directories, comma-separated)")
  seen = {}
  for _, file, _ in files:
    real = os.path.realpath(file)
    if real in seen:
      raise InputError(f"{file}: listed twice (also as {seen[real]}); name each file once")
    seen[real] = file
  return files


# A file with more than this share of characters replaced (invalid UTF-8) or NUL is refused as
# not text. Latin-script text saved in a legacy 8-bit encoding (Latin-1, cp1250) loses only its
# accented letters, a few percent of the characters, rarely over 10%, and is only warned about;
# binary data is far above (random bytes 44%, executables over 50%, UTF-16 text 50% NUL).
MAX_NOT_TEXT = 0.25
_EARLY_CHECK_CHARS = 1 << 20  # a big file is judged on its first MiB too, before reading on


class _DecodedLines:
  """Lines of a file decoded as UTF-8, invalid bytes replaced and counted."""

  def __init__(self, path: str):
    self.path = path
    self.replaced = 0
    self.nul = 0
    self.chars = 0

  def __iter__(self) -> Iterator[str]:
    for number, raw in enumerate(raw_lines(self.path), 1):
      line = raw.decode("utf-8", errors="replace")
      # Count only the U+FFFD that decoding inserted, not ones written in the file.
      self.replaced += line.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
      self.nul += line.count("\0")
      self.chars += len(line)
      if self.chars - len(line) < _EARLY_CHECK_CHARS <= self.chars:
        self.check_is_text()
      if number == 1:
        line = line.removeprefix("\ufeff")  # byte-order mark
      yield line.rstrip("\r\n")

  def check_is_text(self):
    """Raises InputError if the characters read so far are mostly not text."""
    share = (self.replaced + self.nul) / max(self.chars, 1)
    if share > MAX_NOT_TEXT:
      raise InputError(f"{self.path}: {share:.0%} of its characters are not valid UTF-8 text "
                       "(invalid bytes or NUL); is it a binary file? Text is read as UTF-8: "
                       "convert the file to UTF-8, or remove it from data.source")

  def warn_if_replaced(self):
    if self.replaced:
      log.warning("%s: %d characters were not valid UTF-8 and were replaced by U+FFFD",
                  self.path, self.replaced)


def _missing_extra(path: str, module: str) -> InputError:
  return InputError(f"{path}: reading it needs {module}, which is not installed: "
                    "pip install -e \".[data]\" (zstandard and pyarrow)")


READ_BYTES = 1 << 20  # compressed bytes read at a time


def _damaged(path: str, why: str) -> InputError:
  return InputError(f"{path}: cannot be decompressed ({why}); the file is damaged or truncated")


def _gzip_lines(path: str) -> Iterator[bytes]:
  import gzip
  with gzip.open(path, "rb") as f:
    try:
      yield from f
    except (EOFError, OSError) as e:  # truncated: EOFError; not gzip: BadGzipFile (an OSError)
      raise _damaged(path, f"{type(e).__name__}: {e}") from None


def _zstd_lines(path: str) -> Iterator[bytes]:
  """Lines of a Zstandard file of one or more frames; a file that ends inside a frame is
  damaged (zstandard's stream reader would end quietly there)."""
  try:
    import zstandard
  except ImportError:
    raise _missing_extra(path, "zstandard") from None
  frame, pending = zstandard.ZstdDecompressor().decompressobj(), b""
  with open(path, "rb") as f:
    while chunk := f.read(READ_BYTES):
      data = b""
      try:
        while chunk:
          if frame.eof:  # the next frame begins here
            frame = zstandard.ZstdDecompressor().decompressobj()
          data += frame.decompress(chunk)
          chunk = frame.unused_data if frame.eof else b""
      except zstandard.ZstdError as e:
        raise _damaged(path, str(e)) from None
      *lines, pending = (pending + data).split(b"\n")
      for line in lines:
        yield line + b"\n"
  if not frame.eof:
    raise _damaged(path, "it ends inside a Zstandard frame")
  if pending:
    yield pending


def raw_lines(path: str) -> Iterator[bytes]:
  """The lines of `path` as bytes, decompressed as its .gz or .zst suffix says, streamed."""
  name = path.lower()
  if name.endswith(".gz"):
    return _gzip_lines(path)
  if name.endswith(".zst"):
    return _zstd_lines(path)
  return _plain_lines(path)


def _plain_lines(path: str) -> Iterator[bytes]:
  with open(path, "rb") as f:
    yield from f


def _parquet_records(path: str) -> Iterator[tuple[int, str]]:
  """(1-based row, text) of the PARQUET_COLUMN column of a Parquet file, PARQUET_BATCH_ROWS at a
  time; null and empty values are skipped like empty documents."""
  try:
    import pyarrow
    import pyarrow.parquet as pq
  except ImportError:
    raise _missing_extra(path, "pyarrow") from None
  try:
    table = pq.ParquetFile(path)
  except (pyarrow.ArrowException, OSError) as e:
    raise InputError(f"{path}: not a readable Parquet file ({e})") from None
  schema = table.schema_arrow
  if PARQUET_COLUMN not in schema.names:
    raise InputError(f"{path}: Parquet file has no \"{PARQUET_COLUMN}\" column (columns: "
                     f"{', '.join(schema.names)}); the documents must be in a string column named "
                     f"\"{PARQUET_COLUMN}\"")
  column_type = schema.field(PARQUET_COLUMN).type
  if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
    raise InputError(f"{path}: Parquet column \"{PARQUET_COLUMN}\" is {column_type}, expected "
                     "strings")
  row = 0
  for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[PARQUET_COLUMN]):
    for text in batch.column(0).to_pylist():
      row += 1
      if text:
        yield row, text


def _clean(text: str) -> str:
  """Drops leading blank lines and trailing whitespace."""
  return re.sub(r"\A(?:[^\S\n]*\n)+", "", text).rstrip()


def _paragraphs(lines: _DecodedLines) -> Iterator[tuple[int, str]]:
  """(first line number, paragraph) for the blank-line-separated paragraphs of a file."""
  block, start = [], 0
  for number, line in enumerate(lines, 1):
    if line.strip():
      if not block:
        start = number
      block.append(line)
    elif block:
      yield start, _clean("\n".join(block))
      block = []
  if block:
    yield start, _clean("\n".join(block))


def _stream_pieces(lines: _DecodedLines, size: int) -> Iterator[tuple[int, str]]:
  """(first line number, piece) of a continuous text, cut after the line that brings a piece to
  `size` UTF-8 bytes (every line break kept: a piece's last one is the text between pieces)."""
  block, start, held = [], 1, 0
  for number, line in enumerate(lines, 1):
    if not block:
      start = number
    block.append(line)
    held += len(line.encode("utf-8")) + 1
    if held >= size and line.strip():  # so no piece is blank lines only (those are dropped)
      yield start, "\n".join(block) + "\n"
      block, held = [], 0
  if block:
    yield start, "\n".join(block)


def _separated(lines: _DecodedLines, separator: str) -> Iterator[tuple[int, str]]:
  """(first line number, document) of a text whose documents end at `separator`."""
  block, start = [], 1
  for number, line in enumerate(lines, 1):
    if not block:
      start = number
    *ends, rest = line.split(separator)
    for end in ends:
      yield start, _clean("\n".join(block + [end]))
      block, start = [], number
    block.append(rest)
  if block:
    yield start, _clean("\n".join(block))


def _stream_piece_bytes(file: str) -> int:
  return max(1, min(CHUNK_BYTES, os.path.getsize(file) // MIN_STREAM_PIECES))


def _jsonl_records(lines: _DecodedLines) -> Iterator[tuple[int, str]]:
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise InputError(f"{lines.path}:{number}: not valid JSON ({e.msg} at column {e.colno}); "
                       "each line must be an object like {\"text\": \"...\"}") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
      got = (f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__)
      if isinstance(record, dict) and "text" in record:
        got = f"\"text\" of type {type(record['text']).__name__}"
      raise InputError(f"{lines.path}:{number}: expected an object with a string \"text\" field, "
                       f"got {got}")
    yield number, record["text"]


def read_local_documents(paths: str | list[str],
                         txt_documents: str = "stream") -> Iterator[tuple[str, str]]:
  """(doc_id, text) of every document under `paths` (comma-separated str or a list), in order.

  The rules are in this module's docstring. Raises ValueError naming the file (and line) for a
  missing path, a file or directory without documents, or a bad JSONL line.
  """
  return _read_documents(paths, txt_documents, warn=True)


def _read_documents(paths: str | list[str], txt_documents: str,
                    warn: bool) -> Iterator[tuple[str, str]]:
  if not txt_documents:
    raise InputError("data.txt_documents is empty; expected stream, paragraphs or a separator "
                     "string such as <|endoftext|>")
  files = _local_files(paths, txt_documents)
  for path, group in itertools.groupby(files, key=lambda entry: entry[0]):
    yielded = 0
    for _, file, kind in group:
      lines = _DecodedLines(file)
      if kind == "parquet":
        docs = ((f"{file}:{n}", text) for n, text in _parquet_records(file))
      elif kind == "stream":
        docs = ((f"{file}:{n}", text)
                for n, text in _stream_pieces(lines, _stream_piece_bytes(file)))
      elif kind == "separated":
        docs = ((f"{file}:{n}", text) for n, text in _separated(lines, txt_documents))
      elif kind == "paragraphs":
        docs = ((f"{file}:{n}", text) for n, text in _paragraphs(lines))
      elif kind == "jsonl":
        docs = ((f"{file}:{n}", text) for n, text in _jsonl_records(lines))
      else:
        docs = [(file, _clean("\n".join(lines)))]
      for doc_id, text in docs:
        if text.strip():
          yielded += 1
          yield doc_id, text
      lines.check_is_text()
      if warn:
        lines.warn_if_replaced()
    if not yielded:
      what = "directory" if os.path.isdir(path) else "file"
      raise InputError(f"{path}: {what} has no documents (empty or whitespace only); add text to "
                       "it or remove it from data.source")


def validation_count(document_bytes: list[int], validation_fraction: float) -> int:
  """How many of the last documents are held out: the fewest whose UTF-8 bytes reach
  `validation_fraction` of the corpus's (so 0.1 holds out the last 10% of a file's text), at
  least 1 and fewer than all."""
  target, held, count = validation_fraction * sum(document_bytes), 0, 0
  for size in reversed(document_bytes):
    if held >= target:
      break
    held += size
    count += 1
  return min(max(1, count), len(document_bytes) - 1)


def local_text_config_name(paths: str | list[str], validation_fraction: float,
                           txt_documents: str = "stream") -> str:
  """A name that changes when any file's path, size or mtime, the fraction or the .txt rule
  changes."""
  key = [validation_fraction] + [os.path.abspath(p) for p in _split_paths(paths)]
  if txt_documents != "stream":
    key.append(["txt_documents", txt_documents])
  for _, file, kind in _local_files(paths, txt_documents):
    stat = os.stat(file)
    key.append([os.path.abspath(file), kind, stat.st_size, stat.st_mtime_ns])
  digest = hashlib.sha256(json.dumps(key).encode("utf-8")).hexdigest()[:16]
  stem = os.path.splitext(os.path.basename(os.path.normpath(_split_paths(paths)[0])))[0]
  stem = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")[:32]
  return f"{stem}_{digest}" if stem else f"c{digest}"


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  paths: tuple[str, ...] = ()          # files or directories, in reading order
  validation_fraction: float = 0.1     # share of the text (bytes) held out, as the last documents
  txt_documents: str = "stream"        # how a .txt file named directly becomes documents


class _ReadProgress:
  """A line every PROGRESS_EVERY_S while a large corpus is read for its build: no silent minutes."""

  PROGRESS_EVERY_S = 5.0

  def __init__(self, what: str):
    self.what, self.bytes = what, 0
    self.started = self.last = time.perf_counter()

  def update(self, documents: int, size: int) -> None:
    self.bytes += size
    now = time.perf_counter()
    if now - self.last >= self.PROGRESS_EVERY_S:
      self.last = now
      mb = self.bytes / 1e6
      print(f"pretrax: building {self.what}: {documents:,} documents, {mb:,.0f} MB read "
            f"({mb / (now - self.started):,.1f} MB/s)", file=sys.stderr, flush=True)


class LocalText(tfds.core.GeneratorBasedBuilder):
  """A user's .txt/.jsonl/.parquet files; see the module docstring for how they become
  documents."""

  code_path = corpora.CODE_PATH
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Blank-line paragraphs, whole-file .txt, JSONL; last docs held out.",
                   "1.1.0": "A .txt file is continuous text by default (data.txt_documents)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Local text files: " + ", ".join(self.builder_config.paths),
        features=corpora.text_features(),
        disable_shuffling=True,  # documents stay in file order, so validation is the end
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    sizes, progress = [], _ReadProgress(", ".join(config.paths))
    for _, text in read_local_documents(list(config.paths), config.txt_documents):
      sizes.append(len(text.encode("utf-8")))
      progress.update(len(sizes), sizes[-1])
    n = len(sizes)  # reading also checks every file, and warns once about replaced bytes
    if n < 2:
      raise InputError(
          f"{', '.join(config.paths)}: found {n} document; a validation split needs at least 2 "
          "(the last data.validation_fraction of them are held out). Add more text (a .txt file "
          "read as a stream needs at least 2 lines), or give a directory of several files.")
    n_train = n - validation_count(sizes, config.validation_fraction)
    return {"train": self._generate_examples(0, n_train),
            "validation": self._generate_examples(n_train, n)}

  def _generate_examples(self, start: int, stop: int):
    documents = _read_documents(list(self.builder_config.paths),
                                self.builder_config.txt_documents, warn=False)
    for doc_id, text in itertools.islice(documents, start, stop):
      yield doc_id, {"text": text, "id": doc_id}


class _DropCustomConfigWarning(logging.Filter):
  """TFDS warns whenever a builder gets a config not in BUILDER_CONFIGS, on every unpickling too.
  LocalText makes one config per corpus by design, so its warning is noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration") or not any(
        isinstance(arg, LocalTextConfig) for arg in (record.args or ()))


if not any(isinstance(f, _DropCustomConfigWarning) for f in logging.getLogger("absl").filters):
  logging.getLogger("absl").addFilter(_DropCustomConfigWarning())


def local_text_builder(paths: str | list[str], validation_fraction: float,
                       data_dir: str, txt_documents: str = "stream") -> LocalText:
  """The (maybe not yet built) `local_text` dataset of `paths` in `data_dir`."""
  if not 0 < validation_fraction < 1:
    raise InputError(f"data.validation_fraction must be in (0, 1), got {validation_fraction}")
  config = LocalTextConfig(
      name=local_text_config_name(paths, validation_fraction, txt_documents),
      paths=tuple(_split_paths(paths)),
      validation_fraction=validation_fraction,
      txt_documents=txt_documents,
      description="Local text files")
  return LocalText(config=config, data_dir=data_dir, file_format="array_record")


