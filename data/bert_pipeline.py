"""BERT-style pretraining batches: masked packed rows, and sentence pairs built on the fly.

config.objective picks the rows (T = config.seq_len):
  mlm      RoBERTa style, packed once ahead of training (data/row_store.py, framed rows of
           data/packing.py): each document becomes `[CLS] tokens [SEP]`, several per row,
           segment ids 1, 2, ... (0 = padding) and positions restarting at 0; a document that does
           not fit continues in the next row in a piece of its own. `MaskedRows` masks the rows
           as data/global_batches.py reads them, keyed on the row's place in the global stream.
  The pairs are built by a Grain pipeline over this process's shard of the documents:
    source[process_index::process_count] -> shuffle(seed) -> repeat (reshuffled each epoch)
    -> tokenize sentences -> pairs -> mask -> batch -> mp_prefetch
  mlm+nsp  Original BERT: one `[CLS] A [SEP] B [SEP]` pair per row (not packed), token_type_ids
  mlm+sop  0 on [CLS] A [SEP] and 1 on B [SEP], segment ids 1 on the pair and 0 on padding.
           nsp_label 0: B is A's continuation; 1: B comes from a random document (nsp) or A and
           B are swapped (sop). Built as in BERT's `create_instances_from_document`:
  - Sentences (`split_sentences`): a document is cut into lines, and a line after each sentence
    end (. ! ? and closing quotes/brackets, then spaces). Whitespace-only pieces join the previous
    sentence. The pieces concatenate to the document; each is tokenized on its own.
  - From sentence s on, sentences are gathered until they hold >= T - 3 tokens or the document
    ends (the chunk). A = the chunk's first k sentences, k uniform in [1, len - 1]; the true B =
    the rest. A chunk of ONE sentence (a one-sentence document, a document's last sentence, a
    sentence longer than T - 3) is cut at a uniform token instead: A = its first c tokens, B = the
    rest, c in [1, n - 1]. A one-token chunk has an empty true B.
  - nsp: with probability 1/2 (always if the true B is empty) B is random: up to 10 draws of a
    document of this process's shard for one that differs from the current one and has text
    (BERT draws 10 times too); B = its sentences from a uniform start until >= T - 3 - len(A)
    tokens. The true B's sentences are then not used up: the next pair starts at them (BERT). If
    every draw fails (a one-document shard) B comes from a random place of the SAME document,
    still labelled 1 (BERT does the same; such labels are noise, which a one-document corpus
    cannot avoid).
  - sop: with probability 1/2 A and B are swapped (label 1); a one-token chunk keeps its empty B,
    label 0 (`[CLS] A [SEP] [SEP]`).
  - Truncation to len(A) + len(B) <= T - 3 (`truncate_pair`): one token at a time from the longer
    side (B on ties), from its front or back with probability 1/2 each, as BERT does.
  - The target length is always T - 3: BERT's short_seq_prob (10% shorter pairs) is not used.

Masking (data/masking.py; whole words if config.whole_word_masking) of a pair is drawn from
`np.random.default_rng([seed, TAG, process_index, i, j])`, where i is the position of the pair's
document in this process's document stream (epoch * shard size + rank in the epoch's order) and
j the sentence where the pair starts in it. The same generator draws the pair's random choices.
So the masks are fresh in every epoch, and a restored iterator (its state holds where the row
starts) draws exactly the same ones; worker processes, which each build rows from their slice of
the stream, never share a generator.

The pairs' `iter(ds).get_state()/set_state()` resume exactly; save with Orbax via
`grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)`.
"""

import functools
import re
from typing import Any

import grain
import numpy as np

from pretrax.data.errors import InputError
from pretrax.data import masking
from pretrax.data import packing
from pretrax.data import pipeline
from pretrax.data.config import DataConfig

OBJECTIVES = ("mlm", "mlm+nsp", "mlm+sop")
PAIR_OBJECTIVES = ("mlm+nsp", "mlm+sop")
FEATURES = ("input_ids", "segment_ids", "token_type_ids", "positions",  # [B, T] int32
            "masked_positions", "masked_ids", "masked_weights",        # [B, P] int32 / float32
            "nsp_label")                                                # [B] int32
MIN_PAIR_SEQ_LEN = 8  # [CLS] A [SEP] B [SEP] needs room for a few tokens of A and B
MIN_PACKED_SEQ_LEN = 3  # [CLS] token [SEP]
RANDOM_DOCUMENT_TRIES = 10  # BERT's draws for a random document other than the current one
_ROW_RNG_TAG = 0xBE27  # keeps the row generators apart from other uses of the seed

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*[ \t]+")


