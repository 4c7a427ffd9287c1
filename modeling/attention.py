"""Multi-head self-attention and the one function that decides who may attend to whom.

Two implementations of the same softmax(q·k / sqrt(K) masked) · v, chosen by
`config.attention_impl`:
  einsum       the reference: explicit einsums, float32 logits and softmax. Supports dropout.
  dot_product  `jax.nn.dot_product_attention` with the same boolean mask. No attention dropout.
               With `implementation=None` JAX picks the backend; in jax 0.10 that is always the
               XLA composition (cuDNN flash attention is only used when asked for by name).
Both give finite outputs for queries that see no key (padding): a uniform average over all keys.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.layers import apply_rope, compute_dtype


def attention_mask(segment_ids_bt: jax.Array, causal: bool) -> jax.Array:
  """[B, T] int segment ids (0 = padding) -> [B, 1, T, T] bool, True where attention is allowed.

  Query t may see key s when both belong to the same (non-padding) segment and, if causal, s <= t.
  Packed documents therefore never see each other.
  """
  same = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
  mask = same & (segment_ids_bt > 0)[:, None, :]
  if causal:
    mask &= jnp.tril(jnp.ones(mask.shape[-2:], bool))
  return mask[:, None]


class MultiHeadAttention(nnx.Module):
  """Self-attention over [B, T, D] with separate q/k/v projections ([D, H, K]) and output [H, K, D]."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    if config.attention_impl == "dot_product" and config.attention_dropout > 0:
      raise ValueError(
          f"config.model.attention_impl='dot_product' does not support attention dropout "
          f"(config.model.attention_dropout={config.attention_dropout}): "
          "jax.nn.dot_product_attention has no dropout. Set config.model.attention_dropout=0 or "
          "config.model.attention_impl=einsum")
    self.config = config
    d, h, k = config.d_model, config.num_heads, config.attn_head_dim
    init = nnx.initializers.normal(config.init_std)
    out_init = nnx.initializers.normal(config.init_std / math.sqrt(2 * config.num_layers))
    self.w_q_dhk = sharding.param(init, rngs.params(), (d, h, k), ("embed", "heads", "kv"))
    self.w_k_dhk = sharding.param(init, rngs.params(), (d, h, k), ("embed", "heads", "kv"))
    self.w_v_dhk = sharding.param(init, rngs.params(), (d, h, k), ("embed", "heads", "kv"))
    self.w_o_hkd = sharding.param(out_init, rngs.params(), (h, k, d), ("heads", "kv", "embed"))
    if config.use_bias:
      zeros = nnx.initializers.zeros
      self.b_q_hk = sharding.param(zeros, rngs.params(), (h, k), ("heads", "kv"))
      self.b_k_hk = sharding.param(zeros, rngs.params(), (h, k), ("heads", "kv"))
      self.b_v_hk = sharding.param(zeros, rngs.params(), (h, k), ("heads", "kv"))
      self.b_o_d = sharding.param(zeros, rngs.params(), (d,), ("embed",))
    self.dropout = nnx.Dropout(config.attention_dropout)

  def __call__(self, x_btd: jax.Array, mask_b1ts: jax.Array, positions_bt: jax.Array,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    x_btd = x_btd.astype(dtype)

    def project(w, b):
      y = jnp.einsum("btd,dhk->bthk", x_btd, w[...].astype(dtype))
      if cfg.use_bias:
        y = y + b[...].astype(dtype)
      return sharding.constrain(y, ("batch", "length", "heads", "kv"))

    q_bthk = project(self.w_q_dhk, getattr(self, "b_q_hk", None))
    k_bshk = project(self.w_k_dhk, getattr(self, "b_k_hk", None))
    v_bshk = project(self.w_v_dhk, getattr(self, "b_v_hk", None))
    if cfg.position == "rope":
      q_bthk = apply_rope(q_bthk, positions_bt, cfg.rope_theta)
      k_bshk = apply_rope(k_bshk, positions_bt, cfg.rope_theta)

    if cfg.attention_impl == "dot_product":
      out_bthk = jax.nn.dot_product_attention(q_bthk, k_bshk, v_bshk, mask=mask_b1ts,
                                              scale=1.0 / math.sqrt(cfg.attn_head_dim))
    else:
      out_bthk = self._einsum_attention(q_bthk, k_bshk, v_bshk, mask_b1ts, rngs)
    out_btd = jnp.einsum("bthk,hkd->btd", out_bthk, self.w_o_hkd[...].astype(dtype))
    if cfg.use_bias:
      out_btd = out_btd + self.b_o_d[...].astype(dtype)
    return sharding.constrain(out_btd, ("batch", "length", "embed"))

  def _einsum_attention(self, q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array,
                        mask_b1ts: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    """The reference path: [B, T, H, K] queries, [B, S, H, K] keys/values -> [B, T, H, K]."""
    scale = 1.0 / math.sqrt(self.config.attn_head_dim)
    logits_bhts = jnp.einsum("bthk,bshk->bhts", q_bthk, k_bshk,
                             preferred_element_type=jnp.float32) * scale
    # A finite minimum keeps rows with no visible key (padding queries) NaN-free.
    logits_bhts = jnp.where(mask_b1ts, logits_bhts, jnp.finfo(jnp.float32).min)
    probs_bhts = jax.nn.softmax(logits_bhts, axis=-1).astype(q_bthk.dtype)
    probs_bhts = self.dropout(probs_bhts, deterministic=rngs is None, rngs=rngs)
    return jnp.einsum("bhts,bshk->bthk", probs_bhts, v_bshk)
