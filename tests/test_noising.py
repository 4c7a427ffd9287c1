"""T5 span corruption and BART text infilling / sentence permutation (data/noising.py).

Exact invariants (lengths, sentinel order, reconstruction of the original) are checked on every
example; statistics over 10,000 documents with a fixed seed use tolerances of 5 standard
deviations of the quantity (a false failure about once in 3 million runs) unless stated.
"""

import itertools

import numpy as np
import pytest

from pretrax.data import noising
from pretrax.data.errors import InputError

VOCAB = 1_000
MAX_SENTINELS = 100
EOS_ID = 1
MASK_ID = 3
TEXT_IDS = (7, 500)  # document tokens are drawn from [7, 500)
REPLACEMENT_IDS = np.arange(500, 600)  # disjoint from the text, so a random token is recognisable
NUM_DOCS = 10_000


# --- T5 span corruption --------------------------------------------------------------------------

def _corrupt(ids_t, seed=0, density=0.15, mean=3.0, max_sentinels=MAX_SENTINELS):
  return noising.span_corruption(ids_t, np.random.default_rng(seed), noise_density=density,
                                 mean_noise_span_length=mean, vocab_size=VOCAB, eos_id=EOS_ID,
                                 max_sentinels=max_sentinels)


def _t5_counts(length, density, mean):
  """The T5 formulas by hand: noise tokens round(L d) in [1, L - 1], spans max(1, round(N / m))."""
  num_noise = min(max(round(length * density), 1), length - 1)
  return num_noise, max(1, round(num_noise / mean))


def _sentinels(ids):
  return ids[ids >= VOCAB - MAX_SENTINELS]


def _reconstruct(inputs, targets, max_sentinels=MAX_SENTINELS) -> np.ndarray:
  """The original row: each sentinel of the inputs replaced by what follows it in the targets."""
  assert inputs[-1] == EOS_ID and targets[-1] == EOS_ID
  inputs, targets = inputs[:-1], targets[:-1]
  at = np.flatnonzero(targets >= VOCAB - max_sentinels)
  spans = {int(targets[a]): targets[a + 1:b] for a, b in zip(at, [*at[1:], len(targets)])}
  return np.concatenate([spans[int(t)] if t in spans else [t] for t in inputs.tolist()])


def test_t5_lengths_by_hand():
  # T5 paper / random_spans_helper: 568 raw tokens -> 512 inputs, 114 targets.
  assert noising.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
  assert noising.span_corruption_lengths(128, 0.15, 3.0) == (141, 29)
  # 568: 85 noise tokens in 28 spans: 483 + 28 + 1 inputs, 85 + 28 + 1 targets; 569 tokens would
  # give 513 inputs.
  assert _t5_counts(568, 0.15, 3.0) == (85, 28) and _t5_counts(569, 0.15, 3.0) == (85, 28)
  # Density 0.5: T5's tweak keeps the targets no longer than the inputs.
  assert noising.span_corruption_lengths(512, 0.5, 3.0) == (766, 512)


@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.1, 2.0), (0.25, 5.0), (0.3, 1.5),
                                          (0.5, 3.0), (0.05, 8.0)])
def test_outputs_have_exactly_the_computed_lengths(density, mean):
  rng = np.random.default_rng(0)
  for inputs_length in [3, 4, 7, 16, 33, 64, 100, 128, 512]:
    raw, targets_length = noising.span_corruption_lengths(inputs_length, density, mean)
    for seed in range(3):
      ids_t = rng.integers(*TEXT_IDS, raw)
      # Up to 171 spans (512 inputs at density 0.3, mean 1.5): reserve 400 ids for sentinels.
      inputs, targets = _corrupt(ids_t, seed, density, mean, max_sentinels=400)
      assert (len(inputs), len(targets)) == (inputs_length, targets_length), (inputs_length, seed)
      np.testing.assert_array_equal(_reconstruct(inputs, targets, 400), ids_t)


