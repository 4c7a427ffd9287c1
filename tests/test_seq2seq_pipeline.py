"""Encoder-decoder batches from packed rows of real text: T5's span corruption and BART's
denoising read against the stored rows, processes' shares, exact resume. (The noise functions'
statistics are tests/test_noising.py's.)"""

import dataclasses
import itertools
import os
import tempfile

import numpy as np
import pytest

from pretrax.data import global_batches, noising, row_store, seq2seq_pipeline, tokenizers
from pretrax.data.config import DataConfig
from pretrax.data.errors import InputError

T = 64
_ROWS = tempfile.TemporaryDirectory(prefix="pretrax-seq2seq-rows-")


@pytest.fixture(scope="module")
def docs(shakespeare_text) -> list[str]:
  paragraphs = [p for p in shakespeare_text[:200_000].split("\n\n") if p.strip()]
  return list(dict.fromkeys(paragraphs))[:200]


@pytest.fixture(scope="module")
def tok():
  return tokenizers.ByteTokenizer()


def _config(objective, **kwargs) -> DataConfig:
  return DataConfig(**{"objective": objective, "seq_len": T} | kwargs)


_STORES = {}


def _store(docs, tok, config) -> row_store.RowStore:
  spec = row_store.RowSpec(kind=seq2seq_pipeline.ROW_KINDS[config.objective],
                           seq_len=seq2seq_pipeline.row_seq_len(config),
                           corpus={"dataset": "docs", "n": len(docs)}, split="train",
                           tokenizer=tok.describe(), shard_mb=1)
  if spec.key() not in _STORES:
    directory = tempfile.mkdtemp(dir=_ROWS.name)
    os.rmdir(directory)
    row_store.build(spec, docs, tok, directory, split_bytes=1, workers=1, say=lambda m: None)
    _STORES[spec.key()] = row_store.RowStore(directory)
  return _STORES[spec.key()]


def _make_examples(tok, config, seed):
  if config.objective == "denoise":
    return seq2seq_pipeline.DenoisedRows(tok, config, seed)
  return seq2seq_pipeline.SpanCorruptedRows(tok, config, seed)


def _reader(docs, tok, config, *, batch_size=8, seed=0, shuffle=True, repeat=True,
            process_index=0, process_count=1):
  global_size = batch_size * process_count
  return global_batches.GlobalBatches(
      _store(docs, tok, config), _make_examples(tok, config, seed), global_batch_size=global_size,
      seed=seed, shuffle=shuffle, repeat=repeat,
      rows=global_batches.process_slice(global_size, process_index, process_count))


def _batches(docs, tok, config, n=None, **kwargs):
  it = _reader(docs, tok, config, **kwargs)
  try:
    return list(it) if n is None else list(itertools.islice(it, n))
  finally:
    it.close()


