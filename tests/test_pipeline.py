"""lm_batches on real text: shapes, coverage, shuffling, sharding, exact resume (also via Orbax)."""

import itertools
import json
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pretrax.data import packing
from pretrax.data import pipeline
from pretrax.data.tokenizers import ByteTokenizer

@pytest.fixture(scope="module")
def docs(shakespeare_text) -> list[str]:
  """The first 300 distinct paragraphs of tinyshakespeare (so a text names its document)."""
  paragraphs = [p for p in shakespeare_text.split("\n\n") if p.strip()]
  return list(dict.fromkeys(paragraphs))[:300]


@pytest.fixture(scope="module")
def tok():
  return ByteTokenizer()


def _take(it, n):
  return list(itertools.islice(it, n))


def _texts(batches) -> list[str]:
  """Decodes the complete documents in a stream of batches, in order.

  Rebuilds each row's seq_len + 1 slots (inputs + the last target), splits it into segments,
  drops the overlapping first token of continuations (those not starting with BOS), and decodes
  each BOS ... EOS span as bytes (id = 7 + byte).
  """
  bos, eos = ByteTokenizer().bos_id, ByteTokenizer().eos_id
  stream = []
  for batch in batches:
    for x, y, s, w in zip(batch["inputs"], batch["targets"], batch["segment_ids"],
                          batch["loss_weights"]):
      last_seg = s[-1] if w[-1] > 0 else 0
      slots, segs = np.append(x, y[-1]), np.append(s, last_seg)
      for seg in range(1, segs.max() + 1):
        piece = slots[segs == seg].tolist()
        stream.extend(piece if piece[0] == bos else piece[1:])
  texts, start = [], None
  for i, t in enumerate(stream):
    if t == bos:
      start = i
    elif t == eos and start is not None:
      texts.append(bytes(t - 7 for t in stream[start + 1:i]).decode())
      start = None
  return texts


def _batches_for_epochs(docs, tok, epochs, seq_len, batch_size) -> int:
  """How many batches hold `epochs` passes over `docs` (plus one for a boundary split)."""
  tokens = sum(len(tok.encode(d)) + 2 for d in docs)
  return int(np.ceil(epochs * tokens / (seq_len * batch_size))) + 1


def _batches(docs, tok, n=None, **kwargs):
  kwargs = {"seq_len": 64, "batch_size": 4, "seed": 0, "shuffle": True, "repeat": True} | kwargs
  it = iter(pipeline.lm_batches(docs, tok, **kwargs))
  return list(it) if n is None else _take(it, n)


def test_shapes_and_dtypes(docs, tok):
  for batch in _batches(docs, tok, n=3, seq_len=48, batch_size=5):
    assert set(batch) == {"inputs", "targets", "loss_weights", "segment_ids", "positions"}
    for k, v in batch.items():
      assert v.shape == (5, 48), k
      assert v.dtype == (np.float32 if k == "loss_weights" else np.int32), k
    assert ((batch["inputs"] >= 0) & (batch["inputs"] < tok.vocab_size)).all()
    assert set(np.unique(batch["loss_weights"])) <= {0.0, 1.0}


def test_one_pass_reads_every_document_once_in_order(docs, tok):
  batches = _batches(docs, tok, shuffle=False, repeat=False, pad_final_batch=True)
  assert _texts(batches) == docs
  # Each document contributes len(ids) + 1 weighted targets (everything after its BOS).
  num_targets = sum(float(b["loss_weights"].sum()) for b in batches)
  assert num_targets == sum(len(tok.encode(d)) + 1 for d in docs)


def test_deterministic_given_seed_and_seeds_differ(docs, tok, assert_batches_equal):
  a = _batches(docs, tok, n=8, seed=3)
  assert_batches_equal(_batches(docs, tok, n=8, seed=3), a)
  assert _texts(_batches(docs, tok, n=8, seed=4))[:5] != _texts(a)[:5]


def test_repeat_reshuffles_each_epoch(docs, tok):
  few = docs[:12]
  n = _batches_for_epochs(few, tok, 4.5, seq_len=32, batch_size=2)
  texts = _texts(_batches(few, tok, n=n, seq_len=32, batch_size=2))
  assert len(texts) >= 4 * len(few)
  epochs = [texts[i * len(few):(i + 1) * len(few)] for i in range(4)]
  for epoch in epochs:
    assert sorted(epoch) == sorted(few)  # each epoch is a permutation of the documents
  orders = {tuple(e) for e in epochs} | {tuple(few)}
  assert len(orders) == 5  # all epochs differ from each other and from the source order
  # Grain shuffles epoch e with seed + e; the pipeline hashes the seed, so the next seed's first
  # epoch is not this seed's second.
  n = _batches_for_epochs(few, tok, 1.2, seq_len=32, batch_size=2)
  next_seed = _texts(_batches(few, tok, n=n, seq_len=32, batch_size=2, seed=1))
  assert len(next_seed) >= len(few) and next_seed[:len(few)] != epochs[1]


