"""Checks and helpers shared by the Grain pipelines that build examples on the fly (BERT's
sentence pairs, data/bert_pipeline.py; fine-tuning examples, data/classification.py)."""

from typing import Any, Sequence

from absl import flags
import numpy as np

from pretrax.data.errors import InputError


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
