"""Pretraining batches for config.data.objective: this process's rows of each global batch.

causal -> data/pipeline.py (packed next-token rows); mlm, mlm+nsp, mlm+sop ->
data/bert_pipeline.py (masked rows and sentence pairs). Both read a split of config.data.source
(data/sources.py) and are Grain iterators whose position is checkpointed with the model.
"""

import numpy as np

from pretrax.data.errors import InputError
from pretrax.data import bert_pipeline, pipeline, sources
from pretrax.data.config import DataConfig


def pretraining_batches(config: DataConfig, tokenizer, split: str, *, global_batch_size: int,
                        seed: int, shuffle: bool, repeat: bool, process_index: int = 0,
                        process_count: int = 1, pad_final_batch: bool = False):
  """This process's batches of `split` (a Grain IterDataset of dicts of numpy arrays)."""
  kwargs = dict(batch_size=pipeline.per_process_batch_size(global_batch_size, process_count),
                seed=seed, shuffle=shuffle, repeat=repeat, process_index=process_index,
                process_count=process_count, num_workers=config.num_workers,
                pad_final_batch=pad_final_batch)
  source = sources.open_source(config, split)
  if config.objective == "causal":
    return pipeline.lm_batches(source, tokenizer, seq_len=config.seq_len, **kwargs)
  return bert_pipeline.bert_batches(source, tokenizer, config, **kwargs)


def eval_batches(config: DataConfig, tokenizer, split: str | None, *, global_batch_size: int,
                 seed: int, max_batches: int | None, process_index: int = 0,
                 process_count: int = 1):
  """Yields the first `max_batches` (None or 0: all) batches of the validation split, the same
  ones every time (no shuffle), the last one padded with all-zero rows (weight 0).

  With several processes each one reads its own shard of documents; shards can yield different
  numbers of batches, so a process that runs out yields all-padding batches until `max_batches`,
  keeping every process in the same collective steps.
  """
  split = split or sources.eval_split(config)
  if process_count > 1 and not max_batches:
    raise InputError("evaluating the whole split with several processes is not supported; "
                     "give a number of batches (config.train.eval_steps / --batches)")
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
