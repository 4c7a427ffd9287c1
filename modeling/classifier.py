"""A sequence classifier: a pretrained GPT or BERT backbone and one linear layer on top.

Which vector of the sequence the linear layer reads follows each model's paper:
  bert  the pooled [CLS] vector, tanh(dense(h_[CLS])) with the pretrained pooler, as in BERT
        (Devlin et al. 2019, §3 and §4.1): pooled -> dropout -> linear.
  gpt   the final hidden state of the last non-padding token (the closing </s>, GPT-1's
        "extract" token; Radford et al. 2018, §3.2-3.3): hidden -> dropout -> linear. The LM
        logits of the same sequences come back too, for the auxiliary language-modelling loss.

Parameters: {"backbone": the pretrained model's own tree, "head": {"w_io" [D, N], "b_o" [N]}}, so
a pretraining checkpoint's params are exactly `params["backbone"]`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import models
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.projection import Dense


class Classifier(nnx.Module):
  """[B, T] token ids -> [B, N] class logits (+ [B, T, V] LM logits for GPT)."""

  def __init__(self, config: ModelConfig, num_labels: int, *, dropout: float = 0.1,
               rngs: nnx.Rngs):
    if num_labels < 1:
      raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"config.finetune.classifier_dropout must be in [0, 1), got {dropout}")
    self.config = config
    self.num_labels = num_labels
    self.backbone = models.build(config, rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = Dense(config, config.d_model, num_labels, ("embed", None), rngs=rngs)

  def features(self, hidden_btd: jax.Array, segment_ids_bt: jax.Array) -> jax.Array:
    """[B, T, D] hidden states, [B, T] segment ids (rows left-aligned) -> [B, D] one per row."""
    if self.config.family == "bert":
      return self.backbone.pooled(hidden_btd)
    last_b = jnp.maximum(jnp.sum(segment_ids_bt > 0, axis=1) - 1, 0)  # all-padding rows: token 0
    return jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]

  def __call__(self, input_ids_bt: jax.Array, segment_ids_bt: jax.Array,
               token_type_ids_bt: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Returns (class logits [B, N] float32, LM logits [B, T, V] float32 for gpt, else None).

    `segment_ids_bt` is 1 on the tokens of each row and 0 on its right padding;
    `token_type_ids_bt` (BERT: 0 on [CLS] A [SEP], 1 on B [SEP]) is ignored by GPT. Passing
    `rngs` (with a "dropout" stream) turns dropout on, in the backbone and before the head.
    """
    types_bt = token_type_ids_bt if self.config.family == "bert" else None
    hidden_btd = self.backbone.hidden_states(input_ids_bt, segment_ids_bt, None, types_bt,
                                             rngs=rngs)
    features_bd = self.dropout(self.features(hidden_btd, segment_ids_bt),
                               deterministic=rngs is None, rngs=rngs)
    logits_bn = self.head(features_bd).astype(jnp.float32)
    lm_logits_btv = self.backbone.logits(hidden_btd) if self.config.family == "gpt" else None
    return logits_bn, lm_logits_btv
