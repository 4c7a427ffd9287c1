"""Local corpora as TFDS datasets, built once per data dir into ArrayRecord files.

Each builder has its own module: data/pydoc_corpus.py (the default corpus, the running Python's
documentation) and data/local_text.py (a user's .txt/.jsonl/.parquet files, `text:PATHS`). Both are
readable with random access (`builder.as_data_source(split)`) and need neither TensorFlow nor the
network. This module holds what they share: the features, and building once per data dir even
when processes race.
"""

import contextlib
import glob
import io
import logging
import os
import shutil
import time

import tensorflow_datasets as tfds
from etils import epath

log = logging.getLogger(__name__)


# TFDS looks for a builder's checksums file next to its code through importlib.resources, which
# fails when pretrax is an editable install (a namespace package). Point it at this file.
CODE_PATH = tfds.core.utils.classproperty(classmethod(lambda cls: epath.Path(__file__)))


def tree_order(path: str, root: str) -> tuple[str, ...]:
  """Sort key: `a/z.txt` before `b.txt`, the way the tree reads, on every OS."""
  return tuple(os.path.relpath(path, root).split(os.sep))


def text_features() -> tfds.features.FeaturesDict:
  """Every corpus's examples: the document's text and its id."""
  return tfds.features.FeaturesDict({"text": tfds.features.Text(), "id": tfds.features.Text()})


@contextlib.contextmanager
def _build_lock(builder: tfds.core.DatasetBuilder):
  """An exclusive file lock per dataset variant, so concurrent processes build it once.

  Yields whether the lock is held (False where there is none: not POSIX, or a remote dir)."""
  data_dir = os.fspath(builder.data_dir_root)
  try:
    import fcntl
  except ImportError:  # not POSIX: rely on TFDS's write-then-rename
    fcntl = None
  if fcntl is None or "://" in data_dir:
    yield False
    return
  lock_dir = os.path.join(data_dir, builder.name)
  os.makedirs(lock_dir, exist_ok=True)
  config = builder.builder_config.name if builder.builder_config else "default"
  with open(os.path.join(lock_dir, f".{config}-{builder.version}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _remove_interrupted_builds(builder) -> None:
  """Deletes what killed builds of `builder`'s variant left. TFDS writes a build into
  DATA_DIR/NAME/CONFIG/incomplete.XXXXXX_VERSION/ and renames it to VERSION when done. Call
  only under the variant's build lock: every live build of it holds that lock, so none of
  these directories is in use."""
  parent = os.fspath(builder.data_path.parent)
  pattern = f"{tfds.core.constants.INCOMPLETE_PREFIX}*_{builder.version}"
  for path in sorted(glob.glob(os.path.join(glob.escape(parent), pattern))):
    log.info("Removing %s, left by an interrupted build of %s", path, builder.info.full_name)
    shutil.rmtree(path, ignore_errors=True)


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
  with _build_lock(builder) as locked:
    if is_built(builder):  # another process built it while we waited
      return _reopen(builder)
    if locked:
      _remove_interrupted_builds(builder)
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
