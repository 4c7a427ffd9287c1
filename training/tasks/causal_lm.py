"""Causal language modelling (GPT): predict every next token of packed documents.

Batches (data/batches.py, packed rows): inputs, targets, segment_ids, positions [B, T] int32 and
loss_weights [B, T] float32 (0 on padding and across document boundaries). One loss term, "".
Validation adds bits per byte: the loss in bits over the UTF-8 bytes the targets stand for, so
runs with different tokenizers compare.
"""

import math
import shlex

import jax
import jax.numpy as jnp

from pretrax.training import losses, metrics as metrics_lib
from pretrax.training.tasks.pretraining import PretrainingTask


class CausalLM(PretrainingTask):
  terms = {"": 1.0}
  families = ("gpt",)

  def next_commands(self) -> list[str]:
    eval_command, *rest = super().next_commands()
    return [eval_command, f"pretrax sample --workdir={shlex.quote(self.workdir)} "
            '--prompt="The " --max_new_tokens=200', *rest]

  def weights(self, batch):
    return {"": jnp.sum(batch["loss_weights"])}

  def sums(self, model, batch, rngs=None):
    hidden_btd = model.hidden_states(batch["inputs"], batch["segment_ids"], batch["positions"],
                                     rngs=rngs)
    chunk = self.config.train.loss_chunk_size
    if chunk and chunk < hidden_btd.shape[1]:
      return losses.chunked_lm_sums(model.logits, hidden_btd, batch["targets"],
                                    batch["loss_weights"], chunk)
    return losses.cross_entropy_sums(model.logits(hidden_btd), batch["targets"],
                                     batch["loss_weights"])

  def token_bytes(self) -> jax.Array:
    """[V] float32: UTF-8 bytes each token id stands for (0 for specials and unused ids)."""
    return metrics_lib.token_bytes(self.tokenizer, self.config.model.vocab_size)

  def eval_sums(self, model, batch):
    """The loss sums plus text_loss_sum and byte_sum (metrics.text_byte_sums)."""
    sums_fn = lambda w: self.sums(model, dict(batch, loss_weights=w))
    return metrics_lib.text_byte_sums(sums_fn, batch["targets"], batch["loss_weights"],
                                      self.token_bytes())

  def summarize(self, totals):
    """Loss, accuracy, perplexity per token over all targets; bits per byte over the targets
    that stand for text (the definition is metrics.text_byte_sums's)."""
    out = super().summarize(totals)
    totals = jax.device_get(totals)
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
    out["tokens"] = int(totals["weight_sum"])
    if float(totals["byte_sum"]) > 0:
      out["bits_per_byte"] = (float(totals["text_loss_sum"]) / math.log(2)
                              / float(totals["byte_sum"]))
      out["bytes"] = int(totals["byte_sum"])
    return out

  def flops_per_token(self, n_params: int) -> float:
    return metrics_lib.flops_per_token(self.config.model, n_params, self.config.data.seq_len,
                                       self.config.data)
