"""The encoder-decoder (the Transformer, BART, T5): an encoder stack and a decoder stack of the
shared blocks, one token embedding for both, and an LM head on the decoder.

The decoder's blocks add cross-attention over the encoder's output, masked so that a decoder
token sees the encoder tokens of its own packed example only (attention.attention_mask with the
encoder's segment ids). What differs between the families is config:
  positions     learned tables (BART), sinusoids (Transformer), T5's relative bias: one
                `RelativePositionBias` per stack, bidirectional in the encoder, causal in the
                decoder, shared by the stack's self-attention layers (none in cross-attention)
  embeddings    times sqrt(d) (embed_scale), a norm after them (embed_norm)
  head          the token embedding (tie_embeddings), scaled by d**-0.5 first (tied_logit_scale,
                T5 v1.0), or a [D, V] head of its own (T5 v1.1); plus a [V] bias (BART)
and the block switches GPT and BERT use too (norm, norm_position, activation, attention_scale).
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
from pretrax.modeling.positions import RelativePositionBias, sinusoidal_positions
from pretrax.modeling.projection import compute_dtype, weight


def _default_positions(segment_ids_bt: jax.Array, positions_bt: jax.Array | None) -> jax.Array:
  if positions_bt is not None:
    return positions_bt
  b, t = segment_ids_bt.shape
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


class Stack(nnx.Module):
  """One side of the encoder-decoder: positions, embedding norm, blocks, final norm (pre-LN).

  The encoder's blocks are bidirectional; the decoder's (`decoder=True`) are causal and attend
  over the encoder's output too. The token embedding is the model's, shared by both stacks.
  """

  def __init__(self, config: ModelConfig, *, decoder: bool, rngs: nnx.Rngs):
    self.config = config
    self.decoder = decoder
    d = config.d_model
    if config.position == "learned":
      self.position_embed_pd = sharding.param(nnx.initializers.normal(config.init_std),
                                              rngs.params(), (config.max_seq_len, d),
                                              ("position", "embed"))
    elif config.position == "relative":
      self.relative_bias = RelativePositionBias(config, bidirectional=not decoder, rngs=rngs)
    if config.embed_norm:
      self.embed_norm = Norm(config, rngs=rngs)
    self.embed_dropout = nnx.Dropout(config.dropout)
    num_layers = config.num_decoder_layers if decoder else config.num_layers
    self.blocks = nnx.List([TransformerBlock(config, causal=decoder, cross_attention=decoder,
                                             rngs=rngs) for _ in range(num_layers)])
    if config.norm_position == "pre":
      self.final_norm = Norm(config, rngs=rngs)

  def __call__(self, tokens_btd: jax.Array, segment_ids_bt: jax.Array, positions_bt: jax.Array,
               rngs: nnx.Rngs | None = None, *, memory_bsd: jax.Array | None = None,
               memory_segment_ids_bs: jax.Array | None = None) -> jax.Array:
    """[B, T, D] token embeddings (scaled) -> [B, T, D] final hidden states. The decoder also
    takes the encoder's output `memory_bsd` and its segment ids."""
    cfg = self.config
    x_btd = self._inputs(tokens_btd, positions_bt, rngs)
    inputs = dict(mask_b1ts=attention_mask(segment_ids_bt, causal=self.decoder),
                  positions_bt=positions_bt)
    if cfg.position == "relative":
      inputs["bias_bhts"] = self.relative_bias(positions_bt, positions_bt)
    if self.decoder:
      inputs["memory_bsd"] = memory_bsd
      inputs["memory_mask_b1ts"] = attention_mask(segment_ids_bt, causal=False,
                                                  key_segment_ids_bs=memory_segment_ids_bs)
    x_btd = run_blocks(self.blocks, cfg, x_btd, rngs, **inputs)
    if cfg.norm_position == "pre":
      x_btd = self.final_norm(x_btd)
    return x_btd

  def _inputs(self, tokens_btd: jax.Array, positions_bt: jax.Array,
              rngs: nnx.Rngs | None) -> jax.Array:
    """Token embeddings + positions (learned, sinusoidal), normed if configured, in the compute
    dtype -> [B, T, D] block inputs."""
    cfg = self.config
    x_btd = tokens_btd
    if cfg.position == "learned":
      x_btd = x_btd + jnp.take(self.position_embed_pd[...], positions_bt, axis=0)
    elif cfg.position == "sinusoidal":
      x_btd = x_btd + sinusoidal_positions(positions_bt, cfg.d_model)
    if cfg.embed_norm:
      x_btd = self.embed_norm(x_btd)
    x_btd = x_btd.astype(compute_dtype(cfg))
    x_btd = self.embed_dropout(x_btd, deterministic=rngs is None, rngs=rngs)
    return sharding.constrain(x_btd, ("batch", "length", "embed"))

  def cached(self, tokens_btd: jax.Array, positions_bt: jax.Array, cache: dict
             ) -> tuple[jax.Array, dict]:
    """Decoding (the decoder stack): T new tokens per row at consecutive positions over the
    cache (`EncoderDecoder.init_cache`) -> ([B, T, D] final hidden states, the updated cache)."""
    cfg = self.config
    x_btd = self._inputs(tokens_btd, positions_bt, None)
    bias_bhts = None
    if cfg.position == "relative":
      b, slots = cache["self"][0][0].shape[:2]
      slots_bs = jnp.broadcast_to(jnp.arange(slots, dtype=jnp.int32), (b, slots))
      bias_bhts = self.relative_bias(positions_bt, slots_bs)
    updated = []
    for block, layer_cache, (k_bshk, v_bshk) in zip(self.blocks, cache["self"], cache["memory"],
                                                    strict=True):
      x_btd, layer_cache = block.cached(x_btd, positions_bt, layer_cache, bias_bhts=bias_bhts,
                                        memory=(k_bshk, v_bshk, cache["memory_valid_bs"]))
      updated.append(layer_cache)
    if cfg.norm_position == "pre":
      x_btd = self.final_norm(x_btd)
    return x_btd, {**cache, "self": updated}


