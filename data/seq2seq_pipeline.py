"""Encoder-decoder pretraining examples drawn from packed rows as they are read.

  denoise          (BART) rows of whole sentences of one document (row kind "sentences"): the
                   sentences shuffled, then text infilling (data/noising.py); encoder input
                   `[bos] noised [eos]`, targets the original `text [eos]`.
  span_corruption  (T5) raw rows of the concatenated documents (row kind "stream", each document
                   `ids [eos]`), `span_corruption_lengths` long so that span corruption gives
                   exactly data.seq_len encoder tokens and the computed number of targets.

Decoder inputs are the targets shifted right after the start token (bos). The noise of row g of
the global stream is drawn from default_rng([seed, TAG, g]), so it is the same on any number of
processes and after a resume.

FEATURES, [B, S] on the encoder side and [B, T] on the decoder side, int32 unless noted:
  encoder_inputs, encoder_segment_ids (0 = padding), encoder_positions;
  decoder_inputs, decoder_targets, decoder_segment_ids, decoder_positions, loss_weights (float32).
"""

from typing import Any

import numpy as np

from pretrax.data import masking, noising
from pretrax.data.config import DataConfig
from pretrax.data.errors import InputError
from pretrax.data.row_store import Rows

OBJECTIVES = ("denoise", "span_corruption")
ROW_KINDS = {"denoise": "sentences", "span_corruption": "stream"}  # objective -> row kind
FEATURES = ("encoder_inputs", "encoder_segment_ids", "encoder_positions", "decoder_inputs",
            "decoder_targets", "decoder_segment_ids", "decoder_positions", "loss_weights")
MIN_SEQ_LEN = 8
_ROW_RNG_TAG = 0x5E25


def row_seq_len(config: DataConfig) -> int:
  """The seq_len of the row store the objective reads (span_corruption: the raw row length)."""
  if config.objective == "span_corruption":
    return noising.span_corruption_lengths(config.seq_len, config.noise_density,
                                           config.mean_noise_span_length)[0]
  return config.seq_len


def decoder_length(config: DataConfig) -> int:
  """T, the decoder positions of an example."""
  if config.objective == "span_corruption":
    return noising.span_corruption_lengths(config.seq_len, config.noise_density,
                                           config.mean_noise_span_length)[1]
  if config.objective == "seq2seq":  # data/seq2seq_pairs.py
    return config.seq_len
  return config.seq_len - 1  # the row's text (seq_len - 2) and eos


def sentinel_vocab(config: DataConfig, tokenizer: Any) -> int:
  """The ids the model must have: the tokenizer's, plus data.extra_ids sentinels for
  span_corruption (sentinel i is this minus 1 minus i, as T5's extra ids)."""
  extra = config.extra_ids if config.objective == "span_corruption" else 0
  return tokenizer.vocab_size + extra


def check_config(config: DataConfig, tokenizer: Any) -> None:
  """Raises InputError naming the field for settings the objective cannot run with."""
  if config.objective not in OBJECTIVES:
    raise InputError(f"data.objective={config.objective!r} is not an encoder-decoder objective; "
                     f"choose one of {' | '.join(OBJECTIVES)}")
  if not isinstance(config.seq_len, (int, np.integer)) or config.seq_len < MIN_SEQ_LEN:
    raise InputError(f"data.seq_len={config.seq_len!r} is too small for objective "
                     f"{config.objective!r}: it needs at least {MIN_SEQ_LEN} tokens per row")
  if config.objective == "denoise":
    noising.check_denoise_rates(config.denoise_mask_ratio, config.denoise_poisson_lambda,
                                config.denoise_random_ratio)
    return
  noising.check_span_corruption_rates(config.noise_density, config.mean_noise_span_length)
  _, spans = noising.span_corruption_counts(row_seq_len(config), config.noise_density,
                                            config.mean_noise_span_length)
  if spans > config.extra_ids:
    raise InputError(f"span_corruption rows of data.seq_len={config.seq_len} have {spans} noise "
                     f"spans, but data.extra_ids={config.extra_ids} sentinels; raise "
                     "data.extra_ids or lower data.seq_len")


