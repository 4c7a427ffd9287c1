"""Noise functions of the encoder-decoder pretraining objectives, one example at a time (numpy).

  raw_len, targets_len = span_corruption_lengths(512, 0.15, 3.0)       # (568, 114)
  inputs, targets = span_corruption(ids_t, rng, noise_density=0.15, mean_noise_span_length=3.0,
                                    vocab_size=32_100, eos_id=1, max_sentinels=100)
  ids_t, sentence_ids_t = permute_sentences(ids_t, sentence_ids_t, rng)
  noised = text_infilling(ids_t, word_starts_t, rng, mask_id=tok.mask_id, replacement_ids=ids_v)

Each function draws only from the `np.random.Generator` it is given (the caller seeds one per
example from (seed, stream position)), so its output is a function of its arguments and the
generator's state. The rates are the config fields data.noise_density and
data.mean_noise_span_length (T5) and data.denoise_mask_ratio, data.denoise_poisson_lambda and
data.denoise_random_ratio (BART); the errors name them.

T5 span corruption (t5.data.preprocessors `random_spans_helper`, `random_spans_noise_mask`,
`noise_span_to_unique_sentinel`, `nonnoise_span_to_unique_sentinel`), random_roll off:
- A row of L tokens has N = round(L * density) noise tokens, clipped to [1, L - 1], in
  S = max(1, round(N / mean_noise_span_length)) spans. The noise and the non-noise tokens are each
  cut into S non-empty spans at uniformly random places, and the row alternates non-noise, noise,
  ..., so it starts with non-noise and ends with noise. Rounding is half to even, as in T5.
- inputs = the row with each noise span replaced by one sentinel, then EOS (L - N + S + 1 ids);
  targets = each noise span's sentinel then its tokens, then EOS (N + S + 1 ids). Span i's
  sentinel is vocab_size - 1 - i, so sentinels count down from the top of the vocabulary.
- A row of one token has no noise (T5 pads the mask to 2 tokens and cuts it back): inputs
  [token, EOS], targets [vocab_size - 1, EOS], as in T5.
- Where we differ from T5, and why:
  * The random stream is numpy's, not TF's; the distribution and the counts are T5's.
  * Rates with noise_density / mean_noise_span_length >= 1 - noise_density are refused: they ask
    for more noise spans than non-noise tokens to separate them (T5 fails on such rows). S is
    also clipped to L - N, which only tiny rows reach.
  * The number of spans is checked against `max_sentinels`, the ids reserved at the top of the
    vocabulary; T5 silently runs into real vocabulary ids.
  * span_corruption_lengths does T5's search with the noise mask's own counts (clipped), where
    T5's helper rounds without the clips: they differ only on rows of a few tokens, where T5's
    lengths are wrong. T5's density-0.5 tweak (one raw token less when the targets come out
    longer than the inputs) is taken only where the inputs keep their length. So the outputs
    always have exactly the lengths it returns.

BART text infilling (fairseq `DenoisingDataset.add_whole_word_mask` with mask_length=span-poisson
and replace_length=1, and `add_insertion_noise`), on the text tokens of ONE document:
- Words are runs of tokens starting at a word start (index 0 always starts one). Of W words,
  M = W * mask_ratio, randomly rounded to a neighbouring integer (E[M] = W * mask_ratio), are
  masked, in K spans of whole words; each span (of >= 1 words) becomes ONE token, and each zero-length span inserts one token. That token is mask_id, or with
  probability random_ratio (drawn per span) an id drawn uniformly from `replacement_ids`.
- Span lengths: K = M / poisson_lambda, randomly rounded to one of its neighbouring integers so
  that E[K] = M / poisson_lambda (at least 1), and the K lengths are Multinomial(M, 1/K each),
  which is exactly the law of K i.i.d. Poisson(lambda) lengths conditioned on summing to M
  (variance lambda (1 - 1/K) instead of lambda: ~4.4% zero-length spans instead of 5.0% at
  M = 29, K = 10). The
  spans are placed uniformly at random among all placements in which they do not overlap, in
  word units: they start at word starts (a zero-length span at a word boundary, including before
  the first and after the last word). Two spans may touch; each still gets its own token.
- Where we differ from fairseq, and why:
  * fairseq draws Poisson lengths until they reach M and trims the last one. On short documents
    the trimmed span pulls the mean length down (about 2.86 instead of 3 for M = 30); here the
    aggregate mean span length (zero-length spans included) is lambda and the masked share
    M / W, both by construction.
  * fairseq picks span starts independently, so spans overlap and merge: fewer than M words get
    masked and fewer mask tokens appear than spans were drawn. Here spans never overlap, so
    exactly M words are masked and there is exactly one noise token per span.
  * fairseq removes zero-length spans and inserts as many masks at random token positions
    (`add_insertion_noise`, exactly ceil(n * random_ratio) of them random). Here a zero-length
    span is an insertion at a word boundary, placed like the other spans, with the same per-span
    random draw.
  * fairseq draws random replacements from every id in [1, len(vocab)), specials included; here
    from the caller's `replacement_ids`.
  * fairseq's budget ceil(W * mask_ratio) rounds up, which puts the share of masked words above
    mask_ratio by about 0.5 / W (0.32 for the ~23 words of a 128-byte row); the random rounding
    here makes it mask_ratio for documents of any length.

BART sentence permutation (fairseq `permute_sentences` with p=1): the sentences of a document in a
uniformly random order, each sentence's tokens in their order.

Shape suffixes beyond the house letters: w words, n sentences of a document.
"""

