"""Global batches addressed by row index: the same batches on any number of processes and devices.

The rows of a packed-rows dataset (data/row_store.py, N rows) are read in one global order: a
stream of positions g = 0, 1, 2, ... where epoch e = g // N visits every row once, in a seeded
permutation of its own (`permute`, a Feistel network: no table of N entries), or
in stored order without shuffling. Global batch t of B rows holds stream positions [r, r + B)
with r = t * B; each process reads only the slice of it that its devices hold. So the data
position is one integer, r (the rows already read), the same on every process: a checkpoint
continues exactly on another process count or mesh, and a changed batch size continues from the
same row.

Batches are read and assembled a few ahead in background threads, so the training loop does not
wait for them; a read error surfaces at the `next` that needs the batch.
"""

import collections
import concurrent.futures
from typing import Callable

import numpy as np

from pretrax.data.errors import InputError
from pretrax.data.row_store import Rows, RowStore

_SHUFFLE_ROUNDS = 4  # Luby-Rackoff: 4 rounds of a random function make a strong permutation
_EPOCH_SEED_TAG = 0x5EED


def epoch_keys(seed: int, epoch: int) -> np.ndarray:
  """The round keys of `epoch`'s permutation (its own order each epoch; seed 0 epoch 1 is not
  seed 1)."""
  state = np.random.SeedSequence([seed, _EPOCH_SEED_TAG, epoch]).generate_state(_SHUFFLE_ROUNDS,
                                                                              np.uint64)
  return state.astype(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
  """A 64-bit finalizer (splitmix64's): every input bit affects every output bit."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def permute(indices: np.ndarray, num_rows: int, keys: np.ndarray) -> np.ndarray:
  """A seeded bijection of [0, num_rows), applied to [n] indices (vectorized, no table).

  A balanced Feistel network on the smallest even number of bits covering num_rows, walked
  again on the values that land outside [0, num_rows) until none do (cycle walking): a
  permutation of [0, 2^bits) restricted this way is a permutation of [0, num_rows).
  """
  half = max(1, (int(num_rows - 1).bit_length() + 1) // 2)
  mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
  x = np.asarray(indices, np.uint64).copy()
  todo = np.ones(len(x), bool)
  while todo.any():
    y = x[todo]
    for key in keys:
      left, right = y >> shift, y & mask
      y = (right << shift) | (left ^ (_mix(right ^ key) & mask))
    x[todo] = y
    todo = x >= np.uint64(num_rows)
  return x.astype(np.int64)


def stream_rows(positions: np.ndarray, num_rows: int, seed: int, shuffle: bool) -> np.ndarray:
  """[n] stream positions -> [n] row indices of a store of `num_rows` rows."""
  positions = np.asarray(positions, np.int64)
  within = positions % num_rows
  if not shuffle or num_rows == 1:
    return within
  epochs = positions // num_rows
  rows = np.empty_like(within)
  for epoch in np.unique(epochs):
    at = epochs == epoch
    rows[at] = permute(within[at], num_rows, epoch_keys(seed, int(epoch)))
  return rows


def process_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows [lo, hi) of each global batch that one process reads: its equal contiguous share
  (what `jax.make_array_from_process_local_data` expects when the batch dimension is split over
  processes in order; training/mesh.py checks that it is)."""
  if global_batch_size % process_count:
    raise InputError(f"config.train.batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise InputError(f"process_index must be in [0, {process_count}), got {process_index}")
  share = global_batch_size // process_count
  return slice(process_index * share, (process_index + 1) * share)


# (rows, their stream positions [n]) -> dict of [n, ...] arrays. Positions past the end of a
# one-pass read are all-zero rows (document -1).
MakeExamples = Callable[[Rows, np.ndarray], dict[str, np.ndarray]]


class GlobalBatches:
  """An iterator of this process's part of each global batch (dicts of numpy arrays).

  Args:
    store: the rows.
    make_examples: turns rows into the objective's features (data/batches.py picks one).
    global_batch_size: B, rows per global batch.
    rows: the slice of each global batch this process reads (`process_slice`).
    seed, shuffle: the row order (see module doc).
    repeat: go on forever (training); else one pass, ending with the batch that holds the last
      row, its positions past the end all-zero rows (padding, weight 0).
    num_batches: stop after at most this many batches (None: at the end of the pass, or never).
    prefetch: batches assembled ahead in the background.
  """

  def __init__(self, store: RowStore, make_examples: MakeExamples, *, global_batch_size: int,
               rows: slice, seed: int, shuffle: bool, repeat: bool,
               num_batches: int | None = None, prefetch: int = 4):
    if global_batch_size < 1:
      raise InputError(f"config.train.batch_size must be >= 1, got {global_batch_size}")
    self.store, self.make_examples = store, make_examples
    self.global_batch_size, self.rows = global_batch_size, rows
    self.seed, self.shuffle, self.repeat = seed, shuffle, repeat
    if not repeat:
      one_pass = -(-len(store) // global_batch_size)
      num_batches = one_pass if num_batches is None else min(num_batches, one_pass)
    self.num_batches = num_batches
    self.prefetch = max(1, prefetch)
    self._next_row = 0    # stream position of the next batch's first row
    self._batches = 0     # batches returned since the start or the last set_position
    self._pending = collections.deque()  # (stream position, future) of batches assembled ahead
    # One thread per batch ahead: reads release the GIL, so batches are assembled in parallel.
    self._executor = concurrent.futures.ThreadPoolExecutor(self.prefetch,
                                                           thread_name_prefix="pretrax-rows")

  def position(self) -> dict:
    """The data position (JSON-able): the stream position of the next batch's first row."""
    return {"next_row": self._next_row, "rows": len(self.store), "dataset": self.store.name}

  def set_position(self, position: dict) -> None:
    if position.get("dataset") != self.store.name:
      raise InputError(
          f"the saved data position is in the packed rows {position.get('dataset')!r}, but this "
          f"run reads {self.store.name!r} (the corpus, tokenizer or packing changed); pass "
          "--restart_data to keep the model and optimizer state and start the new rows from "
          "their beginning")
    self._drop_pending()
    self._next_row = int(position["next_row"])
    self._batches = 0

  def _drop_pending(self) -> None:
    for _, future in self._pending:
      future.cancel()
    self._pending.clear()

  def read(self, start: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch whose first row is stream position `start`."""
    positions = np.arange(start + self.rows.start, start + self.rows.stop, dtype=np.int64)
    n = len(self.store)
    real = positions < n if not self.repeat else np.ones(len(positions), bool)
    tokens = np.zeros((len(positions), self.store.row_len), np.int32)
    rows = Rows(tokens, np.zeros_like(tokens),
                np.full(len(positions), -1, np.int64) if self.store.has_documents else None)
    if real.any():
      read = self.store.read(stream_rows(positions[real], n, self.seed, self.shuffle))
      rows.tokens[real], rows.segments[real] = read.tokens, read.segments
      if rows.documents is not None:
        rows.documents[real] = read.documents
    return self.make_examples(rows, positions)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self._batches >= self.num_batches:
      raise StopIteration
    left = None if self.num_batches is None else self.num_batches - self._batches
    ahead = self._next_row + len(self._pending) * self.global_batch_size
    while len(self._pending) < (self.prefetch if left is None else min(self.prefetch, left)):
      self._pending.append((ahead, self._executor.submit(self.read, ahead)))
      ahead += self.global_batch_size
    start, future = self._pending.popleft()
    assert start == self._next_row, (start, self._next_row)
    batch = future.result()
    self._next_row += self.global_batch_size
    self._batches += 1
    return batch

  def close(self) -> None:
    self._drop_pending()
    self._executor.shutdown(wait=True)
