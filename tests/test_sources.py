"""The corpus builders (data/corpora.py, pydoc_corpus.py, local_text.py) and data/sources.py:
real builds into tmp dirs, no network."""

import json
import logging
import os
import pathlib
import pickle
import random
import re
import subprocess
import sys
import time
import zlib

import pytest
import tensorflow_datasets as tfds

from pretrax.data import corpora, local_text, pydoc_corpus
from pretrax.data import sources
from pretrax.data.config import DataConfig



def _all(source: sources.TextSource) -> list[str]:
  return [source[i] for i in range(len(source))]


def _text_config(paths, tmp_path, **kwargs) -> DataConfig:
  """A text: source; .txt files split at blank lines, which these tests count on."""
  kwargs.setdefault("txt_documents", "paragraphs")
  return DataConfig(source=f"text:{paths}", data_dir=str(tmp_path / "tfds"), **kwargs)


def _write(path, content) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content, encoding="utf-8")
  return str(path)


# --------------------------------------------------------------------------------------------
# The default corpus.


@pytest.fixture(scope="module")
def pydoc_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("pydoc"))
  start = time.perf_counter()
  corpora.build(pydoc_corpus.pydoc_builder(data_dir))
  print(f"pydoc_corpus built in {time.perf_counter() - start:.1f} s")
  return data_dir


@pytest.fixture(scope="module")
def pydoc_splits(pydoc_dir):
  config = DataConfig(source="default", data_dir=pydoc_dir)
  return {split: sources.open_source(config, split) for split in ("train", "validation")}


def _ids_and_texts(data_dir, split):
  records = corpora.build(pydoc_corpus.pydoc_builder(data_dir)).as_data_source(split=split)
  return [(r["id"].decode(), r["text"].decode()) for r in (records[i] for i in range(len(records)))]


@pytest.mark.slow
def test_default_corpus_size_and_splits(pydoc_splits):
  train, validation = pydoc_splits["train"], pydoc_splits["validation"]
  n_train, n_val = len(train), len(validation)
  size = sum(len(t.encode("utf-8")) for s in (train, validation) for t in _all(s))
  print(f"pydoc_corpus: {size} bytes, {n_train} train + {n_val} validation documents")
  assert 1.5e6 < size < 3e6  # targeted about 2 MB
  assert n_train > 300 and n_val > 5
  assert 0.02 < n_val / (n_train + n_val) < 0.09  # about 1 in 20


def test_default_corpus_is_real_english(pydoc_splits):
  texts = _all(pydoc_splits["train"]) + _all(pydoc_splits["validation"])
  joined = "\n".join(texts)
  # Sentences from the Python reference manual (the "assert" topic) and the json docstring.
  assert "Assert statements are a convenient way to insert debugging assertions" in joined
  assert "JSON (JavaScript Object Notation)" in joined
  words = re.findall(r"[a-z]+", joined.lower())
  assert words.count("the") / len(words) > 0.03  # English prose, not code


def test_default_corpus_splits_are_disjoint_and_hash_chosen(pydoc_dir):
  train = _ids_and_texts(pydoc_dir, "train")
  validation = _ids_and_texts(pydoc_dir, "validation")
  train_ids, val_ids = {i for i, _ in train}, {i for i, _ in validation}
  assert not train_ids & val_ids
  assert len(train_ids) == len(train) and len(val_ids) == len(validation)
  assert all(zlib.crc32(i.encode()) % 20 == 0 for i in val_ids)
  assert all(zlib.crc32(i.encode()) % 20 != 0 for i in train_ids)
  ids = train_ids | val_ids
  assert "topic:assert" in ids and "module:json" in ids and "module:json.decoder" in ids
  excluded = ("test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages")
  assert not [i for i in ids if set(i.removeprefix("module:").split(".")) & set(excluded)]
  # The stdlib was parsed, never imported: these two act on import (a browser, a poem).
  assert "antigravity" not in sys.modules and "this" not in sys.modules