class EncoderDecoder(nnx.Module):
  """Sequence to sequence. Call with [B, S] encoder ids and [B, T] decoder input ids (the targets
  shifted right after the start token); returns [B, T, V] float32 logits.

  Segment ids (0 = padding) separate packed examples on both sides: decoder tokens of segment k
  see only the encoder tokens of segment k. Positions restart at 0 in each example.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    if config.vocab_size <= 0:
      raise ValueError("config.model.vocab_size must be resolved (> 0) before building the model")
    self.config = config
    v, d = config.vocab_size, config.d_model
    self.token_embed_vd = sharding.param(nnx.initializers.normal(config.init_std), rngs.params(),
                                         (v, d), ("vocab", "embed"))
    self.encoder = Stack(config, decoder=False, rngs=rngs)
    self.decoder = Stack(config, decoder=True, rngs=rngs)
    if not config.tie_embeddings:
      self.lm_head_dv = weight(config, (d, v), ("embed", "vocab"), rngs=rngs)
    if config.final_logits_bias:
      self.final_logits_bias_v = sharding.param(nnx.initializers.zeros, rngs.params(), (v,),
                                                ("vocab",))

  def embed(self, ids_bt: jax.Array) -> jax.Array:
    """[B, T] ids -> [B, T, D] token embeddings, times sqrt(d) if config.embed_scale."""
    x_btd = jnp.take(self.token_embed_vd[...], ids_bt, axis=0)
    return x_btd * math.sqrt(self.config.d_model) if self.config.embed_scale else x_btd

  def encode(self, encoder_ids_bs: jax.Array, encoder_segment_ids_bs: jax.Array | None = None,
             encoder_positions_bs: jax.Array | None = None, *,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """[B, S] ids -> [B, S, D] encoder output (segment ids default to one example, no padding;
    positions to 0..S-1)."""
    if encoder_segment_ids_bs is None:
      encoder_segment_ids_bs = jnp.ones_like(encoder_ids_bs)
    positions_bs = _default_positions(encoder_segment_ids_bs, encoder_positions_bs)
    return self.encoder(self.embed(encoder_ids_bs), encoder_segment_ids_bs, positions_bs, rngs)

  def decode(self, memory_bsd: jax.Array, encoder_segment_ids_bs: jax.Array | None,
             decoder_ids_bt: jax.Array, decoder_segment_ids_bt: jax.Array | None = None,
             decoder_positions_bt: jax.Array | None = None, *,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """The encoder's output and [B, T] decoder input ids -> [B, T, D] decoder hidden states."""
    if encoder_segment_ids_bs is None:
      encoder_segment_ids_bs = jnp.ones(memory_bsd.shape[:2], jnp.int32)
    if decoder_segment_ids_bt is None:
      decoder_segment_ids_bt = jnp.ones_like(decoder_ids_bt)
    positions_bt = _default_positions(decoder_segment_ids_bt, decoder_positions_bt)
    return self.decoder(self.embed(decoder_ids_bt), decoder_segment_ids_bt, positions_bt, rngs,
                        memory_bsd=memory_bsd, memory_segment_ids_bs=encoder_segment_ids_bs)

  def init_cache(self, memory_bsd: jax.Array, encoder_segment_ids_bs: jax.Array, slots: int
                 ) -> dict:
    """The decoding cache for a batch of encoded sources (one example per row): per decoder
    layer, an empty self-attention (keys, values) cache of `slots` positions ("self", [B, slots,
    H, K] each, sharded like the attention's keys) and the cross-attention's keys and values of
    the encoder output ("memory", computed once here); "memory_valid_bs" marks the source tokens
    (segment id > 0)."""
    cfg = self.config
    b = memory_bsd.shape[0]
    shape = (b, slots, cfg.num_heads, cfg.attn_head_dim)

    def zeros():
      return sharding.constrain(jnp.zeros(shape, compute_dtype(cfg)),
                                ("batch", "length", "heads", "kv"))

    blocks = self.decoder.blocks
    return {"self": [(zeros(), zeros()) for _ in blocks],
            "memory": [block.cross_attn.memory_keys_values(memory_bsd) for block in blocks],
            "memory_valid_bs": encoder_segment_ids_bs > 0}

  def cached_logits(self, decoder_ids_bt: jax.Array, positions_bt: jax.Array, cache: dict
                    ) -> tuple[jax.Array, dict]:
    """Decoding: [B, T] new decoder tokens at `positions_bt` over the cache (`init_cache`) ->
    ([B, T, V] float32 logits, the updated cache). Row b's slots below positions_bt[b, 0] must
    hold its earlier decoder tokens."""
    hidden_btd, cache = self.decoder.cached(self.embed(decoder_ids_bt), positions_bt, cache)
    return self.logits(hidden_btd), cache

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """[B, T, D] decoder hidden states -> [B, T, V] float32 logits."""
    cfg = self.config
    dtype = compute_dtype(cfg)
    if cfg.tie_embeddings:
      if cfg.tied_logit_scale:
        hidden_btd = hidden_btd * (cfg.d_model ** -0.5)
      logits_btv = jnp.einsum("btd,vd->btv", hidden_btd.astype(dtype),
                              self.token_embed_vd[...].astype(dtype),
                              preferred_element_type=jnp.float32)
    else:
      logits_btv = jnp.einsum("btd,dv->btv", hidden_btd.astype(dtype),
                              self.lm_head_dv[...].astype(dtype),
                              preferred_element_type=jnp.float32)
    if cfg.final_logits_bias:
      logits_btv = logits_btv + self.final_logits_bias_v[...]
    return sharding.constrain(logits_btv, ("batch", "length", "vocab"))

  def __call__(self, encoder_ids_bs: jax.Array, decoder_ids_bt: jax.Array,
               encoder_segment_ids_bs: jax.Array | None = None,
               decoder_segment_ids_bt: jax.Array | None = None,
               encoder_positions_bs: jax.Array | None = None,
               decoder_positions_bt: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    memory_bsd = self.encode(encoder_ids_bs, encoder_segment_ids_bs, encoder_positions_bs,
                             rngs=rngs)
    hidden_btd = self.decode(memory_bsd, encoder_segment_ids_bs, decoder_ids_bt,
                             decoder_segment_ids_bt, decoder_positions_bt, rngs=rngs)
    return self.logits(hidden_btd)
