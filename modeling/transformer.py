"""The stack GPT and BERT share: embeddings, transformer blocks, final norm, tied projection.

What differs between the two lives in the config (causality, token types, embedding norm, norm
placement, activation) and in the heads their subclasses add.

How the blocks run (config.remat, config.scan_layers) is decided by `blocks.run_blocks`.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.attention import attention_mask
from pretrax.modeling.blocks import TransformerBlock, run_blocks
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.layers import Norm
from pretrax.modeling.positions import sinusoidal_positions
from pretrax.modeling.projection import compute_dtype


class Transformer(nnx.Module):
  """Token (times sqrt(d) if config.embed_scale; + position, + token-type) embeddings -> blocks
  -> final norm (pre-LN only).

  Build it with `models.build`, which validates the config once for the whole model.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    if config.vocab_size <= 0:
      raise ValueError("config.model.vocab_size must be resolved (> 0) before building the model")
    self.config = config
    init = nnx.initializers.normal(config.init_std)
    d = config.d_model
    self.token_embed_vd = sharding.param(init, rngs.params(), (config.vocab_size, d),
                                         ("vocab", "embed"))
    if config.position == "learned":
      self.position_embed_pd = sharding.param(init, rngs.params(), (config.max_seq_len, d),
                                              ("position", "embed"))
    if config.type_vocab_size:
      self.type_embed_yd = sharding.param(init, rngs.params(), (config.type_vocab_size, d),
                                          (None, "embed"))
    if config.embed_norm:
      self.embed_norm = Norm(config, rngs=rngs)
    self.embed_dropout = nnx.Dropout(config.dropout)
    self.blocks = nnx.List([TransformerBlock(config, rngs=rngs) for _ in range(config.num_layers)])
    if config.norm_position == "pre":
      self.final_norm = Norm(config, rngs=rngs)

  def hidden_states(self, inputs_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
                    positions_bt: jax.Array | None = None, token_type_ids_bt: jax.Array | None = None,
                    *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, T] ids -> [B, T, D] final hidden states.

    `segment_ids_bt` (default: one document, no padding) separates packed documents and marks
    padding with 0; `positions_bt` (default: 0..T-1) restarts at 0 for each packed document;
    `token_type_ids_bt` (default 0) selects sentence A/B embeddings when the model has them.
    Passing `rngs` (with a "dropout" stream) turns dropout on.
    """
    cfg = self.config
    b, t = inputs_bt.shape
    if segment_ids_bt is None:
      segment_ids_bt = jnp.ones((b, t), jnp.int32)
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x_btd = self.embed(inputs_bt, positions_bt, token_type_ids_bt, rngs)
    mask_b1ts = attention_mask(segment_ids_bt, causal=cfg.causal)
    x_btd = self.run_blocks(x_btd, mask_b1ts, positions_bt, rngs)
    if cfg.norm_position == "pre":
      x_btd = self.final_norm(x_btd)
    return x_btd

  def embed(self, inputs_bt: jax.Array, positions_bt: jax.Array,
            token_type_ids_bt: jax.Array | None = None,
            rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, T] ids at `positions_bt` -> [B, T, D] block inputs (embeddings summed, normed if
    configured, in the compute dtype)."""
    cfg = self.config
    x_btd = jnp.take(self.token_embed_vd[...], inputs_bt, axis=0)
    if cfg.embed_scale:
      x_btd = x_btd * math.sqrt(cfg.d_model)
    if cfg.position == "learned":
      x_btd = x_btd + jnp.take(self.position_embed_pd[...], positions_bt, axis=0)
    elif cfg.position == "sinusoidal":
      x_btd = x_btd + sinusoidal_positions(positions_bt, cfg.d_model)
    if cfg.type_vocab_size:
      types_bt = jnp.zeros_like(inputs_bt) if token_type_ids_bt is None else token_type_ids_bt
      x_btd = x_btd + jnp.take(self.type_embed_yd[...], types_bt, axis=0)
    if cfg.embed_norm:
      x_btd = self.embed_norm(x_btd)
    x_btd = x_btd.astype(compute_dtype(cfg))
    x_btd = self.embed_dropout(x_btd, deterministic=rngs is None, rngs=rngs)
    return sharding.constrain(x_btd, ("batch", "length", "embed"))

  def init_cache(self, batch: int, slots: int) -> dict:
    """An empty key/value cache of `slots` positions per row: "self", per layer ([B, S, H, K]
    keys, values), in the compute dtype, sharded like the attention's keys."""
    cfg = self.config
    shape = (batch, slots, cfg.num_heads, cfg.attn_head_dim)

    def zeros():
      return sharding.constrain(jnp.zeros(shape, compute_dtype(cfg)),
                                ("batch", "length", "heads", "kv"))

    return {"self": [(zeros(), zeros()) for _ in range(cfg.num_layers)]}

  def cached_hidden_states(self, inputs_bt: jax.Array, positions_bt: jax.Array, cache: dict
                           ) -> tuple[jax.Array, dict]:
    """Decoding (causal models): T new tokens per row at consecutive positions, attending to
    the cache (`init_cache`) -> ([B, T, D] final hidden states, the updated cache). Row b's
    slots up to positions_bt[b, 0] must hold its earlier tokens."""
    if not self.config.causal:
      raise ValueError("cached decoding needs a causal model (config.model.causal)")
    x_btd = self.embed(inputs_bt, positions_bt)
    updated = []
    for block, layer_cache in zip(self.blocks, cache["self"], strict=True):
      x_btd, layer_cache = block.cached(x_btd, positions_bt, layer_cache)
      updated.append(layer_cache)
    if self.config.norm_position == "pre":
      x_btd = self.final_norm(x_btd)
    return x_btd, {"self": updated}

  def run_blocks(self, x_btd: jax.Array, mask_b1ts: jax.Array, positions_bt: jax.Array,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, T, D] -> [B, T, D] through every block (`blocks.run_blocks`)."""
    return run_blocks(self.blocks, self.config, x_btd, rngs, mask_b1ts=mask_b1ts,
                      positions_bt=positions_bt)

  def tied_logits(self, hidden_xd: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] float32 logits through the (tied) token embedding."""
    dtype = compute_dtype(self.config)
    return jnp.einsum("...d,vd->...v", hidden_xd.astype(dtype),
                      self.token_embed_vd[...].astype(dtype), preferred_element_type=jnp.float32)