def test_sentinels_count_down_and_the_original_comes_back():
  rng = np.random.default_rng(1)
  for length in [*range(2, 40), 141, 300, 568]:
    ids_t = rng.integers(*TEXT_IDS, length).astype(np.int32)
    inputs, targets = _corrupt(ids_t, seed=length)
    num_noise, num_spans = _t5_counts(length, 0.15, 3.0)
    expected = VOCAB - 1 - np.arange(num_spans)
    # One sentinel per span, V-1, V-2, ... in the same order in the inputs and the targets; the
    # targets start with one (the row starts with non-noise), the inputs end with one (it ends
    # with noise).
    np.testing.assert_array_equal(_sentinels(inputs), expected)
    np.testing.assert_array_equal(_sentinels(targets), expected)
    assert targets[0] == VOCAB - 1 and inputs[-2] == VOCAB - num_spans
    assert len(targets) - 1 - num_spans == num_noise  # the noise tokens, by T5's formula
    assert len(inputs) == length - num_noise + num_spans + 1
    assert not (np.diff(np.flatnonzero(inputs >= VOCAB - MAX_SENTINELS)) == 1).any()  # spans apart
    np.testing.assert_array_equal(_reconstruct(inputs, targets), ids_t)
    assert inputs.dtype == targets.dtype == np.int32
  # As in T5, which pads the mask to 2 tokens: one token is never noise, and its one non-noise
  # span still gets a sentinel in the targets; no token at all gives EOS alone.
  inputs, targets = _corrupt(np.array([42]))
  assert inputs.tolist() == [42, EOS_ID] and targets.tolist() == [VOCAB - 1, EOS_ID]
  inputs, targets = _corrupt(np.zeros(0, np.int32))
  assert inputs.tolist() == [EOS_ID] and targets.tolist() == [EOS_ID]


def test_noise_mask_is_uniform_over_t5_segmentations():
  # 10 tokens at density 0.3, mean 1.5: 3 noise tokens in 2 spans ((1, 2) or (2, 1)) and 7
  # non-noise tokens in 2 spans (6 ways): 12 masks, each equally likely.
  rng = np.random.default_rng(2)
  draws = 6_000
  masks = [noising.noise_mask(10, rng, 0.3, 1.5) for _ in range(draws)]
  assert all(m.sum() == 3 and not m[0] and m[-1] for m in masks)
  counts = {}
  for m in masks:
    counts[m.tobytes()] = counts.get(m.tobytes(), 0) + 1
  assert len(counts) == 12
  # Chi-square with 11 degrees of freedom (mean 11, variance 22): 5 standard deviations.
  expected = draws / 12
  chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
  assert chi2 < 11 + 5 * np.sqrt(22), chi2


def test_span_corruption_errors():
  ids_t = np.arange(10, 160)
  with pytest.raises(InputError, match="max_sentinels=5"):
    _corrupt(ids_t, max_sentinels=5)  # 150 tokens have round(round(22.5) / 3) = 7 spans
  _corrupt(ids_t, max_sentinels=7)
  with pytest.raises(InputError, match=r"\[0, 900\)"):
    _corrupt(np.array([10, 950, 11]))  # a real id among the sentinels
  with pytest.raises(InputError, match="data.noise_density"):
    noising.check_span_corruption_rates(0.0, 3.0)
  with pytest.raises(InputError, match="data.noise_density"):
    noising.span_corruption_lengths(512, 1.0, 3.0)
  with pytest.raises(InputError, match="data.mean_noise_span_length"):
    noising.check_span_corruption_rates(0.15, 0.5)
  with pytest.raises(InputError, match="more noise spans than non-noise tokens"):
    noising.check_span_corruption_rates(0.5, 1.0)
  with pytest.raises(InputError, match="data.mean_noise_span_length"):
    _corrupt(ids_t, mean=0.0)


# --- BART text infilling -------------------------------------------------------------------------