import math
from typing import NamedTuple

import numpy as np

from pretrax.data.errors import InputError



def _ids_1d(ids_t, what: str) -> np.ndarray:
  """Any 1-D int sequence -> [T] int32, or InputError."""
  ids_t = np.asarray(ids_t)
  if ids_t.ndim != 1 or not (ids_t.size == 0 or np.issubdtype(ids_t.dtype, np.integer)):
    raise InputError(f"{what} expects a 1-D int array, got shape {ids_t.shape} "
                     f"dtype {ids_t.dtype}")
  return ids_t.astype(np.int32)


def _sorted_sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
  """[k] int64: k distinct values of range(n), uniformly chosen, ascending."""
  # permutation is ~3x faster than rng.choice(n, k, replace=False) at these sizes.
  return np.sort(rng.permutation(n)[:k])


# --- T5 span corruption --------------------------------------------------------------------------

def check_span_corruption_rates(noise_density: float, mean_noise_span_length: float):
  """Raises InputError naming the data.* field if a span corruption rate is out of range."""
  if not 0.0 < noise_density < 1.0:
    raise InputError(f"noise_density (data.noise_density) must be in (0, 1), got {noise_density}")
  if not mean_noise_span_length >= 1.0:
    raise InputError(f"mean_noise_span_length (data.mean_noise_span_length) must be >= 1 (a span "
                     f"has at least one token), got {mean_noise_span_length}")
  if noise_density / mean_noise_span_length >= 1.0 - noise_density - 1e-9:  # 0.6 / 1.5 < 0.4
    raise InputError(f"data.noise_density / data.mean_noise_span_length = {noise_density} / "
                     f"{mean_noise_span_length} must be below 1 - data.noise_density: otherwise "
                     f"there are more noise spans than non-noise tokens to separate them; lower "
                     f"data.noise_density or raise data.mean_noise_span_length")


def span_corruption_counts(length: int, noise_density: float, mean_noise_span_length: float
                           ) -> tuple[int, int]:
  """(noise tokens N, noise spans S) of a row of `length` tokens (see module doc)."""
  check_span_corruption_rates(noise_density, mean_noise_span_length)
  length = max(int(length), 2)  # T5: avoids degeneracy; the mask is cut back to the real length
  num_noise = min(max(round(length * noise_density), 1), length - 1)
  num_spans = max(round(num_noise / mean_noise_span_length), 1)
  return num_noise, min(num_spans, length - num_noise)