@pytest.mark.slow
def test_default_corpus_is_deterministic(pydoc_dir, tmp_path):
  other = str(tmp_path / "again")
  for split in ("train", "validation"):
    assert _ids_and_texts(pydoc_dir, split) == _ids_and_texts(other, split)


def test_default_corpus_config_is_keyed_by_python_version(pydoc_dir):
  v = sys.version_info
  builder = pydoc_corpus.pydoc_builder(pydoc_dir)
  assert builder.builder_config.name.startswith(f"py{v.major}_{v.minor}_{v.micro}")
  assert f"/py{v.major}_{v.minor}_{v.micro}" in builder.data_dir


def test_default_corpus_reads_through_tfds_too(pydoc_dir, pydoc_splits):
  config = DataConfig(source="tfds:pydoc_corpus", data_dir=pydoc_dir)
  assert _all(sources.open_source(config, "validation")) == _all(pydoc_splits["validation"])
  assert sources.eval_split(config) == "validation"


# --------------------------------------------------------------------------------------------
# Local text.


def test_txt_file_is_split_at_blank_lines_when_asked(tmp_path):
  path = _write(tmp_path / "a.txt",
                "\n\nFirst paragraph,\n  two lines.  \n\nSecond.\n \t \n\n\n  Third, indented.\r\n"
                "still third\r\n\r\nFourth\n\n   \n")
  docs = list(local_text.read_local_documents(path, "paragraphs"))
  assert docs == [(f"{path}:3", "First paragraph,\n  two lines."),
                  (f"{path}:6", "Second."),
                  (f"{path}:10", "  Third, indented.\nstill third"),
                  (f"{path}:13", "Fourth")]


def test_txt_file_is_one_continuous_text_by_default(tmp_path, shakespeare_text):
  text = shakespeare_text[:100_000]
  path = _write(tmp_path / "play.txt", text)
  docs = list(local_text.read_local_documents(path))
  assert "".join(piece for _, piece in docs) == text  # every character, every line break
  sizes = [len(piece.encode("utf-8")) for _, piece in docs]
  assert len(docs) > 20 and max(sizes) < local_text.CHUNK_BYTES + 200
  assert all(piece.endswith("\n") for _, piece in docs[:-1])  # cut at line boundaries
  line = 1
  for doc_id, piece in docs:  # ids name the line each piece starts at
    assert doc_id == f"{path}:{line}"
    line += piece.count("\n")
  # A file without a single blank line trains too (it used to be one document), and its
  # validation split is its last tenth of bytes.
  one_block = _write(tmp_path / "lines.txt", "".join(f"line {i}\n" for i in range(500)))
  pieces = [len(p) for _, p in local_text.read_local_documents(one_block)]
  held = local_text.validation_count(pieces, 0.1)
  assert 0.1 <= sum(pieces[-held:]) / sum(pieces) < 0.1 + max(pieces) / sum(pieces)


def test_txt_file_split_at_a_separator(tmp_path):
  path = _write(tmp_path / "dump.txt", "first doc\nmore<|endoftext|>second<|endoftext|>\n"
                "third\n\nstill third<|endoftext|>")
  docs = list(local_text.read_local_documents(path, "<|endoftext|>"))
  assert docs == [(f"{path}:1", "first doc\nmore"), (f"{path}:2", "second"),
                  (f"{path}:2", "third\n\nstill third")]


