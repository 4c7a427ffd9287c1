"""BERT masked-language-model masking of one row of token ids (pure numpy).

  masked_t, positions_p, labels_p, weights_p = mask_tokens(
      ids_t, np.random.default_rng(0), vocab_size=263, mask_rate=0.15, mask_token_rate=0.8,
      random_token_rate=0.1, max_predictions=20, special_ids=tok.special_ids, mask_id=tok.mask_id)

The rules follow the original BERT `create_masked_lm_predictions`:
- Candidates are the NON-special tokens of the row; special ids (padding, [CLS], [SEP], ...) are
  never chosen. The budget is `min(max_predictions, max(1, round(mask_rate * num_candidates)))`
  (0 when the row has no candidate; Python's `round`, halves to even).
- Token masking: a uniformly random set of `budget` candidates is chosen.
- Whole-word masking (`word_starts_t` given): the candidates are grouped into words (a word-start
  token and the non-start, non-special tokens after it; a non-special token right after a special
  one, or at index 0, always starts a word). Words are visited in random order and each is taken
  whole unless the tokens taken so far already reach the budget (stop) or taking it would exceed
  the budget (skip it, try the next word). So every chosen token's whole word is chosen, a word
  longer than the budget is never chosen, and a row may get fewer predictions than the budget.
- Each chosen token independently becomes [MASK] with probability `mask_token_rate`, a uniformly
  random non-special id with probability `random_token_rate`, and stays unchanged otherwise. As in
  the original BERT code this 80/10/10 draw is made per token, also under whole-word masking (the
  pieces of one word can get different treatments). A random replacement may equal the original.
"""

import functools

import numpy as np

from pretrax.data.errors import InputError


@functools.lru_cache(maxsize=16)
def replacement_ids(vocab_size: int, special_ids: frozenset) -> np.ndarray:
  """[V - num_special] int32: the ids a random replacement is drawn from (all non-special ids)."""
  return np.setdiff1d(np.arange(vocab_size, dtype=np.int32),
                      np.fromiter(special_ids, np.int32, len(special_ids)))


def check_rates(mask_rate: float, mask_token_rate: float, random_token_rate: float,
                 max_predictions: int):
  """Raises a ValueError naming the data.* field if the masking rates are out of range."""
  if not 0.0 < mask_rate <= 1.0:
    raise InputError(f"mask_rate (data.mask_rate) must be in (0, 1], got {mask_rate}")
  for name, rate in (("mask_token_rate", mask_token_rate),
                     ("random_token_rate", random_token_rate)):
    if not 0.0 <= rate <= 1.0:
      raise InputError(f"{name} (data.{name}) must be in [0, 1], got {rate}")
  if mask_token_rate + random_token_rate > 1.0 + 1e-9:
    raise InputError(f"data.mask_token_rate + data.random_token_rate = "
                     f"{mask_token_rate} + {random_token_rate} exceeds 1")
  if max_predictions < 0:
    raise InputError(f"max_predictions (data.max_predictions_per_seq) must be >= 0, "
                     f"got {max_predictions}")


def prediction_budget(num_candidates: int, mask_rate: float, max_predictions: int) -> int:
  """How many tokens a row with `num_candidates` non-special tokens gets chosen (see module doc)."""
  if num_candidates == 0:
    return 0
  return min(max_predictions, max(1, round(mask_rate * num_candidates)))


def _word_ids(special_t: np.ndarray, word_starts_t: np.ndarray) -> np.ndarray:
  """[T] bool specials, [T] bool word starts -> [T] int64 word index of each token (-1: special).

  A word begins at a word start, or at a non-special token after a special token or at index 0.
  """
  prev_special = np.ones_like(special_t)
  prev_special[1:] = special_t[:-1]
  begins = ~special_t & (word_starts_t.astype(bool) | prev_special)
  return np.where(special_t, -1, np.cumsum(begins) - 1)


def _choose_whole_words(word_t: np.ndarray, candidates: np.ndarray, budget: int,
                        rng: np.random.Generator) -> np.ndarray:
  """Chosen token indices (sorted) made of whole words, at most `budget` tokens (see module doc)."""
  lengths = np.bincount(word_t[candidates])
  picked, count = [], 0
  for w in rng.permutation(len(lengths)):
    if count >= budget:
      break
    if count + lengths[w] > budget:
      continue  # BERT: skip a word that would exceed the budget
    picked.append(w)
    count += lengths[w]
  return candidates[np.isin(word_t[candidates], picked)]