def span_corruption_lengths(inputs_length: int, noise_density: float,
                            mean_noise_span_length: float) -> tuple[int, int]:
  """(raw tokens per row, targets length): span corruption of a row of that many raw tokens gives
  exactly `inputs_length` inputs and targets of the returned length (each with its EOS).

  The search of T5's `random_spans_helper` (one sentinel per span on each side): the longest raw
  row whose inputs fit in `inputs_length`. (512, 0.15, 3.0) -> (568, 114).
  """
  check_span_corruption_rates(noise_density, mean_noise_span_length)
  if inputs_length < 3:
    raise InputError(f"span corruption inputs need room for a token, a sentinel and EOS: "
                     f"inputs_length must be >= 3, got {inputs_length}")

  def lengths(tokens_length: int) -> tuple[int, int]:
    # T5's helper rounds without the clips of the noise mask; using the mask's own counts keeps
    # the lengths exact on tiny rows too (where T5's helper rounds to 0 spans).
    num_noise, num_spans = span_corruption_counts(tokens_length, noise_density,
                                                  mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  # The inputs grow by 0 or 1 per raw token, so the longest row that fits fills them exactly.
  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  targets_length = lengths(tokens_length)[1]
  # T5's tweak: at density 0.5 prefer targets no longer than the inputs (a round number); we take
  # it only where the inputs stay exact, which T5 does not check.
  if noise_density == 0.5 and targets_length > inputs_length:
    shorter = lengths(tokens_length - 1)
    if shorter[0] == inputs_length:
      tokens_length, targets_length = tokens_length - 1, shorter[1]
  return tokens_length, targets_length


def _cut_points(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """[num_segments + 1] int64: 0, the ends of all but the last segment, num_items. The items are
  cut into num_segments non-empty segments at uniformly random places (T5's random segmentation),
  segment i being [cuts[i], cuts[i + 1])."""
  cuts = np.empty(num_segments + 1, np.int64)
  cuts[0], cuts[-1] = 0, num_items
  cuts[1:-1] = _sorted_sample(num_items - 1, num_segments - 1, rng) + 1
  return cuts


def noise_mask(length: int, rng: np.random.Generator, noise_density: float,
               mean_noise_span_length: float) -> np.ndarray:
  """[length] bool, True on the noise tokens: T5's random_spans_noise_mask (see module doc)."""
  num_noise, num_spans = span_corruption_counts(length, noise_density, mean_noise_span_length)
  padded = max(int(length), 2)
  noise_cuts = _cut_points(num_noise, num_spans, rng)
  nonnoise_cuts = _cut_points(padded - num_noise, num_spans, rng)
  # Non-noise span i comes before noise span i: noise span i is
  # [nonnoise_cuts[i + 1] + noise_cuts[i], nonnoise_cuts[i + 1] + noise_cuts[i + 1]).
  starts = nonnoise_cuts[1:] + noise_cuts[:-1]
  ends = nonnoise_cuts[1:] + noise_cuts[1:]
  edges = np.bincount(starts, minlength=padded + 1) - np.bincount(ends, minlength=padded + 1)
  return edges[:length].cumsum() > 0


def _replace_spans(ids_t: np.ndarray, mask_t: np.ndarray, first_sentinel: int) -> np.ndarray:
  """[T] ids, [T] bool -> each run of True replaced by one sentinel, counting down from
  `first_sentinel` (T5's noise_span_to_unique_sentinel)."""
  prev_t = np.zeros_like(mask_t)
  prev_t[1:] = mask_t[:-1]
  first_t = mask_t & ~prev_t
  sentinel_t = first_sentinel + 1 - first_t.cumsum()
  return np.where(first_t, sentinel_t, ids_t)[~(mask_t & prev_t)]


def span_corruption(ids_t, rng: np.random.Generator, *, noise_density: float,
                    mean_noise_span_length: float, vocab_size: int, eos_id: int,
                    max_sentinels: int) -> tuple[np.ndarray, np.ndarray]:
  """T5 span corruption of one row (see module doc).

  Args:
    ids_t: [L] int token ids, the raw row (L from span_corruption_lengths gives exact lengths).
    rng: the only source of randomness.
    noise_density: share of the tokens that are noise (data.noise_density).
    mean_noise_span_length: mean noise span length in tokens (data.mean_noise_span_length).
    vocab_size: V; sentinels are V - 1, V - 2, ... (one per noise span).
    eos_id: appended to the inputs and to the targets.
    max_sentinels: how many ids at the top of the vocabulary are reserved for sentinels (T5: 100
      extra ids); the ids of the row and eos_id must lie below V - max_sentinels.

  Returns:
    inputs: [L - N + S + 1] int32: non-noise tokens, one sentinel per noise span, EOS.
    targets: [N + S + 1] int32: per noise span its sentinel then its tokens, then EOS.
  """
  ids_t = _ids_1d(ids_t, "span_corruption")
  if not 0 < max_sentinels <= vocab_size:
    raise InputError(f"max_sentinels must be in [1, vocab_size={vocab_size}], got {max_sentinels}")
  first_reserved = vocab_size - max_sentinels
  if ids_t.size and (ids_t.min() < 0 or ids_t.max() >= first_reserved):
    raise InputError(f"span corruption ids must be in [0, {first_reserved}) (vocab_size="
                     f"{vocab_size} minus max_sentinels={max_sentinels} reserved sentinels), got "
                     f"values in [{ids_t.min()}, {ids_t.max()}]")
  if not 0 <= eos_id < first_reserved:
    raise InputError(f"eos_id={eos_id} must be in [0, {first_reserved}), below the sentinels")
  _, num_spans = span_corruption_counts(len(ids_t), noise_density, mean_noise_span_length)
  if num_spans > max_sentinels:
    raise InputError(
        f"a row of {len(ids_t)} tokens at data.noise_density={noise_density} and "
        f"data.mean_noise_span_length={mean_noise_span_length} has {num_spans} noise spans, but "
        f"only max_sentinels={max_sentinels} sentinel ids are reserved: use shorter rows, a lower "
        f"data.noise_density or a larger data.mean_noise_span_length")
  mask_t = noise_mask(len(ids_t), rng, noise_density, mean_noise_span_length)
  eos = np.array([eos_id], np.int32)
  first_sentinel = vocab_size - 1
  inputs = np.concatenate([_replace_spans(ids_t, mask_t, first_sentinel), eos])
  targets = np.concatenate([_replace_spans(ids_t, ~mask_t, first_sentinel), eos])
  return inputs.astype(np.int32), targets.astype(np.int32)


# --- BART text infilling and sentence permutation ------------------------------------------------

def check_denoise_rates(mask_ratio: float, poisson_lambda: float, random_ratio: float):
  """Raises InputError naming the data.* field if a BART denoising rate is out of range."""
  if not 0.0 <= mask_ratio <= 1.0:
    raise InputError(f"mask_ratio (data.denoise_mask_ratio) must be in [0, 1], got {mask_ratio}")
  if not (0.0 < poisson_lambda and math.isfinite(poisson_lambda)):
    raise InputError(f"poisson_lambda (data.denoise_poisson_lambda) must be > 0 (the mean span "
                     f"length in words), got {poisson_lambda}")
  if not 0.0 <= random_ratio <= 1.0:
    raise InputError(f"random_ratio (data.denoise_random_ratio) must be in [0, 1], "
                     f"got {random_ratio}")


class Infilling(NamedTuple):
  """text_infilling_with_spans' result: S spans, zero-length ones included, in document order.

  (No shape suffix on the [S] arrays: s means key positions in the house letters.)
  """
  ids: np.ndarray           # [N'] int32 noised ids
  span_starts: np.ndarray   # [S] int64 first word of the span (zero-length: the word it precedes)
  span_lengths: np.ndarray  # [S] int64 length in words, >= 0
  positions: np.ndarray     # [S] int64 index in `ids` of the span's mask (or random) token


def text_infilling_with_spans(ids_t, word_starts_t, rng: np.random.Generator, *,
                              mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                              random_ratio: float = 0.1, mask_id: int, replacement_ids
                              ) -> Infilling:
  """BART text infilling of one document, with the spans drawn (see module doc).

  Args:
    ids_t: [T] int text token ids of one document (no bos/eos: spans end at its end).
    word_starts_t: [T] bool, True where a token begins a word.
    rng: the only source of randomness.
    mask_ratio: share of the words masked, randomly rounded (data.denoise_mask_ratio).
    poisson_lambda: mean span length in words (data.denoise_poisson_lambda).
    random_ratio: share of the spans whose token is a random id (data.denoise_random_ratio).
    mask_id: the mask token.
    replacement_ids: [R] int ids a random token is drawn from, uniformly.
  """
  check_denoise_rates(mask_ratio, poisson_lambda, random_ratio)
  ids_t = _ids_1d(ids_t, "text_infilling")
  word_starts_t = np.asarray(word_starts_t, bool)
  if word_starts_t.shape != ids_t.shape:
    raise InputError(f"word_starts_t has shape {word_starts_t.shape}, expected {ids_t.shape}")
  replacement_ids = np.asarray(replacement_ids)
  if random_ratio > 0 and not replacement_ids.size:
    raise InputError(f"replacement_ids is empty, but data.denoise_random_ratio={random_ratio} "
                     f"asks for random replacements")
  # [T + 1]: tokens before the first marked start form a word; index T ends the last word.
  begins = np.ones(len(ids_t) + 1, bool)
  begins[1:-1] = word_starts_t[1:]
  word_bounds = np.flatnonzero(begins)  # [W + 1] token index of each word's start, then T
  num_words = len(word_bounds) - 1
  expected_words = num_words * mask_ratio
  budget = int(expected_words) + int(rng.random() < expected_words - int(expected_words))
  if budget == 0:
    empty = np.zeros(0, np.int64)
    return Infilling(ids_t, empty, empty, empty)

  # K spans with E[K] = budget / lambda; lengths are Poisson(lambda) conditioned on their sum.
  expected = budget / poisson_lambda
  num_spans = max(1, int(expected) + int(rng.random() < expected - int(expected)))
  span_lengths = np.bincount(rng.integers(0, num_spans, budget), minlength=num_spans)
  # Uniform non-overlapping placement: the K + 1 gaps of unmasked words are a uniformly random
  # composition of W - budget (stars and bars).
  unmasked_before = _sorted_sample(num_words - budget + num_spans, num_spans, rng)
  unmasked_before -= np.arange(num_spans)
  span_starts = unmasked_before + span_lengths.cumsum() - span_lengths

  # Whether each word is masked: +1 at a span's start, -1 after its end (zero-length: both).
  covered_w = (np.bincount(span_starts, minlength=num_words + 1)
               - np.bincount(span_starts + span_lengths, minlength=num_words + 1)).cumsum()
  word_t = begins[:-1].cumsum() - 1
  keep_t = covered_w[word_t] == 0
  # A span's token goes before the first token of its start word, after the spans before it.
  kept_before = np.zeros(len(ids_t) + 1, np.int64)
  keep_t.cumsum(out=kept_before[1:])
  positions = kept_before[word_bounds[span_starts]] + np.arange(num_spans)

  noise = np.empty(num_spans, np.int32)
  noise[:] = mask_id
  random = rng.random(num_spans) < random_ratio
  if random.any():
    noise[random] = replacement_ids[rng.integers(0, replacement_ids.size, random.sum())]
  out = np.empty(int(keep_t.sum()) + num_spans, np.int32)
  is_noise = np.zeros(len(out), bool)
  is_noise[positions] = True
  out[positions] = noise
  out[~is_noise] = ids_t[keep_t]
  return Infilling(out, span_starts, span_lengths, positions)


def text_infilling(ids_t, word_starts_t, rng: np.random.Generator, *, mask_ratio: float = 0.3,
                   poisson_lambda: float = 3.0, random_ratio: float = 0.1, mask_id: int,
                   replacement_ids) -> np.ndarray:
  """[T] ids, [T] bool word starts -> [N'] int32 noised ids (text_infilling_with_spans' ids)."""
  return text_infilling_with_spans(
      ids_t, word_starts_t, rng, mask_ratio=mask_ratio, poisson_lambda=poisson_lambda,
      random_ratio=random_ratio, mask_id=mask_id, replacement_ids=replacement_ids).ids


def permute_sentences(ids_t, sentence_ids_t, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
  """[T] ids, [T] int sentence ids > 0 -> both reordered by sentence, uniformly at random.

  A sentence is a maximal run of equal sentence ids; its tokens keep their order and its sentence
  id goes with it. (Give neighbouring sentences different ids: runs are all that is looked at.)
  """
  ids_t = _ids_1d(ids_t, "permute_sentences")
  sentence_ids_t = _ids_1d(sentence_ids_t, "permute_sentences (sentence ids)")
  if sentence_ids_t.shape != ids_t.shape:
    raise InputError(f"sentence_ids_t has shape {sentence_ids_t.shape}, expected {ids_t.shape}")
  if sentence_ids_t.size and sentence_ids_t.min() <= 0:
    raise InputError(f"sentence ids must be > 0 (pass one document without padding), got "
                     f"{sentence_ids_t.min()}")
  # [S + 1] (n: sentences) where each sentence starts, then T.
  change = np.ones(len(ids_t) + 1, bool)
  change[1:-1] = sentence_ids_t[1:] != sentence_ids_t[:-1]
  bounds_n = np.flatnonzero(change)
  starts_n, lengths_n = bounds_n[:-1], bounds_n[1:] - bounds_n[:-1]
  order_n = rng.permutation(len(starts_n))
  # Token k of the output is token (k - where its sentence lands) + where that sentence was.
  new_lengths_n = lengths_n[order_n]
  shift_n = starts_n[order_n] - (new_lengths_n.cumsum() - new_lengths_n)
  index_t = np.arange(len(ids_t)) + np.repeat(shift_n, new_lengths_n)
  return ids_t[index_t], sentence_ids_t[index_t]