def test_processes_read_disjoint_shards_that_cover_the_source(docs, tok):
  kwargs = {"seed": 7, "repeat": False, "pad_final_batch": True, "process_count": 2}
  t0 = _texts(_batches(docs, tok, process_index=0, **kwargs))
  t1 = _texts(_batches(docs, tok, process_index=1, **kwargs))
  assert sorted(t0) == sorted(docs[0::2])
  assert sorted(t1) == sorted(docs[1::2])
  assert t0 != docs[0::2]  # shuffled within the shard


@pytest.mark.slow
def test_resume_from_any_state_including_across_epochs(docs, tok, assert_batches_equal):
  few = docs[:10]
  kwargs = {"seq_len": 64, "batch_size": 3, "seed": 5, "shuffle": True, "repeat": True}
  n = _batches_for_epochs(few, tok, 2.5, kwargs["seq_len"], kwargs["batch_size"])
  full = _batches(few, tok, n=n, **kwargs)
  assert len(_texts(full)) > 2 * len(few)  # the stream crosses epoch boundaries
  ds = pipeline.lm_batches(few, tok, **kwargs)
  it = iter(ds)
  for k in range(len(full)):
    state = it.get_state()
    assert len(json.dumps(state)) < 300, state
    resumed = iter(ds)
    resumed.set_state(json.loads(json.dumps(state)))
    assert_batches_equal(_take(resumed, len(full) - k), full[k:])
    resumed.close()  # stops its prefetch threads
    next(it)


def test_orbax_checkpoint_round_trip(docs, tok, tmp_path, assert_batches_equal):
  kwargs = {"seq_len": 64, "batch_size": 4, "seed": 1, "shuffle": True, "repeat": True}
  it = pipeline.make_iterator(docs, tok, **kwargs)
  _take(it, 7)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  want = _take(it, 5)

  fresh = pipeline.make_iterator(docs, tok, **kwargs)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  restored = manager.restore(manager.latest_step(),
                             args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert restored.data is fresh
  assert_batches_equal(_take(fresh, 5), want)


@pytest.mark.slow
def test_one_worker_process_gives_the_same_batches(docs, tok, assert_batches_equal):
  kwargs = {"seq_len": 64, "batch_size": 4, "seed": 2, "shuffle": True, "repeat": True}
  want = _batches(docs, tok, n=12, **kwargs)
  start = time.perf_counter()
  it = iter(pipeline.lm_batches(docs, tok, num_workers=1, **kwargs))
  try:
    assert_batches_equal(_take(it, 6), want[:6])
    state = json.loads(json.dumps(it.get_state()))
  finally:
    it.close()
  resumed = iter(pipeline.lm_batches(docs, tok, num_workers=1, **kwargs))
  try:
    resumed.set_state(state)
    assert_batches_equal(_take(resumed, 6), want[6:])
  finally:
    resumed.close()
  assert time.perf_counter() - start < 20


def test_pad_final_batch(docs, tok, assert_batches_equal):
  few = docs[:40]
  rows = packing.pack_documents([[tok.bos_id, *tok.encode(d), tok.eos_id] for d in few], 64)
  num_rows = len(rows["inputs"])
  batch_size = 7 if num_rows % 7 else 6
  assert num_rows % batch_size
  kwargs = {"seq_len": 64, "batch_size": batch_size, "shuffle": False, "repeat": False}

  padded = _batches(few, tok, pad_final_batch=True, **kwargs)
  dropped = _batches(few, tok, **kwargs)
  assert len(padded) == -(-num_rows // batch_size)
  assert len(dropped) == num_rows // batch_size
  assert_batches_equal(padded[:-1], dropped)
  last, real = padded[-1], num_rows % batch_size
  for k in packing.FEATURES:
    assert last[k].shape == (batch_size, 64)
    np.testing.assert_array_equal(last[k][:real], rows[k][-real:])
    assert not last[k][real:].any()


def test_empty_source_is_an_error(docs, tok):
  with pytest.raises(ValueError, match="no documents in"):
    pipeline.lm_batches([], tok, seq_len=8, batch_size=2, seed=0, shuffle=True, repeat=True)
  with pytest.raises(ValueError, match="no documents in .* process 1 of 2"):
    pipeline.lm_batches(docs[:1], tok, seq_len=8, batch_size=2, seed=0, shuffle=True,
                        repeat=True, process_index=1, process_count=2)
