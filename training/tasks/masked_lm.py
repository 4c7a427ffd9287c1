"""BERT pretraining: masked-token prediction (mlm), plus next-sentence (mlm+nsp) or
sentence-order prediction (mlm+sop) on [CLS] A [SEP] B [SEP] pairs.

Batches (data/batches.py: packed mlm rows masked as they are read, or sentence pairs drawn from
rows of sentences, both by data/bert_pipeline.py): input_ids, segment_ids, token_type_ids, positions [B, T];
masked_positions, masked_ids, masked_weights [B, P]; nsp_label [B]. Terms "mlm_" and, with pairs,
"nsp_" (used for both NSP and SOP), each weighted 1: the loss is their sum, as in BERT.
"""

import math

import jax
import jax.numpy as jnp

from pretrax.training import losses, metrics as metrics_lib
from pretrax.training.tasks.pretraining import PretrainingTask


def _pair_weights(batch) -> jax.Array:
  """[B] 1 for real pairs, 0 for all-padding rows (eval batches are padded with them)."""
  return (batch["segment_ids"][:, 0] > 0).astype(jnp.float32)


class MaskedLM(PretrainingTask):
  families = ("bert",)

  @property
  def terms(self):
    return {"mlm_": 1.0} | ({} if self.config.data.objective == "mlm" else {"nsp_": 1.0})

  def weights(self, batch):
    out = {"mlm_": jnp.sum(batch["masked_weights"])}
    if "nsp_" in self.terms:
      out["nsp_"] = jnp.sum(_pair_weights(batch))
    return out

  def sums(self, model, batch, rngs=None):
    mlm_bpv, nsp_b2 = model(batch["input_ids"], batch["masked_positions"], batch["segment_ids"],
                            batch["positions"], batch["token_type_ids"], rngs=rngs)
    sums = losses.cross_entropy_sums(mlm_bpv, batch["masked_ids"], batch["masked_weights"],
                                     prefix="mlm_")
    if "nsp_" in self.terms:
      sums |= losses.cross_entropy_sums(nsp_b2, batch["nsp_label"], _pair_weights(batch),
                                        prefix="nsp_")
    return sums

  def summarize(self, totals):
    out = super().summarize(totals)
    out["mlm_perplexity"] = math.exp(min(out["mlm_loss"], 50.0))
    out["tokens"] = int(jax.device_get(totals)["mlm_weight_sum"])
    return out

  def flops_per_token(self, n_params: int) -> float:
    return metrics_lib.flops_per_token(self.config.model, n_params, self.config.data.seq_len,
                                       self.config.data)
