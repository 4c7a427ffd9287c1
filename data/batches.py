"""Pretraining batches for config.data.objective: this process's rows of each global batch.

causal, mlm -> packed rows built once (data/row_store.py) and read by global row index
(data/global_batches.py; mlm rows masked as they are read, bert_pipeline.MaskedRows): the same
global batches on any number of processes, and a data position that is one integer.
mlm+nsp, mlm+sop -> data/bert_pipeline.py (sentence pairs built on the fly from this process's
shard of the documents, a Grain iterator).
Both read a split of config.data.source (data/sources.py); their position is checkpointed with
the model.
"""

import os

import numpy as np

from pretrax.data import bert_pipeline, global_batches, packing, row_store, sources
from pretrax.data.config import DataConfig
from pretrax.data.errors import InputError

ROWS_DIR = "pretrax_rows"  # packed rows live in DATA_DIR/pretrax_rows/ unless data.rows_dir says
ROW_OBJECTIVES = ("causal", "mlm")  # objectives whose rows are built ahead (the rest on the fly)


def packed_rows(config: DataConfig, tokenizer, split: str) -> row_store.RowStore:
  """The packed rows of `split` for config.objective (built the first time)."""
  if config.objective not in ROW_OBJECTIVES:
    raise InputError(f"data.objective={config.objective!r} has no packed-rows build yet (its "
                     f"sentence pairs are built during training); rows are built for "
                     f"{' | '.join(ROW_OBJECTIVES)}")
  spec = row_store.RowSpec(kind=config.objective, seq_len=config.seq_len,
                           corpus=sources.describe_corpus(config, split), split=split,
                           tokenizer=tokenizer.describe(), shard_mb=config.build_shard_mb)
  return row_store.ensure_built(
      spec, config.rows_dir or os.path.join(sources.data_dir(config), ROWS_DIR),
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
  for packed rows, and for sentence pairs if `pad_final_batch` (else dropped); packed rows stop
  after `num_batches` if given.
  """
  rows = global_batches.process_slice(global_batch_size, process_index, process_count)
  if config.objective in ROW_OBJECTIVES:
    if config.objective == "causal":
      packing.check_seq_len(config.seq_len)
      make_examples = _causal_examples
    else:
      make_examples = bert_pipeline.MaskedRows(tokenizer, config, seed)  # checks the settings
    return global_batches.GlobalBatches(
        packed_rows(config, tokenizer, split), make_examples,
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

  Packed rows are global batches, the same on any number of processes. Sentence pairs come from
  each process's own shard of documents; shards can yield different numbers of batches, so a process
  that runs out yields all-padding batches until `max_batches`, keeping every process in the same
  collective steps.
  """
  split = split or sources.eval_split(config)
  if config.objective in ROW_OBJECTIVES:
    reader = pretraining_batches(config, tokenizer, split, global_batch_size=global_batch_size,
                                 seed=seed, shuffle=False, repeat=False,
                                 process_index=process_index, process_count=process_count,
                                 num_batches=max_batches or None)
    try:
      yield from reader
    finally:
      reader.close()
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
