"""bert_batches on real text: layouts, pair contents, label balance, packing, exact resume.

Statistical tolerances are 5 standard deviations of the quantity under the intended distribution.
"""

import dataclasses
import itertools
import json
import os
import tempfile

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pretrax.data import bert_pipeline, global_batches, row_store
from pretrax.data import tokenizers
from pretrax.data.config import DataConfig
from pretrax.data.tokenizers import CLS_ID, SEP_ID

SPECIALS = list(range(7))
T, P = 64, 10


@pytest.fixture(scope="module")
def text(shakespeare_text) -> str:
  return shakespeare_text


@pytest.fixture(scope="module")
def docs(text) -> list[str]:
  """The first 300 distinct paragraphs of tinyshakespeare (so a text names its document)."""
  paragraphs = [p for p in text.split("\n\n") if p.strip()]
  return list(dict.fromkeys(paragraphs))[:300]


@pytest.fixture(scope="module")
def tok():
  return tokenizers.ByteTokenizer()


def _config(objective, **kwargs) -> DataConfig:
  return DataConfig(**{"objective": objective, "seq_len": T, "max_predictions_per_seq": P} | kwargs)


def _take(it, n):
  return list(itertools.islice(it, n))


_ROWS = tempfile.TemporaryDirectory(prefix="pretrax-mlm-rows-")


def _mlm_batches(docs, tok, config, *, batch_size, seed, shuffle, repeat, process_index=0,
                 process_count=1, pad_final_batch=False):
  """mlm: `docs` packed into rows (one shard) and read as global batches, this process's part."""
  del pad_final_batch  # a one-pass read always pads its last batch
  spec = row_store.RowSpec(kind="mlm", seq_len=config.seq_len, corpus={"dataset": "docs"},
                           split="train", tokenizer=tok.describe(), shard_mb=1)
  directory = tempfile.mkdtemp(dir=_ROWS.name)
  os.rmdir(directory)
  row_store.build(spec, docs, tok, directory, split_bytes=1, workers=1, say=lambda m: None)
  global_size = batch_size * process_count
  return global_batches.GlobalBatches(
      row_store.RowStore(directory), bert_pipeline.MaskedRows(tok, config, seed),
      global_batch_size=global_size, seed=seed, shuffle=shuffle, repeat=repeat,
      rows=global_batches.process_slice(global_size, process_index, process_count))


def _batches(docs, tok, config, n=None, **kwargs):
  kwargs = {"batch_size": 8, "seed": 0, "shuffle": True, "repeat": True} | kwargs
  if config.objective == "mlm":
    it = _mlm_batches(docs, tok, config, **kwargs)
  else:
    it = iter(bert_pipeline.bert_batches(docs, tok, config, **kwargs))
  return list(it) if n is None else _take(it, n)


def _rows(batches) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _restore(rows) -> np.ndarray:
  """[N, T] the unmasked tokens: input_ids with each masked position set back to masked_ids."""
  out = rows["input_ids"].copy()
  for r, (pos, ids, w) in enumerate(zip(rows["masked_positions"], rows["masked_ids"],
                                        rows["masked_weights"])):
    out[r, pos[w > 0]] = ids[w > 0]
  return out


def _check_masks(rows, original):
  """Masked positions are real non-special tokens, as many as data/masking.py's budget; nothing
  else is changed."""
  for r in range(len(original)):
    w = rows["masked_weights"][r]
    pos = rows["masked_positions"][r][w > 0]
    assert (rows["segment_ids"][r][pos] > 0).all()  # never padding
    assert not np.isin(original[r][pos], SPECIALS).any()  # never a special token
    n = int((~np.isin(original[r], SPECIALS)).sum())
    assert len(pos) == min(P, max(1, round(0.15 * n)))
    others = np.setdiff1d(np.arange(T), pos)
    np.testing.assert_array_equal(rows["input_ids"][r][others], original[r][others])


