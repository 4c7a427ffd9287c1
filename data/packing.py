"""Pack tokenized documents into fixed-length causal-LM rows (concatenate-then-split).

A row holds `seq_len + 1` token slots, filled with documents one after another (each document is
already `[bos] + ids + [eos]`). A row `r` with segment ids `s` and positions `p` becomes one
example of length `seq_len`:

  inputs = r[:-1]   targets = r[1:]   segment_ids = s[:-1]   positions = p[:-1]
  loss_weights = (s[1:] == s[:-1]) & (s[:-1] > 0)

so no token predicts across a document boundary and padding (segment 0, token 0) weighs 0.
Segment ids count 1, 2, ... within a row; positions restart at 0 in each segment.

A document that does not fit the space left in a row fills the row, and its continuation starts
the next row as a new segment that repeats the last token placed: every token of a document after
its first is a weighted target exactly once. When fewer than 2 slots are left, the rest of the
row is padding.

`iter_rows` packs a stream lazily (the packed-rows build, data/row_store.py, writes its rows);
`pack_documents` packs a list (pure numpy, for tests); `PackedLMIterDataset` packs a Grain stream
one row per `next`, with a small checkpointable state.
"""

import copy
from typing import Any, Iterable, Iterator

import grain
import numpy as np

from pretrax.data.errors import InputError

FEATURES = ("inputs", "targets", "loss_weights", "segment_ids", "positions")


class _Row:
  """One row being filled: `seq_len + 1` token slots with segment ids and positions."""

  def __init__(self, seq_len: int):
    self.tokens = np.zeros(seq_len + 1, np.int32)
    self.segments = np.zeros(seq_len + 1, np.int32)
    self.positions = np.zeros(seq_len + 1, np.int32)
    self.fill = 0          # slots used
    self.num_segments = 0  # segments placed so far

  def space(self) -> int:
    return len(self.tokens) - self.fill

  def add(self, doc: np.ndarray, offset: int) -> int | None:
    """Places `doc[offset:]` as a new segment, as much as fits in the row.

    Returns None if it all fit, else the offset where its continuation starts (the last token
    placed, so the continuation overlaps this row by one token). Needs `space() >= 2`.
    """
    n = len(doc) - offset
    if n <= 0:
      return None  # an empty document adds nothing
    space = self.space()
    assert space >= 2, space
    take = min(n, space)
    self.num_segments += 1
    end = self.fill + take
    self.tokens[self.fill:end] = doc[offset:offset + take]
    self.segments[self.fill:end] = self.num_segments
    self.positions[self.fill:end] = np.arange(take, dtype=np.int32)
    self.fill = end
    return None if take == n else offset + take - 1

  def example(self) -> dict[str, np.ndarray]:
    """-> dict of [seq_len] arrays: inputs, targets, segment_ids, positions int32; loss_weights f32."""
    t, s, p = self.tokens, self.segments, self.positions
    return {
        "inputs": t[:-1],
        "targets": t[1:],
        "loss_weights": ((s[1:] == s[:-1]) & (s[:-1] > 0)).astype(np.float32),
        "segment_ids": s[:-1],
        "positions": p[:-1],
    }


def _check_seq_len(seq_len: int):
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise InputError(f"seq_len must be a positive int (data.seq_len), got {seq_len!r}")


def _as_tokens(doc: Any) -> np.ndarray:
  doc = np.asarray(doc)
  if doc.ndim != 1 or not np.issubdtype(doc.dtype, np.integer):
    raise InputError(
        f"packing expects 1-D integer token arrays ([bos] + ids + [eos]), got shape {doc.shape} "
        f"dtype {doc.dtype}")
  return doc


def iter_rows(docs: Iterable[np.ndarray], seq_len: int) -> Iterator[_Row]:
  """Packs token arrays lazily: yields each full `_Row` (`tokens`, `segments`, `positions`, each
  [seq_len + 1]) as soon as the next document needs a new one, and the last partial row."""
  _check_seq_len(seq_len)
  row = _Row(seq_len)
  for doc in docs:
    doc, offset = _as_tokens(doc), 0
    while offset is not None:
      if row.space() < 2:
        yield row
        row = _Row(seq_len)
      offset = row.add(doc, offset)
  if row.fill:
    yield row


def segment_positions(segments_bl: np.ndarray) -> np.ndarray:
  """[B, L] segment ids (0 = padding) -> [B, L] int32 positions: 0 at each segment's first slot,
  counting up within it, 0 on padding (what `_Row` writes)."""
  segments_bl = np.asarray(segments_bl)
  slots = np.broadcast_to(np.arange(segments_bl.shape[-1]), segments_bl.shape)
  starts = np.ones(segments_bl.shape, bool)
  starts[..., 1:] = segments_bl[..., 1:] != segments_bl[..., :-1]
  first = np.maximum.accumulate(np.where(starts, slots, 0), axis=-1)
  return np.where(segments_bl > 0, slots - first, 0).astype(np.int32)


