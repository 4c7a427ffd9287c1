"""BERT: the shared stack, bidirectional, with MLM, pooler/NSP and classification heads."""

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.layers import Norm, activation
from pretrax.modeling.projection import Dense
from pretrax.modeling.transformer import Transformer


class BERT(Transformer):
  """Bidirectional encoder (config.family == "bert").

  - MLM head: dense + activation + norm, then the token embedding (tied) + an output bias,
    computed only at the gathered masked positions.
  - Pooler: dense + tanh on the first ([CLS]) token; NSP head: a 2-way classifier on it.
  """

  def __init__(self, config, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    d = config.d_model
    self.mlm_dense = Dense(config, d, d, ("embed", "mlp"), rngs=rngs)
    self.mlm_norm = Norm(config, rngs=rngs)
    self.mlm_bias_v = sharding.param(nnx.initializers.zeros, rngs.params(), (config.vocab_size,),
                                     ("vocab",))
    self.pooler = Dense(config, d, d, ("embed", "mlp"), rngs=rngs)
    self.nsp = Dense(config, d, 2, ("embed", None), rngs=rngs)

  def mlm_logits(self, hidden_btd: jax.Array, masked_positions_bp: jax.Array) -> jax.Array:
    """[B, T, D] hidden, [B, P] positions -> [B, P, V] float32 logits at those positions only."""
    hidden_bpd = jnp.take_along_axis(hidden_btd, masked_positions_bp[..., None], axis=1)
    h_bpd = self.mlm_norm(activation(self.config.activation, self.mlm_dense(hidden_bpd)))
    return self.tied_logits(h_bpd) + self.mlm_bias_v[...]

  def pooled(self, hidden_btd: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, D]: tanh(dense(hidden of the first token, [CLS]))."""
    return jnp.tanh(self.pooler(hidden_btd[:, 0]))

  def nsp_logits(self, pooled_bd: jax.Array) -> jax.Array:
    """[B, D] -> [B, 2] float32: 0 = B follows A (in order), 1 = random (NSP) / swapped (SOP)."""
    return self.nsp(pooled_bd).astype(jnp.float32)

  def __call__(self, input_ids_bt: jax.Array, masked_positions_bp: jax.Array,
               segment_ids_bt: jax.Array | None = None, positions_bt: jax.Array | None = None,
               token_type_ids_bt: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (MLM logits [B, P, V], NSP logits [B, 2])."""
    hidden_btd = self.hidden_states(input_ids_bt, segment_ids_bt, positions_bt,
                                    token_type_ids_bt, rngs=rngs)
    return self.mlm_logits(hidden_btd, masked_positions_bp), self.nsp_logits(self.pooled(hidden_btd))

