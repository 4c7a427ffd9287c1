"""GPT: token + position embeddings, a stack of causal blocks, a final norm and a tied LM head."""

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.attention import attention_mask
from pretrax.modeling.blocks import TransformerBlock
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.layers import Norm, compute_dtype


class GPT(nnx.Module):
  """Causal language model. Call with [B, T] token ids; returns [B, T, V] float32 logits."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    config.validate()
    if config.vocab_size <= 0:
      raise ValueError("config.model.vocab_size must be resolved (> 0) before building the model")
    self.config = config
    init = nnx.initializers.normal(config.init_std)
    self.token_embed_vd = sharding.param(init, rngs.params(), (config.vocab_size, config.d_model),
                                         ("vocab", "embed"))
    if config.position == "learned":
      self.position_embed_pd = sharding.param(init, rngs.params(),
                                              (config.max_seq_len, config.d_model),
                                              ("position", "embed"))
    self.embed_dropout = nnx.Dropout(config.dropout)
    self.blocks = nnx.List([TransformerBlock(config, rngs=rngs) for _ in range(config.num_layers)])
    if config.norm_position == "pre":
      self.final_norm = Norm(config, rngs=rngs)

  def hidden_states(self, inputs_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
                    positions_bt: jax.Array | None = None, *,
                    rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, T] ids -> [B, T, D] final hidden states (after the final norm).

    `segment_ids_bt` (default: one document, no padding) separates packed documents and marks
    padding with 0; `positions_bt` (default: 0..T-1) restarts at 0 for each packed document.
    Passing `rngs` (with a "dropout" stream) turns dropout on.
    """
    cfg = self.config
    b, t = inputs_bt.shape
    if segment_ids_bt is None:
      segment_ids_bt = jnp.ones((b, t), jnp.int32)
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x_btd = jnp.take(self.token_embed_vd[...], inputs_bt, axis=0)
    if cfg.position == "learned":
      x_btd = x_btd + jnp.take(self.position_embed_pd[...], positions_bt, axis=0)
    x_btd = x_btd.astype(compute_dtype(cfg))
    x_btd = self.embed_dropout(x_btd, deterministic=rngs is None, rngs=rngs)
    x_btd = sharding.constrain(x_btd, ("batch", "length", "embed"))
    mask_b1ts = attention_mask(segment_ids_bt, causal=cfg.causal)
    for block in self.blocks:
      x_btd = block(x_btd, mask_b1ts, positions_bt, rngs)
    if cfg.norm_position == "pre":
      x_btd = self.final_norm(x_btd)
    return x_btd

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, V] float32 logits through the tied token embedding."""
    dtype = compute_dtype(self.config)
    logits_btv = jnp.einsum("btd,vd->btv", hidden_btd.astype(dtype),
                            self.token_embed_vd[...].astype(dtype),
                            preferred_element_type=jnp.float32)
    return sharding.constrain(logits_btv, ("batch", "length", "vocab"))

  def __call__(self, inputs_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
               positions_bt: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.logits(self.hidden_states(inputs_bt, segment_ids_bt, positions_bt, rngs=rngs))