def split_sentences(text: str) -> list[str]:
  """Document -> sentences whose concatenation is `text` (see module doc); [] for ""."""
  pieces = []
  for line in text.splitlines(keepends=True):
    start = 0
    for match in _SENTENCE_END.finditer(line):
      pieces.append(line[start:match.end()])
      start = match.end()
    if start < len(line):
      pieces.append(line[start:])
  sentences = []
  for piece in pieces:
    if sentences and (piece.isspace() or sentences[-1].isspace()):
      sentences[-1] += piece  # whitespace joins the sentence before it (or the first one)
    else:
      sentences.append(piece)
  return sentences


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


class _Shard:
  """Documents process_index::process_count of `source` (random access, picklable)."""

  def __init__(self, source, process_index: int, process_count: int):
    self.source, self.start, self.step = source, process_index, process_count

  def __len__(self) -> int:
    return len(range(self.start, len(self.source), self.step))

  def __getitem__(self, k: int) -> str:
    return self.source[self.start + int(k) * self.step]


class _LoadDocument:
  """(stream index i, document index in the shard) -> {"index": i, "doc": k, "sentences":
  [[n_s] int32]}, the document's non-empty sentences tokenized (a class: it pickles)."""

  def __init__(self, shard: _Shard, tokenizer: Any):
    self.shard, self.tokenizer = shard, tokenizer

  def __call__(self, index: int, doc: int) -> dict[str, Any]:
    sentences = [np.asarray(self.tokenizer.encode(s), np.int32)
                 for s in split_sentences(self.shard[doc])]
    return {"index": int(index), "doc": int(doc), "sentences": [s for s in sentences if len(s)]}


