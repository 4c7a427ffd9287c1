"""Encoder-decoder training: predict every target token from the encoder's input and the targets
before it. `Seq2SeqLM` pretrains on a corpus (BART's denoise, T5's span_corruption);
`Seq2SeqPairs` trains on supervised source -> target pairs (seq2seq: data.train, data.eval).

Batches: data/seq2seq_pipeline.py FEATURES. One loss term, "", over the decoder targets, with
config.train.label_smoothing in training; validation reports the unsmoothed target loss, its
perplexity and token accuracy.
"""

import math

import jax
import jax.numpy as jnp

from pretrax.data import global_batches, seq2seq_pairs, seq2seq_pipeline
from pretrax.training import losses, metrics as metrics_lib
from pretrax.training.config import Config, ConfigError
from pretrax.training.tasks.base import Task
from pretrax.training.tasks.pretraining import PretrainingTask


class Seq2SeqLM(PretrainingTask):
  terms = {"": 1.0}
  families = ("encoder_decoder",)

  @classmethod
  def check_config(cls, config: Config) -> None:
    super().check_config(config)
    if config.train.loss_chunk_size:
      raise ConfigError("config.train.loss_chunk_size chunks the causal LM loss only; set it to 0 "
                        f"for data.objective={config.data.objective!r}")

  @property
  def decoder_length(self) -> int:
    return seq2seq_pipeline.decoder_length(self.config.data)

  def weights(self, batch):
    return {"": jnp.sum(batch["loss_weights"])}

  def sums(self, model, batch, rngs=None, label_smoothing=None):
    if label_smoothing is None:
      label_smoothing = self.config.train.label_smoothing
    logits_btv = model(batch["encoder_inputs"], batch["decoder_inputs"],
                       batch["encoder_segment_ids"], batch["decoder_segment_ids"],
                       batch["encoder_positions"], batch["decoder_positions"], rngs=rngs)
    return losses.cross_entropy_sums(logits_btv, batch["decoder_targets"], batch["loss_weights"],
                                     label_smoothing=label_smoothing)

  def eval_sums(self, model, batch):
    return self.sums(model, batch, label_smoothing=0.0)

  def summarize(self, totals):
    """Target loss (nats per target token, unsmoothed), its perplexity, token accuracy."""
    out = super().summarize(totals)
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
    out["tokens"] = int(jax.device_get(totals)["weight_sum"])
    return out

  @property
  def tokens_per_step(self) -> int:
    """Encoder and decoder positions of a global batch (the unit of tokens/s and of MFU)."""
    return self.config.train.batch_size * (self.config.data.seq_len + self.decoder_length)

  def describe_step(self) -> str:
    return (f"{self.config.train.batch_size}x({self.config.data.seq_len}+{self.decoder_length}) "
            "encoder+decoder tokens/step")

  def flops_per_token(self, n_params: int) -> float:
    return metrics_lib.encoder_decoder_flops_per_token(self.config.model, self.config.data.seq_len,
                                                       self.decoder_length)

  def next_commands(self) -> list[str]:
    # Fine-tuning a classifier on an encoder-decoder is not a task yet.
    return [c for c in super().next_commands() if "finetune" not in c]


class Seq2SeqPairs(Seq2SeqLM):
  """Supervised pairs from JSONL files or TFDS (data/seq2seq_pairs.py), several packed to a row:
  config.data.train, and config.data.eval for validation. Encoder and decoder have
  config.data.seq_len positions each."""

  @classmethod
  def check_config(cls, config: Config) -> None:
    super().check_config(config)
    if not config.data.train:
      raise ConfigError("config.data.train is empty: give the training pairs with "
                        "--config.data.train=FILE.jsonl ({\"source\": ..., \"target\": ...} lines) "
                        "or tfds:NAME[:SPLIT]")
    if config.data.tokenizer == "train":
      raise ConfigError("config.data.tokenizer=train trains on config.data.source, not on the "
                        "pairs of config.data.train; use byte or a SentencePiece .model")

  def _rows(self, spec: str, field: str) -> seq2seq_pairs.PackedPairs:
    data = self.config.data
    pairs = seq2seq_pairs.read_pairs(
        spec, field, default_split="train" if spec == data.train else "validation",
        data_dir=data.data_dir or None, features=data.pair_features)
    return seq2seq_pairs.PackedPairs(pairs, self.tokenizer, s=data.seq_len, t=data.seq_len,
                                     name=spec)

  def _batches(self, rows, *, shuffle: bool, repeat: bool, num_batches=None):
    size, seed = self.config.train.batch_size, self.config.train.seed
    return global_batches.GlobalBatches(
        rows, seq2seq_pairs.PairRows(s=self.config.data.seq_len, bos_id=self.tokenizer.bos_id),
        global_batch_size=size, seed=seed, shuffle=shuffle, repeat=repeat,
        num_batches=num_batches,
        rows=global_batches.process_slice(size, jax.process_index(), jax.process_count()))

  def data_fingerprint(self) -> dict:
    # The data position counts rows of the pairs file, not of config.data.source.
    return {**Task.data_fingerprint(self),
            "pairs": seq2seq_pairs.identity(self.config.data.train)}

  def train_batches(self):
    return self._batches(self._rows(self.config.data.train, "config.data.train"),
                         shuffle=self.config.data.shuffle, repeat=True)

  def eval_batches(self, max_batches: int | None, split: str | None = None):
    path = split or self.config.data.eval
    if not path:
      return None
    rows = self._rows(path, "--split" if split else "config.data.eval")
    return _closing(self._batches(rows, shuffle=False, repeat=False,
                                  num_batches=max_batches or None))

  def eval_data(self, split: str | None, max_batches: int | None):
    """`split`: None, "eval" or "validation": config.data.eval; "train": config.data.train;
    anything else a JSONL file of pairs or tfds:NAME[:SPLIT]."""
    data = self.config.data
    path = {None: data.eval, "eval": data.eval, "validation": data.eval,
            "train": data.train}.get(split, split)
    if not path:
      raise ConfigError(f"{self.workdir} has no config.data.eval; pass pairs with "
                        "--split=FILE.jsonl or tfds:NAME[:SPLIT]")
    if max_batches is None:
      max_batches = self.config.train.eval_steps
    return path, self.eval_batches(max_batches or None, path)


def _closing(reader: global_batches.GlobalBatches):
  """Yields the reader's batches and stops its threads when done (or abandoned)."""
  try:
    yield from reader
  finally:
    reader.close()