def _check_pairs(rows) -> list[tuple[np.ndarray, np.ndarray]]:
  """Checks the `[CLS] A [SEP] B [SEP]` layout of every row; returns the (A, B) token arrays."""
  original = _restore(rows)
  _check_masks(rows, original)
  pairs = []
  for r, row in enumerate(original):
    assert row[0] == CLS_ID
    seps = np.flatnonzero(row == SEP_ID)
    assert len(seps) == 2, row
    n_a, n = seps[0] + 1, seps[1] + 1
    assert 3 <= n_a and n <= T
    np.testing.assert_array_equal(rows["token_type_ids"][r],
                                  [0] * n_a + [1] * (n - n_a) + [0] * (T - n))
    np.testing.assert_array_equal(rows["segment_ids"][r], [1] * n + [0] * (T - n))
    np.testing.assert_array_equal(rows["positions"][r], list(range(n)) + [0] * (T - n))
    assert not row[n:].any() and not rows["input_ids"][r][n:].any()  # padding is 0
    a, b = row[1:seps[0]], row[seps[0] + 1:seps[1]]
    assert not np.isin(np.concatenate([a, b]), SPECIALS).any()
    pairs.append((a, b))
  assert set(np.unique(rows["nsp_label"])) <= {0, 1}
  return pairs


def _in_order(first: str, second: str, docs) -> bool:
  """`second` occurs after `first` in one document."""
  for d in docs:
    i = d.find(first)
    if i >= 0 and d.find(second, i + len(first)) >= 0:
      return True
  return False


@pytest.mark.parametrize("objective", bert_pipeline.OBJECTIVES)
def test_shapes_and_dtypes(docs, tok, objective):
  for batch in _batches(docs, tok, _config(objective), n=3, batch_size=5):
    assert set(batch) == set(bert_pipeline.FEATURES)
    for k in ("input_ids", "segment_ids", "token_type_ids", "positions"):
      assert batch[k].shape == (5, T) and batch[k].dtype == np.int32, k
    for k in ("masked_positions", "masked_ids"):
      assert batch[k].shape == (5, P) and batch[k].dtype == np.int32, k
    assert batch["masked_weights"].shape == (5, P) and batch["masked_weights"].dtype == np.float32
    assert batch["nsp_label"].shape == (5,) and batch["nsp_label"].dtype == np.int32
    assert ((batch["input_ids"] >= 0) & (batch["input_ids"] < tok.vocab_size)).all()


@pytest.mark.slow
def test_nsp_pairs_labels_and_continuations(docs, tok):
  rows = _rows(_batches(docs, tok, _config("mlm+nsp"), n=250))  # 2,000 pairs
  pairs = _check_pairs(rows)
  labels = rows["nsp_label"]
  # Label 1 with probability 1/2 (plus one-token chunks, which are always random: none here).
  assert abs(labels.mean() - 0.5) <= 5 * np.sqrt(0.25 / len(labels)), labels.mean()
  corpus = "\x00".join(docs)
  exact = adjacent_random = 0
  for (a, b), label in zip(pairs, labels):
    a_text, b_text = tok.decode(a), tok.decode(b)
    if label == 0:
      if len(a) + len(b) < T - 3:  # not truncated: B starts right where A ends
        assert a_text + b_text in corpus, (a_text, b_text)
        exact += 1
      else:  # truncation may drop A's end and B's front: B still follows A in the document
        assert _in_order(a_text, b_text, docs), (a_text, b_text)
    else:
      assert b_text in corpus
      adjacent_random += a_text + b_text in corpus
  assert exact > 100
  assert adjacent_random < 0.02 * labels.sum()  # a random B is (almost) never the continuation


@pytest.mark.slow
def test_sop_pairs_are_swapped_when_labelled_1(docs, tok):
  rows = _rows(_batches(docs, tok, _config("mlm+sop"), n=250))
  pairs = _check_pairs(rows)
  labels = rows["nsp_label"]
  assert abs(labels.mean() - 0.5) <= 5 * np.sqrt(0.25 / len(labels)), labels.mean()
  corpus = "\x00".join(docs)
  for (a, b), label in zip(pairs, labels):
    first, second = (tok.decode(a), tok.decode(b))[::1 if label == 0 else -1]
    if len(a) + len(b) < T - 3:
      assert first + second in corpus, (label, first, second)
    else:
      assert _in_order(first, second, docs), (label, first, second)


def _segments(rows, original):
  """Checks the packed mlm layout; returns the token runs between [CLS] and [SEP] in order."""
  runs = []
  for r, row in enumerate(original):
    seg = rows["segment_ids"][r]
    n = int((seg > 0).sum())
    assert (seg[:n] > 0).all() and not seg[n:].any() and not row[n:].any()
    assert not rows["token_type_ids"][r].any() and rows["nsp_label"][r] == 0
    for s in range(1, seg.max() + 1):
      idx = np.flatnonzero(seg == s)
      assert idx[0] == (0 if s == 1 else prev_end + 1) and (np.diff(idx) == 1).all()
      prev_end = idx[-1]
      piece = row[idx]
      assert piece[0] == CLS_ID and piece[-1] == SEP_ID and len(piece) >= 3
      assert not np.isin(piece[1:-1], SPECIALS).any()
      np.testing.assert_array_equal(rows["positions"][r][idx], np.arange(len(idx)))
      runs.append(piece[1:-1])
    assert not rows["positions"][r][n:].any()
  return runs


