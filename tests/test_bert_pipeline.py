"""BERT's batches from packed rows on real text: layouts, pair contents, label balance, packing,
exact resume, processes' shares.

Statistical tolerances are 5 standard deviations of the quantity under the intended distribution.
"""

import dataclasses
import itertools
import os
import tempfile

import numpy as np
import pytest

from pretrax.data import bert_pipeline, global_batches, row_store, sentences
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


_ROWS = tempfile.TemporaryDirectory(prefix="pretrax-bert-rows-")


def _store(docs, tok, config) -> row_store.RowStore:
  """`docs` built into the objective's rows (one shard)."""
  spec = row_store.RowSpec(kind=bert_pipeline.ROW_KINDS[config.objective], seq_len=config.seq_len,
                           corpus={"dataset": "docs"}, split="train", tokenizer=tok.describe(),
                           shard_mb=1)
  directory = tempfile.mkdtemp(dir=_ROWS.name)
  os.rmdir(directory)
  row_store.build(spec, docs, tok, directory, split_bytes=1, workers=1, say=lambda m: None)
  return row_store.RowStore(directory)


def _reader(docs, tok, config, *, batch_size=8, seed=0, shuffle=True, repeat=True,
            process_index=0, process_count=1) -> global_batches.GlobalBatches:
  """This process's part of the global batches of `docs`' rows."""
  store = _store(docs, tok, config)
  if config.objective == "mlm":
    make_examples = bert_pipeline.MaskedRows(tok, config, seed)
  else:
    make_examples = bert_pipeline.SentencePairs(store, tok, config, seed)
  global_size = batch_size * process_count
  return global_batches.GlobalBatches(
      store, make_examples, global_batch_size=global_size, seed=seed, shuffle=shuffle,
      repeat=repeat, rows=global_batches.process_slice(global_size, process_index, process_count))


def _batches(docs, tok, config, n=None, **kwargs):
  it = _reader(docs, tok, config, **kwargs)
  try:
    return list(it) if n is None else _take(it, n)
  finally:
    it.close()


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
  adjacent_random = 0
  for (a, b), label in zip(pairs, labels):
    a_text, b_text = tok.decode(a), tok.decode(b)
    if label == 0:  # a chunk is never truncated: B starts right where A ends
      assert a_text + b_text in corpus, (a_text, b_text)
    else:  # a random B is contiguous text of one document
      assert b_text in corpus
      adjacent_random += a_text + b_text in corpus
  assert adjacent_random < 0.02 * labels.sum()  # a random B is (almost) never the continuation
  # A random B is as long as the true one would be (it goes on into the next rows of its
  # document): the pair's length tells nothing of its label.
  lengths = rows["segment_ids"].sum(axis=1)
  true, random = lengths[labels == 0], lengths[labels == 1]
  assert abs(true.mean() - random.mean()) < 0.05 * true.mean(), (true.mean(), random.mean())


@pytest.mark.slow
def test_sop_pairs_are_swapped_when_labelled_1(docs, tok):
  rows = _rows(_batches(docs, tok, _config("mlm+sop"), n=250))
  pairs = _check_pairs(rows)
  labels = rows["nsp_label"]
  assert abs(labels.mean() - 0.5) <= 5 * np.sqrt(0.25 / len(labels)), labels.mean()
  corpus = "\x00".join(docs)
  for (a, b), label in zip(pairs, labels):
    first, second = (tok.decode(a), tok.decode(b))[::1 if label == 0 else -1]
    assert first + second in corpus, (label, first, second)


def test_sentence_rows_hold_whole_sentences_of_one_document(docs, tok):
  few = docs[:80] + ["x" * 150 + ". Short one. " + "y" * 30]  # a sentence longer than a row
  store = _store(few, tok, _config("mlm+nsp"))
  rows = store.read(np.arange(len(store)))
  capacity = T - 3
  assert rows.tokens.shape == (len(store), capacity)
  by_document = {}
  for tokens, ids, document in zip(rows.tokens, rows.segments, rows.documents):
    n = int((ids > 0).sum())
    assert n >= 1 and (ids[:n] > 0).all() and not ids[n:].any() and not tokens[n:].any()
    assert ids[0] == 1 and set(np.diff(ids[:n])) <= {0, 1}  # sentences 1, 2, ... in order
    by_document.setdefault(int(document), []).append((tokens[:n], ids[:n]))
  assert sorted(by_document) == list(range(len(few)))  # every document, in stored order
  for d, chunks in by_document.items():
    np.testing.assert_array_equal(np.concatenate([t for t, _ in chunks]), tok.encode(few[d]))
    for (tokens, ids), following in zip(chunks, chunks[1:]):
      # A row ends where the next sentence would not fit (or a long sentence is cut).
      first_next = following[0][following[1] == 1]
      assert len(tokens) + len(first_next) > capacity or len(tokens) == capacity
  long_rows = by_document[len(few) - 1]
  # "x" * 150 + ". " is cut into pieces of 61, 61 and 30 tokens; "Short one. " joins the last
  assert [len(t) for t, _ in long_rows] == [capacity, capacity, 152 - 2 * capacity + 11, 30]
  assert tok.decode(long_rows[0][0]) == "x" * capacity


