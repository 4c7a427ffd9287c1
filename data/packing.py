"""Pack tokenized documents into fixed-length rows (concatenate-then-split), and the examples of
packed rows.

Causal rows (GPT). A row holds `seq_len + 1` token slots, filled with documents one after another
(each document is already `[bos] + ids + [eos]`). A row `r` with segment ids `s` and positions `p`
becomes one example of length `seq_len` (`causal_examples`):

  inputs = r[:-1]   targets = r[1:]   segment_ids = s[:-1]   positions = p[:-1]
  loss_weights = (s[1:] == s[:-1]) & (s[:-1] > 0)

so no token predicts across a document boundary and padding (segment 0, token 0) weighs 0.
Segment ids count 1, 2, ... within a row; positions restart at 0 in each segment.

A document that does not fit the space left in a row fills the row, and its continuation starts
the next row as a new segment that repeats the last token placed: every token of a document after
its first is a weighted target exactly once. When fewer than 2 slots are left, the rest of the
row is padding.

Framed rows (BERT's mlm). A row holds `seq_len` slots; each document (ids only) becomes a segment
`[CLS] ids [SEP]`. A document that does not fit fills the row and continues in the next, each
piece framed by its own [CLS] ... [SEP] (a piece holds at most seq_len - 2 tokens); fewer than 3
free slots are left as padding. Empty documents add nothing.

Stream rows (T5's raw rows). A row holds `seq_len` slots filled with documents one after another
(each already `ids + [eos]`), a document that does not fit continuing in the next row with no
overlap; segment ids still count the documents (pieces) of a row.

`pack_blocks` packs a stream into blocks of rows (what data/row_store.py writes);
`pack_documents` packs a list into causal examples.
"""

from typing import Any, Iterable, Iterator

import numpy as np

from pretrax.data.errors import InputError

FEATURES = ("inputs", "targets", "loss_weights", "segment_ids", "positions")


def check_seq_len(seq_len: int):
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise InputError(f"seq_len must be a positive int (data.seq_len), got {seq_len!r}")


def _as_tokens(doc: Any) -> np.ndarray:
  doc = np.asarray(doc)
  if doc.ndim != 1 or not np.issubdtype(doc.dtype, np.integer):
    raise InputError(
        f"packing expects 1-D integer token arrays ([bos] + ids + [eos]), got shape {doc.shape} "
        f"dtype {doc.dtype}")
  return doc


def pack_blocks(docs: Iterable[np.ndarray], seq_len: int, *, framed: bool = False,
                stream: bool = False, cls_id: int = 0, sep_id: int = 0, dtype=np.int32,
                block_rows: int = 64) -> Iterator[np.ndarray]:
  """Packs token arrays lazily into rows (see module doc): yields blocks [n, 2, L] of `dtype`,
  row i's token ids at [i, 0] and its segment ids (0 = padding) at [i, 1]; L = seq_len + 1
  (causal) or seq_len (framed, stream). Positions follow from the segment ids (`segment_positions`)."""
  check_seq_len(seq_len)
  if framed and seq_len < 3:
    raise InputError(f"seq_len must be >= 3 for [CLS] token [SEP] rows (data.seq_len), got "
                     f"{seq_len}")
  width = seq_len if framed or stream else seq_len + 1
  least = 3 if framed else 1 if stream else 2  # fewer free slots than this: the row is finished
  block = np.zeros((block_rows, 2, width), dtype)
  r = fill = segment = 0
  for doc in docs:
    doc = _as_tokens(doc)
    n, offset = len(doc), 0
    while offset < n:
      if width - fill < least:  # finish the row
        r, fill, segment = r + 1, 0, 0
        if r == block_rows:
          yield block
          block, r = np.zeros((block_rows, 2, width), dtype), 0
      segment += 1
      if framed:
        take = min(n - offset, width - fill - 2)
        end = fill + take + 2
        block[r, 0, fill] = cls_id
        block[r, 0, fill + 1:end - 1] = doc[offset:offset + take]
        block[r, 0, end - 1] = sep_id
        offset += take
      else:
        take = min(n - offset, width - fill)
        end = fill + take
        block[r, 0, fill:end] = doc[offset:offset + take]
        # A causal continuation repeats the last token placed, so it is a target exactly once.
        offset += take if stream or offset + take == n else take - 1
      block[r, 1, fill:end] = segment
      fill = end
  if fill:
    r += 1
  if r:
    yield block[:r]


def segment_positions(segments_bl: np.ndarray) -> np.ndarray:
  """[B, L] segment ids (0 = padding) -> [B, L] int32 positions: 0 at each segment's first slot,
  counting up within it, 0 on padding."""
  segments_bl = np.asarray(segments_bl)
  slots = np.broadcast_to(np.arange(segments_bl.shape[-1]), segments_bl.shape)
  starts = np.ones(segments_bl.shape, bool)
  starts[..., 1:] = segments_bl[..., 1:] != segments_bl[..., :-1]
  first = np.maximum.accumulate(np.where(starts, slots, 0), axis=-1)
  return np.where(segments_bl > 0, slots - first, 0).astype(np.int32)


def causal_examples(tokens_bl: np.ndarray, segments_bl: np.ndarray) -> dict[str, np.ndarray]:
  """Causal rows of L = seq_len + 1 slots -> dict of [B, seq_len] examples (see module doc):
  inputs, targets, segment_ids, positions int32; loss_weights float32."""
  t, s = np.asarray(tokens_bl, np.int32), np.asarray(segments_bl, np.int32)
  return {
      "inputs": t[:, :-1],
      "targets": t[:, 1:],
      "loss_weights": ((s[:, 1:] == s[:, :-1]) & (s[:, :-1] > 0)).astype(np.float32),
      "segment_ids": s[:, :-1],
      "positions": segment_positions(s)[:, :-1],
  }


def pack_documents(docs: Iterable[np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
  """Packs token arrays (each [len_i] int) -> dict of causal examples, [num_rows, seq_len] arrays
  (see module doc). The last partial row is padded; no rows gives arrays of shape [0, seq_len]."""
  blocks = list(pack_blocks(docs, seq_len))
  rows = np.concatenate(blocks) if blocks else np.zeros((0, 2, seq_len + 1), np.int32)
  return causal_examples(rows[:, 0], rows[:, 1])


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