def _documents(num=NUM_DOCS, seed=0):
  """Documents of 96-160 tokens; a token starts a word with probability 0.75 (subword-like), so
  ~95 words each and the ceil of the budget adds ~0.5 / 95 to the masked share."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(96, 161, num)
  return [(rng.integers(*TEXT_IDS, n).astype(np.int32), rng.random(n) < 0.75) for n in lengths]


def _infill_all(docs, seed=0, **overrides):
  kwargs = dict(mask_id=MASK_ID, replacement_ids=REPLACEMENT_IDS) | overrides
  rng = np.random.default_rng(seed)
  return [noising.text_infilling_with_spans(ids, starts, rng, **kwargs) for ids, starts in docs]


def _word_bounds(starts):
  """[W + 1]: the first token of each word (index 0 always starts one), then T."""
  begins = starts.copy()
  begins[:1] = True
  return np.append(np.flatnonzero(begins), len(starts))


@pytest.fixture(scope="module")
def infilled():
  docs = _documents()
  return docs, _infill_all(docs)


def test_infilling_masks_30_percent_of_words_in_spans_of_mean_3(infilled):
  docs, results = infilled
  words = np.array([len(_word_bounds(starts)) - 1 for _, starts in docs])
  lengths = np.concatenate([r.span_lengths for r in results])
  spans = np.array([len(r.span_lengths) for r in results])
  # Each document masks 0.3 W words rounded down or up.
  budgets = np.array([r.span_lengths.sum() for r in results])
  assert np.all((budgets == np.floor(0.3 * words + 1e-9)) | (budgets == np.ceil(0.3 * words - 1e-9)))
  masked_share = lengths.sum() / words.sum()
  assert abs(masked_share - 0.30) <= 0.01, masked_share
  # Short documents too (the random rounding has no bias of 0.5 / W).
  short = words < np.median(words)
  assert abs(budgets[short].sum() / words[short].sum() - 0.30) <= 0.01
  # Mean span length over all spans, zero-length ones included: budget / E[K] = lambda. Its
  # spread comes from K's random rounding only (variance <= 1/4 per document).
  mean_length = lengths.mean()
  assert abs(mean_length - 3.0) <= 0.1, mean_length  # measured 3.001
  assert abs(mean_length - 3.0) <= 5 * 3.0 * np.sqrt(0.25 * len(docs)) / spans.sum(), mean_length
  # Zero-length spans (insertions) occur about as often as under Poisson(3) (e^-3 = 5.0%); the
  # lengths are Poisson conditioned on their sum, so a little less (measured 4.3%).
  zero_share = np.mean(lengths == 0)
  assert 0.03 < zero_share < 0.06, zero_share


def test_one_token_per_span_and_the_rest_unchanged_in_order(infilled):
  docs, results = infilled
  for (ids, starts), r in zip(docs, results):
    bounds = _word_bounds(starts)
    s, n, pos = r.span_starts, r.span_lengths, r.positions
    # Spans lie within the document, in order, and never overlap.
    assert s.min() >= 0 and (s + n).max() <= len(bounds) - 1
    assert (s[1:] >= (s + n)[:-1]).all()
    # The noise tokens: exactly one per span (zero-length ones too), and nowhere else.
    is_noise = (r.ids == MASK_ID) | (r.ids >= REPLACEMENT_IDS[0])
    assert np.array_equal(np.flatnonzero(is_noise), pos)
    # Put each span's words back in place of its token: the kept tokens then sit exactly where
    # they were (unchanged, in order) and each span's words where the span says.
    width = np.ones(len(r.ids), np.int64)
    width[pos] = bounds[s + n] - bounds[s]
    at = np.cumsum(width) - width  # where each output token's text starts in the document
    assert np.array_equal(at[pos], bounds[s])
    kept = ~is_noise
    assert np.array_equal(r.ids[kept], ids[at[kept]])
    assert width.sum() == len(ids)


def test_random_ratio_of_the_span_tokens_are_random_ids(infilled):
  _, results = infilled
  tokens = np.concatenate([r.ids[r.positions] for r in results])
  random = np.isin(tokens, REPLACEMENT_IDS)
  assert set(np.unique(tokens[~random])) == {MASK_ID}
  p = 0.1
  assert abs(random.mean() - p) <= 5 * np.sqrt(p * (1 - p) / len(tokens)), random.mean()
  # Uniform over the replacement ids: chi-square with 99 degrees of freedom.
  counts = np.bincount(tokens[random] - REPLACEMENT_IDS[0], minlength=len(REPLACEMENT_IDS))
  expected = random.sum() / len(REPLACEMENT_IDS)
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 99 + 5 * np.sqrt(2 * 99), chi2


def test_infilling_rates_and_edges_by_hand():
  docs = _documents(num=300, seed=3)
  for ratio in (0.0, 0.5, 1.0):
    for (ids, starts), r in zip(docs, _infill_all(docs, seed=4, mask_ratio=ratio,
                                                   poisson_lambda=2.0, random_ratio=0.0)):
      words = len(_word_bounds(starts)) - 1
      assert r.span_lengths.sum() in (np.floor(ratio * words + 1e-9), np.ceil(ratio * words - 1e-9))
      assert (r.ids == MASK_ID).sum() == len(r.span_lengths)
      if ratio == 0.0:
        np.testing.assert_array_equal(r.ids, ids)
      if ratio == 1.0:  # every word masked: only the span tokens are left
        assert (r.ids == MASK_ID).all()
  # No word start marked: the whole document is one word, masked (by one span of one word) in
  # 30% of the draws.
  draws = [noising.text_infilling_with_spans(
      np.arange(10, 20), np.zeros(10, bool), np.random.default_rng(seed), mask_id=MASK_ID,
      replacement_ids=REPLACEMENT_IDS, random_ratio=0.0) for seed in range(1000)]
  masked = [r for r in draws if r.span_lengths.sum()]
  assert all(r.ids.tolist() == [MASK_ID] and r.span_lengths.tolist() == [1] for r in masked)
  assert all(r.ids.tolist() == list(range(10, 20)) for r in draws if not r.span_lengths.sum())
  assert abs(len(masked) / 1000 - 0.3) < 5 * np.sqrt(0.21 / 1000)
  # An empty document stays empty.
  assert noising.text_infilling(np.zeros(0, np.int32), np.zeros(0, bool),
                                np.random.default_rng(0), mask_id=MASK_ID,
                                replacement_ids=REPLACEMENT_IDS).tolist() == []


def test_denoise_rate_errors():
  ids, starts = _documents(num=1)[0]
  rng = np.random.default_rng(0)
  kwargs = dict(mask_id=MASK_ID, replacement_ids=REPLACEMENT_IDS)
  with pytest.raises(InputError, match="data.denoise_mask_ratio"):
    noising.text_infilling(ids, starts, rng, mask_ratio=1.5, **kwargs)
  with pytest.raises(InputError, match="data.denoise_poisson_lambda"):
    noising.text_infilling(ids, starts, rng, poisson_lambda=0.0, **kwargs)
  with pytest.raises(InputError, match="data.denoise_random_ratio"):
    noising.check_denoise_rates(0.3, 3.0, -0.1)
  with pytest.raises(InputError, match="data.denoise_random_ratio"):
    noising.text_infilling(ids, starts, rng, mask_id=MASK_ID, replacement_ids=[])
  with pytest.raises(InputError, match="word_starts_t has shape"):
    noising.text_infilling(ids, starts[:-1], rng, **kwargs)


# --- BART sentence permutation -------------------------------------------------------------------

def _sentences(ids, sentence_ids):
  cuts = np.flatnonzero(np.diff(sentence_ids)) + 1
  return [(int(s[0]), tuple(t.tolist())) for t, s in zip(np.split(ids, cuts),
                                                       np.split(sentence_ids, cuts))]


def test_permute_sentences_is_a_uniform_permutation_of_whole_sentences():
  ids = np.arange(10, 19)
  sentence_ids = np.array([1, 1, 1, 2, 3, 3, 3, 3, 3])
  before = _sentences(ids, sentence_ids)
  rng = np.random.default_rng(5)
  draws = 3_000
  orders = {}
  for _ in range(draws):
    out_ids, out_sentences = noising.permute_sentences(ids, sentence_ids, rng)
    after = _sentences(out_ids, out_sentences)
    assert sorted(after) == before  # the same sentences, each intact, with its id
    key = tuple(s for s, _ in after)
    orders[key] = orders.get(key, 0) + 1
  assert set(orders) == set(itertools.permutations((1, 2, 3)))
  expected = draws / 6  # chi-square with 5 degrees of freedom
  chi2 = sum((c - expected) ** 2 / expected for c in orders.values())
  assert chi2 < 5 + 5 * np.sqrt(10), chi2
  # Many sentences of random lengths: still a permutation of whole sentences.
  for seed in range(50):
    r = np.random.default_rng(seed)
    sentence_ids = np.repeat(np.arange(1, 13), r.integers(1, 20, 12))
    ids = r.integers(*TEXT_IDS, len(sentence_ids))
    out = noising.permute_sentences(ids, sentence_ids, rng)
    assert sorted(_sentences(*out)) == sorted(_sentences(ids, sentence_ids))
  with pytest.raises(InputError, match="sentence ids must be > 0"):
    noising.permute_sentences(ids, np.zeros_like(ids), rng)


# --- all of them ---------------------------------------------------------------------------------

def test_deterministic_given_the_generator():
  docs = _documents(num=50, seed=6)
  sentence_ids = [np.repeat(np.arange(1, 6), len(ids) // 5 + 1)[:len(ids)] for ids, _ in docs]

  def run(seed):
    rng = np.random.default_rng(seed)
    out = []
    for (ids, starts), sid in zip(docs, sentence_ids):
      out.append(noising.text_infilling(ids, starts, rng, mask_id=MASK_ID,
                                        replacement_ids=REPLACEMENT_IDS))
      out.extend(noising.permute_sentences(ids, sid, rng))
      out.extend(noising.span_corruption(ids, rng, noise_density=0.15,
                                         mean_noise_span_length=3.0, vocab_size=VOCAB,
                                         eos_id=EOS_ID, max_sentinels=MAX_SENTINELS))
    return out

  a, b, c = run(7), run(7), run(8)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a, c))