def _example(inputs: np.ndarray, targets: np.ndarray, s: int, t: int,
             start_id: int) -> dict[str, np.ndarray]:
  """Encoder ids and target ids -> one example padded to [S] and [T] (both must fit)."""
  out = {k: np.zeros(s if k.startswith("encoder") else t, np.int32) for k in FEATURES}
  out["loss_weights"] = np.zeros(t, np.float32)
  n, m = len(inputs), len(targets)
  out["encoder_inputs"][:n] = inputs
  out["encoder_segment_ids"][:n] = 1
  out["encoder_positions"][:n] = np.arange(n)
  out["decoder_targets"][:m] = targets
  out["decoder_inputs"][:m] = np.concatenate([[start_id], targets[:-1]])
  out["decoder_segment_ids"][:m] = 1
  out["decoder_positions"][:m] = np.arange(m)
  out["loss_weights"][:m] = 1.0
  return out


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in FEATURES}


class _NoisedRows:
  """What both objectives share: the per-row generator, padding rows, stacking."""

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int, objective: str):
    if config.objective != objective:
      raise InputError(f"{type(self).__name__} draws {objective!r} examples, not "
                       f"data.objective={config.objective!r}")
    check_config(config, tokenizer)
    self.tokenizer, self.config, self.seed = tokenizer, config, seed
    self.s, self.t = config.seq_len, decoder_length(config)

  def rng(self, g: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, _ROW_RNG_TAG, g])

  def padding(self) -> dict[str, np.ndarray]:
    empty = np.zeros(0, np.int32)
    return _example(empty, empty, self.s, self.t, 0)

  def __call__(self, rows: Rows, stream_n: np.ndarray) -> dict[str, np.ndarray]:
    examples = []
    for i, g in enumerate(stream_n):
      n = int(np.count_nonzero(rows.segments[i]))
      if n == 0:
        examples.append(self.padding())
        continue
      inputs, targets = self.noise(rows.tokens[i, :n], rows.segments[i, :n], self.rng(int(g)))
      examples.append(_example(inputs, targets, self.s, self.t, self.tokenizer.bos_id))
    return _stack(examples)


class DenoisedRows(_NoisedRows):
  """Rows of sentences -> BART examples (a `global_batches.MakeExamples`)."""

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int):
    super().__init__(tokenizer, config, seed, "denoise")
    self.replacement_ids = masking.replacement_ids(tokenizer.vocab_size,
                                                   frozenset(tokenizer.special_ids))

  def noise(self, ids_t: np.ndarray, sentences_t: np.ndarray, rng: np.random.Generator):
    cfg, tok = self.config, self.tokenizer
    ids_t = ids_t.astype(np.int32)
    shuffled_t = ids_t
    if cfg.denoise_permute_sentences:
      shuffled_t, _ = noising.permute_sentences(ids_t, sentences_t, rng)
    noised = noising.text_infilling(
        shuffled_t, tok.word_starts(shuffled_t), rng, mask_ratio=cfg.denoise_mask_ratio,
        poisson_lambda=cfg.denoise_poisson_lambda, random_ratio=cfg.denoise_random_ratio,
        mask_id=tok.mask_id, replacement_ids=self.replacement_ids)
    inputs = np.concatenate([[tok.bos_id], noised[:self.s - 2], [tok.eos_id]])
    return inputs, np.concatenate([ids_t, [tok.eos_id]])


class SpanCorruptedRows(_NoisedRows):
  """Raw stream rows -> T5 examples (a `global_batches.MakeExamples`)."""

  def __init__(self, tokenizer: Any, config: DataConfig, seed: int):
    super().__init__(tokenizer, config, seed, "span_corruption")
    self.vocab_size = sentinel_vocab(config, tokenizer)

  def noise(self, ids_t: np.ndarray, segments_t: np.ndarray, rng: np.random.Generator):
    cfg = self.config
    return noising.span_corruption(
        ids_t, rng, noise_density=cfg.noise_density,
        mean_noise_span_length=cfg.mean_noise_span_length, vocab_size=self.vocab_size,
        eos_id=self.tokenizer.eos_id, max_sentinels=cfg.extra_ids)
