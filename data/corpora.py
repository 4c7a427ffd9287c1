"""Local corpora as TFDS datasets, built once per data dir into ArrayRecord files.

Two builders, both readable with random access (`builder.as_data_source(split)`) and neither
needing TensorFlow or the network:

`pydoc_corpus` (the default corpus): real English text that every machine has, the running
Python's own documentation. One document per entry of `pydoc_data.topics.topics`, then one per
standard-library module: its module docstring followed by its class/function/method docstrings,
separated by blank lines. Modules are parsed with `ast`, never imported. About 2 MB on CPython
3.11. The builder config is named after the Python version (`py3_11_7`), so another Python builds
its own copy. A document is in `validation` when `crc32(id) % 20 == 0` (about 5%).

`local_text`: a user's text, given as `text:PATHS` in `config.data.source`. The rules:
  * PATHS is one or more files or directories, comma-separated.
  * A `.txt` file named directly is split into documents at blank lines (one or more lines that
    are empty or whitespace only).
  * A `.jsonl` file holds one JSON object per line whose "text" field (a string) is a document;
    empty lines are skipped.
  * A directory is walked recursively in sorted order, skipping hidden entries: each `.txt` file
    is ONE document and each `.jsonl` record is one document; other files are ignored.
  * Text is decoded as UTF-8. Invalid bytes become U+FFFD and a warning names the file and how
    many characters were replaced. Line endings become "\\n".
  * Empty (whitespace-only) documents are dropped. Paragraphs and whole-file documents lose their
    leading blank lines and trailing whitespace; JSONL text is kept as is.
  * The LAST `validation_fraction` of the documents, in the order above, is the `validation`
    split (at least one document); the rest is `train`. Fewer than 2 documents is an error.
  * The builder config is named by a hash of the absolute paths, sizes and mtimes of the files
    and of `validation_fraction`: editing a file rebuilds the dataset, an unchanged corpus is
    reused.
Document ids are `FILE:LINE` for paragraphs and JSONL records (LINE is 1-based) and `FILE` for
whole-file documents.
"""

import ast
import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import re
import sys
import sysconfig
import time
import warnings
import zlib
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath

log = logging.getLogger(__name__)

# Directories of the standard library that hold no prose worth training on, or tests.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"})
PYDOC_VALIDATION_MODULUS = 20  # crc32(id) % 20 == 0 -> validation: about 5% of the documents


# TFDS looks for a builder's checksums file next to its code through importlib.resources, which
# fails when pretrax is an editable install (a namespace package). Point it at this file.
_CODE_PATH = tfds.core.utils.classproperty(classmethod(lambda cls: epath.Path(__file__)))


def _text_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"text": tfds.features.Text(), "id": tfds.features.Text()})


# --------------------------------------------------------------------------------------------
# The embedded default corpus: the running Python's documentation.


def python_config_name() -> str:
  """`py3_11_7` for CPython 3.11.7 (`py3_13_0rc1` for a pre-release)."""
  v = sys.version_info
  name = f"py{v.major}_{v.minor}_{v.micro}"
  if v.releaselevel != "final":
    name += {"alpha": "a", "beta": "b", "candidate": "rc"}[v.releaselevel] + str(v.serial)
  return name


def stdlib_files(stdlib: str | None = None) -> list[str]:
  """The standard library's `.py` files, sorted, without tests, tools and site-packages."""
  stdlib = stdlib or sysconfig.get_paths()["stdlib"]
  found = []
  for root, dirs, files in os.walk(stdlib):
    dirs[:] = [d for d in dirs if d not in STDLIB_EXCLUDED_DIRS and not d.startswith(".")]
    found += [os.path.join(root, f) for f in files if f.endswith(".py")]
  return sorted(found, key=lambda path: _tree_order(path, stdlib))


def _tree_order(path: str, root: str) -> tuple[str, ...]:
  """Sort key: `a/z.txt` before `b.txt`, the way the tree reads, on every OS."""
  return tuple(os.path.relpath(path, root).split(os.sep))


def _nested_docstrings(node: ast.AST) -> Iterator[str]:
  """Docstrings of the classes, functions and methods under `node`, in source order."""
  for child in ast.iter_child_nodes(node):
    if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(child, clean=True)
      if doc and doc.strip():
        yield doc.strip()
    yield from _nested_docstrings(child)


