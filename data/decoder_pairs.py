"""Source -> target pairs for a decoder-only model (GPT as a seq2seq model): each pair is one
causal sequence `[bos] source [sep] target [eos]`, the loss on the target and EOS only.

  rows = PackedSequences(pairs, tokenizer, t=128, name="train.jsonl")
  batches = GlobalBatches(rows, SequenceRows(sep_id=tok.sep_id), ...)

Length: a sequence has at most T + 1 tokens (T = data.seq_len inputs, each predicting the next
token). The target part (target, eos) keeps at most (T + 1) // 2 tokens and the source the rest,
so generation can always make as many tokens as training targets had (`prompt`). Sequences are
packed in file order, several to a row of T + 1 tokens, one segment each, as causal rows are
(data/packing.py): a packed row computes what its pairs compute alone. SEP marks where the target
begins (`encode` never returns a special id, so the first SEP of a segment is the separator).

`PackedSequences` is read like a row store by global row index (data/global_batches.py); it lives
in memory, as data/seq2seq_pairs.PackedPairs does.
"""

import numpy as np

from pretrax.data import packing, seq2seq_pairs
from pretrax.data.errors import InputError
from pretrax.data.row_store import Rows


def target_room(t: int) -> int:
  """Tokens a pair's target part (target, eos) may take in sequences of t + 1 tokens; also what
  generation makes at most."""
  return (t + 1) // 2


def prompt(tokenizer, source_ids: np.ndarray, t: int) -> np.ndarray:
  """`[bos] source [sep]`, the source cut as training cuts it when the target is longest."""
  room = t + 1 - target_room(t) - 2
  return np.concatenate([[tokenizer.bos_id], source_ids[:room],
                         [tokenizer.sep_id]]).astype(np.int32)


def sequence(tokenizer, source_ids: np.ndarray, target_ids: np.ndarray, t: int) -> np.ndarray:
  """`[bos] source [sep] target [eos]` in at most t + 1 tokens (module doc)."""
  target = seq2seq_pairs.ends_with_eos(target_ids, target_room(t), tokenizer.eos_id)
  room = t + 1 - len(target) - 2
  return np.concatenate([[tokenizer.bos_id], source_ids[:room], [tokenizer.sep_id],
                         target]).astype(np.int32)


class PackedSequences(seq2seq_pairs.PackedRowTable):
  """Pairs as causal sequences packed into rows of [T + 1] slots (module doc)."""

  def __init__(self, pairs: list[tuple[str, str]], tokenizer, *, t: int, name: str):
    if t < 4:
      raise InputError(f"data.seq_len={t} leaves no room for [bos] source [sep] target [eos]")
    width = self.row_len = t + 1
    sources = tokenizer.encode_batch([p[0] for p in pairs])
    targets = tokenizer.encode_batch([p[1] for p in pairs])
    sequences = [sequence(tokenizer, a, b, t) for a, b in zip(sources, targets)]
    self.truncated = sum(len(a) + len(b) + 3 > width for a, b in zip(sources, targets))
    rows, row, fill = [], [], 0
    for seq in sequences:
      if row and fill + len(seq) > width:
        rows.append(row)
        row, fill = [], 0
      row.append(seq)
      fill += len(seq)
    rows.append(row)
    tokens = np.zeros((len(rows), width), np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for r, row in enumerate(rows):
      fill = 0
      for k, seq in enumerate(row, start=1):
        tokens[r, fill:fill + len(seq)] = seq
        segments[r, fill:fill + len(seq)] = k
        fill += len(seq)
    self._keep(tokens, segments, len(pairs), name, f"sequences{t}")


class SequenceRows:
  """Packed sequence rows -> causal LM examples (a `global_batches.MakeExamples`): inputs,
  targets, segment_ids, positions [B, T] int32; loss_weights [B, T] float32, 1 where the target
  is a token of the pair's target or its EOS."""

  def __init__(self, *, sep_id: int):
    self.sep_id = sep_id

  def __call__(self, rows: Rows, stream_n: np.ndarray) -> dict[str, np.ndarray]:
    tokens, segments = rows.tokens, rows.segments
    starts = np.ones(tokens.shape, bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    is_sep = tokens == self.sep_id
    seps = np.cumsum(is_sep, axis=1)
    before_segment = np.maximum.accumulate(np.where(starts, seps - is_sep, 0), axis=1)
    in_target = (seps - before_segment > 0) & ~is_sep & (segments > 0)
    seg_in, seg_out = segments[:, :-1], segments[:, 1:]
    weights = in_target[:, 1:] & (seg_out == seg_in)
    return {"inputs": tokens[:, :-1], "targets": np.where(weights, tokens[:, 1:], 0),
            "segment_ids": seg_in, "positions": packing.segment_positions(seg_in),
            "loss_weights": weights.astype(np.float32)}