def test_directory_of_txt_and_jsonl(tmp_path):
  root = tmp_path / "corpus"
  _write(root / "b.txt", "Whole file B.\n\nStill B.\n")
  _write(root / "a" / "z.txt", "A/Z document.\n")
  _write(root / "a" / "records.jsonl",
         json.dumps({"text": "record one", "id": 7}) + "\n\n" + json.dumps({"text": "  "}) + "\n"
         + json.dumps({"text": "record\n\nthree"}) + "\n")
  _write(root / "a" / "empty.txt", "  \n")
  _write(root / "notes.md", "ignored")
  _write(root / ".hidden.txt", "ignored")
  docs = list(local_text.read_local_documents(str(root)))
  assert docs == [(f"{root}/a/records.jsonl:1", "record one"),
                  (f"{root}/a/records.jsonl:4", "record\n\nthree"),
                  (f"{root}/a/z.txt", "A/Z document."),
                  (f"{root}/b.txt", "Whole file B.\n\nStill B.")]
  # Several paths, comma-separated, in the order given.
  single = _write(tmp_path / "single.jsonl", json.dumps({"text": "alone"}) + "\n")
  docs = list(local_text.read_local_documents(f"{single}, {root}"))
  assert [text for _, text in docs] == ["alone", "record one", "record\n\nthree", "A/Z document.",
                                        "Whole file B.\n\nStill B."]


def _compressed(path, suffix: str) -> str:
  """A copy of `path` compressed as `suffix` (.gz or .zst) says."""
  data = open(path, "rb").read()
  if suffix == ".gz":
    import gzip
    packed = gzip.compress(data)
  else:
    zstandard = pytest.importorskip("zstandard")
    packed = zstandard.ZstdCompressor().compress(data)
  return _write(pathlib.Path(path + suffix), packed)


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
@pytest.mark.parametrize("name, mode", [("book.txt", "stream"), ("book.txt", "paragraphs"),
                                        ("records.jsonl", "stream")])
def test_compressed_files_give_the_documents_of_the_plain_file(tmp_path, shakespeare_text,
                                                                suffix, name, mode):
  if name.endswith(".jsonl"):
    text = "".join(json.dumps({"text": p}) + "\n" for p in shakespeare_text[:20_000].split("\n\n"))
  else:
    text = shakespeare_text[:20_000]
  plain = _write(tmp_path / name, text)
  packed = _compressed(plain, suffix)
  assert packed.endswith(name + suffix)
  ids_plain, docs_plain = zip(*local_text.read_local_documents(plain, mode))
  ids_packed, docs_packed = zip(*local_text.read_local_documents(packed, mode))
  # The same documents; ids name each its own file and the same lines. Stream pieces are sized
  # by the file's size on disk, so there only the text joined back together is the same.
  if name.endswith(".txt") and mode == "stream":
    assert "".join(docs_packed) == "".join(docs_plain) == text
  else:
    assert docs_packed == docs_plain and len(docs_plain) > 10
    assert [i.replace(suffix, "") for i in ids_packed] == list(ids_plain)


@pytest.mark.parametrize("boundary", ["inside", "at"])
def test_zstandard_files_of_several_frames(tmp_path, monkeypatch, boundary):
  zstandard = pytest.importorskip("zstandard")
  first = zstandard.ZstdCompressor().compress(b"line one\nline tw")
  second = zstandard.ZstdCompressor().compress(b"o\nline three\n")
  path = _write(tmp_path / "frames.txt.zst", first + second)
  # Read in chunks that end inside the first frame, or exactly where it ends.
  monkeypatch.setattr(local_text, "READ_BYTES", len(first) - 3 if boundary == "inside" else
                      len(first))
  assert list(local_text.raw_lines(path)) == [b"line one\n", b"line two\n", b"line three\n"]


def test_parquet_rows_are_documents_like_jsonl_records(tmp_path, shakespeare_text):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  paragraphs = shakespeare_text[:30_000].split("\n\n")
  values = paragraphs[:5] + [None, ""] + paragraphs[5:]  # null and empty values are skipped
  path = str(tmp_path / "corpus.parquet")
  pq.write_table(pa.table({"id": list(range(len(values))), "text": values}), path,
                 row_group_size=7)
  jsonl = _write(tmp_path / "corpus.jsonl", "".join(json.dumps({"text": p}) + "\n"
                                                    for p in paragraphs))
  from_parquet = list(local_text.read_local_documents(path))
  assert [t for _, t in from_parquet] == [t for _, t in local_text.read_local_documents(jsonl)]
  assert from_parquet[5][0] == f"{path}:8"  # 1-based rows, counted over the skipped ones too
  # A directory reads Parquet files beside the others, in tree order; a built corpus works.
  (tmp_path / "dir").mkdir()
  os.replace(path, tmp_path / "dir" / "corpus.parquet")
  config = _text_config(str(tmp_path / "dir"), tmp_path)
  assert (_all(sources.open_source(config, "train")) + _all(sources.open_source(config, "validation"))
          == [t for _, t in from_parquet])