def causal_examples(tokens_bl: np.ndarray, segments_bl: np.ndarray) -> dict[str, np.ndarray]:
  """Packed rows of L = seq_len + 1 slots -> dict of [B, seq_len] examples, as `_Row.example`."""
  t, s = np.asarray(tokens_bl, np.int32), np.asarray(segments_bl, np.int32)
  return {
      "inputs": t[:, :-1],
      "targets": t[:, 1:],
      "loss_weights": ((s[:, 1:] == s[:, :-1]) & (s[:, :-1] > 0)).astype(np.float32),
      "segment_ids": s[:, :-1],
      "positions": segment_positions(s)[:, :-1],
  }


def pack_documents(docs: Iterable[np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
  """Packs token arrays (each [len_i] int) -> dict of [num_rows, seq_len] arrays (see module doc).

  The last partial row is padded; no rows gives arrays of shape [0, seq_len].
  """
  rows = [row.example() for row in iter_rows(docs, seq_len)]
  if not rows:
    empty = _Row(seq_len).example()
    return {k: np.zeros((0, seq_len), v.dtype) for k, v in empty.items()}
  return {k: np.stack([r[k] for r in rows]) for k in FEATURES}


class PackedLMIterDataset(grain.IterDataset):
  """Packs a stream of token arrays ([len_i] int) into examples of [seq_len] arrays.

  Each element is a dict with `FEATURES` keys (see module doc). At the end of a finite parent the
  last partial row is emitted padded.
  """

  def __init__(self, parent: grain.IterDataset, seq_len: int):
    super().__init__(parent)
    _check_seq_len(seq_len)
    self._seq_len = int(seq_len)

  def __iter__(self) -> "PackedLMDatasetIterator":
    return PackedLMDatasetIterator(self._parent.__iter__(), self._seq_len)

  def __str__(self) -> str:
    return f"PackedLMIterDataset(seq_len={self._seq_len})"


class DocumentCursorIterator(grain.DatasetIterator):
  """An iterator that consumes its parent's documents piece by piece, with a small state.

  Between `next` calls the only thing carried over is the document being consumed (if any) and a
  cursor into it, so the state is `{"parent": parent state just before that document was fetched,
  CURSOR: where it continues}`, or `{"parent": current parent state, CURSOR: -1}` when no document
  is pending. Restoring re-fetches the document from the parent. Subclasses name the cursor
  (`CURSOR`, a state key), may convert fetched documents (`_prepare`) and call `_pending`,
  `_next_document` and `_move_cursor` from `__next__`.
  """

  CURSOR = "doc_offset"

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._doc = None        # the pending document; None if none or not re-fetched yet
    self._cursor = -1       # where the pending document continues; -1: no pending document
    self._doc_state = None  # parent state just before the pending document was fetched

  def _prepare(self, doc: Any) -> Any:
    return doc

  def _pending(self) -> Any:
    """The pending document (re-fetched after a restore), or None."""
    if self._cursor >= 0 and self._doc is None:
      self._doc = self._prepare(next(self._parent))
    return self._doc

  def _next_document(self, accept=lambda doc: True) -> Any:
    """Fetches the parent's next document that `accept`s and makes it pending at cursor 0;
    the parent's StopIteration propagates."""
    while True:
      state = copy.deepcopy(self._parent.get_state())
      doc = self._prepare(next(self._parent))
      if accept(doc):
        self._doc, self._cursor, self._doc_state = doc, 0, state
        return doc

  def _move_cursor(self, cursor: int | None) -> None:
    """Moves the pending document's cursor; None: the document is used up."""
    if cursor is None:
      self._doc, self._cursor, self._doc_state = None, -1, None
    else:
      self._cursor = cursor

  def get_state(self) -> dict[str, Any]:
    if self._cursor >= 0:
      return {"parent": copy.deepcopy(self._doc_state), self.CURSOR: self._cursor}
    return {"parent": self._parent.get_state(), self.CURSOR: -1}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._doc = None
    self._cursor = int(state[self.CURSOR])
    self._doc_state = copy.deepcopy(state["parent"]) if self._cursor >= 0 else None


class PackedLMDatasetIterator(DocumentCursorIterator):
  """Builds one row per `next`; state as DocumentCursorIterator's (cursor "doc_offset")."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len

  def _prepare(self, doc: Any) -> np.ndarray:
    return _as_tokens(doc)

  def __next__(self) -> dict[str, np.ndarray]:
    self._pending()
    row = _Row(self._seq_len)
    while row.space() >= 2:
      if self._cursor < 0:
        try:
          self._next_document()
        except StopIteration:
          break
      self._move_cursor(row.add(self._doc, self._cursor))
    if row.fill == 0:
      raise StopIteration
    return row.example()

  def __str__(self) -> str:
    return f"PackedLMDatasetIterator(seq_len={self._seq_len})"


def pair_cuts(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
  """How many tokens A and B lose so that both fit in `max_tokens`, as BERT's
  `truncate_seq_pair`: one token at a time from the longer side, B on ties."""
  excess = len_a + len_b - max_tokens
  if excess <= 0:
    return 0, 0
  diff = abs(len_a - len_b)
  if excess <= diff:
    return (excess, 0) if len_a > len_b else (0, excess)
  rest = excess - diff  # equal lengths now: they alternate, B first
  return ((diff if len_a > len_b else 0) + rest // 2,
          (diff if len_b > len_a else 0) + rest - rest // 2)
