"""Multi-head self-attention, the one function that decides who may attend to whom, and the table
of attention implementations.

Every implementation computes softmax(q·k / sqrt(K) + bias where mask) · v with one signature,

  fn(q_bthk, k_bshk, v_bshk, mask_b1ts, *, causal, block, dropout_rate, dropout_key,
     bias_bhts=None) -> out_bthk

and one padding convention: a query that sees no key (a padding token) outputs exactly 0.
`causal` promises that the mask allows no key after its query (an implementation may skip the
work above the diagonal; the mask still decides); `block` is the query block size of those that
work in blocks; `dropout_key` (None: no dropout) and `dropout_rate` drop attention probabilities,
which only einsum supports; `bias_bhts` (T5's relative positions) is added to the scaled scores,
which blockwise does not support. `config.attention_impl` picks the entry of `ATTENTION_IMPLS`:
  einsum       the reference: explicit einsums, float32 logits and softmax. Attention dropout.
  dot_product  `jax.nn.dot_product_attention` with the same boolean mask; JAX picks the backend.
  blockwise    `blockwise_attention.blockwise_attention`: query blocks, causal block skipping and
               a custom VJP that never holds the [B, H, T, S] scores at once.
benchmarks/RESULTS.md compares their speed.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.blockwise_attention import blockwise_attention
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.layers import apply_rope
from pretrax.modeling.projection import bias, compute_dtype, project, weight


def attention_mask(segment_ids_bt: jax.Array, causal: bool,
                   key_segment_ids_bs: jax.Array | None = None) -> jax.Array:
  """[B, T] int segment ids (0 = padding) -> [B, 1, T, S] bool, True where attention is allowed.

  Query t may see key s when both belong to the same (non-padding) segment and, if causal, s <= t.
  Packed documents therefore never see each other. Keys are the queries themselves (S = T) unless
  `key_segment_ids_bs` is given: cross-attention, where decoder tokens see the encoder tokens of
  their own packed example.
  """
  keys_bs = segment_ids_bt if key_segment_ids_bs is None else key_segment_ids_bs
  same = segment_ids_bt[:, :, None] == keys_bs[:, None, :]
  mask = same & (keys_bs > 0)[:, None, :]
  if causal:
    mask &= jnp.tril(jnp.ones(mask.shape[-2:], bool))
  return mask[:, None]


def _zero_queries_without_keys(out_bthk: jax.Array, mask_b1ts: jax.Array) -> jax.Array:
  """Sets the output of queries that see no key to 0 (the softmax left them a uniform average)."""
  seen_bt11 = jnp.any(mask_b1ts, axis=-1).transpose(0, 2, 1)[..., None]
  return jnp.where(seen_bt11, out_bthk, jnp.zeros_like(out_bthk))


def einsum_attention(q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array,
                     mask_b1ts: jax.Array, *, causal: bool, block: int, dropout_rate: float = 0.0,
                     dropout_key: jax.Array | None = None,
                     bias_bhts: jax.Array | None = None) -> jax.Array:
  """The reference: [B, T, H, K] queries, [B, S, H, K] keys and values -> [B, T, H, K].

  `causal` and `block` are unused: the full [B, H, T, S] scores are computed and masked.
  """
  del causal, block
  scale = 1.0 / math.sqrt(q_bthk.shape[-1])
  logits_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bshk,
                           preferred_element_type=jnp.float32) * scale
  if bias_bhts is not None:
    logits_bhts = logits_bhts + bias_bhts.astype(jnp.float32)
  # A finite minimum keeps rows with no visible key (padding queries) NaN-free.
  logits_bhts = jnp.where(mask_b1ts, logits_bhts, jnp.finfo(jnp.float32).min)
  probs_bhts = jax.nn.softmax(logits_bhts, axis=-1).astype(q_bthk.dtype)
  if dropout_key is not None and dropout_rate > 0:
    keep = 1.0 - dropout_rate
    keep_bhts = jax.random.bernoulli(dropout_key, p=keep, shape=probs_bhts.shape,
                                     out_sharding=jax.typeof(probs_bhts).sharding)
    probs_bhts = jax.lax.select(keep_bhts, probs_bhts / keep, jnp.zeros_like(probs_bhts))
  out_bthk = jnp.einsum("bhts,bshk->bthk", probs_bhts, v_bshk)
  return _zero_queries_without_keys(out_bthk, mask_b1ts)


def dot_product_attention(q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array,
                          mask_b1ts: jax.Array, *, causal: bool, block: int,
                          dropout_rate: float = 0.0,
                          dropout_key: jax.Array | None = None,
                          bias_bhts: jax.Array | None = None) -> jax.Array:
  """`jax.nn.dot_product_attention` with the boolean mask, [B, T, H, K] -> [B, T, H, K].

  `causal` and `block` are unused: the mask already holds causality.
  """
  del causal, block
  if dropout_key is not None and dropout_rate > 0:
    raise ValueError("attention_impl='dot_product' has no attention dropout; set "
                     "config.model.attention_dropout=0 or config.model.attention_impl=einsum")
  out_bthk = jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, bias=bias_bhts, mask=mask_b1ts,
                                          scale=1.0 / math.sqrt(q_bthk.shape[-1]))
  return _zero_queries_without_keys(out_bthk, mask_b1ts)


# config.attention_impl -> implementation; config.ATTENTION_IMPLS lists the same names.
ATTENTION_IMPLS = {"einsum": einsum_attention,
                   "dot_product": dot_product_attention,
                   "blockwise": blockwise_attention}


class MultiHeadAttention(nnx.Module):
  """Attention of [B, T, D] queries over themselves (self-attention) or over a [B, S, D] memory
  (cross-attention, the decoder's view of the encoder): q/k/v projections [D, H, K], rotary
  positions if configured (self-attention only), the `config.attention_impl` implementation,
  output projection [H, K, D].

  `causal` (default config.causal) promises the implementation that the masks it gets allow no
  later key.
  """

  def __init__(self, config: ModelConfig, *, causal: bool | None = None, rngs: nnx.Rngs):
    self.config = config
    self.causal = config.causal if causal is None else causal
    d, h, k = config.d_model, config.num_heads, config.attn_head_dim
    out_std = config.init_std / math.sqrt(2 * config.num_layers)
    self.w_q_dhk = weight(config, (d, h, k), ("embed", "heads", "kv"), rngs=rngs)
    self.w_k_dhk = weight(config, (d, h, k), ("embed", "heads", "kv"), rngs=rngs)
    self.w_v_dhk = weight(config, (d, h, k), ("embed", "heads", "kv"), rngs=rngs)
    self.w_o_hkd = weight(config, (h, k, d), ("heads", "kv", "embed"), rngs=rngs, std=out_std)
    self.b_q_hk = bias(config, (h, k), ("heads", "kv"), rngs=rngs)
    self.b_k_hk = bias(config, (h, k), ("heads", "kv"), rngs=rngs)
    self.b_v_hk = bias(config, (h, k), ("heads", "kv"), rngs=rngs)
    self.b_o_d = bias(config, (d,), ("embed",), rngs=rngs)

  def _heads(self, y_bsd: jax.Array, w_dhk: nnx.Param, b_hk: nnx.Param | None) -> jax.Array:
    """[B, S, D] -> [B, S, H, K] through one of the q/k/v projections."""
    y_bshk = project("bsd,dhk->bshk", y_bsd, w_dhk, b_hk, compute_dtype(self.config))
    return sharding.constrain(y_bshk, ("batch", "length", "heads", "kv"))

  def _scaled(self, q_bthk: jax.Array) -> jax.Array:
    if self.config.attention_scale:
      return q_bthk
    # cancels the implementations' 1/sqrt(K)
    return q_bthk * jnp.asarray(math.sqrt(self.config.attn_head_dim), q_bthk.dtype)

  def _qkv(self, x_btd: jax.Array, positions_bt: jax.Array, memory_bsd: jax.Array | None = None):
    """[B, T, D] -> queries [B, T, H, K]; keys and values [B, S, H, K] of the memory, or of x
    itself without one (then rotated with the queries if config.position is rope)."""
    cfg = self.config
    source_bsd = x_btd if memory_bsd is None else memory_bsd
    q_bthk = self._heads(x_btd, self.w_q_dhk, self.b_q_hk)
    k_bshk = self._heads(source_bsd, self.w_k_dhk, self.b_k_hk)
    v_bshk = self._heads(source_bsd, self.w_v_dhk, self.b_v_hk)
    if cfg.position == "rope" and memory_bsd is None:
      q_bthk = apply_rope(q_bthk, positions_bt, cfg.rope_theta)
      k_bshk = apply_rope(k_bshk, positions_bt, cfg.rope_theta)
    return self._scaled(q_bthk), k_bshk, v_bshk

  def _output(self, out_bthk: jax.Array) -> jax.Array:
    out_btd = project("bthk,hkd->btd", out_bthk, self.w_o_hkd, self.b_o_d,
                      compute_dtype(self.config))
    return sharding.constrain(out_btd, ("batch", "length", "embed"))

  def __call__(self, x_btd: jax.Array, mask_b1ts: jax.Array, positions_bt: jax.Array,
               rngs: nnx.Rngs | None = None, *, memory_bsd: jax.Array | None = None,
               bias_bhts: jax.Array | None = None) -> jax.Array:
    """[B, T, D] -> [B, T, D], attending over `memory_bsd` when given (cross-attention), with
    `bias_bhts` added to the scores; passing `rngs` (with a "dropout" stream) turns dropout on."""
    cfg = self.config
    q_bthk, k_bshk, v_bshk = self._qkv(x_btd, positions_bt, memory_bsd)
    dropout_key = rngs.dropout() if rngs is not None and cfg.attention_dropout > 0 else None
    out_bthk = ATTENTION_IMPLS[cfg.attention_impl](
        q_bthk, k_bshk, v_bshk, mask_b1ts, causal=self.causal, block=cfg.attention_block,
        dropout_rate=cfg.attention_dropout, dropout_key=dropout_key, bias_bhts=bias_bhts)
    return self._output(out_bthk)

  def cached(self, x_btd: jax.Array, positions_bt: jax.Array, k_cache_bshk: jax.Array,
             v_cache_bshk: jax.Array, *, bias_bhts: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal self-attention of T new tokens over a cache of S slots (decoding).

    Row b's new tokens sit at the consecutive positions positions_bt[b] (slot = position): their
    keys and values are written there, and each attends to the slots up to its own position,
    which hold that row's earlier tokens; `bias_bhts` [B, H, T, S] is added to the scores.
    Returns ([B, T, D], the updated key and value caches). The einsum reference computes it (the
    mask holds causality).
    """
    q_bthk, k_bthk, v_bthk = self._qkv(x_btd, positions_bt)
    write = jax.vmap(lambda cache, new, at: jax.lax.dynamic_update_slice(cache, new, (at, 0, 0)))
    k_cache_bshk = write(k_cache_bshk, k_bthk.astype(k_cache_bshk.dtype), positions_bt[:, 0])
    v_cache_bshk = write(v_cache_bshk, v_bthk.astype(v_cache_bshk.dtype), positions_bt[:, 0])
    slots_s = jnp.arange(k_cache_bshk.shape[1])
    mask_b1ts = (slots_s[None, None, :] <= positions_bt[:, :, None])[:, None]
    out_bthk = einsum_attention(q_bthk, k_cache_bshk, v_cache_bshk, mask_b1ts, causal=True,
                                block=0, bias_bhts=bias_bhts)
    return self._output(out_bthk), k_cache_bshk, v_cache_bshk

  def memory_keys_values(self, memory_bsd: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-attention: [B, S, D] encoder output -> its ([B, S, H, K] keys, values), computed
    once per decoded batch (`cached_over_memory` reads them at every step)."""
    return (self._heads(memory_bsd, self.w_k_dhk, self.b_k_hk),
            self._heads(memory_bsd, self.w_v_dhk, self.b_v_hk))

  def cached_over_memory(self, x_btd: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array,
                         memory_valid_bs: jax.Array) -> jax.Array:
    """Cross-attention of T new tokens over the encoder's precomputed keys and values, where
    `memory_valid_bs` (False: padding) allows -> [B, T, D]."""
    q_bthk = self._scaled(self._heads(x_btd, self.w_q_dhk, self.b_q_hk))
    t = x_btd.shape[1]
    mask_b1ts = jnp.broadcast_to(memory_valid_bs[:, None, None, :],
                                 (memory_valid_bs.shape[0], 1, t, memory_valid_bs.shape[1]))
    out_bthk = einsum_attention(q_bthk, k_bshk, v_bshk, mask_b1ts, causal=False, block=0)
    return self._output(out_bthk)