def test_bad_compressed_and_parquet_files_are_errors_naming_them(tmp_path, shakespeare_text):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  plain = _write(tmp_path / "book.txt", shakespeare_text[:200_000])
  for suffix in (".gz", ".zst"):
    packed = _compressed(plain, suffix)
    data = open(packed, "rb").read()
    open(packed, "wb").write(data[:len(data) // 2])  # truncated
    with pytest.raises(local_text.InputError, match=re.escape(packed) + ".*damaged or truncated"):
      list(local_text.read_local_documents(packed))
  no_text = str(tmp_path / "no_text.parquet")
  pq.write_table(pa.table({"body": ["a", "b"]}), no_text)
  with pytest.raises(local_text.InputError, match='no "text" column \\(columns: body\\)'):
    list(local_text.read_local_documents(no_text))
  numbers = str(tmp_path / "numbers.parquet")
  pq.write_table(pa.table({"text": [1, 2]}), numbers)
  with pytest.raises(local_text.InputError, match='column "text" is int64, expected strings'):
    list(local_text.read_local_documents(numbers))
  not_parquet = _write(tmp_path / "fake.parquet", "not parquet at all")
  with pytest.raises(local_text.InputError, match="fake.parquet: not a readable Parquet file"):
    list(local_text.read_local_documents(not_parquet))


def test_a_missing_data_extra_is_one_error_naming_it(tmp_path, monkeypatch):
  packed = _compressed(_write(tmp_path / "a.txt", "some text\n"), ".gz")
  os.replace(packed, tmp_path / "a.txt.zst")  # only the name matters here
  (tmp_path / "b.parquet").write_bytes(b"")
  for module, name in (("zstandard", "a.txt.zst"), ("pyarrow", "b.parquet")):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(local_text.InputError, match=rf'{name}: reading it needs {module}, which '
                       r'is not installed: pip install -e "\.\[data\]"'):
      list(local_text.read_local_documents(str(tmp_path / name)))


def test_validation_is_the_last_fraction(tmp_path):
  path = _write(tmp_path / "ten.txt", "\n\n".join(f"doc {i}" for i in range(10)))
  config = _text_config(path, tmp_path, validation_fraction=0.3)
  assert _all(sources.open_source(config, "train")) == [f"doc {i}" for i in range(7)]
  assert _all(sources.open_source(config, "validation")) == ["doc 7", "doc 8", "doc 9"]
  assert sources.eval_split(config) == "validation"
  # At least one document is held out, however small the fraction.
  path = _write(tmp_path / "three.txt", "x\n\ny\n\nz")
  config = _text_config(path, tmp_path, validation_fraction=0.01)
  assert _all(sources.open_source(config, "validation")) == ["z"]
  assert list(sources.iter_texts(config, "train", max_documents=1)) == ["x"]


def test_rebuilt_when_the_file_changes_and_reused_when_not(tmp_path, caplog):
  path = _write(tmp_path / "c.txt", "old one\n\nold two\n")
  config = _text_config(path, tmp_path)
  caplog.set_level(logging.INFO, logger="pretrax.data")
  assert _all(sources.open_source(config, "train")) == ["old one"]
  assert sum("Building local_text" in m for m in caplog.messages) == 1

  built = local_text.local_text_builder(path, 0.1, config.data_dir, "paragraphs")
  record_file = next(f for f in os.listdir(built.data_dir) if "train.array_record" in f)
  stamp = os.stat(os.path.join(built.data_dir, record_file)).st_mtime_ns
  assert _all(sources.open_source(config, "validation")) == ["old two"]
  assert sum("Building local_text" in m for m in caplog.messages) == 1  # reused
  assert os.stat(os.path.join(built.data_dir, record_file)).st_mtime_ns == stamp

  _write(tmp_path / "c.txt", "new one\n\nnew two\n\nnew three\n")
  os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
  assert _all(sources.open_source(config, "train")) == ["new one", "new two"]
  assert sum("Building local_text" in m for m in caplog.messages) == 2
  rebuilt = local_text.local_text_builder(path, 0.1, config.data_dir, "paragraphs")
  assert rebuilt.builder_config.name != built.builder_config.name
  # A different validation_fraction is a different dataset too.
  assert local_text.local_text_config_name(path, 0.2) != rebuilt.builder_config.name


@pytest.mark.parametrize("files, source, message", [
    ({}, "missing.txt", r"missing.txt: no such file or directory"),
    ({"empty.txt": " \n\n \n"}, "empty.txt", r"empty.txt: file has no documents"),
    ({"d/empty.txt": "", "d/e.jsonl": "\n"}, "d", r"^d: directory has no documents"),
    ({"d/readme.md": "x"}, "d", r"^d: directory has no \.txt, \.jsonl or \.parquet files"),
    ({"a.jsonl": '{"text": "ok"}\n{"text": "bad"\n'}, "a.jsonl", r"a\.jsonl:2: not valid JSON"),
    ({"a.jsonl": '\n{"body": "x"}\n'}, "a.jsonl", r"a\.jsonl:2: .*string \"text\" field.*body"),
    ({"a.jsonl": '{"text": 3}\n'}, "a.jsonl", r"a\.jsonl:1: .*\"text\" of type int"),
    ({"a.jsonl": '["text"]\n'}, "a.jsonl", r"a\.jsonl:1: .*got list"),
    ({"a.csv": "x"}, "a.csv", r"a\.csv: not a \.txt, \.jsonl or \.parquet file"),
    ({"one.txt": "just one document\n"}, "one.txt", r"found 1 document; .*at least 2"),
    ({"d/x.txt": "x\n\ny"}, "d,d/x.txt", r"listed twice"),
])
def test_local_text_errors(tmp_path, monkeypatch, files, source, message):
  for name, content in files.items():
    _write(tmp_path / name, content)
  monkeypatch.chdir(tmp_path)
  config = _text_config(source, tmp_path)
  with pytest.raises(ValueError, match=message):
    sources.open_source(config, "train")
  assert not os.path.exists(os.path.join(config.data_dir, "local_text")) or not any(
      os.path.exists(os.path.join(root, "dataset_info.json"))
      for root, _, _ in os.walk(os.path.join(config.data_dir, "local_text")))


def test_validation_fraction_must_be_a_fraction(tmp_path):
  path = _write(tmp_path / "a.txt", "x\n\ny\n")
  with pytest.raises(ValueError, match=r"data.validation_fraction must be in \(0, 1\)"):
    sources.open_source(_text_config(path, tmp_path, validation_fraction=0.0), "train")


def test_invalid_utf8_is_replaced_and_counted(tmp_path, caplog):
  # Four invalid bytes (\xe9, \xef, \xff, \xfe) and one genuine U+FFFD, which is not counted.
  path = _write(tmp_path / "latin.txt",
                b"caf\xe9 au lait\n\nna\xefve \xff\xfe ok \xef\xbf\xbd\n\nplain\n")
  with caplog.at_level(logging.WARNING, logger="pretrax.data"):
    docs = [text for _, text in local_text.read_local_documents(path, "paragraphs")]
  assert docs == ["caf\ufffd au lait", "na\ufffdve \ufffd\ufffd ok \ufffd", "plain"]
  warnings = [m for m in caplog.messages if "latin.txt" in m]
  assert len(warnings) == 1 and ": 4 characters were not valid UTF-8" in warnings[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="pretrax.data"):
    config = _text_config(path, tmp_path)
    assert _all(sources.open_source(config, "validation")) == ["plain"]
  assert sum("latin.txt" in m for m in caplog.messages) == 1  # once per build, not per pass


def test_a_file_that_is_mostly_not_text_is_refused(tmp_path, caplog):
  # 22% of the characters invalid: still text in the wrong encoding, a warning.
  warned = _write(tmp_path / "accents.txt", b"\n\n".join(b"d\xe9j\xe0 vu" for _ in range(50)))
  with caplog.at_level(logging.WARNING, logger="pretrax.data"):
    assert len(list(local_text.read_local_documents(warned, "paragraphs"))) == 50
  assert any("accents.txt: 100 characters were not valid" in m for m in caplog.messages)
  # 30%: refused, naming the file, also inside a directory and with NUL bytes counted.
  _write(tmp_path / "d" / "a.txt", "fine text")
  _write(tmp_path / "d" / "b.txt", b"\x00\xff\x00" + b"abcdefg")
  with pytest.raises(ValueError, match=r"d/b\.txt: 30% of its characters are not valid UTF-8"):
    list(local_text.read_local_documents(str(tmp_path / "d")))
  # A big file is judged on its first MiB too: binary there, text after, is refused.
  big = _write(tmp_path / "big.txt", random.Random(0).randbytes(1 << 20) + b"plain words\n\n" * 400_000)
  with pytest.raises(ValueError, match=r"big\.txt: 4\d% of its characters"):
    list(local_text.read_local_documents(big))


_RACER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from pretrax.data import corpora, local_text, pydoc_corpus
ready, go, paths, data_dir = sys.argv[1:]
open(ready + str(os.getpid()), "w").close()
while not os.path.exists(go):
  time.sleep(0.005)
builder = corpora.build(local_text.local_text_builder(paths, 0.1, data_dir, "paragraphs"))
records = builder.as_data_source(split="validation")
print(len(builder.as_data_source(split="train")), len(records), records[0]["text"].decode())
"""


@pytest.mark.slow
def test_concurrent_builds_build_once(tmp_path):
  path = _write(tmp_path / "corpus.txt", "\n\n".join(f"document number {i:05d}" for i in range(20000)))
  data_dir, ready, go = str(tmp_path / "tfds"), str(tmp_path / "ready"), str(tmp_path / "go")
  racers = [subprocess.Popen([sys.executable, "-c", _RACER, ready, go, path, data_dir],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
  deadline = time.time() + 60
  while len([f for f in os.listdir(tmp_path) if f.startswith("ready")]) < 2:
    assert time.time() < deadline and all(r.poll() is None for r in racers), "racers failed"
    time.sleep(0.01)
  open(go, "w").close()
  results = [r.communicate(timeout=60) for r in racers]
  assert [r.returncode for r in racers] == [0, 0], results
  assert results[0][0] == results[1][0] == "18000 2000 document number 18000\n"
  assert sum(err.count("Building local_text") for _, err in results) == 1
  variants = os.path.join(data_dir, "local_text")
  assert len([d for d in os.listdir(variants) if not d.startswith(".")]) == 1


_STALLED = """
import os, sys, time
from pretrax.data import corpora, local_text
paths, data_dir, stalled = sys.argv[1:]
generate = local_text.LocalText._generate_examples

def generate_then_stall(self, start, stop):
  yield from generate(self, start, stop)
  open(stalled, "w").close()  # mid-build: TFDS has written into its incomplete.* directory
  time.sleep(600)

local_text.LocalText._generate_examples = generate_then_stall
corpora.build(local_text.local_text_builder(paths, 0.1, data_dir, "paragraphs"))
"""


def test_a_build_killed_midway_leaves_nothing_behind_the_next(tmp_path, caplog):
  path = _write(tmp_path / "corpus.txt", "\n\n".join(f"document number {i}" for i in range(100)))
  data_dir, stalled = str(tmp_path / "tfds"), str(tmp_path / "stalled")
  build = subprocess.Popen([sys.executable, "-c", _STALLED, path, data_dir, stalled],
                           stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not os.path.exists(stalled):
    assert time.time() < deadline and build.poll() is None, build.communicate()
    time.sleep(0.01)
  build.kill()  # SIGKILL: no clean-up runs
  build.wait()
  builder = local_text.local_text_builder(path, 0.1, data_dir, "paragraphs")
  variant = os.path.dirname(builder.data_path)
  version = str(builder.version)
  left = [d for d in os.listdir(variant) if d.startswith("incomplete.")]
  assert len(left) == 1 and re.fullmatch(rf"incomplete\.[A-Z0-9]{{6}}_{re.escape(version)}",
                                         left[0]), left

  with caplog.at_level(logging.INFO, logger="pretrax.data"):
    built = corpora.build(builder)
  assert os.listdir(variant) == [version]
  assert any(left[0] in m and "interrupted build" in m for m in caplog.messages)
  assert len(built.as_data_source(split="train")) + len(built.as_data_source(split="validation")) == 100


# --------------------------------------------------------------------------------------------
# TFDS datasets.


class TrainTestOnly(tfds.core.GeneratorBasedBuilder):
  """A real TFDS dataset with only train and test splits (as lm1b), and a non-text feature."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples("train", 3),
            "test": self._generate_examples("test", 2)}

  def _generate_examples(self, split, n):
    for i in range(n):
      yield i, {"text": f"{split} document {i}", "label": i % 2}


def test_tfds_mock_lm1b():
  with tfds.testing.mock_data(num_examples=7):
    source = sources.open_source(DataConfig(source="tfds:lm1b"), "train")
    assert len(source) == 7
    assert all(isinstance(t, str) and t for t in _all(source))
    assert _all(sources.open_source(DataConfig(source="tfds:lm1b:text"), "train")) == _all(source)
    with pytest.raises(ValueError, match=r"lm1b has no feature 'txt'; its features are text"):
      sources.open_source(DataConfig(source="tfds:lm1b:txt"), "train")
    # The mock carries no split information, so eval_split cannot choose: it asks for it.
    with pytest.raises(ValueError, match=r"set config.data.eval_split"):
      sources.eval_split(DataConfig(source="tfds:lm1b"))
    assert sources.eval_split(DataConfig(source="tfds:lm1b", eval_split="test")) == "test"


def test_tfds_datasets_go_through_the_packed_rows_build(tmp_path):
  import numpy as np
  from pretrax.data import batches, packing, tokenizers
  config = DataConfig(source="tfds:train_test_only", data_dir=str(tmp_path), seq_len=8)
  tok = tokenizers.ByteTokenizer()
  store = batches.packed_rows(config, tok, "train[1:]")
  assert "train_test_only" in store.name and "-train_1-" in store.name
  tokens, segments, _ = store.read(np.arange(len(store)))
  want = packing.pack_documents(
      [np.concatenate([[tok.bos_id], tok.encode(f"train document {i}"), [tok.eos_id]])
       for i in (1, 2)], 8)
  got = packing.causal_examples(tokens, segments)
  for key in packing.FEATURES:
    np.testing.assert_array_equal(got[key], want[key])


def test_tfds_splits_and_features(tmp_path):
  config = DataConfig(source="tfds:train_test_only", data_dir=str(tmp_path))
  assert sources.eval_split(config) == "test"  # no validation split: falls back to test
  assert _all(sources.open_source(config, "test")) == ["test document 0", "test document 1"]
  assert _all(sources.open_source(config, "train[1:]")) == ["train document 1", "train document 2"]
  with pytest.raises(ValueError, match=r"has no split 'validation'; it has test, train"):
    sources.open_source(config, "validation")
  with pytest.raises(ValueError, match=r"feature 'label' of train_test_only is .*not text"):
    sources.open_source(DataConfig(source="tfds:train_test_only:label", data_dir=str(tmp_path)),
                        "train")
  with pytest.raises(ValueError, match=r"features are label, text"):
    sources.open_source(DataConfig(source="tfds:train_test_only:body", data_dir=str(tmp_path)),
                        "train")
  with pytest.raises(ValueError, match=r"TFDS has no dataset 'train_test_onyl'; did you mean "
                                       r"train_test_only"):
    sources.open_source(DataConfig(source="tfds:train_test_onyl", data_dir=str(tmp_path)), "train")


@pytest.mark.parametrize("source", ["", "defaults", "text:", "tfds:", "hf:wikitext", "tfds:a:b:c"])
def test_unknown_source_forms(source):
  with pytest.raises(ValueError, match=r"config.data.source=.* is not one of 'default' .*"
                                       r"'text:PATH' .*'tfds:NAME\[:FEATURE\]'"):
    sources.open_source(DataConfig(source=source), "train")


def test_data_dir_resolution(monkeypatch):
  monkeypatch.delenv("PRETRAX_DATA_DIR", raising=False)
  assert sources.data_dir(DataConfig()) == os.path.expanduser("~/.cache/pretrax/tfds")
  monkeypatch.setenv("PRETRAX_DATA_DIR", "/env/dir")
  assert sources.data_dir(DataConfig()) == "/env/dir"
  assert sources.data_dir(DataConfig(data_dir="/config/dir")) == "/config/dir"


# --------------------------------------------------------------------------------------------
# The text source the pipeline sees.


def test_tinyshakespeare_documents_and_held_out_end(tmp_path, shakespeare_path,
                                                    shakespeare_text):
  text = shakespeare_text
  # Independent split: maximal runs of non-blank lines, with where each starts in the file.
  paragraphs = [(m.start(), m.group()) for m in re.finditer(r"(?:^[^\n]*\S[^\n]*(?:\n|$))+", text,
                                                            re.MULTILINE)]
  config = _text_config(shakespeare_path, tmp_path)
  train = sources.open_source(config, "train")
  validation = sources.open_source(config, "validation")
  n = len(paragraphs)
  assert len(train) + len(validation) == n
  # Held out: the fewest final paragraphs holding >= 10% of the text's bytes.
  sizes = [len(p.rstrip().encode("utf-8")) for _, p in paragraphs]
  held, count = 0, 0
  while held < 0.1 * sum(sizes):
    count += 1
    held += sizes[-count]
  assert len(validation) == count
  assert _all(train) + _all(validation) == [p.rstrip() for _, p in paragraphs]
  held_out_from = paragraphs[len(train)][0] / len(text)
  assert 0.89 < held_out_from < 0.91  # the final 10% of the file
  assert text.rstrip().endswith(validation[-1])
  assert validation.name == f"text:{shakespeare_path}[validation]"


def test_text_source_is_picklable_across_processes(tmp_path):
  path = _write(tmp_path / "p.txt", "alpha\n\nbeta\n\ngamma\n\ndelta caf\u00e9\n")
  source = sources.open_source(_text_config(path, tmp_path, validation_fraction=0.5), "validation")
  assert _all(pickle.loads(pickle.dumps(source))) == ["gamma", "delta caf\u00e9"]
  assert source[-1] == "delta caf\u00e9"
  assert source.__getitems__([1, 0]) == ["delta caf\u00e9", "gamma"]
  with pytest.raises(IndexError):
    source[2]
  pickled = tmp_path / "source.pkl"
  pickled.write_bytes(pickle.dumps(source))
  code = ("import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); "
          "print(len(s), [s[i] for i in range(len(s))], s.name)")
  done = subprocess.run([sys.executable, "-c", code, str(pickled)], capture_output=True,
                        text=True, timeout=60, check=True)
  assert done.stdout == f"2 ['gamma', 'delta caf\u00e9'] text:{path}[validation]\n"
  assert "Using custom data configuration" not in done.stderr


def test_tensorflow_was_never_imported():
  assert "tensorflow" not in sys.modules