def test_mlm_packs_documents_in_order_and_fills_rows(docs, tok):
  few = docs[:120]
  batches = _batches(few, tok, _config("mlm"), shuffle=False, repeat=False, pad_final_batch=True)
  rows = _rows(batches)
  real = rows["segment_ids"][:, 0] > 0
  rows = {k: v[real] for k, v in rows.items()}
  original = _restore(rows)
  _check_masks(rows, original)
  runs = _segments(rows, original)
  ids = [tok.encode(d) for d in few]
  np.testing.assert_array_equal(np.concatenate(runs), np.concatenate(ids))  # nothing lost
  run_ends = set(np.cumsum([len(r) for r in runs]).tolist())
  assert set(np.cumsum([len(i) for i in ids]).tolist()) <= run_ends  # a segment never spans docs
  free = (rows["segment_ids"] == 0).sum(axis=1)
  assert (free[:-1] <= 2).all()  # a row is only left with padding when < 3 slots are free
  assert (rows["segment_ids"].max(axis=1) > 1).mean() > 0.25  # several documents per row
  assert max(len(r) for r in runs) == T - 2


def test_processes_read_their_share_of_global_mlm_batches(docs, tok, assert_batches_equal):
  """Masks are keyed on the row's place in the global stream: two processes' shares of each
  batch are the one-process batch."""
  whole = _batches(docs[:60], tok, _config("mlm"), n=6)
  parts = [_batches(docs[:60], tok, _config("mlm"), n=6, batch_size=4, process_index=index,
                    process_count=2) for index in range(2)]
  assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a}
                        for a, b in zip(*parts)], whole)


def test_pair_processes_read_disjoint_shards(docs, tok):
  few = docs[:40]
  kwargs = {"shuffle": False, "repeat": False, "pad_final_batch": True, "process_count": 2}
  texts = []
  for index in range(2):
    rows = _rows(_batches(few, tok, _config("mlm+sop"), process_index=index, **kwargs))
    real = rows["segment_ids"][:, 0] > 0
    pairs = _check_pairs({k: v[real] for k, v in rows.items()})
    texts.append([tok.decode(a) for a, _ in pairs])
  for index in range(2):
    mine, theirs = "\x00".join(few[index::2]), "\x00".join(few[1 - index::2])
    assert all(t in mine for t in texts[index])
    assert sum(len(t) > 40 and t not in theirs for t in texts[index]) >= 5


def test_pad_final_batch_for_pairs(docs, tok, assert_batches_equal):
  batches = _batches(docs[:30], tok, _config("mlm+nsp"), batch_size=7, shuffle=False,
                     repeat=False, pad_final_batch=True)
  dropped = _batches(docs[:30], tok, _config("mlm+nsp"), batch_size=7, shuffle=False, repeat=False)
  assert_batches_equal(batches[:len(dropped)], dropped)
  last = batches[-1]
  real = last["segment_ids"][:, 0] > 0
  assert len(batches) == len(dropped) + 1 and 0 < real.sum() < 7
  for k, v in last.items():
    assert not v[~real].any(), k


def test_whole_word_masking_in_the_pipeline(docs, text, tmp_path, words_of):
  spm = tokenizers.train_sentencepiece(text[:100_000].split("\n\n"), str(tmp_path / "spm"),
                                       vocab_size=1000)
  for objective in ("mlm", "mlm+nsp"):
    config = _config(objective, whole_word_masking=True, max_predictions_per_seq=20)
    rows = _rows(_batches(docs, spm, config, n=20))
    original = _restore(rows)
    split = 0
    assert rows["masked_weights"].sum(axis=1).mean() > 5
    for r, row in enumerate(original):
      w = rows["masked_weights"][r]
      chosen = set(rows["masked_positions"][r][w > 0].tolist())
      for word in words_of(row, spm.word_starts(row)):
        hit = [i in chosen for i in word]
        assert all(hit) or not any(hit), (word, hit)
        split += all(hit) and len(word) > 1
    assert split > 20  # multi-piece words are chosen whole