def module_document(path: str) -> str:
  """A source file's module docstring then its class/function docstrings, blank-line separated.

  "" if it has none; SyntaxError/ValueError if the file does not decode or parse.
  """
  with open(path, "rb") as f:
    source = f.read()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # invalid escape sequences in old modules
    tree = ast.parse(source, filename=path)  # honours the file's coding cookie
  docs = [ast.get_docstring(tree, clean=True) or ""]
  docs += _nested_docstrings(tree)
  return "\n\n".join(d.strip() for d in docs if d.strip())


def pydoc_documents(stats: dict | None = None) -> Iterator[tuple[str, str]]:
  """(id, text) of the default corpus, deterministic: topics by name, then modules by path.

  `stats`, if given, receives counts: topics, modules, skipped (files that failed to decode or
  parse), without_docstrings.
  """
  stats = {} if stats is None else stats
  stats.update(topics=0, modules=0, skipped=0, without_docstrings=0)
  try:
    from pydoc_data.topics import topics
  except ImportError:  # some distributions strip it; the docstrings are still there
    log.warning("pydoc_data is missing from this Python; the default corpus has docstrings only")
    topics = {}
  for name in sorted(topics):
    text = topics[name].strip()
    if text:
      stats["topics"] += 1
      yield f"topic:{name}", text
  stdlib = sysconfig.get_paths()["stdlib"]
  for path in stdlib_files(stdlib):
    try:
      text = module_document(path)
    except (SyntaxError, ValueError, RecursionError, OSError):  # ValueError covers decoding
      stats["skipped"] += 1
      continue
    if not text:
      stats["without_docstrings"] += 1
      continue
    module = os.path.relpath(path, stdlib)[:-len(".py")].replace(os.sep, ".")
    module = module.removesuffix(".__init__")
    stats["modules"] += 1
    yield f"module:{module}", text


def pydoc_split(doc_id: str) -> str:
  """`validation` for about 1 in 20 documents, chosen by a hash of the id; else `train`."""
  is_validation = zlib.crc32(doc_id.encode("utf-8")) % PYDOC_VALIDATION_MODULUS == 0
  return "validation" if is_validation else "train"


class PydocCorpus(tfds.core.GeneratorBasedBuilder):
  """The running Python's documentation topics and standard-library docstrings."""

  code_path = _CODE_PATH
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Topics plus stdlib docstrings; 5% validation by crc32 of the id."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=python_config_name(), description=f"Documentation of Python {sys.version.split()[0]}")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="The running Python's documentation: every pydoc topic, and per stdlib "
                    "module its docstrings.",
        features=_text_features(),
        homepage="https://docs.python.org/3/",
        disable_shuffling=True,  # documents stay in id order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    stats = {}
    documents = list(pydoc_documents(stats))  # about 2 MB: parse the stdlib once, not per split
    log.info("pydoc_corpus: %s", stats)
    return {split: self._generate_examples(documents, split) for split in ("train", "validation")}

  def _generate_examples(self, documents: list[tuple[str, str]], split: str):
    for doc_id, text in documents:
      if pydoc_split(doc_id) == split:
        yield doc_id, {"text": text, "id": doc_id}


# --------------------------------------------------------------------------------------------
# A user's local text files.

_TEXT_SUFFIXES = (".txt", ".jsonl")


def _split_paths(paths: str | list[str]) -> list[str]:
  parts = paths.split(",") if isinstance(paths, str) else list(paths)
  parts = [p.strip() for p in parts if p.strip()]
  if not parts:
    raise ValueError("text source: no paths given; expected text:PATH[,PATH...] with .txt/.jsonl "
                     "files or directories")
  return parts


