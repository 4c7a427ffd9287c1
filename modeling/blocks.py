"""The transformer block shared by the decoder (GPT) and the encoder (BERT).

The two differ only in the attention mask they are given (causal or not) and in what the config
says (norm placement, activation, positions); the block has no notion of which it is.
"""

import jax
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.attention import MultiHeadAttention
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.layers import MLP, Norm


class TransformerBlock(nnx.Module):
  """x + Attn(Norm(x)), then x + MLP(Norm(x)) (pre-LN); or Norm(x + Attn(x)), ... (post-LN)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.attn_norm = Norm(config, rngs=rngs)
    self.attn = MultiHeadAttention(config, rngs=rngs)
    self.mlp_norm = Norm(config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout)

  def __call__(self, x_btd: jax.Array, mask_b1ts: jax.Array, positions_bt: jax.Array,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return self._apply(x_btd, lambda y: self.attn(y, mask_b1ts, positions_bt, rngs), rngs)

  def cached(self, x_btd: jax.Array, positions_bt: jax.Array,
             cache: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Decoding: the block over T new tokens with this layer's (keys, values) cache
    (`MultiHeadAttention.cached`); returns ([B, T, D], the updated cache)."""
    updated = []

    def attend(y_btd):
      out_btd, k_cache, v_cache = self.attn.cached(y_btd, positions_bt, *cache)
      updated.append((k_cache, v_cache))
      return out_btd

    return self._apply(x_btd, attend, None), updated[0]

  def _apply(self, x_btd: jax.Array, attend, rngs: nnx.Rngs | None) -> jax.Array:
    deterministic = rngs is None

    def branch(y):
      return self.dropout(y, deterministic=deterministic, rngs=rngs)

    if self.config.norm_position == "pre":
      x_btd = x_btd + branch(attend(self.attn_norm(x_btd)))
      x_btd = x_btd + branch(self.mlp(self.mlp_norm(x_btd)))
    else:
      x_btd = self.attn_norm(x_btd + branch(attend(x_btd)))
      x_btd = self.mlp_norm(x_btd + branch(self.mlp(x_btd)))
    return sharding.constrain(x_btd, ("batch", "length", "embed"))