@pytest.mark.parametrize("objective", bert_pipeline.OBJECTIVES)
def test_one_sentence_documents_and_one_document_corpora(text, tok, objective):
  long_doc = text[:3_000]  # one document of many sentences
  for corpus in (["Hello world"], ["a"], [long_doc], ["", "To be.", "  "]):
    n = 3 if objective == "mlm" else 10  # mlm packs ~20 copies of a tiny document per row
    rows = _rows(_batches(corpus, tok, _config(objective), n=n, batch_size=4))
    if objective == "mlm":
      runs = _segments(rows, _restore(rows))
      assert all(tok.decode(r) in "".join(corpus) for r in runs)
      continue
    for (a, b), label in zip(_check_pairs(rows), rows["nsp_label"]):
      a_text, b_text = tok.decode(a), tok.decode(b)
      # A and B both come from the corpus (B from the same document where only one has text).
      assert a_text in "".join(corpus) and b_text in "".join(corpus)
      if corpus == ["a"]:  # one token: B is empty (sop) or "random", i.e. the same document
        assert a_text == "a" and label == (objective == "mlm+nsp")
        assert b_text == ("a" if objective == "mlm+nsp" else "")
    if corpus == [long_doc]:
      assert set(rows["nsp_label"]) == {0, 1}


def test_second_epoch_draws_new_masks(text, tok):
  # Documents of exactly T - 2 bytes: each row is one `[CLS] doc [SEP]`, the same in each epoch.
  few = [text[i * (T - 2):(i + 1) * (T - 2)] for i in range(20)]
  rows = _rows(_batches(few, tok, _config("mlm"), n=5, shuffle=False))  # 40 rows: 2 epochs
  original = _restore(rows)
  np.testing.assert_array_equal(original[:20], original[20:])
  np.testing.assert_array_equal(original[:20, 1:-1], np.stack([tok.encode(d) for d in few]))
  for r in range(20):
    assert not np.array_equal(rows["masked_positions"][r], rows["masked_positions"][r + 20])


