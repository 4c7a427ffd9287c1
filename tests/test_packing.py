"""Packing: hand-computed rows and invariants over random documents."""

import numpy as np
import pytest

from pretrax.data import packing


def _unique_docs(rng, num_docs, max_len):
  """Documents whose tokens are all distinct (1, 2, 3, ...) so each token names (doc, index)."""
  docs, next_id = [], 1
  for _ in range(num_docs):
    n = int(rng.integers(0, max_len + 1))
    docs.append(np.arange(next_id, next_id + n, dtype=np.int32))
    next_id += n
  return docs


def test_hand_computed_rows():
  # seq_len=8: rows of 9 slots. a (3 tokens) + b (5) fill 8 slots, 1 slot left -> padding.
  # c (12) fills row 2 (c0..c8); its continuation c8..c11 starts row 3 at position 0.
  a, b, c = np.arange(10, 13), np.arange(20, 25), np.arange(30, 42)
  out = packing.pack_documents([a, b, c], seq_len=8)
  np.testing.assert_array_equal(out["inputs"], [
      [10, 11, 12, 20, 21, 22, 23, 24],
      [30, 31, 32, 33, 34, 35, 36, 37],
      [38, 39, 40, 41, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["targets"], [
      [11, 12, 20, 21, 22, 23, 24, 0],
      [31, 32, 33, 34, 35, 36, 37, 38],
      [39, 40, 41, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["loss_weights"], [
      [1, 1, 0, 1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [
      [1, 1, 1, 2, 2, 2, 2, 2],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out["positions"], [
      [0, 1, 2, 0, 1, 2, 3, 4],
      [0, 1, 2, 3, 4, 5, 6, 7],
      [0, 1, 2, 3, 0, 0, 0, 0]])
  assert out["inputs"].dtype == np.int32 and out["targets"].dtype == np.int32
  assert out["segment_ids"].dtype == np.int32 and out["positions"].dtype == np.int32
  assert out["loss_weights"].dtype == np.float32


def test_split_mid_row_and_repeatedly():
  # seq_len=4: rows of 5 slots. a (2) leaves 3 slots: b (10) puts b0..b2 there, then continues
  # b2..b6 (a full row), then b6..b9 (4 tokens) and the stream ends.
  a, b = np.array([5, 6]), np.arange(100, 110)
  out = packing.pack_documents([a, b], seq_len=4)
  np.testing.assert_array_equal(out["inputs"], [
      [5, 6, 100, 101], [102, 103, 104, 105], [106, 107, 108, 109]])
  np.testing.assert_array_equal(out["targets"], [
      [6, 100, 101, 102], [103, 104, 105, 106], [107, 108, 109, 0]])
  np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 2, 2], [1, 1, 1, 1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(out["positions"], [[0, 1, 0, 1], [0, 1, 2, 3], [0, 1, 2, 3]])
  np.testing.assert_array_equal(out["loss_weights"], [[1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]])


def test_exact_fit_starts_a_fresh_row():
  # A document of exactly seq_len + 1 tokens fills a row; the next one starts a new row unsplit.
  out = packing.pack_documents([np.arange(1, 6), np.array([7, 8])], seq_len=4)
  np.testing.assert_array_equal(out["inputs"], [[1, 2, 3, 4], [7, 8, 0, 0]])
  np.testing.assert_array_equal(out["targets"], [[2, 3, 4, 5], [8, 0, 0, 0]])
  np.testing.assert_array_equal(out["loss_weights"], [[1, 1, 1, 1], [1, 0, 0, 0]])


def test_no_rows():
  out = packing.pack_documents([], seq_len=6)
  assert set(out) == set(packing.FEATURES)
  assert all(v.shape == (0, 6) for v in out.values())
  assert list(packing.pack_blocks([np.zeros(0, np.int32)], seq_len=6)) == []
  assert list(packing.pack_blocks([np.zeros(0, np.int32)], seq_len=6, framed=True)) == []


@pytest.mark.parametrize("seq_len", [1, 2, 3, 7, 16, 64])
def test_every_token_after_the_first_is_a_target_exactly_once(seq_len):
  rng = np.random.default_rng(seq_len)
  docs = _unique_docs(rng, num_docs=60, max_len=40)  # includes empty and 1-token documents
  owner = {int(t): (d, i) for d, doc in enumerate(docs) for i, t in enumerate(doc)}
  out = packing.pack_documents(docs, seq_len)
  w = out["loss_weights"] > 0

  expected = sorted(int(t) for doc in docs for t in doc[1:])
  assert sorted(out["targets"][w].tolist()) == expected

  # Each weighted (input, target) pair is two consecutive tokens of one document.
  for x, y in zip(out["inputs"][w].tolist(), out["targets"][w].tolist()):
    (dx, ix), (dy, iy) = owner[x], owner[y]
    assert dx == dy and iy == ix + 1

  # A weighted target is in its input's segment (the next slot, where the row shows it).
  s = out["segment_ids"]
  inner = w[:, :-1]
  np.testing.assert_array_equal(s[:, 1:][inner], s[:, :-1][inner])
  assert (s[w] > 0).all()

  # Padding: token 0, segment 0, position 0, weight 0, and only at the end of a row.
  pad = s == 0
  assert (out["inputs"][pad] == 0).all() and (out["positions"][pad] == 0).all()
  assert (out["loss_weights"][pad] == 0).all()
  assert (np.diff(pad.astype(int), axis=1) >= 0).all()

  # Positions count 0, 1, ... within each segment; segments count 1, 2, ... within each row.
  for row_s, row_p in zip(s, out["positions"]):
    for seg in range(1, row_s.max() + 1):
      np.testing.assert_array_equal(row_p[row_s == seg], np.arange((row_s == seg).sum()))
    assert list(np.unique(row_s[row_s > 0])) == list(range(1, row_s.max() + 1))

  # Only the last row may pad inputs: others leave at most their last slot (a target) free.
  assert not pad[:-1].any()


def test_bad_inputs():
  with pytest.raises(ValueError, match="seq_len"):
    packing.pack_documents([np.arange(3)], seq_len=0)
  with pytest.raises(ValueError, match="1-D integer"):
    packing.pack_documents([np.zeros((2, 2), np.int32)], seq_len=4)
  with pytest.raises(ValueError, match="1-D integer"):
    packing.pack_documents([np.array([1.5, 2.5])], seq_len=4)
