"""Generation metrics against truths computed by hand: exact match, BLEU from clipped n-gram
precisions and the brevity penalty, ROUGE-1/2 from overlaps and ROUGE-L from an LCS."""

import math
import sys

import pytest

from pretrax.data.errors import InputError
from pretrax.inference.text_metrics import generation_metrics


def _f1(overlap: int, pred_len: int, ref_len: int) -> float:
  precision, recall = overlap / pred_len, overlap / ref_len
  return 2 * precision * recall / (precision + recall) if overlap else 0.0


def _lcs(a: list[str], b: list[str]) -> int:
  """Length of the longest common subsequence, by the textbook table."""
  table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i, x in enumerate(a):
    for j, y in enumerate(b):
      table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
  return table[-1][-1]


def test_keys_and_count():
  out = generation_metrics(["a b c d"], ["a b c d"])
  assert set(out) == {"count", "exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL"}
  assert out["count"] == 1


def test_exact_match_strips_only_surrounding_whitespace():
  predictions = ["the cat", "  the cat\n", "The cat", "the  cat"]
  out = generation_metrics(predictions, ["the cat"] * 4)
  assert out["exact_match"] == pytest.approx(2 / 4)  # case and inner spacing still count


def test_identical_corpora_score_100():
  texts = ["the cat sat on the mat", "a dog ran in the big green park"]
  out = generation_metrics(texts, list(texts))
  assert out["exact_match"] == 1.0
  for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"):
    assert out[key] == pytest.approx(100.0), key


def test_disjoint_vocabularies_score_0():
  # No shared words, nor shared characters, so every n-gram metric has nothing to match.
  out = generation_metrics(["abc def ghi jkl", "abc abc def def"], ["xyz uvw rst opq", "xyz uvw"])
  for key in ("exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL"):
    assert out[key] == 0.0, key


def test_bleu_by_hand():
  predictions = ["the the the cat sat on mat", "a dog ran in the park"]
  references = ["the cat sat on the mat", "a dog ran in the big green park"]
  # Corpus BLEU sums clipped matches and totals over sentences per n-gram order.
  # Sentence 1 (7 tokens): "the" x3 is clipped to the reference's 2.
  #   1-grams 6/7; 2-grams: the cat, cat sat, sat on match of 6 -> 3/6;
  #   3-grams: the cat sat, cat sat on of 5 -> 2/5; 4-grams: the cat sat on of 4 -> 1/4.
  # Sentence 2 (6 tokens): 1-grams 6/6; 2-grams 4/5 ("the park" misses);
  #   3-grams 3/4 ("in the park" misses); 4-grams 2/3 ("ran in the park" misses).
  precisions = [(6 + 6) / (7 + 6), (3 + 4) / (6 + 5), (2 + 3) / (5 + 4), (1 + 2) / (4 + 3)]
  hyp_len, ref_len = 7 + 6, 6 + 8
  brevity_penalty = math.exp(1 - ref_len / hyp_len)  # hypothesis shorter than reference
  expected = 100 * brevity_penalty * math.prod(precisions) ** (1 / 4)
  out = generation_metrics(predictions, references)
  assert out["bleu"] == pytest.approx(expected, abs=1e-9)
  assert 0 < out["chrf"] < 100


def test_rouge_by_hand():
  # Words of at most 3 letters: rouge-score's Porter stemmer leaves them as they are.
  predictions = ["the cat sat on the mat", "on the mat the cat sat"]
  references = ["a cat was on the red mat", "the cat sat on the mat"]
  # Example 1: unigram overlap (clipped) the, cat, on, mat = 4 of 6 vs 7;
  #   bigrams: only "on the" is shared, 1 of 5 vs 6.
  # Example 2: all 6 unigrams; bigrams "on the", "the mat", "the cat", "cat sat" = 4 of 5 vs 5.
  rouge1 = (_f1(4, 6, 7) + _f1(6, 6, 6)) / 2
  rouge2 = (_f1(1, 5, 6) + _f1(4, 5, 5)) / 2
  rouge_l = sum(_f1(_lcs(p.split(), r.split()), len(p.split()), len(r.split()))
                for p, r in zip(predictions, references)) / 2
  assert _lcs(predictions[1].split(), references[1].split()) == 3  # the order-blind ROUGE-1 is 1
  out = generation_metrics(predictions, references)
  assert out["rouge1"] == pytest.approx(100 * rouge1)
  assert out["rouge2"] == pytest.approx(100 * rouge2)
  assert out["rougeL"] == pytest.approx(100 * rouge_l)


def test_length_mismatch_is_an_input_error():
  with pytest.raises(InputError, match="2 predictions but 1 references"):
    generation_metrics(["a", "b"], ["a"])


def test_empty_is_an_input_error():
  with pytest.raises(InputError, match="at least one example"):
    generation_metrics([], [])


def test_non_string_is_an_input_error():
  with pytest.raises(InputError, match=r"predictions\[0\] is a list"):
    generation_metrics([["a", "b"]], ["a b"])


@pytest.mark.parametrize("module, package", [("sacrebleu.metrics", "sacrebleu"),
                                             ("rouge_score", "rouge-score")])
def test_missing_package_names_the_install(monkeypatch, module, package):
  monkeypatch.setitem(sys.modules, module, None)  # makes `import` raise ImportError
  with pytest.raises(InputError, match=f"pip install {package}"):
    generation_metrics(["a b"], ["a b"])