def test_a_random_b_goes_on_into_the_next_rows_of_its_document(docs, tok):
  long_docs = [d for d in docs if len(d) > 4 * T][:10]
  config = _config("mlm+nsp")
  store = _store(long_docs, tok, config)
  pairs = bert_pipeline.SentencePairs(store, tok, config, seed=0)
  corpus = "\x00".join(long_docs)
  for seed in range(20):
    b = pairs._random_b(document=-1, target=3 * T, rng=np.random.default_rng(seed))
    text = tok.decode(b)
    assert text in corpus  # contiguous text of one document
    doc = next(d for d in long_docs if text in d)
    assert len(b) >= 3 * T or doc.endswith(text)  # up to the target, or to the document's end


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
  batches = _batches(few, tok, _config("mlm"), shuffle=False, repeat=False)
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


@pytest.mark.parametrize("objective", bert_pipeline.OBJECTIVES)
def test_processes_read_their_share_of_global_batches(docs, tok, objective, assert_batches_equal):
  """Every random choice is keyed on the row's place in the global stream: two processes'
  shares of each batch are the one-process batch."""
  whole = _batches(docs[:60], tok, _config(objective), n=6)
  parts = [_batches(docs[:60], tok, _config(objective), n=6, batch_size=4, process_index=index,
                    process_count=2) for index in range(2)]
  assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a}
                        for a, b in zip(*parts)], whole)


def test_one_pass_reads_every_row_once_and_pads_the_last_batch(docs, tok):
  config = _config("mlm+sop")
  store = _store(docs[:30], tok, config)
  batches = _batches(docs[:30], tok, config, batch_size=7, shuffle=False, repeat=False)
  assert len(batches) == -(-len(store) // 7)
  rows = _rows(batches)
  real = rows["segment_ids"][:, 0] > 0
  assert real.sum() == len(store) and real[:len(store)].all()
  for k, v in rows.items():
    assert not v[~real].any(), k
  pairs = _check_pairs({k: v[real] for k, v in rows.items()})
  stored = store.read(np.arange(len(store)))
  for (a, b), label, tokens, ids in zip(pairs, rows["nsp_label"][real], stored.tokens,
                                        stored.segments):
    np.testing.assert_array_equal(np.concatenate([a, b] if label == 0 else [b, a]),
                                  tokens[ids > 0])  # row r's pair is row r's chunk


def test_whole_word_masking_in_the_pipeline(docs, text, tmp_path, words_of):
  spm = tokenizers.train_sentencepiece(text[:100_000].split("\n\n"), str(tmp_path / "spm"),
                                       vocab_size=1000)
  for objective in ("mlm", "mlm+nsp"):
    config = _config(objective, whole_word_masking=True, max_predictions_per_seq=20)
    rows = _rows(_batches(docs, spm, config, n=20))
    original = _restore(rows)
    split = 0
    real_tokens = (~np.isin(original, SPECIALS)).sum(axis=1)
    assert rows["masked_weights"].sum() > 0.1 * real_tokens.sum()  # about 15% are chosen
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


@pytest.mark.parametrize("objective", bert_pipeline.OBJECTIVES)
def test_resume_from_a_position_across_epochs(docs, tok, objective, assert_batches_equal):
  few = docs[:12]
  store_rows = len(_store(few, tok, _config(objective)))
  full = _batches(few, tok, _config(objective), n=2 * store_rows // 8 + 3, seed=5)
  resumed = _reader(few, tok, _config(objective), seed=5)
  try:
    for start in (1, store_rows // 8, store_rows // 8 + 1):  # the last crosses an epoch boundary
      resumed.set_position({"next_row": start * 8, "dataset": resumed.store.name})
      assert_batches_equal(_take(resumed, 3), full[start:start + 3])
  finally:
    resumed.close()


def test_split_sentences(shakespeare_text):
  text = "Hello there. How are you?\nFine!  Thanks.\n\n'Tis so.' Yes"
  assert sentences.split_sentences(text) == [
      "Hello there. ", "How are you?\n", "Fine!  ", "Thanks.\n\n", "'Tis so.' ", "Yes"]
  assert sentences.split_sentences("") == []
  assert sentences.split_sentences("\n\nA") == ["\n\nA"]  # leading whitespace joins
  head = shakespeare_text[:50_000]
  pieces = sentences.split_sentences(head)
  assert "".join(pieces) == head and all(p.strip() for p in pieces)


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
  store = _store(docs[:5], tok, _config("mlm+nsp"))
  with pytest.raises(ValueError, match="data.mask_rate"):
    bert_pipeline.MaskedRows(tok, _config("mlm", mask_rate=0.0), seed=0)
  with pytest.raises(ValueError, match="data.mask_rate"):
    bert_pipeline.SentencePairs(store, tok, _config("mlm+nsp", mask_rate=0.0), seed=0)
  with pytest.raises(ValueError, match="data.seq_len=7 is too small"):
    bert_pipeline.check_config(DataConfig(objective="mlm+nsp", seq_len=7,
                                          max_predictions_per_seq=2), tok)
  with pytest.raises(ValueError, match="data.max_predictions_per_seq=65"):
    bert_pipeline.check_config(_config("mlm", max_predictions_per_seq=65), tok)
  with pytest.raises(ValueError, match="data.objective='causal'"):
    bert_pipeline.check_config(dataclasses.replace(_config("mlm"), objective="causal"), tok)
  with pytest.raises(ValueError, match="seed must be >= 0"):
    bert_pipeline.SentencePairs(store, tok, _config("mlm+sop"), seed=-1)
  with pytest.raises(ValueError, match="not the sentences of data.seq_len=32"):
    bert_pipeline.SentencePairs(store, tok, _config("mlm+sop", seq_len=32), seed=0)
  with pytest.raises(ValueError, match="reads rows of sentences"):
    bert_pipeline.MaskedRows(tok, _config("mlm+sop"), seed=0)