def test_deterministic_given_seed_and_seeds_differ(docs, tok, assert_batches_equal):
  for objective in bert_pipeline.OBJECTIVES:
    a = _batches(docs, tok, _config(objective), n=4, seed=3)
    assert_batches_equal(_batches(docs, tok, _config(objective), n=4, seed=3), a)
    b = _batches(docs, tok, _config(objective), n=4, seed=4)
    assert not np.array_equal(a[0]["input_ids"], b[0]["input_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", bert_pipeline.PAIR_OBJECTIVES)
def test_resume_from_any_state_including_across_epochs(docs, tok, objective, assert_batches_equal):
  few = [d for d in docs if 200 <= len(d) <= 400][:5]  # ~5 rows each
  kwargs = {"batch_size": 8, "seed": 5, "shuffle": True, "repeat": True}
  config = _config(objective)
  ds = bert_pipeline.bert_batches(few, tok, config, **kwargs)
  it = iter(ds)
  full, states = [], []
  while len(states) < 3 or states[-1]["parent"]["next_index"] <= 2 * len(few) + 2:
    states.append(json.loads(json.dumps(it.get_state())))
    full.append(next(it))
  # The stream crosses two epoch boundaries, and rows end inside documents.
  assert states[-1]["parent"]["next_index"] > 2 * len(few)
  assert sum(s["sentence"] > 0 for s in states) >= 3
  # One iterator restored to each state in turn (the Orbax test restores a fresh one). Each
  # restore refills Grain's 500-document prefetch buffer: ~0.3 s on 2 cores.
  resumed = iter(ds)
  for k in range(len(states)):
    assert len(json.dumps(states[k])) < 300, states[k]
    resumed.set_state(states[k])
    assert_batches_equal(_take(resumed, min(3, len(full) - k)), full[k:k + 3])
  resumed.close()  # stops its prefetch threads


def test_mlm_resumes_from_a_position_with_the_same_masks(docs, tok, assert_batches_equal):
  full = _batches(docs[:30], tok, _config("mlm"), n=9, seed=5)
  resumed = _mlm_batches(docs[:30], tok, _config("mlm"), batch_size=8, seed=5, shuffle=True,
                         repeat=True)
  resumed.set_position({"next_row": 4 * 8, "dataset": resumed.store.name})
  assert_batches_equal(_take(resumed, 5), full[4:])


def test_orbax_checkpoint_round_trip(docs, tok, tmp_path, assert_batches_equal):
  config = _config("mlm+nsp")
  kwargs = {"batch_size": 4, "seed": 1, "shuffle": True, "repeat": True}
  it = bert_pipeline.make_iterator(docs, tok, config, **kwargs)
  _take(it, 7)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  want = _take(it, 5)

  fresh = bert_pipeline.make_iterator(docs, tok, config, **kwargs)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  restore = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
  restored = manager.restore(manager.latest_step(), args=restore)
  assert restored.data is fresh
  assert_batches_equal(_take(fresh, 5), want)


@pytest.mark.slow
def test_one_worker_process_gives_the_same_batches(docs, tok, assert_batches_equal):
  config = _config("mlm+nsp")
  kwargs = {"batch_size": 4, "seed": 2, "shuffle": True, "repeat": True}
  want = _batches(docs, tok, config, n=8, **kwargs)
  it = iter(bert_pipeline.bert_batches(docs, tok, config, num_workers=1, **kwargs))
  try:
    assert_batches_equal(_take(it, 4), want[:4])
    state = json.loads(json.dumps(it.get_state()))
  finally:
    it.close()
  resumed = iter(bert_pipeline.bert_batches(docs, tok, config, num_workers=1, **kwargs))
  try:
    resumed.set_state(state)
    assert_batches_equal(_take(resumed, 4), want[4:])
  finally:
    resumed.close()


def test_split_sentences(shakespeare_text):
  text = "Hello there. How are you?\nFine!  Thanks.\n\n'Tis so.' Yes"
  assert bert_pipeline.split_sentences(text) == [
      "Hello there. ", "How are you?\n", "Fine!  ", "Thanks.\n\n", "'Tis so.' ", "Yes"]
  assert bert_pipeline.split_sentences("") == []
  assert bert_pipeline.split_sentences("\n\nA") == ["\n\nA"]  # leading whitespace joins
  head = shakespeare_text[:50_000]
  sentences = bert_pipeline.split_sentences(head)
  assert "".join(sentences) == head and all(s.strip() for s in sentences)


def test_truncate_pair_matches_berts_loop():
  rng = np.random.default_rng(0)
  fronts = removed = 0
  for _ in range(2_000):
    la, lb, max_tokens = (int(x) for x in rng.integers(1, 80, 3))
    a, b = np.arange(la), 1000 + np.arange(lb)
    ta, tb = bert_pipeline.truncate_pair(a, b, max_tokens, rng)
    want_a, want_b = la, lb  # BERT: one token at a time from the longer side, B on ties
    while want_a + want_b > max_tokens:
      if want_a > want_b:
        want_a -= 1
      else:
        want_b -= 1
    assert (len(ta), len(tb)) == (want_a, want_b)
    for got, orig in ((ta, a), (tb, b)):  # a contiguous span of the original
      if len(got):
        np.testing.assert_array_equal(got, orig[got[0] - orig[0]:][:len(got)])
        fronts += got[0] - orig[0]
      removed += len(orig) - len(got)
  # Each removal is from the front with probability 1/2.
  assert abs(fronts / removed - 0.5) <= 5 * np.sqrt(0.25 / removed)


def test_errors(docs, tok):
  kwargs = {"batch_size": 2, "seed": 0, "shuffle": True, "repeat": True}
  with pytest.raises(ValueError, match="no documents in"):
    bert_pipeline.bert_batches([], tok, _config("mlm+nsp"), **kwargs)
  with pytest.raises(ValueError, match="no documents in .* process 1 of 2"):
    bert_pipeline.bert_batches(docs[:1], tok, _config("mlm+nsp"), process_index=1,
                               process_count=2, **kwargs)
  with pytest.raises(ValueError, match="packed ahead of training"):
    bert_pipeline.bert_batches(docs, tok, _config("mlm"), **kwargs)
  with pytest.raises(ValueError, match="data.mask_rate"):
    bert_pipeline.MaskedRows(tok, _config("mlm", mask_rate=0.0), seed=0)
  with pytest.raises(ValueError, match="data.seq_len=7 is too small"):
    bert_pipeline.bert_batches(docs, tok, DataConfig(objective="mlm+nsp", seq_len=7,
                                                     max_predictions_per_seq=2), **kwargs)
  with pytest.raises(ValueError, match="data.max_predictions_per_seq=65"):
    bert_pipeline.bert_batches(docs, tok, _config("mlm", max_predictions_per_seq=65), **kwargs)
  with pytest.raises(ValueError, match="data.objective='causal'"):
    bert_pipeline.bert_batches(docs, tok, dataclasses.replace(_config("mlm"), objective="causal"),
                               **kwargs)
  with pytest.raises(ValueError, match="data.mask_rate"):
    bert_pipeline.bert_batches(docs, tok, _config("mlm", mask_rate=0.0), **kwargs)
