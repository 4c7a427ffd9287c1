"""Packed rows, built once: a corpus split tokenized and packed into fixed-length rows on disk.

Training reads rows by index (data/global_batches.py) instead of tokenizing and packing in every
process. A build lives in ROOT/NAME/ (ROOT = config.data.rows_dir, else DATA_DIR/pretrax_rows):

  rows-SSSSS.array_record  one record per row: its L token ids, then its L segment ids (0 =
                           padding), little-endian, of the dtype in the manifest. Positions are
                           not stored: they restart at 0 in each segment (packing.segment_positions).
                           Rows of sentences (kinds "pairs", "sentences") end with their
                           document's index in the split (uint64), and their segment ids
                           number the sentences
  manifest.json            written last: what the rows are (`RowSpec`), each shard's rows,
                           documents, text bytes, file size and CRC32, and the build's figures

NAME says what the rows are (corpus, split, tokenizer, row kind and length) and ends with a hash
of the whole `RowSpec`, so changing the tokenizer or the packing builds another dataset.

The corpus split is cut into shards of about `shard_mb` MB of documents, contiguous document
ranges; each is packed on its own (its last row padded) by a pool of worker processes, so the
rows depend on the corpus and the spec only, never on how many cores built them. A build writes
into NAME.partial-PID-XXXX/ and renames it to NAME after the manifest: a killed build leaves
only a .partial directory, which the next build removes. Opening checks the manifest against the
files (sizes always, CRC32 once per file version); a build that does not match is reported,
deleted and rebuilt. Builds of one NAME are serialized by a file lock, so processes that race
build it once.
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
from array_record.python import array_record_module

from pretrax.data import files, packing, sentences
from pretrax.data.errors import InputError

log = logging.getLogger("pretrax")

FORMAT = 1            # bump when the record layout or the packing changes
KINDS = ("causal", "mlm", "pairs", "sentences", "stream")  # how documents become rows (RowSpec.kind)
MANIFEST = "manifest.json"
VERIFIED = "verified.json"  # size and mtime of each file whose CRC32 was checked
READ_DOCUMENTS = 64   # documents read, tokenized and packed at a time: what bounds a worker's memory
# One row per chunk (a random access reads one row); one writer thread (a process per core).
WRITER_OPTIONS = "group_size:1,uncompressed,max_parallelism:1"
READER_OPTIONS = "readahead_buffer_size:0"


class RowStoreError(InputError):
  """A packed-rows dataset that cannot be built or read; the message names the path."""


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """Everything that decides the rows' contents.

  kind: causal -- documents become `[bos] + ids + [eos]` packed into rows of L = seq_len + 1 slots
    (data/packing.py: a document that does not fit continues in the next row, overlapping it by
    one token); inputs are slots [:-1], targets slots [1:].
    mlm -- documents become `[CLS] ids [SEP]` segments packed into rows of L = seq_len slots
    (packing's framed rows); masks are drawn when the rows are read.
    pairs -- documents become chunks of whole sentences, one per row of L = seq_len - 3 slots
    (data/sentences.py), each row with its document's index; BERT's sentence pairs and masks are
    drawn when the rows are read.
    sentences -- the rows of pairs, of L = seq_len - 2 slots (room for `[bos] ... [eos]`); BART's
    noise is drawn when the rows are read.
    stream -- documents become `ids + [eos]`, concatenated and cut into rows of L = seq_len slots
    with no overlap (T5's raw rows; seq_len is the raw length, not the encoder's); span
    corruption is drawn when the rows are read.
  """
  kind: str
  seq_len: int
  corpus: dict          # sources.describe_corpus: dataset name, version, documents per split
  split: str
  tokenizer: dict       # Tokenizer.describe(): kind, vocabulary, specials, model hash
  shard_mb: int

  @property
  def row_len(self) -> int:
    return {"causal": self.seq_len + 1, "pairs": self.seq_len - 3,
            "sentences": self.seq_len - 2}.get(self.kind, self.seq_len)

  @property
  def has_documents(self) -> bool:
    """Whether each row records its document's index."""
    return self.kind in ("pairs", "sentences")

  def key(self) -> str:
    text = json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def name(self) -> str:
    corpus = re.sub(r"[^A-Za-z0-9._]+", "_", self.corpus["dataset"]).strip("_")[:60]
    split = re.sub(r"[^A-Za-z0-9._]+", "_", self.split).strip("_")[:40]
    tok = f"{self.tokenizer['kind']}{self.tokenizer['vocab_size']}"
    return f"{corpus}-{split}-{tok}-{self.kind}{self.seq_len}-{self.key()}"


def _dtype(largest: int) -> str:
  return "<u2" if largest < 1 << 16 else "<u4"


def _record_dtype(dtype: str, row_len: int, has_documents: bool) -> np.dtype:
  """One record: the [2, L] row, then the document index if the kind records it."""
  fields = [("row", dtype, (2, row_len))]
  return np.dtype(fields + [("document", "<u8")] if has_documents else fields)


# --------------------------------------------------------------------------------------------
# Building


@dataclasses.dataclass(frozen=True)
class _ShardJob:
  source: Any           # random access to document texts (picklable)
  tokenizer: Any
  spec: RowSpec
  path: str
  start: int            # documents [start, stop)
  stop: int
  dtype: str            # of token and segment ids on disk


def _document_texts(job: _ShardJob, counts: dict) -> Iterator[tuple[int, list[str]]]:
  """(index of the first, texts) of the shard's documents, READ_DOCUMENTS at a time."""
  getitems = getattr(job.source, "__getitems__", None)
  for first in range(job.start, job.stop, READ_DOCUMENTS):
    indices = range(first, min(first + READ_DOCUMENTS, job.stop))
    texts = getitems(indices) if getitems else [job.source[i] for i in indices]
    counts["documents"] += len(texts)
    counts["text_bytes"] += sum(len(t.encode("utf-8")) for t in texts)
    yield first, texts


def _document_tokens(job: _ShardJob, counts: dict) -> Iterator[np.ndarray]:
  """The shard's documents as token ids (causal: `[bos] + ids + [eos]`; stream: `ids + [eos]`)."""
  kind = job.spec.kind
  bos = np.array([job.tokenizer.bos_id], np.int32)
  eos = np.array([job.tokenizer.eos_id], np.int32)
  for _, texts in _document_texts(job, counts):
    for ids in job.tokenizer.encode_batch(texts):
      if kind == "causal":
        yield np.concatenate([bos, ids, eos])
      elif kind == "stream":
        yield np.concatenate([ids, eos])
      else:
        yield ids


def _records(job: _ShardJob, counts: dict) -> Iterator[np.ndarray]:
  """Blocks of the shard's records: arrays whose items' bytes are the records."""
  dtype = np.dtype(job.dtype)
  if job.spec.has_documents:
    record = _record_dtype(job.dtype, job.spec.row_len, has_documents=True)
    documents = ((first + i, doc) for first, texts in _document_texts(job, counts)
                 for i, doc in enumerate(sentences.document_sentences(texts, job.tokenizer)))
    for rows, docs in sentences.chunk_rows(documents, job.spec.row_len, dtype=dtype):
      block = np.empty(len(rows), record)
      block["row"], block["document"] = rows, docs
      yield block
    return
  framed = job.spec.kind == "mlm"  # only MLM rows use [CLS] / [SEP] (GPT-2's tokenizer has none)
  yield from packing.pack_blocks(_document_tokens(job, counts), job.spec.seq_len,
                                 framed=framed, stream=job.spec.kind == "stream",
                                 cls_id=job.tokenizer.cls_id if framed else 0,
                                 sep_id=job.tokenizer.sep_id if framed else 0, dtype=dtype)


def build_shard(job: _ShardJob) -> dict:
  """Packs documents [start, stop) into `job.path`; returns the shard's manifest entry."""
  counts = {"documents": 0, "text_bytes": 0}
  rows, start = 0, time.perf_counter()
  writer = array_record_module.ArrayRecordWriter(job.path, WRITER_OPTIONS)
  try:
    for block in _records(job, counts):
      for record in block:
        writer.write(record.tobytes())
      rows += len(block)
  finally:
    writer.close()
  size, crc = files.size_and_crc32(job.path)
  return {"file": os.path.basename(job.path), "rows": rows, "size": size, "crc32": crc,
          "seconds": round(time.perf_counter() - start, 3),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **counts}


def plan_shards(num_documents: int, split_bytes: int, shard_mb: int) -> list[tuple[int, int]]:
  """Contiguous document ranges of about `shard_mb` MB each (from the split's size on disk)."""
  if shard_mb < 1:
    raise RowStoreError(f"data.build_shard_mb must be >= 1, got {shard_mb}")
  count = max(1, min(num_documents, -(-split_bytes // (shard_mb << 20))))
  bounds = [num_documents * i // count for i in range(count + 1)]
  return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class _Progress:
  """One line every few seconds: shards, documents, MB, MB/s, ETA (stderr)."""

  def __init__(self, name: str, shards: int, say: Callable[[str], None]):
    self.name, self.shards, self.say = name, shards, say
    self.start = self.last = time.perf_counter()
    self.done = self.documents = self.bytes = 0

  def update(self, entry: dict) -> None:
    self.done += 1
    self.documents += entry["documents"]
    self.bytes += entry["text_bytes"]
    now = time.perf_counter()
    if now - self.last >= 5 or self.done == self.shards:
      self.last = now
      rate = self.bytes / max(now - self.start, 1e-9)
      left = (self.shards - self.done) / self.done * (now - self.start)
      self.say(f"pretrax: building {self.name}: {self.done}/{self.shards} shards, "
               f"{self.documents:,} documents, {self.bytes / 1e6:,.1f} MB of text, "
               f"{rate / 1e6:.1f} MB/s, ETA {left:.0f} s")


def _say(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def default_workers() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build(spec: RowSpec, source, tokenizer, directory: str, *, split_bytes: int,
          workers: int = 0, say: Callable[[str], None] = _say) -> dict:
  """Builds the rows of `source` (random access to the split's document texts) into `directory`
  (which must not exist) with `workers` processes (0: one per core); returns the manifest."""
  if spec.kind not in KINDS:
    raise RowStoreError(f"no packed-rows build for row kind {spec.kind!r} (one of {KINDS})")
  if spec.row_len < 1:
    raise RowStoreError(f"data.seq_len={spec.seq_len} leaves no room for {spec.kind} rows")
  shards = plan_shards(len(source), split_bytes, spec.shard_mb)
  workers = min(workers or default_workers(), len(shards))
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  partial = tempfile.mkdtemp(prefix=f"{os.path.basename(directory)}.partial-{os.getpid()}-",
                             dir=parent)
  dtype = _dtype(max(tokenizer.vocab_size - 1, spec.row_len))
  jobs = [_ShardJob(source, tokenizer, spec, os.path.join(partial, f"rows-{i:05d}.array_record"),
                    a, b, dtype) for i, (a, b) in enumerate(shards)]
  say(f"pretrax: building packed rows {os.path.basename(directory)} from {len(source):,} "
      f"documents (~{split_bytes / 1e6:,.0f} MB) in {len(shards)} shard(s) with {workers} "
      f"process(es), into {parent}")
  progress = _Progress(os.path.basename(directory), len(jobs), say)
  entries = []
  try:
    if workers == 1:
      for job in jobs:
        entries.append(build_shard(job))
        progress.update(entries[-1])
    else:
      # spawn: the parent may hold JAX's threads, which a fork would copy half-way.
      with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for entry in pool.imap_unordered(build_shard, jobs):
          entries.append(entry)
          progress.update(entry)
    entries.sort(key=lambda e: e["file"])
    seconds = time.perf_counter() - progress.start
    text_bytes = sum(e["text_bytes"] for e in entries)
    manifest = {
        "format": FORMAT, "spec": dataclasses.asdict(spec), "row_len": spec.row_len,
        "dtype": dtype,
        "rows": sum(e["rows"] for e in entries), "shards": entries,
        "build": {"seconds": round(seconds, 3), "workers": workers,
                  "text_mb": round(text_bytes / 1e6, 3),
                  "mb_per_s": round(text_bytes / 1e6 / max(seconds, 1e-9), 3),
                  # what one process packs while it works (start-up of the pool excluded)
                  "mb_per_s_per_process": round(
                      text_bytes / 1e6 / max(sum(e["seconds"] for e in entries), 1e-9), 3),
                  "peak_rss_mb_per_worker": round(max(e.pop("peak_rss_mb") for e in entries), 1)},
    }
    if manifest["rows"] == 0:
      raise RowStoreError(f"{spec.corpus['dataset']}[{spec.split}] has no tokens to pack: it has "
                          f"{len(source)} documents, none with text")
    files.atomic_write_json(os.path.join(partial, MANIFEST), manifest)
    _fsync_tree(partial)
    os.rename(partial, directory)
    _write_verified(directory, manifest)  # the CRC32s were just computed from these files
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  b = manifest["build"]
  say(f"pretrax: built {manifest['rows']:,} rows of {spec.row_len} slots in {b['seconds']:.1f} s "
      f"({b['text_mb']:,.1f} MB of text, {b['mb_per_s']:.1f} MB/s with {workers} process(es), "
      f"peak {b['peak_rss_mb_per_worker']:.0f} MB per process): {directory}")
  return manifest


def _fsync_tree(directory: str) -> None:
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as f:
      os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# Checking and opening


def _read_manifest(directory: str) -> dict:
  with open(os.path.join(directory, MANIFEST)) as f:
    return json.load(f)


def problem(directory: str, spec: RowSpec) -> str | None:
  """None if `directory` holds a complete build of `spec`, else what is wrong with it."""
  try:
    manifest = _read_manifest(directory)
  except FileNotFoundError:
    return "its manifest is missing (an unfinished or damaged build)"
  except (OSError, ValueError) as e:
    return f"its manifest cannot be read ({e})"
  expected = json.loads(json.dumps(dataclasses.asdict(spec)))
  if manifest.get("format") != FORMAT or manifest.get("spec") != expected:
    return "its manifest describes other rows"
  try:
    with open(os.path.join(directory, VERIFIED)) as f:
      verified = json.load(f)
  except (OSError, ValueError):
    verified = {}
  hashed = False
  for shard in manifest["shards"]:
    path = os.path.join(directory, shard["file"])
    try:
      stat = os.stat(path)
    except FileNotFoundError:
      return f"{path} is missing"
    if stat.st_size != shard["size"]:
      return f"{path} has {stat.st_size} bytes, {shard['size']} when built (truncated or changed)"
    if verified.get(shard["file"]) != [stat.st_size, stat.st_mtime_ns]:
      hashed = True
      if files.size_and_crc32(path)[1] != shard["crc32"]:
        return f"{path}: contents differ from when it was built (CRC32 mismatch)"
  if hashed:
    _write_verified(directory, manifest)
  return None


def _write_verified(directory: str, manifest: dict) -> None:
  """Records the size and mtime of each shard as checked, so the next open skips its CRC32."""
  stamps = {}
  for shard in manifest["shards"]:
    stat = os.stat(os.path.join(directory, shard["file"]))
    stamps[shard["file"]] = [stat.st_size, stat.st_mtime_ns]
  with contextlib.suppress(OSError):  # a read-only copy is re-checked next time
    files.atomic_write_json(os.path.join(directory, VERIFIED), stamps)


@contextlib.contextmanager
def _lock(root: str, name: str):
  import fcntl
  with open(os.path.join(root, f".{name}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(spec: RowSpec, root: str, open_source: Callable[[], Any], tokenizer, *,
                 split_bytes: Callable[[], int], workers: int = 0,
                 say: Callable[[str], None] = _say) -> "RowStore":
  """The rows of `spec` under `root`, built first if they are absent, incomplete or damaged."""
  if "://" in root:
    raise RowStoreError(f"packed rows are built on a local or mounted file system, not {root!r}; "
                        "set config.data.rows_dir to a local directory")
  directory = os.path.join(root, spec.name())
  if os.path.isdir(directory) and problem(directory, spec) is None:
    return RowStore(directory)
  os.makedirs(root, exist_ok=True)
  with _lock(root, spec.name()):
    if os.path.isdir(directory):
      wrong = problem(directory, spec)
      if wrong is None:  # another process built it while we waited
        return RowStore(directory)
      say(f"WARNING: packed rows {directory}: {wrong}; deleting and rebuilding them")
      shutil.rmtree(directory)
    for partial in glob.glob(os.path.join(glob.escape(directory) + ".partial-*")):
      log.info("Removing %s, left by an interrupted build", partial)
      shutil.rmtree(partial, ignore_errors=True)
    build(spec, open_source(), tokenizer, directory, split_bytes=split_bytes(), workers=workers,
          say=say)
  return RowStore(directory)


class Rows(NamedTuple):
  """Rows read from a store: tokens and segment ids [n, L] int32; documents [n] int64 (the
  index of each row's document in the split) for kinds that record it, else None."""
  tokens: np.ndarray
  segments: np.ndarray
  documents: np.ndarray | None


class RowStore:
  """Random access to a built dataset's rows: `len(store)`, `store.read(indices)`.

  Readers are opened lazily, so a store pickles (and reopens) cheaply.
  """

  def __init__(self, directory: str):
    self.directory = directory
    self.manifest = _read_manifest(directory)
    self.name = os.path.basename(directory)
    self.row_len = int(self.manifest["row_len"])
    self.seq_len = int(self.manifest["spec"]["seq_len"])
    self.kind = self.manifest["spec"]["kind"]
    self.has_documents = RowSpec(**self.manifest["spec"]).has_documents
    self._record = _record_dtype(self.manifest["dtype"], self.row_len, self.has_documents)
    counts = [s["rows"] for s in self.manifest["shards"]]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._readers = {}

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getstate__(self):
    return {**self.__dict__, "_readers": {}}

  def _reader(self, shard: int):
    if shard not in self._readers:
      path = os.path.join(self.directory, self.manifest["shards"][shard]["file"])
      self._readers[shard] = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
    return self._readers[shard]

  def read(self, indices) -> Rows:
    """[n] row indices -> their `Rows`, in that order."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"{self.directory}: row index out of range [0, {len(self)})")
    rows = np.empty((len(indices), 2, self.row_len), np.int32)
    documents = np.empty(len(indices), np.int64) if self.has_documents else None
    shards = np.searchsorted(self._starts, indices, side="right") - 1
    for shard in np.unique(shards):
      at = np.flatnonzero(shards == shard)
      records = self._reader(int(shard)).read((indices[at] - self._starts[shard]).tolist())
      records = np.frombuffer(b"".join(records), self._record)
      rows[at] = records["row"]
      if documents is not None:
        documents[at] = records["document"]
    return Rows(rows[:, 0], rows[:, 1], documents)
