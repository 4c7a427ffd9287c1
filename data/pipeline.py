"""Grain pipeline: documents -> tokens -> packed causal-LM rows -> batches.

  source[process_index::process_count] -> shuffle(seed) -> repeat (reshuffled each epoch)
  -> tokenize to [bos] + ids + [eos] -> pack (data/packing.py) -> batch -> mp_prefetch

Everything is deterministic given `seed` (and `num_workers`: packing runs inside each worker, on
that worker's slice of the documents). `iter(ds)` is a `grain.DatasetIterator` whose
`get_state()`/`set_state()` resume exactly; save it with Orbax via
`grain.checkpoint.CheckpointSave(it)` / `grain.checkpoint.CheckpointRestore(it)`.
"""

import functools
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from pretrax.data.errors import InputError
from pretrax.data import packing


class _Tokenize:
  """str -> [len] int32 `[bos] + tokenizer.encode(text) + [eos]` (a class, so it pickles)."""

  def __init__(self, tokenizer: Any):
    self.tokenizer = tokenizer

  def __call__(self, text: str) -> np.ndarray:
    ids = np.asarray(self.tokenizer.encode(text), dtype=np.int32)
    bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
    return np.concatenate([np.array([bos], np.int32), ids, np.array([eos], np.int32)])


def stack_padded(rows: Sequence[dict[str, np.ndarray]], batch_size: int) -> dict[str, np.ndarray]:
  """Stacks up to `batch_size` examples of [seq_len] -> [batch_size, seq_len], zero rows after."""
  out = {}
  for k in rows[0]:
    stacked = np.stack([r[k] for r in rows])
    pad = np.zeros((batch_size - len(rows),) + stacked.shape[1:], stacked.dtype)
    out[k] = np.concatenate([stacked, pad])
  return out


def check_stream_args(batch_size: int, process_index: int, process_count: int,
                      num_workers: int) -> None:
  """Raises ValueError for arguments no pipeline can run with."""
  if batch_size < 1:
    raise InputError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise InputError(f"process_index must be in [0, process_count={process_count}), "
                     f"got {process_index}")
  if num_workers < 0:
    raise InputError(f"num_workers must be >= 0 (data.num_workers), got {num_workers}")


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  """Rows of each global batch that one process reads; an error unless the processes share it
  evenly."""
  if global_batch_size % process_count:
    raise InputError(f"config.train.batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  return global_batch_size // process_count


def shuffle_seed(seed: int) -> int:
  # Grain's shuffle uses seed + epoch for each epoch; hashing the user seed keeps seed=0 epoch 1
  # from being the same order as seed=1 epoch 0.
  return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])


def allow_unparsed_absl_flags():
  # Grain's multiprocess prefetch reads its absl flags (at their defaults); outside
  # `absl.app.run` (our CLI, pytest) they are unparsed and reading raises UnparsedFlagAccessError.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def describe_source(source: Any) -> str:
  if isinstance(source, (list, tuple)):
    return f"the given {type(source).__name__}"
  text = repr(source)
  return text if len(text) <= 200 else text[:200] + "..."


def lm_batches(source, tokenizer, *, seq_len: int, batch_size: int, seed: int, shuffle: bool,
               repeat: bool, process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, pad_final_batch: bool = False) -> grain.IterDataset:
  """Causal-LM batches from a random-access source of document texts.

  Args:
    source: `len()` and `[i] -> str` (a list of strings works); must be picklable if
      num_workers > 0.
    tokenizer: has `encode(text) -> [n] int ids` (no BOS/EOS), `bos_id`, `eos_id`, `pad_id`.
      Padding uses token 0 with weight 0, whatever `pad_id` is.
    seq_len: tokens per row.
    batch_size: rows per batch for this process.
    seed: shuffle seed; each epoch of `repeat` gets its own order derived from it.
    shuffle: shuffle documents (this process's shard).
    repeat: iterate forever; else one pass, ending with the last partial row padded.
    process_index, process_count: this process reads documents process_index::process_count.
    num_workers: Grain worker processes (0: in this process). The batches depend on it.
    pad_final_batch: with repeat=False, emit the last partial batch padded with all-zero rows
      (weight 0) instead of dropping it.

  Returns:
    An IterDataset of dicts of [batch_size, seq_len] arrays: inputs, targets, segment_ids,
    positions int32; loss_weights float32 (see data/packing.py).
  """
  if len(source) == 0:
    raise InputError(f"no documents in {describe_source(source)}: the data source is empty "
                     "(check data.source and the split)")
  check_stream_args(batch_size, process_index, process_count, num_workers)

  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) == 0:
    raise InputError(f"no documents in {describe_source(source)} for process {process_index} of "
                     f"{process_count}: it has only {len(source)} documents")
  if shuffle:
    ds = ds.shuffle(seed=shuffle_seed(seed))
  if repeat:
    ds = ds.repeat()  # MapDataset.repeat passes the epoch on to shuffle: a new order each epoch
  ds = ds.map(_Tokenize(tokenizer))
  ds = ds.to_iter_dataset()
  ds = packing.PackedLMIterDataset(ds, seq_len)
  if pad_final_batch:
    ds = ds.batch(batch_size, drop_remainder=False,
                  batch_fn=functools.partial(stack_padded, batch_size=batch_size))
  else:
    ds = ds.batch(batch_size, drop_remainder=True)
  if num_workers > 0:
    allow_unparsed_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def make_iterator(source, tokenizer, **kwargs) -> grain.DatasetIterator:
  """`iter(lm_batches(source, tokenizer, **kwargs))`: a checkpointable batch iterator."""
  return iter(lm_batches(source, tokenizer, **kwargs))