def _local_files(paths: str | list[str]) -> list[tuple[str, str, str]]:
  """(given path, file, kind) in reading order; kind is paragraphs | document | jsonl.

  Raises ValueError for a missing path, a directory without .txt/.jsonl files, another file
  type, or a file listed twice.
  """
  files = []
  for path in _split_paths(paths):
    if os.path.isdir(path):
      found = []
      for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
          if not name.startswith(".") and name.lower().endswith(_TEXT_SUFFIXES):
            kind = "jsonl" if name.lower().endswith(".jsonl") else "document"
            found.append((path, os.path.join(root, name), kind))
      found.sort(key=lambda entry: _tree_order(entry[1], path))
      if not found:
        raise ValueError(f"{path}: directory has no .txt or .jsonl files (searched recursively); "
                         "put text in NAME.txt files or JSONL records in NAME.jsonl files")
      files += found
    elif os.path.isfile(path):
      if path.lower().endswith(".jsonl"):
        files.append((path, path, "jsonl"))
      elif path.lower().endswith(".txt"):
        files.append((path, path, "paragraphs"))
      else:
        raise ValueError(f"{path}: not a .txt or .jsonl file; rename it to .txt (documents "
                         "separated by blank lines) or .jsonl (one {\"text\": ...} per line)")
    else:
      raise ValueError(f"{path}: no such file or directory (text:PATH takes .txt/.jsonl files or "
                       "directories, comma-separated)")
  seen = {}
  for _, file, _ in files:
    real = os.path.realpath(file)
    if real in seen:
      raise ValueError(f"{file}: listed twice (also as {seen[real]}); name each file once")
    seen[real] = file
  return files


class _DecodedLines:
  """Lines of a file decoded as UTF-8, invalid bytes replaced and counted."""

  def __init__(self, path: str):
    self.path = path
    self.replaced = 0

  def __iter__(self) -> Iterator[str]:
    with open(self.path, "rb") as f:
      for number, raw in enumerate(f, 1):
        line = raw.decode("utf-8", errors="replace")
        # Count only the U+FFFD that decoding inserted, not ones written in the file.
        self.replaced += line.count("\ufffd") - raw.count(b"\xef\xbf\xbd")
        if number == 1:
          line = line.removeprefix("\ufeff")  # byte-order mark
        yield line.rstrip("\r\n")

  def warn_if_replaced(self):
    if self.replaced:
      log.warning("%s: %d characters were not valid UTF-8 and were replaced by U+FFFD",
                  self.path, self.replaced)


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


def _jsonl_records(lines: _DecodedLines) -> Iterator[tuple[int, str]]:
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{lines.path}:{number}: not valid JSON ({e.msg} at column {e.colno}); "
                       "each line must be an object like {\"text\": \"...\"}") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
      got = (f"keys {sorted(record)}" if isinstance(record, dict) else type(record).__name__)
      if isinstance(record, dict) and "text" in record:
        got = f"\"text\" of type {type(record['text']).__name__}"
      raise ValueError(f"{lines.path}:{number}: expected an object with a string \"text\" field, "
                       f"got {got}")
    yield number, record["text"]


def read_local_documents(paths: str | list[str]) -> Iterator[tuple[str, str]]:
  """(doc_id, text) of every document under `paths` (comma-separated str or a list), in order.

  The rules are in this module's docstring. Raises ValueError naming the file (and line) for a
  missing path, a file or directory without documents, or a bad JSONL line.
  """
  return _read_documents(paths, warn=True)


