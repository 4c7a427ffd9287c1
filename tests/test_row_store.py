"""Packed rows built once (data/row_store.py) and read as global batches (data/global_batches.py).

The truths: `packing.pack_documents` on the same documents (the rows), the set of all rows (one
epoch visits each once), one process's batches (several processes' slices put together), an
uninterrupted stream (a restored position), and the files as built (corruption, truncation, a
build killed half-way).
"""

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from pretrax.data import batches, config as data_config, global_batches, packing, row_store
from pretrax.data import tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN = 16


def _documents(n: int, seed: int = 0, longest: int = 60) -> list[str]:
  """Documents of varied length (empty ones too), some longer than a row."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghij klmnop\n"))
  return ["".join(rng.choice(letters, int(k))) for k in rng.integers(0, longest, n)]


def _spec(**changes) -> row_store.RowSpec:
  fields = dict(kind="causal", seq_len=SEQ_LEN, corpus={"dataset": "test:1.0.0"}, split="train",
                tokenizer=tokenizers.ByteTokenizer().describe(), shard_mb=1)
  return row_store.RowSpec(**(fields | changes))


def _tokens(docs: list[str]) -> list[np.ndarray]:
  tok = tokenizers.ByteTokenizer()
  return [np.concatenate([[tok.bos_id], tok.encode(d), [tok.eos_id]]) for d in docs]


def _all_rows(store) -> tuple[np.ndarray, np.ndarray]:
  rows = store.read(np.arange(len(store)))
  return rows.tokens, rows.segments


def _build(tmp_path, docs, *, shards=1, workers=1, name="rows", **spec):
  directory = os.path.join(tmp_path, name)
  row_store.build(_spec(**spec), docs, tokenizers.ByteTokenizer(), directory,
                  split_bytes=shards << 20, workers=workers, say=lambda m: None)
  return row_store.RowStore(directory)


def test_rows_are_the_packed_documents_of_each_shard(tmp_path):
  docs = _documents(200)
  store = _build(tmp_path, docs, shards=3)
  assert [s["documents"] for s in store.manifest["shards"]] == [66, 67, 67]
  tokens, segments = _all_rows(store)
  want = [packing.pack_documents(_tokens(docs[a:b]), SEQ_LEN)
          for a, b in row_store.plan_shards(200, 3 << 20, 1)]
  examples = packing.causal_examples(tokens, segments)
  for key in packing.FEATURES:
    np.testing.assert_array_equal(examples[key], np.concatenate([w[key] for w in want]), key)
  assert store.manifest["build"]["text_mb"] == round(sum(len(d) for d in docs) / 1e6, 3)


def test_rows_do_not_depend_on_the_number_of_build_processes(tmp_path):
  docs = _documents(300, seed=1)
  one = _build(tmp_path, docs, shards=4, workers=1, name="one")
  two = _build(tmp_path, docs, shards=4, workers=2, name="two")
  assert two.manifest["build"]["workers"] == 2
  assert ([s["crc32"] for s in one.manifest["shards"]]
          == [s["crc32"] for s in two.manifest["shards"]])


def test_positions_restart_in_each_segment():
  segments = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2, 2, 2]])
  np.testing.assert_array_equal(packing.segment_positions(segments),
                                [[0, 1, 2, 0, 1, 0, 0, 0], [0, 0, 1, 2, 3, 4, 5, 6]])


def _batches(store, batch_size, *, process_index=0, process_count=1, **kwargs):
  kwargs = dict(seed=3, shuffle=True, repeat=True) | kwargs
  return global_batches.GlobalBatches(
      store, lambda rows, g: {"tokens": rows.tokens, "segments": rows.segments, "stream": g},
      global_batch_size=batch_size,
      rows=global_batches.process_slice(batch_size, process_index, process_count), **kwargs)


def test_each_epoch_visits_every_row_once_in_its_own_order(tmp_path):
  store = _build(tmp_path, _documents(100))
  n = len(store)
  order = global_batches.stream_rows(np.arange(3 * n), n, seed=3, shuffle=True)
  epochs = order.reshape(3, n)
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[0], np.arange(n))
  other_seed = global_batches.stream_rows(np.arange(n), n, seed=4, shuffle=True)
  assert not np.array_equal(other_seed, epochs[0])
  tokens, _ = _all_rows(store)
  batch = next(_batches(store, 8))
  np.testing.assert_array_equal(batch["tokens"], tokens[order[:8]])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_make_up_the_global_batch(tmp_path, process_count):
  store = _build(tmp_path, _documents(100))
  whole = _batches(store, 8)
  parts = [_batches(store, 8, process_index=p, process_count=process_count)
           for p in range(process_count)]
  for _ in range(len(store) // 8 + 3):  # across an epoch boundary
    want = next(whole)
    got = [next(p) for p in parts]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])


def test_a_restored_position_continues_the_stream(tmp_path):
  store = _build(tmp_path, _documents(100))
  whole = _batches(store, 6)
  want = [next(whole)["tokens"] for _ in range(12)]
  first = _batches(store, 6)
  for _ in range(5):
    next(first)
  position = json.loads(json.dumps(first.position()))
  assert position["next_row"] == 30
  resumed = _batches(store, 6, process_index=1, process_count=2)  # on another process count
  resumed.set_position(position)
  for t in range(5, 12):
    np.testing.assert_array_equal(next(resumed)["tokens"], want[t][3:])
  other = _build(tmp_path, _documents(100), name="other", seq_len=SEQ_LEN + 1)
  with pytest.raises(ValueError, match="--restart_data"):
    _batches(other, 6).set_position(position)


def test_one_pass_pads_the_last_batch(tmp_path):
  store = _build(tmp_path, _documents(50))
  n = len(store)
  got = list(_batches(store, 8, shuffle=False, repeat=False))
  assert len(got) == -(-n // 8)
  tokens = np.concatenate([b["tokens"] for b in got])
  np.testing.assert_array_equal(tokens[:n], _all_rows(store)[0])
  assert not tokens[n:].any()
  assert len(list(_batches(store, 8, repeat=False, num_batches=2))) == 2


def test_damaged_builds_are_detected_and_rebuilt(tmp_path):
  docs = _documents(400, seed=2)
  spec = _spec()
  root = os.path.join(tmp_path, "root")
  messages = []
  open_store = lambda: row_store.ensure_built(spec, root, lambda: docs, tokenizers.ByteTokenizer(),
                                              split_bytes=lambda: 2 << 20, workers=1,
                                              say=messages.append)
  store = open_store()
  want = _all_rows(store)
  shard = os.path.join(store.directory, store.manifest["shards"][1]["file"])
  assert row_store.problem(store.directory, spec) is None
  assert os.path.exists(os.path.join(store.directory, row_store.VERIFIED))

  def damage(how):
    data = bytearray(open(shard, "rb").read())
    if how == "flip":
      data[len(data) // 2] ^= 0x40
    with open(shard, "wb") as f:
      f.write(data if how == "flip" else data[:-100])

  for how, problem in [("flip", "CRC32 mismatch"), ("truncate", "truncated")]:
    damage(how)
    assert problem in row_store.problem(store.directory, spec)
    messages.clear()
    rebuilt = open_store()
    assert any(problem in m and "rebuilding" in m for m in messages), messages
    for got, expected in zip(_all_rows(rebuilt), want):
      np.testing.assert_array_equal(got, expected)
  os.remove(os.path.join(store.directory, row_store.MANIFEST))
  assert "manifest is missing" in row_store.problem(store.directory, spec)
  assert len(open_store()) == len(store)


def test_a_build_killed_half_way_leaves_nothing_usable(tmp_path):
  """SIGKILL during a build: no dataset appears, and the next build removes the remains."""
  root = os.path.join(tmp_path, "root")
  script = f"""
