"""Pretraining batches for config.data.objective: this process's rows of each global batch.

causal -> packed rows built once (data/row_store.py) and read by global row index
(data/global_batches.py): the same global batches on any number of processes, and a data
position that is one integer. mlm, mlm+nsp, mlm+sop -> data/bert_pipeline.py (masked rows and
sentence pairs built on the fly from this process's shard of the documents, a Grain iterator).
Both read a split of config.data.source (data/sources.py); their position is checkpointed with
the model.
"""

import os

import numpy as np

from pretrax.data import bert_pipeline, global_batches, packing, row_store, sources
from pretrax.data.config import DataConfig
from pretrax.data.errors import InputError

ROWS_DIR = "pretrax_rows"  # packed rows live in DATA_DIR/pretrax_rows/


def packed_rows(config: DataConfig, tokenizer, split: str) -> row_store.RowStore:
  """The packed rows of `split` for config.objective (built the first time)."""
  if config.objective != "causal":
    raise InputError(f"data.objective={config.objective!r} has no packed-rows build yet; only "
                     "causal rows are built ahead of training")
  spec = row_store.RowSpec(kind="causal", seq_len=config.seq_len,
                           corpus=sources.describe_corpus(config, split), split=split,
                           tokenizer=tokenizer.describe(), shard_mb=config.build_shard_mb)
  return row_store.ensure_built(
      spec, os.path.join(sources.data_dir(config), ROWS_DIR),
      lambda: sources.open_source(config, split), tokenizer,
      split_bytes=lambda: sources.split_bytes(config, split), workers=config.build_workers)


def _causal_examples(tokens_bl, segments_bl, stream_positions_b):
  return packing.causal_examples(tokens_bl, segments_bl)


def pretraining_batches(config: DataConfig, tokenizer, split: str, *, global_batch_size: int,
                        seed: int, shuffle: bool, repeat: bool, process_index: int = 0,
                        process_count: int = 1, pad_final_batch: bool = False,
                        num_batches: int | None = None):
  """An iterator of this process's part of each batch of `split` (dicts of numpy arrays).

  Without `repeat`, one pass. Its last batch, if partial, is padded with all-zero rows (weight 0)
  for causal rows, and for BERT's if `pad_final_batch` (else dropped); causal rows stop after
  `num_batches` if given.
  """
  rows = global_batches.process_slice(global_batch_size, process_index, process_count)
  if config.objective == "causal":
    if config.seq_len < 1:
      raise InputError(f"data.seq_len must be >= 1, got {config.seq_len}")
    return global_batches.GlobalBatches(
        packed_rows(config, tokenizer, split), _causal_examples,
        global_batch_size=global_batch_size, rows=rows, seed=seed, shuffle=shuffle,
        repeat=repeat, num_batches=num_batches)
  ds = bert_pipeline.bert_batches(
      sources.open_source(config, split), tokenizer, config, batch_size=rows.stop - rows.start,
      seed=seed, shuffle=shuffle, repeat=repeat, process_index=process_index,
      process_count=process_count, num_workers=config.num_workers,
      pad_final_batch=pad_final_batch)
  return iter(ds)


def eval_batches(config: DataConfig, tokenizer, split: str | None, *, global_batch_size: int,
                 seed: int, max_batches: int | None, process_index: int = 0,
                 process_count: int = 1):
  """Yields the first `max_batches` (None or 0: all) batches of the validation split, the same
  ones every time (no shuffle), the last one padded with all-zero rows (weight 0).

  Causal rows are global batches, the same on any number of processes. BERT's come from each
  process's own shard of documents; shards can yield different numbers of batches, so a process
  that runs out yields all-padding batches until `max_batches`, keeping every process in the same
  collective steps.
  """
  split = split or sources.eval_split(config)
  if config.objective == "causal":
    yield from pretraining_batches(config, tokenizer, split, global_batch_size=global_batch_size,
                                   seed=seed, shuffle=False, repeat=False,
                                   process_index=process_index, process_count=process_count,
                                   num_batches=max_batches or None)
    return
  if process_count > 1 and not max_batches:
    raise InputError("evaluating the whole split with several processes is not supported for "
                     f"data.objective={config.objective!r}; give a number of batches "
                     "(config.train.eval_steps / --batches)")
  count, batch = 0, None
  for batch in pretraining_batches(config, tokenizer, split, global_batch_size=global_batch_size,
                                   seed=seed, shuffle=False, repeat=False,
                                   process_index=process_index, process_count=process_count,
                                   pad_final_batch=True):
    if max_batches and count >= max_batches:
      return
    count += 1
    yield batch
  while process_count > 1 and count < max_batches and batch is not None:
    count += 1
    yield {k: np.zeros_like(v) for k, v in batch.items()}
