"""The default corpus, `pydoc_corpus`: real English text that every machine has, the running
Python's own documentation.

One document per entry of `pydoc_data.topics.topics`, then one per standard-library module: its
module docstring followed by its class/function/method docstrings, separated by blank lines.
Modules are parsed with `ast`, never imported. About 2 MB on CPython 3.11. The builder config is
named after the Python version (`py3_11_7`), so another Python builds its own copy. A document is
in `validation` when `crc32(id) % 20 == 0` (about 5%).
"""

import ast
import logging
import os
import sys
import sysconfig
import warnings
import zlib
from typing import Iterator

import tensorflow_datasets as tfds

from pretrax.data import corpora

log = logging.getLogger(__name__)

# Directories of the standard library that hold no prose worth training on, or tests.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"})
PYDOC_VALIDATION_MODULUS = 20  # crc32(id) % 20 == 0 -> validation: about 5% of the documents


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
  return sorted(found, key=lambda path: corpora.tree_order(path, stdlib))


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

  code_path = corpora.CODE_PATH
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Topics plus stdlib docstrings; 5% validation by crc32 of the id."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=python_config_name(), description=f"Documentation of Python {sys.version.split()[0]}")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="The running Python's documentation: every pydoc topic, and per stdlib "
                    "module its docstrings.",
        features=corpora.text_features(),
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


def pydoc_builder(data_dir: str) -> PydocCorpus:
  """The (maybe not yet built) default corpus in `data_dir`."""
  return PydocCorpus(data_dir=data_dir, file_format="array_record")