def mask_tokens(ids_t: np.ndarray, rng: np.random.Generator, *, vocab_size: int, mask_rate: float,
                mask_token_rate: float, random_token_rate: float, max_predictions: int,
                special_ids, mask_id: int, word_starts_t: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Masks one row for MLM (see module doc for the rules).

  Args:
    ids_t: [T] int token ids in [0, vocab_size).
    rng: the only source of randomness; the same generator state gives the same result.
    vocab_size: V; random replacements are drawn from the non-special ids in [0, V).
    mask_rate: share of non-special tokens chosen for prediction (data.mask_rate).
    mask_token_rate: of the chosen, share replaced by `mask_id` (data.mask_token_rate).
    random_token_rate: of the chosen, share replaced by a random non-special id.
    max_predictions: P, at most this many chosen; the outputs are padded to P.
    special_ids: ids never chosen and never produced as random replacements.
    mask_id: the [MASK] id.
    word_starts_t: [T] bool, True where a token begins a word: whole-word masking. None: tokens.

  Returns:
    masked_ids_t: [T] int32, ids_t with the chosen tokens replaced as drawn.
    positions_p: [P] int32 indices of the chosen tokens, ascending, then 0 padding.
    labels_p: [P] int32 original ids at those positions, then 0 padding.
    weights_p: [P] float32, 1 for each chosen token, then 0 padding.
  """
  ids_t = np.asarray(ids_t)
  if ids_t.ndim != 1 or not (ids_t.size == 0 or np.issubdtype(ids_t.dtype, np.integer)):
    raise InputError(f"mask_tokens expects a 1-D int array of ids, got shape {ids_t.shape} "
                     f"dtype {ids_t.dtype}")
  ids_t = ids_t.astype(np.int32)
  if ids_t.size and (ids_t.min() < 0 or ids_t.max() >= vocab_size):
    raise InputError(f"ids must be in [0, vocab_size={vocab_size}), got values in "
                     f"[{ids_t.min()}, {ids_t.max()}]")
  check_rates(mask_rate, mask_token_rate, random_token_rate, max_predictions)
  special_ids = frozenset(int(i) for i in special_ids)

  special_t = np.isin(ids_t, np.fromiter(special_ids, np.int64, len(special_ids)))
  candidates = np.flatnonzero(~special_t)
  budget = prediction_budget(len(candidates), mask_rate, max_predictions)
  if word_starts_t is None:
    chosen = np.sort(rng.permutation(candidates)[:budget])
  else:
    word_starts_t = np.asarray(word_starts_t)
    if word_starts_t.shape != ids_t.shape:
      raise InputError(f"word_starts_t has shape {word_starts_t.shape}, expected {ids_t.shape}")
    chosen = _choose_whole_words(_word_ids(special_t, word_starts_t), candidates, budget, rng)

  # Per token: u < mask_token_rate -> [MASK]; then random_token_rate -> random id; else keep.
  u = rng.random(len(chosen))
  to_mask = chosen[u < mask_token_rate]
  to_random = chosen[(u >= mask_token_rate) & (u < mask_token_rate + random_token_rate)]
  masked_ids_t = ids_t.copy()
  masked_ids_t[to_mask] = mask_id
  if len(to_random):
    pool = replacement_ids(int(vocab_size), special_ids)
    if not len(pool):
      raise InputError(f"every id in [0, {vocab_size}) is special: no random replacement exists")
    masked_ids_t[to_random] = pool[rng.integers(0, len(pool), len(to_random))]

  n = len(chosen)
  positions_p = np.zeros(max_predictions, np.int32)
  labels_p = np.zeros(max_predictions, np.int32)
  weights_p = np.zeros(max_predictions, np.float32)
  positions_p[:n] = chosen
  labels_p[:n] = ids_t[chosen]
  weights_p[:n] = 1.0
  return masked_ids_t, positions_p, labels_p, weights_p
