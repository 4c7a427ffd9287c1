"""BERT-style pretraining examples, drawn from packed rows as data/global_batches.py reads them.

config.objective picks the rows (data/row_store.py, built once ahead of training; T =
config.seq_len) and what is drawn from them:
  mlm      RoBERTa style, framed rows (data/packing.py): each document becomes `[CLS] tokens [SEP]`,
           several per row, segment ids 1, 2, ... (0 = padding) and positions restarting at 0; a
           document that does not fit continues in the next row in a piece of its own.
           `MaskedRows` masks them.
  mlm+nsp  Original BERT: one `[CLS] A [SEP] B [SEP]` pair per row (not packed), token_type_ids
  mlm+sop  0 on [CLS] A [SEP] and 1 on B [SEP], segment ids 1 on the pair and 0 on padding.
           nsp_label 0: B is A's continuation; 1: B comes from a random document (nsp) or A and
           B are swapped (sop). `SentencePairs` draws one pair from each row of sentence chunks
           (data/sentences.py: whole sentences of one document, at most C = T - 3 tokens), as
           BERT's `create_instances_from_document` does from its chunks:
  - A = the chunk's first k sentences, k uniform in [1, len - 1]; the true B = the rest. A chunk
    of ONE sentence (a one-sentence document, a piece of a sentence longer than C) is cut at a
    uniform token instead: A = its first c tokens, B = the rest, c in [1, n - 1]. A one-token
    chunk has an empty true B.
  - nsp: with probability 1/2 (always if the true B is empty) B is random: up to 10 draws of a
    row for one from another document (BERT draws 10 times too; if all 10 fail, as in a
    one-document corpus, the last draw is used, still labelled 1); B = its sentences from a
    uniform start, continuing into the following rows of the same document, until the pair
    holds >= n tokens (n = the chunk's length; C if the true B is empty) or the document ends.
    The pair is then cut to n tokens (`truncate_pair`: one token at a time from the longer side,
    B on ties, from its front or back with probability 1/2 each), so a random pair is as long as
    the true one would have been: its length tells nothing of its label.
  - sop: with probability 1/2 A and B are swapped (label 1); a one-token chunk keeps its empty B,
    label 0 (`[CLS] A [SEP] [SEP]`).
  Unlike BERT, a chunk never exceeds C tokens (the sentence that would overflow it starts the
  next chunk, so a true pair is never truncated), each chunk gives one pair per epoch
  (where B is random, the true B is not put back for the next pair as BERT does), and
  BERT's short_seq_prob (10% shorter pairs) is not used.

Every random choice of row g of the global stream (its masks; for pairs also the split, the
label, the random B and the truncation) is drawn from `np.random.default_rng([seed, TAG, 0, g,
0])`: fresh in every epoch, the same on any number of processes and after a restore.
"""

import functools
from typing import Any

import numpy as np

from pretrax.data.errors import InputError
from pretrax.data import masking
from pretrax.data import packing
from pretrax.data.config import DataConfig
from pretrax.data.row_store import Rows, RowStore

OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")
PAIR_OBJECTIVES = ("mlm+nsp", "mlm+sop")
FEATURES = ("input_ids", "segment_ids", "token_type_ids", "positions",  # [B, T] int32
            "masked_positions", "masked_ids", "masked_weights",        # [B, P] int32 / float32
            "nsp_label")                                                # [B] int32
MIN_PAIR_SEQ_LEN = 8  # [CLS] A [SEP] B [SEP] needs room for a few tokens of A and B
MIN_PACKED_SEQ_LEN = 3  # [CLS] token [SEP]
RANDOM_DOCUMENT_TRIES = 10  # BERT's draws for a random document other than the current one
_ROW_RNG_TAG = 0xBE27  # keeps the row generators apart from other uses of the seed

ROW_KINDS = {"mlm": "mlm", "mlm+nsp": "pairs", "mlm+sop": "pairs"}  # objective -> row kind


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """[la], [lb] -> (A, B) with len(A) + len(B) <= max_tokens, as BERT's `truncate_seq_pair`.

  BERT removes one token at a time from the longer side (B on ties), from the front or the back
  with probability 1/2. How many each side loses depends only on the lengths (`pair_cuts`), and
  the front/back split of each side's removals is one binomial draw.
  """
  la, lb = len(a), len(b)
  cut_a, cut_b = packing.pair_cuts(la, lb, max_tokens)
  if cut_a + cut_b == 0:
    return a, b
  front_a, front_b = int(rng.binomial(cut_a, 0.5)), int(rng.binomial(cut_b, 0.5))
  return a[front_a:la - (cut_a - front_a)], b[front_b:lb - (cut_b - front_b)]