import sys
from pretrax.data import row_store, tokenizers
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_row_store import _documents, _spec
docs = _documents(60_000, longest=400)
row_store.ensure_built(_spec(), {root!r}, lambda: docs, tokenizers.ByteTokenizer(),
                       split_bytes=lambda: 4 << 20, workers=1)
"""
  proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE)
  name = _spec().name()
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    partial = [f for f in os.listdir(root)] if os.path.isdir(root) else []
    partial = [f for f in partial if f.startswith(name + ".partial-")]
    if partial and os.listdir(os.path.join(root, partial[0])):  # a shard is being written
      break
    assert proc.poll() is None, proc.stderr.read().decode()
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(root, name))
  assert any(f.startswith(name + ".partial-") for f in os.listdir(root))
  docs = _documents(1000)
  store = row_store.ensure_built(_spec(), root, lambda: docs, tokenizers.ByteTokenizer(),
                                 split_bytes=lambda: 1 << 20, workers=1, say=lambda m: None)
  assert store.manifest["shards"][0]["documents"] == 1000
  assert not any(".partial-" in f for f in os.listdir(root))


def _traced_peak(docs, kind) -> int:
  job = row_store._ShardJob(docs, tokenizers.ByteTokenizer(), _spec(seq_len=256, kind=kind), "",
                            0, len(docs), "<u2")
  tracemalloc.start()
  try:
    for _ in row_store._records(job, {"documents": 0, "text_bytes": 0}):
      pass
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


@pytest.mark.parametrize("kind", ["causal", "pairs"])
def test_memory_of_a_build_does_not_grow_with_the_corpus(kind):
  # 64 documents are read at a time: both corpora are read in the same windows of documents.
  small = _documents(128, longest=12_000)   # ~0.8 MB of text
  large = small * 6                          # ~4.6 MB, 18 MB as int32 tokens
  small_peak, large_peak = _traced_peak(small, kind), _traced_peak(large, kind)
  print(f"traced peak: {small_peak / 1e6:.1f} MB for 0.8 MB of text, {large_peak / 1e6:.1f} MB "
        "for 4.6 MB")
  assert large_peak < 1.2 * small_peak + (1 << 20)
  assert large_peak < 16 << 20


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_compressed_and_parquet_corpora_give_the_rows_of_plain_files(tmp_path, suffix):
  docs = [d for d in _documents(300, seed=5) if d.strip()]
  plain = os.path.join(tmp_path, "corpus.jsonl")
  with open(plain, "w") as f:
    for d in docs:
      f.write(json.dumps({"text": d}) + "\n")
  other = os.path.join(tmp_path, "corpus" + suffix)
  if suffix == ".parquet":
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow
    pq.write_table(pyarrow.table({"text": docs}), other)
  elif suffix.endswith(".gz"):
    import gzip
    with open(plain, "rb") as f, gzip.open(other, "wb") as g:
      g.write(f.read())
  else:
    zstandard = pytest.importorskip("zstandard")
    with open(plain, "rb") as f, open(other, "wb") as g:
      g.write(zstandard.ZstdCompressor().compress(f.read()))
  rows = []
  for path in (plain, other):
    cfg = data_config.DataConfig(source=f"text:{path}", seq_len=SEQ_LEN,
                                 data_dir=os.path.join(tmp_path, "data"), build_workers=1)
    store = batches.packed_rows(cfg, tokenizers.ByteTokenizer(), "train")
    rows.append(_all_rows(store))
  for a, b in zip(*rows):
    np.testing.assert_array_equal(a, b)


def test_causal_batches_and_an_empty_corpus(tmp_path):
  store = _build(tmp_path, _documents(50))
  batch = next(global_batches.GlobalBatches(
      store, batches._causal_examples, global_batch_size=4, rows=slice(0, 4), seed=0,
      shuffle=True, repeat=True))
  assert set(batch) == set(packing.FEATURES)
  for key, value in batch.items():
    assert value.shape == (4, SEQ_LEN), key
    assert value.dtype == (np.float32 if key == "loss_weights" else np.int32), key
  with pytest.raises(ValueError, match="no tokens to pack: it has 0 documents"):
    _build(tmp_path, [], name="empty")
  with pytest.raises(ValueError, match="it has 2 documents, none with text"):
    _build(tmp_path, ["", ""], name="blank", kind="mlm")
  assert not [f for f in os.listdir(tmp_path) if ".partial-" in f]


def test_data_build_command_builds_once_and_reports(tmp_path, capsys):
  from pretrax.cli import main as cli
  corpus = os.path.join(tmp_path, "corpus.jsonl")
  with open(corpus, "w") as f:
    for d in _documents(300, seed=9):
      f.write(json.dumps({"text": d}) + "\n")
  args = ["data", "build", "--config=bert:tiny", f"--config.data.source=text:{corpus}",
          f"--config.data.data_dir={tmp_path}/data", "--config.data.objective=mlm",
          "--config.data.seq_len=32"]
  assert cli.main(args) == 0
  out, err = capsys.readouterr()
  lines = [json.loads(line) for line in out.strip().splitlines()]
  assert [line["split"] for line in lines] == ["train", "validation"]
  assert all(line["rows"] > 0 and line["row_len"] == 32 for line in lines)
  assert "-mlm32-" in lines[0]["directory"] and "documents" in err and "MB/s" in err
  assert cli.main(args) == 0  # built already: checked and reused
  out, err = capsys.readouterr()
  assert "building" not in err
  assert [json.loads(line)["directory"] for line in out.strip().splitlines()] == [
      line["directory"] for line in lines]
  assert cli.main(args[:2] + ["--config=bert:tiny", "--config.data.tokenizer=train"]) == 2
  assert "--workdir" in capsys.readouterr().err
