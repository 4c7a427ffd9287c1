"""Pretraining batches for config.data.objective: this process's rows of each global batch.

Every objective reads packed rows built once (data/row_store.py) by global row index
(data/global_batches.py): the same global batches on any number of processes, and a data position
that is one integer, checkpointed with the model. What is drawn from a row as it is read:
  causal            the row itself (packing.causal_examples)
  mlm               its masks (bert_pipeline.MaskedRows)
  mlm+nsp, mlm+sop  a sentence pair and its masks, from a row of sentences
                    (bert_pipeline.SentencePairs; both objectives read the same rows)
  denoise           BART's noise of a row of sentences (seq2seq_pipeline.DenoisedRows)
  span_corruption   T5's noise of a raw row (seq2seq_pipeline.SpanCorruptedRows)
The rows come from a split of config.data.source (data/sources.py).
"""

import os

from pretrax.data import (bert_pipeline, global_batches, packing, row_store, seq2seq_pipeline,
                          sources)
from pretrax.data.config import DataConfig
from pretrax.data.errors import InputError

ROWS_DIR = "pretrax_rows"  # packed rows live in DATA_DIR/pretrax_rows/ unless data.rows_dir says
ROW_KINDS = {"causal": "causal", **bert_pipeline.ROW_KINDS,
             **seq2seq_pipeline.ROW_KINDS}  # objective -> row kind


def packed_rows(config: DataConfig, tokenizer, split: str) -> row_store.RowStore:
  """The packed rows of `split` for config.objective (built the first time)."""
  if config.objective not in ROW_KINDS:
    raise InputError(f"data.objective={config.objective!r} has no pretraining rows; choose one "
                     f"of {' | '.join(ROW_KINDS)}")
  seq_len = seq2seq_pipeline.row_seq_len(config)
  spec = row_store.RowSpec(kind=ROW_KINDS[config.objective], seq_len=seq_len,
                           corpus=sources.describe_corpus(config, split), split=split,
                           tokenizer=tokenizer.describe(), shard_mb=config.build_shard_mb)
  return row_store.ensure_built(
      spec, config.rows_dir or os.path.join(sources.data_dir(config), ROWS_DIR),
      lambda: sources.open_source(config, split), tokenizer,
      split_bytes=lambda: sources.split_bytes(config, split), workers=config.build_workers)


def _causal_examples(rows: row_store.Rows, stream_positions_b):
  return packing.causal_examples(rows.tokens, rows.segments)


def pretraining_batches(config: DataConfig, tokenizer, split: str, *, global_batch_size: int,
                        seed: int, shuffle: bool, repeat: bool, process_index: int = 0,
                        process_count: int = 1,
                        num_batches: int | None = None) -> global_batches.GlobalBatches:
  """An iterator of this process's part of each global batch of `split` (dicts of numpy arrays).

  Without `repeat`, one pass, its last batch padded with all-zero rows (weight 0); it stops after
  `num_batches` if given.
  """
  rows = global_batches.process_slice(global_batch_size, process_index, process_count)
  # The settings are checked before a build, not after.
  if config.objective == "causal":
    packing.check_seq_len(config.seq_len)
    make_examples = _causal_examples
  elif config.objective == "mlm":
    make_examples = bert_pipeline.MaskedRows(tokenizer, config, seed)
  elif config.objective in bert_pipeline.PAIR_OBJECTIVES:
    bert_pipeline.check_config(config, tokenizer)
  elif config.objective == "denoise":
    make_examples = seq2seq_pipeline.DenoisedRows(tokenizer, config, seed)
  elif config.objective == "span_corruption":
    make_examples = seq2seq_pipeline.SpanCorruptedRows(tokenizer, config, seed)
  store = packed_rows(config, tokenizer, split)
  if config.objective in bert_pipeline.PAIR_OBJECTIVES:
    make_examples = bert_pipeline.SentencePairs(store, tokenizer, config, seed)
  return global_batches.GlobalBatches(
      store, make_examples, global_batch_size=global_batch_size, rows=rows, seed=seed,
      shuffle=shuffle, repeat=repeat, num_batches=num_batches)


def eval_batches(config: DataConfig, tokenizer, split: str | None, *, global_batch_size: int,
                 seed: int, max_batches: int | None, process_index: int = 0,
                 process_count: int = 1):
  """Yields the first `max_batches` (None or 0: all) global batches of the validation split (this
  process's part), the same ones every time and on any number of processes (no shuffle), the last
  one padded with all-zero rows (weight 0)."""
  split = split or sources.eval_split(config)
  reader = pretraining_batches(config, tokenizer, split, global_batch_size=global_batch_size,
                               seed=seed, shuffle=False, repeat=False,
                               process_index=process_index, process_count=process_count,
                               num_batches=max_batches or None)
  try:
    yield from reader
  finally:
    reader.close()