class _RowMasker:
  """Row generators and the finished example: masking + the features of one row."""

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int, process_index: int):
    self.tokenizer = tokenizer
    self.seq_len, self.max_predictions = config.seq_len, config.max_predictions_per_seq
    self.whole_word = config.whole_word_masking
    self.seed, self.process_index = seed, process_index
    self.mask = functools.partial(
        masking.mask_tokens, vocab_size=tokenizer.vocab_size, mask_rate=config.mask_rate,
        mask_token_rate=config.mask_token_rate, random_token_rate=config.random_token_rate,
        max_predictions=config.max_predictions_per_seq, special_ids=tokenizer.special_ids,
        mask_id=tokenizer.mask_id)

  def rng(self, index: int, offset: int) -> np.random.Generator:
    """The generator of the row that starts at `offset` of the stream's document `index`."""
    return np.random.default_rng([self.seed, _ROW_RNG_TAG, self.process_index, index, offset])

  def example(self, tokens_t, segments_t, token_types_t, positions_t, nsp_label: int,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[T] int32 row arrays -> dict of [T] / [P] arrays and a [] nsp_label (see FEATURES)."""
    word_starts_t = self.tokenizer.word_starts(tokens_t) if self.whole_word else None
    input_ids, positions_p, ids_p, weights_p = self.mask(tokens_t, rng, word_starts_t=word_starts_t)
    return {"input_ids": input_ids, "segment_ids": segments_t, "token_type_ids": token_types_t,
            "positions": positions_t, "masked_positions": positions_p, "masked_ids": ids_p,
            "masked_weights": weights_p, "nsp_label": np.array(nsp_label, np.int32)}


class MaskedRows:
  """Packed mlm rows (data/row_store.py) -> masked examples, as `GlobalBatches` reads them.

  `(tokens [n, T], segment ids [n, T], stream positions [n])` -> dict of FEATURES. Row g of the
  global stream is masked with `np.random.default_rng([seed, TAG, 0, g, 0])`: fresh masks in every
  epoch, the same ones on any number of processes and after a restore. All-padding rows (past the
  end of a one-pass read) stay all zeros.
  """

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int):
    _check_config(config, tokenizer)
    if seed < 0:
      raise InputError(f"seed must be >= 0 (train.seed), got {seed}")
    self.masker = _RowMasker(tokenizer, config, seed, process_index=0)

  def _padding(self) -> dict[str, np.ndarray]:
    t, p = self.masker.seq_len, self.masker.max_predictions
    return {"input_ids": np.zeros(t, np.int32), "segment_ids": np.zeros(t, np.int32),
            "token_type_ids": np.zeros(t, np.int32), "positions": np.zeros(t, np.int32),
            "masked_positions": np.zeros(p, np.int32), "masked_ids": np.zeros(p, np.int32),
            "masked_weights": np.zeros(p, np.float32), "nsp_label": np.array(0, np.int32)}

  def __call__(self, tokens_nt, segments_nt, stream_n) -> dict[str, np.ndarray]:
    positions_nt = packing.segment_positions(segments_nt)
    rows = []
    for tokens_t, segments_t, positions_t, g in zip(tokens_nt, segments_nt, positions_nt,
                                                    stream_n):
      if not segments_t.any():
        rows.append(self._padding())
        continue
      rows.append(self.masker.example(tokens_t, segments_t, np.zeros_like(tokens_t),
                                      positions_t, 0, self.masker.rng(int(g), 0)))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class _Pairs:
  """Builds one sentence-pair example from a document record (see module doc)."""

  def __init__(self, shard: _Shard, tokenizer: Any, objective: str, masker: _RowMasker):
    self.shard, self.tokenizer, self.objective, self.masker = shard, tokenizer, objective, masker
    self.max_tokens = masker.seq_len - 3

  def _random_b(self, doc: dict[str, Any], target: int, rng: np.random.Generator) -> np.ndarray:
    """[n] tokens: a random other document's sentences (else `doc`'s) from a random start, until
    they hold >= target tokens (at least one sentence)."""
    texts = None
    for _ in range(RANDOM_DOCUMENT_TRIES):
      other = int(rng.integers(len(self.shard)))
      if other != doc["doc"]:
        texts = split_sentences(self.shard[other])
        if texts:
          break
        texts = None
    if texts is None:
      sentences = doc["sentences"]
      encode = lambda s: s
    else:
      sentences, encode = texts, self.tokenizer.encode
    b, count = [], 0
    for sentence in sentences[int(rng.integers(len(sentences))):]:
      b.append(np.asarray(encode(sentence), np.int32))
      count += len(b[-1])
      if count >= target:
        break
    return np.concatenate(b)

  def example(self, doc: dict[str, Any], start: int,
              rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    """The pair that starts at sentence `start` of `doc` -> (example, next start sentence)."""
    sentences = doc["sentences"]
    end, length = start, 0
    while end < len(sentences) and length < self.max_tokens:
      length += len(sentences[end])
      end += 1
    chunk = sentences[start:end]
    if len(chunk) >= 2:
      a_end = int(rng.integers(1, len(chunk)))
      a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
      unused_start = start + a_end
    else:
      n = len(chunk[0])
      cut = int(rng.integers(1, n)) if n >= 2 else n
      a, b = chunk[0][:cut], chunk[0][cut:]
      unused_start = end  # the rest of one sentence is not put back
    label, next_start = 0, end
    if self.objective == "mlm+nsp":
      if len(b) == 0 or rng.random() < 0.5:
        label, next_start = 1, unused_start
        b = self._random_b(doc, self.max_tokens - len(a), rng)
    elif len(b) and rng.random() < 0.5:  # mlm+sop
      a, b, label = b, a, 1
    a, b = truncate_pair(a, b, self.max_tokens, rng)

    tok, t = self.tokenizer, self.masker.seq_len
    n_a, n = len(a) + 2, len(a) + len(b) + 3
    tokens = np.zeros(t, np.int32)
    tokens[:n] = np.concatenate([[tok.cls_id], a, [tok.sep_id], b, [tok.sep_id]])
    segments = np.zeros(t, np.int32)
    segments[:n] = 1
    token_types = np.zeros(t, np.int32)
    token_types[n_a:n] = 1
    positions = np.zeros(t, np.int32)
    positions[:n] = np.arange(n)
    return self.masker.example(tokens, segments, token_types, positions, label, rng), next_start


class SentencePairIterDataset(grain.IterDataset):
  """Document records -> one masked `[CLS] A [SEP] B [SEP]` example per `next` (mlm+nsp/sop)."""

  def __init__(self, parent: grain.IterDataset, pairs: _Pairs):
    super().__init__(parent)
    self._pairs = pairs  # holds the whole shard for random documents: not a parent, not sliced

  def __iter__(self) -> "SentencePairDatasetIterator":
    return SentencePairDatasetIterator(self._parent.__iter__(), self._pairs)

  def __str__(self) -> str:
    return f"SentencePairIterDataset(objective={self._pairs.objective})"


class SentencePairDatasetIterator(packing.DocumentCursorIterator):
  """One example per `next`; state as packing.DocumentCursorIterator's, the cursor ("sentence")
  being where the current document's next pair starts."""

  CURSOR = "sentence"

  def __init__(self, parent: grain.DatasetIterator, pairs: _Pairs):
    super().__init__(parent)
    self._pairs = pairs

  def __next__(self) -> dict[str, np.ndarray]:
    doc = self._pending()
    if doc is None:  # an empty document gives no pair
      doc = self._next_document(accept=lambda d: bool(d["sentences"]))
    start = self._cursor
    rng = self._pairs.masker.rng(doc["index"], start)
    example, next_start = self._pairs.example(doc, start, rng)
    self._move_cursor(None if next_start >= len(doc["sentences"]) else next_start)
    return example

  def __str__(self) -> str:
    return "SentencePairDatasetIterator"