def _read_documents(paths: str | list[str], warn: bool) -> Iterator[tuple[str, str]]:
  for path, group in itertools.groupby(_local_files(paths), key=lambda entry: entry[0]):
    yielded = 0
    for _, file, kind in group:
      lines = _DecodedLines(file)
      if kind == "paragraphs":
        docs = ((f"{file}:{n}", text) for n, text in _paragraphs(lines))
      elif kind == "jsonl":
        docs = ((f"{file}:{n}", text) for n, text in _jsonl_records(lines))
      else:
        docs = [(file, _clean("\n".join(lines)))]
      for doc_id, text in docs:
        if text.strip():
          yielded += 1
          yield doc_id, text
      if warn:
        lines.warn_if_replaced()
    if not yielded:
      what = "directory" if os.path.isdir(path) else "file"
      raise ValueError(f"{path}: {what} has no documents (empty or whitespace only); add text to "
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


def local_text_config_name(paths: str | list[str], validation_fraction: float) -> str:
  """A name that changes when any file's path, size or mtime, or the fraction, changes."""
  key = [validation_fraction] + [os.path.abspath(p) for p in _split_paths(paths)]
  for _, file, kind in _local_files(paths):
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


class LocalText(tfds.core.GeneratorBasedBuilder):
  """A user's .txt/.jsonl files; see the module docstring for how they become documents."""

  code_path = _CODE_PATH
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Blank-line paragraphs, whole-file .txt, JSONL; last docs held out."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Local text files: " + ", ".join(self.builder_config.paths),
        features=_text_features(),
        disable_shuffling=True,  # documents stay in file order, so validation is the end
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    sizes = [len(text.encode("utf-8")) for _, text in read_local_documents(list(config.paths))]
    n = len(sizes)  # reading also checks every file, and warns once about replaced bytes
    if n < 2:
      raise ValueError(
          f"{', '.join(config.paths)}: found {n} document; a validation split needs at least 2 "
          "(the last data.validation_fraction of them are held out). Add more text, or separate "
          "a .txt file's documents with blank lines.")
    n_train = n - validation_count(sizes, config.validation_fraction)
    return {"train": self._generate_examples(0, n_train),
            "validation": self._generate_examples(n_train, n)}

  def _generate_examples(self, start: int, stop: int):
    documents = _read_documents(list(self.builder_config.paths), warn=False)
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
                       data_dir: str) -> LocalText:
  """The (maybe not yet built) `local_text` dataset of `paths` in `data_dir`."""
  if not 0 < validation_fraction < 1:
    raise ValueError(f"data.validation_fraction must be in (0, 1), got {validation_fraction}")
  config = LocalTextConfig(
      name=local_text_config_name(paths, validation_fraction),
      paths=tuple(_split_paths(paths)),
      validation_fraction=validation_fraction,
      description="Local text files")
  return LocalText(config=config, data_dir=data_dir, file_format="array_record")


def pydoc_builder(data_dir: str) -> PydocCorpus:
  """The (maybe not yet built) default corpus in `data_dir`."""
  return PydocCorpus(data_dir=data_dir, file_format="array_record")


# --------------------------------------------------------------------------------------------
# Building once per data dir.


@contextlib.contextmanager
def _build_lock(builder: tfds.core.DatasetBuilder):
  """An exclusive file lock per dataset variant, so concurrent processes build it once."""
  data_dir = os.fspath(builder.data_dir_root)
  try:
    import fcntl
  except ImportError:  # not POSIX: rely on TFDS's write-then-rename
    fcntl = None
  if fcntl is None or "://" in data_dir:
    yield
    return
  lock_dir = os.path.join(data_dir, builder.name)
  os.makedirs(lock_dir, exist_ok=True)
  config = builder.builder_config.name if builder.builder_config else "default"
  with open(os.path.join(lock_dir, f".{config}-{builder.version}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _reopen(builder):
  """A fresh builder for the same variant, which reads what is on disk now."""
  return type(builder)(config=builder.builder_config, data_dir=os.fspath(builder.data_dir_root),
                       file_format="array_record")


def is_built(builder) -> bool:
  """Whether `builder`'s dataset is complete on disk (TFDS renames it into place when done)."""
  return (builder.data_path / "dataset_info.json").exists()


def build(builder):
  """Writes `builder`'s dataset as ArrayRecord unless it is already in its data dir.

  Returns a builder ready for `as_data_source`. Safe when processes race: they take a file lock,
  and TFDS writes into a temporary directory renamed at the end, so a loser reuses the winner's.
  """
  if is_built(builder):
    return builder
  with _build_lock(builder):
    if is_built(builder):  # another process built it while we waited
      return _reopen(builder)
    tfds.disable_progress_bar()
    log.info("Building %s into %s (once per data dir)", builder.info.full_name, builder.data_path)
    start = time.perf_counter()
    try:
      with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own banner
        builder.download_and_prepare(file_format="array_record")
    except OSError:
      if not is_built(builder):  # the rename lost a race (no lock here): reuse the winner's
        raise
      return _reopen(builder)
    log.info("Built %s in %.1f s: %s", builder.info.full_name, time.perf_counter() - start,
             {name: split.num_examples for name, split in builder.info.splits.items()})
  return builder
