"""Encoder-decoder pretraining (BART's denoise, T5's span_corruption): predict every target
token from the encoder's input and the targets before it.

Batches: data/seq2seq_pipeline.py FEATURES. One loss term, "", over the decoder targets, with
config.train.label_smoothing in training; validation reports the unsmoothed target loss, its
perplexity and token accuracy.
"""

import math

import jax
import jax.numpy as jnp

from pretrax.data import seq2seq_pipeline
from pretrax.training import losses, metrics as metrics_lib
from pretrax.training.config import Config, ConfigError
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