def _check_config(config: DataConfig, tokenizer: Any):
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


def bert_batches(source, tokenizer, config: DataConfig, *, batch_size: int, seed: int,
                 shuffle: bool, repeat: bool, process_index: int = 0, process_count: int = 1,
                 num_workers: int = 0, pad_final_batch: bool = False) -> grain.IterDataset:
  """Sentence-pair batches (config.objective mlm+nsp | mlm+sop) from document texts.

  Args:
    source: `len()` and `[i] -> str` (a list of strings works); must be picklable if
      num_workers > 0.
    tokenizer: a pretrax tokenizer (`encode`, `word_starts`, `vocab_size`, `special_ids`,
      `cls_id`, `sep_id`, `mask_id`); padding is id 0.
    config: objective, seq_len (T), max_predictions_per_seq (P), mask_* rates,
      whole_word_masking.
    batch_size: rows per batch for this process.
    seed: shuffle seed (each epoch of `repeat` reshuffles) and seed of every row's masks.
    shuffle: shuffle documents (this process's shard).
    repeat: iterate forever; else one pass.
    process_index, process_count: this process reads documents process_index::process_count;
      random NSP documents come from the same shard.
    num_workers: Grain worker processes (0: in this process). The batches depend on it.
    pad_final_batch: with repeat=False, emit the last partial batch padded with all-zero rows
      (segment ids 0, weights 0) instead of dropping it.

  Returns:
    An IterDataset of dicts: input_ids, segment_ids, token_type_ids, positions [B, T] int32;
    masked_positions, masked_ids [B, P] int32, masked_weights [B, P] float32; nsp_label [B]
    int32 (see the module doc).
  """
  _check_config(config, tokenizer)
  if config.objective not in PAIR_OBJECTIVES:
    raise InputError("data.objective='mlm' rows are packed ahead of training and read with "
                     "data.batches.pretraining_batches (MaskedRows masks them)")
  pipeline.check_stream_args(batch_size, process_index, process_count, num_workers)
  if seed < 0:
    raise InputError(f"seed must be >= 0 (train.seed), got {seed}")
  if len(source) == 0:
    raise InputError(f"no documents in {pipeline.describe_source(source)}: the data source is empty "
                     "(check data.source and the split)")
  shard = _Shard(source, process_index, process_count)
  if len(shard) == 0:
    raise InputError(f"no documents in {pipeline.describe_source(source)} for process {process_index} "
                     f"of {process_count}: it has only {len(source)} documents")

  ds = grain.MapDataset.range(len(shard))
  if shuffle:
    ds = ds.shuffle(seed=pipeline.shuffle_seed(seed))
  if repeat:
    ds = ds.repeat()  # MapDataset.repeat passes the epoch on to shuffle: a new order each epoch
  # The index is the document's place in this process's stream (epoch * len + rank), also in
  # workers (mp_prefetch slices the dataset built here, keeping indices).
  ds = ds.map_with_index(_LoadDocument(shard, tokenizer))
  ds = ds.to_iter_dataset()
  masker = _RowMasker(tokenizer, config, seed, process_index)
  ds = SentencePairIterDataset(ds, _Pairs(shard, tokenizer, config.objective, masker))
  if pad_final_batch:
    ds = ds.batch(batch_size, drop_remainder=False,
                  batch_fn=functools.partial(pipeline.stack_padded, batch_size=batch_size))
  else:
    ds = ds.batch(batch_size, drop_remainder=True)
  if num_workers > 0:
    pipeline.allow_unparsed_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def make_iterator(source, tokenizer, config: DataConfig, **kwargs) -> grain.DatasetIterator:
  """`iter(bert_batches(source, tokenizer, config, **kwargs))`: a checkpointable batch iterator."""
  return iter(bert_batches(source, tokenizer, config, **kwargs))
