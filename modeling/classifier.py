"""A sequence classifier: a pretrained GPT or BERT backbone and one linear layer on top.

Each example is K sequences ([B, K, T] token ids), folded into the batch ([B·K, T]) for the
backbone. Which vector of a sequence the linear layer reads follows each model's paper:
  bert  the pooled [CLS] vector, tanh(dense(h_[CLS])) with the pretrained pooler, as in BERT
        (Devlin et al. 2019, §3 and §4.1): pooled -> dropout -> linear.
  gpt   the final hidden state of the last non-padding token (the closing </s>, GPT-1's
        "extract" token; Radford et al. 2018, §3.2-3.3): hidden -> dropout -> linear. The LM
        logits of the same sequences come back too, for the auxiliary language-modelling loss.
How the K vectors of an example become logits (GPT-1 §3.3, "task-specific input transformations"):
  per_choice=False  added elementwise, then the linear layer: [B, N] class logits. K = 1 for a
                    single text or a pair; K = 2 for GPT similarity, both orderings of the pair.
  per_choice=True   the linear layer gives one scalar per sequence: [B, K] logits over K choices
                    (multiple choice), to be softmaxed over the choices.

Parameters: {"backbone": the pretrained model's own tree, "head": {"w_io" [D, N], "b_o" [N]}}
(N = 1 per choice), so a pretraining checkpoint's params are exactly `params["backbone"]`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import models
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.projection import Dense


class Classifier(nnx.Module):
  """[B, K, T] token ids -> [B, N] class logits or [B, K] choice logits (+ [B, K, T, V] LM
  logits for GPT)."""

  def __init__(self, config: ModelConfig, num_labels: int, *, dropout: float = 0.1,
               per_choice: bool = False, rngs: nnx.Rngs):
    if num_labels < 1:
      raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"config.finetune.classifier_dropout must be in [0, 1), got {dropout}")
    self.config = config
    self.num_labels = num_labels
    self.per_choice = per_choice
    self.backbone = models.build(config, rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = Dense(config, config.d_model, 1 if per_choice else num_labels, ("embed", None),
                      rngs=rngs)

  def features(self, hidden_btd: jax.Array, segment_ids_bt: jax.Array) -> jax.Array:
    """[B, T, D] hidden states, [B, T] segment ids (rows left-aligned) -> [B, D] one per row."""
    if self.config.family == "bert":
      return self.backbone.pooled(hidden_btd)
    last_b = jnp.maximum(jnp.sum(segment_ids_bt > 0, axis=1) - 1, 0)  # all-padding rows: token 0
    return jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]

  def __call__(self, input_ids_bkt: jax.Array, segment_ids_bkt: jax.Array,
               token_type_ids_bkt: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Returns (logits float32: [B, N] classes, or [B, K] choices when per_choice; LM logits
    [B, K, T, V] float32 for gpt, else None).

    `segment_ids_bkt` is 1 on the tokens of each sequence and 0 on its right padding;
    `token_type_ids_bkt` (BERT: 0 on [CLS] A [SEP], 1 on B [SEP]) is ignored by GPT. Passing
    `rngs` (with a "dropout" stream) turns dropout on, in the backbone and before the head.
    """
    b, k, t = input_ids_bkt.shape
    fold = lambda x_bkt: x_bkt.reshape(b * k, t)  # the K sequences of an example: K rows
    segment_ids_xt = fold(segment_ids_bkt)
    types_xt = fold(token_type_ids_bkt) if self.config.family == "bert" else None
    hidden_xtd = self.backbone.hidden_states(fold(input_ids_bkt), segment_ids_xt, None, types_xt,
                                             rngs=rngs)
    features_bkd = self.features(hidden_xtd, segment_ids_xt).reshape(b, k, -1)
    if self.per_choice:
      features_bkd = self.dropout(features_bkd, deterministic=rngs is None, rngs=rngs)
      logits = self.head(features_bkd)[..., 0].astype(jnp.float32)  # [B, K]
    else:
      # GPT-1 similarity: the orderings' final states added before the linear layer.
      features_bd = self.dropout(jnp.sum(features_bkd, axis=1), deterministic=rngs is None,
                                 rngs=rngs)
      logits = self.head(features_bd).astype(jnp.float32)  # [B, N]
    lm_logits_bktv = None
    if self.config.family == "gpt":
      lm_logits_bktv = self.backbone.logits(hidden_xtd).reshape(b, k, t, -1)
    return logits, lm_logits_bktv