class _RowMasker:
  """Row generators and the finished example: masking + the features of one row."""

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int):
    check_config(config, tokenizer)
    if seed < 0:
      raise InputError(f"seed must be >= 0 (train.seed), got {seed}")
    self.tokenizer = tokenizer
    self.seq_len, self.max_predictions = config.seq_len, config.max_predictions_per_seq
    self.whole_word = config.whole_word_masking
    self.seed = seed
    self.mask = functools.partial(
        masking.mask_tokens, vocab_size=tokenizer.vocab_size, mask_rate=config.mask_rate,
        mask_token_rate=config.mask_token_rate, random_token_rate=config.random_token_rate,
        max_predictions=config.max_predictions_per_seq, special_ids=tokenizer.special_ids,
        mask_id=tokenizer.mask_id)

  def rng(self, g: int) -> np.random.Generator:
    """The generator of row g of the global stream."""
    return np.random.default_rng([self.seed, _ROW_RNG_TAG, 0, g, 0])

  def example(self, tokens_t, segments_t, token_types_t, positions_t, nsp_label: int,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[T] int32 row arrays -> dict of [T] / [P] arrays and a [] nsp_label (see FEATURES)."""
    word_starts_t = self.tokenizer.word_starts(tokens_t) if self.whole_word else None
    input_ids, positions_p, ids_p, weights_p = self.mask(tokens_t, rng, word_starts_t=word_starts_t)
    return {"input_ids": input_ids, "segment_ids": segments_t, "token_type_ids": token_types_t,
            "positions": positions_t, "masked_positions": positions_p, "masked_ids": ids_p,
            "masked_weights": weights_p, "nsp_label": np.array(nsp_label, np.int32)}

  def padding(self) -> dict[str, np.ndarray]:
    """The all-zero example of a row past the end of a one-pass read (weight 0)."""
    t, p = self.seq_len, self.max_predictions
    return {"input_ids": np.zeros(t, np.int32), "segment_ids": np.zeros(t, np.int32),
            "token_type_ids": np.zeros(t, np.int32), "positions": np.zeros(t, np.int32),
            "masked_positions": np.zeros(p, np.int32), "masked_ids": np.zeros(p, np.int32),
            "masked_weights": np.zeros(p, np.float32), "nsp_label": np.array(0, np.int32)}


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class MaskedRows:
  """Packed mlm rows -> masked examples (a `global_batches.MakeExamples`): dict of FEATURES."""

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int):
    if config.objective != "mlm":
      raise InputError(f"MaskedRows masks packed mlm rows; data.objective={config.objective!r} "
                       "reads rows of sentences (SentencePairs)")
    self.masker = _RowMasker(tokenizer, config, seed)

  def __call__(self, rows: Rows, stream_n: np.ndarray) -> dict[str, np.ndarray]:
    positions_nt = packing.segment_positions(rows.segments)
    examples = []
    for tokens_t, segments_t, positions_t, g in zip(rows.tokens, rows.segments, positions_nt,
                                                    stream_n):
      if not segments_t.any():
        examples.append(self.masker.padding())
        continue
      examples.append(self.masker.example(tokens_t, segments_t, np.zeros_like(tokens_t),
                                          positions_t, 0, self.masker.rng(int(g))))
    return _stack(examples)


def _row_sentences(tokens_l: np.ndarray, sentences_l: np.ndarray) -> list[np.ndarray]:
  """A row of sentences -> its sentences' token arrays, in order."""
  n = int(np.count_nonzero(sentences_l))
  return np.split(tokens_l[:n], np.flatnonzero(np.diff(sentences_l[:n])) + 1)


class SentencePairs:
  """Rows of sentences (kind "pairs") -> one masked `[CLS] A [SEP] B [SEP]` example per row (a
  `global_batches.MakeExamples`; see the module doc). Random Bs are read from `store`."""

  def __init__(self, store: RowStore, tokenizer: Any, config: DataConfig, seed: int):
    if config.objective not in PAIR_OBJECTIVES:
      raise InputError(f"SentencePairs draws pairs for {' | '.join(PAIR_OBJECTIVES)}, not "
                       f"data.objective={config.objective!r}")
    self.masker = _RowMasker(tokenizer, config, seed)
    if store.kind != "pairs" or store.seq_len != config.seq_len:
      raise InputError(f"{store.directory} holds {store.kind} rows for seq_len {store.seq_len}, "
                       f"not the sentences of data.seq_len={config.seq_len}")
    self.store, self.objective, self.capacity = store, config.objective, config.seq_len - 3

  def __call__(self, rows: Rows, stream_n: np.ndarray) -> dict[str, np.ndarray]:
    examples = []
    for tokens_l, sentences_l, document, g in zip(rows.tokens, rows.segments, rows.documents,
                                                  stream_n):
      if document < 0:
        examples.append(self.masker.padding())
        continue
      examples.append(self.example(_row_sentences(tokens_l, sentences_l), int(document),
                                   self.masker.rng(int(g))))
    return _stack(examples)

  def _random_b(self, document: int, target: int, rng: np.random.Generator) -> np.ndarray:
    """[n] tokens: a random row's sentences from a random start, on through the next rows of its
    document, until they hold >= target tokens (at least one sentence)."""
    for _ in range(RANDOM_DOCUMENT_TRIES):
      r = int(rng.integers(len(self.store)))
      row = self.store.read([r])
      if row.documents[0] != document:
        break
    other = row.documents[0]
    sentences = _row_sentences(row.tokens[0], row.segments[0])
    sentences = sentences[int(rng.integers(len(sentences))):]
    b, count = [], 0
    while True:
      for sentence in sentences:
        b.append(sentence)
        count += len(sentence)
        if count >= target:
          return np.concatenate(b)
      r += 1
      if r == len(self.store):
        return np.concatenate(b)
      row = self.store.read([r])
      if row.documents[0] != other:
        return np.concatenate(b)
      sentences = _row_sentences(row.tokens[0], row.segments[0])

  def example(self, chunk: list[np.ndarray], document: int,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The pair drawn from one chunk of `document`'s sentences."""
    if len(chunk) >= 2:
      a_end = int(rng.integers(1, len(chunk)))
      a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
    else:
      n = len(chunk[0])
      cut = int(rng.integers(1, n)) if n >= 2 else n
      a, b = chunk[0][:cut], chunk[0][cut:]
    label = 0
    if self.objective == "mlm+nsp":
      if len(b) == 0 or rng.random() < 0.5:
        # The random pair is as long as the true one (so its length tells nothing of its label).
        length = len(a) + len(b) if len(b) else self.capacity
        label, b = 1, self._random_b(document, length - len(a), rng)
        a, b = truncate_pair(a, b, length, rng)
    elif len(b) and rng.random() < 0.5:  # mlm+sop
      a, b, label = b, a, 1

    tok, t = self.masker.tokenizer, self.masker.seq_len
    n_a, n = len(a) + 2, len(a) + len(b) + 3
    tokens = np.zeros(t, np.int32)
    tokens[:n] = np.concatenate([[tok.cls_id], a, [tok.sep_id], b, [tok.sep_id]])
    segments = np.zeros(t, np.int32)
    segments[:n] = 1
    token_types = np.zeros(t, np.int32)
    token_types[n_a:n] = 1
    positions = np.zeros(t, np.int32)
    positions[:n] = np.arange(n)
    return self.masker.example(tokens, segments, token_types, positions, label, rng)


def check_config(config: DataConfig, tokenizer: Any) -> None:
  """Raises InputError naming the field for settings the BERT objective cannot run with."""
  if config.objective not in OBJECTIVES:
    hint = " (causal batches come from data.batches.pretraining_batches)" if config.objective == "causal" else ""
    raise InputError(f"data.objective={config.objective!r} is not a BERT objective; choose one "
                     f"of {' | '.join(OBJECTIVES)}{hint}")
  min_len = MIN_PACKED_SEQ_LEN if config.objective == "mlm" else MIN_PAIR_SEQ_LEN
  if not isinstance(config.seq_len, (int, np.integer)) or config.seq_len < min_len:
    raise InputError(f"data.seq_len={config.seq_len!r} is too small for objective "
                     f"{config.objective!r}: it needs at least {min_len} tokens per row")
  if not 1 <= config.max_predictions_per_seq <= config.seq_len:
    raise InputError(f"data.max_predictions_per_seq={config.max_predictions_per_seq} must be in "
                     f"[1, data.seq_len={config.seq_len}]")
  masking.check_rates(config.mask_rate, config.mask_token_rate, config.random_token_rate,
                      config.max_predictions_per_seq)
  if config.whole_word_masking and not hasattr(tokenizer, "word_starts"):
    raise InputError("data.whole_word_masking=True needs a tokenizer with word_starts(ids) "
                     f"(a pretrax tokenizer); got {type(tokenizer).__name__}")
