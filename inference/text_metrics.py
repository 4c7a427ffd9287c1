"""Corpus-level metrics of generated text against one reference per example: exact match,
sacrebleu's BLEU and chrF, and rouge-score's ROUGE-1/2/L, to judge a seq2seq model by what it
writes rather than by its loss.
"""

from pretrax.data.errors import InputError


def _scorers():
  """sacrebleu's BLEU and chrF and a ROUGE scorer, imported here so the package runs without
  them."""
  try:
    from sacrebleu.metrics import BLEU, CHRF
  except ImportError as e:
    raise InputError("generation metrics need sacrebleu: pip install sacrebleu") from e
  try:
    from rouge_score import rouge_scorer
  except ImportError as e:
    raise InputError("generation metrics need rouge-score: pip install rouge-score") from e
  rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  return BLEU(), CHRF(), rouge


def _check(predictions: list[str], references: list[str]) -> None:
  if len(predictions) != len(references):
    raise InputError(f"{len(predictions)} predictions but {len(references)} references: "
                     "give exactly one reference per prediction")
  if not predictions:
    raise InputError("no predictions: generation metrics need at least one example")
  for name, texts in (("predictions", predictions), ("references", references)):
    for i, text in enumerate(texts):
      if not isinstance(text, str):  # a token list here would fail deep inside sacrebleu
        raise InputError(f"{name}[{i}] is a {type(text).__name__}: pass detokenized strings")


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
  """Metrics of `predictions[i]` against `references[i]` over the whole corpus.

  Returns `count` (examples); `exact_match` (share equal after stripping surrounding whitespace,
  0..1); `bleu` and `chrf` (sacrebleu corpus scores with its defaults: 13a tokenization of
  detokenized text, 0..100); `rouge1`, `rouge2`, `rougeL` (rouge-score F-measures with the
  Porter stemmer, sentence-level LCS for rougeL, averaged over examples, 0..100).
  """
  _check(predictions, references)
  bleu, chrf, rouge = _scorers()
  n = len(predictions)
  exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
  rouge_sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
  for p, r in zip(predictions, references):
    scores = rouge.score(r, p)  # (target, prediction): precision is over the prediction
    for key in rouge_sums:
      rouge_sums[key] += scores[key].fmeasure
  return {
      "count": n,
      "exact_match": exact / n,
      "bleu": float(bleu.corpus_score(predictions, [references]).score),
      "chrf": float(chrf.corpus_score(predictions, [references]).score),
      **{key: 100.0 * total / n for key, total in rouge_sums.items()},
  }