def _rows(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _check_decoder_side(rows, bos):
  """Decoder inputs are the targets shifted right after bos; segments, positions and weights
  cover the targets exactly."""
  for r in range(len(rows["decoder_targets"])):
    m = int(rows["loss_weights"][r].sum())
    targets = rows["decoder_targets"][r]
    np.testing.assert_array_equal(rows["decoder_inputs"][r][:m], np.r_[bos, targets[:m - 1]])
    np.testing.assert_array_equal(rows["decoder_segment_ids"][r], (np.arange(len(targets)) < m))
    np.testing.assert_array_equal(rows["decoder_positions"][r][:m], np.arange(m))
    assert not targets[m:].any() and not rows["decoder_inputs"][r][m:].any()


def test_span_corruption_rows_give_t5s_lengths_and_restore_the_row(docs, tok):
  config = _config("span_corruption")
  raw, t = noising.span_corruption_lengths(T, 0.15, 3.0)
  store = _store(docs, tok, config)
  assert store.row_len == raw
  batches = _batches(docs, tok, config, batch_size=8, shuffle=False, repeat=False)
  rows = _rows(batches)
  n = len(store)
  assert rows["encoder_inputs"].shape == (len(batches) * 8, T)
  assert rows["decoder_targets"].shape == (len(batches) * 8, t)
  stored = store.read(np.arange(n))
  vocab = tok.vocab_size + config.extra_ids
  for r in range(n):
    real = stored.segments[r] > 0
    inputs = rows["encoder_inputs"][r][rows["encoder_segment_ids"][r] > 0]
    targets = rows["decoder_targets"][r][rows["loss_weights"][r] > 0]
    if real.all():  # a full raw row: exactly T inputs and t targets
      assert len(inputs) == T and len(targets) == t
    # Putting each sentinel's span back into the inputs gives the raw row.
    assert inputs[-1] == tok.eos_id and targets[-1] == tok.eos_id
    sentinels = inputs[inputs >= tok.vocab_size]
    np.testing.assert_array_equal(sentinels, vocab - 1 - np.arange(len(sentinels)))
    cuts = np.flatnonzero(targets[:-1] >= tok.vocab_size)
    spans = np.split(targets[:-1], cuts[1:])
    restored = np.concatenate([[x] if x < tok.vocab_size else spans[vocab - 1 - x][1:]
                               for x in inputs[:-1]])
    np.testing.assert_array_equal(restored, stored.tokens[r][real])
  _check_decoder_side({k: v[:n] for k, v in rows.items()}, tok.bos_id)
  assert not rows["encoder_segment_ids"][n:].any() and not rows["loss_weights"][n:].any()


def test_denoise_without_noise_copies_the_row_and_permutation_keeps_its_sentences(docs, tok):
  quiet = _config("denoise", denoise_mask_ratio=0.0, denoise_permute_sentences=False)
  store = _store(docs, tok, quiet)
  n = len(store)
  stored = store.read(np.arange(n))
  rows = _rows(_batches(docs, tok, quiet, shuffle=False, repeat=False))
  _check_decoder_side({k: v[:n] for k, v in rows.items()}, tok.bos_id)
  permuted = _rows(_batches(docs, tok, dataclasses.replace(quiet, denoise_permute_sentences=True),
                            shuffle=False, repeat=False))
  orders_changed = several = 0
  for r in range(n):
    text = stored.tokens[r][stored.segments[r] > 0]
    m = len(text)
    np.testing.assert_array_equal(rows["encoder_inputs"][r][:m + 2], np.r_[tok.bos_id, text,
                                                                            tok.eos_id])
    np.testing.assert_array_equal(rows["decoder_targets"][r][:m + 1], np.r_[text, tok.eos_id])
    np.testing.assert_array_equal(permuted["decoder_targets"][r], rows["decoder_targets"][r])
    sentences = np.split(text, np.flatnonzero(np.diff(stored.segments[r][:m])) + 1)
    shuffled = permuted["encoder_inputs"][r][1:m + 1]
    # The shuffled input is the row's sentences in some order.
    rest, used = shuffled, [False] * len(sentences)
    while len(rest):
      i = next(i for i, s in enumerate(sentences)
               if not used[i] and np.array_equal(rest[:len(s)], s))
      used[i], rest = True, rest[len(sentences[i]):]
    assert all(used)
    if len(sentences) > 1:
      several += 1
      orders_changed += not np.array_equal(shuffled, text)
  assert orders_changed > several // 3  # at least half of them, for two sentences


def test_denoise_masks_30_percent_of_words(docs, tok):
  config = _config("denoise", denoise_permute_sentences=False, denoise_random_ratio=0.0)
  store = _store(docs, tok, config)
  stored = store.read(np.arange(len(store)))
  rows = _rows(_batches(docs, tok, config, shuffle=False, repeat=False))
  words = masks = kept_words = 0
  for r in range(len(store)):
    text = stored.tokens[r][stored.segments[r] > 0]
    inputs = rows["encoder_inputs"][r][rows["encoder_segment_ids"][r] > 0][1:-1]
    w = int(tok.word_starts(text).sum() + (not tok.word_starts(text)[0]))
    words += w
    masks += int((inputs == tok.mask_id).sum())
    kept_words += int(tok.word_starts(inputs[inputs != tok.mask_id]).sum())
  assert abs(1 - kept_words / words - 0.3) < 0.05, kept_words / words
  assert masks < 0.3 * words  # one mask per span of (on average) more than one word


@pytest.mark.parametrize("objective", seq2seq_pipeline.OBJECTIVES)
def test_processes_read_their_share_and_resume_exactly(docs, tok, objective,
                                                      assert_batches_equal):
  config = _config(objective)
  whole = _batches(docs[:60], tok, config, n=6, seed=3)
  parts = [_batches(docs[:60], tok, config, n=6, batch_size=4, seed=3, process_index=index,
                    process_count=2) for index in range(2)]
  assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)],
                       whole)
  resumed = _reader(docs[:60], tok, config, seed=3)
  try:
    resumed.set_position({"next_row": 2 * 8, "dataset": resumed.store.name})
    assert_batches_equal(list(itertools.islice(resumed, 4)), whole[2:])
  finally:
    resumed.close()


def test_bad_settings_name_the_field(tok):
  with pytest.raises(InputError, match="data.noise_density"):
    seq2seq_pipeline.check_config(_config("span_corruption", noise_density=1.5), tok)
  with pytest.raises(InputError, match="data.extra_ids"):
    seq2seq_pipeline.check_config(_config("span_corruption", extra_ids=2), tok)
  with pytest.raises(InputError, match="data.denoise_mask_ratio"):
    seq2seq_pipeline.check_config(_config("denoise", denoise_mask_ratio=-0.1), tok)
  with pytest.raises(InputError, match="data.seq_len"):
    seq2seq_pipeline.check_config(_config("denoise", seq_len=4), tok)
