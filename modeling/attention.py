"""Multi-head self-attention and the one function that decides who may attend to whom.

Three implementations of the same softmax(q·k / sqrt(K) masked) · v, chosen by
`config.attention_impl`:
  einsum       the reference: explicit einsums, float32 logits and softmax. Supports dropout.
               Queries that see no key (padding) get a uniform average over all keys.
  dot_product  `jax.nn.dot_product_attention` with the same boolean mask. No attention dropout.
               With `implementation=None` JAX picks the backend; in jax 0.10 that is always the
               XLA composition (cuDNN flash attention is only used when asked for by name).
               Padding queries as einsum.
  blockwise    `blockwise_attention` below: queries in blocks of `config.attention_block`, a
               causal model skips the key blocks above the diagonal, and a custom VJP keeps only
               the output and the log-sum-exp per query for the backward pass, which recomputes
               the probabilities block by block. It never holds the [B, H, T, T] scores at once,
               does ~(n + 1) / 2n of the score work for n causal blocks, and is the fastest path
               on CPU (benchmarks/RESULTS.md). No attention dropout. Padding queries output 0
               (their loss weight is 0, so losses and gradients equal the reference's).
"""

import functools

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
    config.validate()  # e.g. attention dropout, which only the einsum path has
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

    if cfg.attention_impl == "blockwise":
      out_bthk = blockwise_attention(q_bthk, k_bshk, v_bshk, mask_b1ts, causal=cfg.causal,
                                     block=cfg.attention_block)
    elif cfg.attention_impl == "dot_product":
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


# Fill for masked scores: far below any real score, yet finite (exp(_MASKED - max) is 0).
_MASKED = -1e30


def _query_blocks(t: int, s: int, block: int, causal: bool) -> list[tuple[int, int, int]]:
  """(query start, query end, key end) per block of `block` queries; causal queries stop at
  their block's last position, so the key blocks above the diagonal are never computed."""
  return [(start, min(start + block, t), min(start + block, s) if causal else s)
          for start in range(0, t, block)]


def _block_forward(q_bhtk, k_bhsk, v_bhsk, mask_b1ts, scale):
  """One query block: output [B, H, t, K] and log-sum-exp [B, H, t, 1], both float32.
  A query that sees no key gets output 0 and log-sum-exp 0."""
  s_bhts = jnp.einsum("bhtk,bhsk->bhts", q_bhtk, k_bhsk,
                      preferred_element_type=jnp.float32) * scale
  s_bhts = jnp.where(mask_b1ts, s_bhts, _MASKED)
  m_bht1 = jnp.max(s_bhts, axis=-1, keepdims=True)
  e_bhts = jnp.where(mask_b1ts, jnp.exp(s_bhts - m_bht1), 0.0)
  l_bht1 = jnp.sum(e_bhts, axis=-1, keepdims=True)
  seen_bht1 = l_bht1 > 0
  l_bht1 = jnp.where(seen_bht1, l_bht1, 1.0)
  o_bhtk = jnp.einsum("bhts,bhsk->bhtk", e_bhts.astype(v_bhsk.dtype), v_bhsk,
                      preferred_element_type=jnp.float32) / l_bht1
  lse_bht1 = jnp.where(seen_bht1, m_bht1 + jnp.log(l_bht1), 0.0)
  return o_bhtk, lse_bht1


def _block_backward(q_bhtk, k_bhsk, v_bhsk, mask_b1ts, o_bhtk, lse_bht1, do_bhtk, scale):
  """Gradients (dq [B, H, t, K], dk and dv [B, H, s, K]) of one query block, float32."""
  dtype = q_bhtk.dtype
  s_bhts = jnp.einsum("bhtk,bhsk->bhts", q_bhtk, k_bhsk,
                      preferred_element_type=jnp.float32) * scale
  p_bhts = jnp.where(mask_b1ts, jnp.exp(s_bhts - lse_bht1), 0.0)
  dv_bhsk = jnp.einsum("bhts,bhtk->bhsk", p_bhts.astype(dtype), do_bhtk,
                       preferred_element_type=jnp.float32)
  dp_bhts = jnp.einsum("bhtk,bhsk->bhts", do_bhtk, v_bhsk, preferred_element_type=jnp.float32)
  delta_bht1 = jnp.sum(do_bhtk.astype(jnp.float32) * o_bhtk, axis=-1, keepdims=True)
  ds_bhts = (p_bhts * (dp_bhts - delta_bht1) * scale).astype(dtype)
  dq_bhtk = jnp.einsum("bhts,bhsk->bhtk", ds_bhts, k_bhsk, preferred_element_type=jnp.float32)
  dk_bhsk = jnp.einsum("bhts,bhtk->bhsk", ds_bhts, q_bhtk, preferred_element_type=jnp.float32)
  return dq_bhtk, dk_bhsk, dv_bhsk


def _heads_first(x_bthk: jax.Array) -> jax.Array:
  return sharding.constrain(x_bthk.transpose(0, 2, 1, 3), ("batch", "heads", "length", "kv"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blockwise(q_bthk, k_bshk, v_bshk, mask_b1ts, causal, block):
  return _blockwise_forward(q_bthk, k_bshk, v_bshk, mask_b1ts, causal, block)[0]


def _blockwise_forward(q_bthk, k_bshk, v_bshk, mask_b1ts, causal, block):
  q_bhtk, k_bhsk, v_bhsk = _heads_first(q_bthk), _heads_first(k_bshk), _heads_first(v_bshk)
  scale = 1.0 / math.sqrt(q_bthk.shape[-1])
  outs, lses = [], []
  for start, end, key_end in _query_blocks(q_bthk.shape[1], k_bshk.shape[1], block, causal):
    o_bhtk, lse_bht1 = _block_forward(q_bhtk[:, :, start:end], k_bhsk[:, :, :key_end],
                                      v_bhsk[:, :, :key_end],
                                      mask_b1ts[:, :, start:end, :key_end], scale)
    outs.append(o_bhtk)
    lses.append(lse_bht1)
  # The float32 output is kept for the backward pass: its row sums against the output
  # gradient (delta) cancel against dp, and a bfloat16-rounded output would make them noisy.
  o_bhtk = jnp.concatenate(outs, axis=2)
  residuals = (q_bhtk, k_bhsk, v_bhsk, mask_b1ts, o_bhtk, jnp.concatenate(lses, axis=2))
  return o_bhtk.astype(q_bthk.dtype).transpose(0, 2, 1, 3), residuals


def _blockwise_backward(causal, block, residuals, dout_bthk):
  q_bhtk, k_bhsk, v_bhsk, mask_b1ts, o_bhtk, lse_bht1 = residuals
  do_bhtk = _heads_first(dout_bthk)
  scale = 1.0 / math.sqrt(q_bhtk.shape[-1])
  s = k_bhsk.shape[2]
  dqs, dk_bhsk, dv_bhsk = [], 0.0, 0.0
  for start, end, key_end in _query_blocks(q_bhtk.shape[2], s, block, causal):
    dq, dk, dv = _block_backward(q_bhtk[:, :, start:end], k_bhsk[:, :, :key_end],
                                 v_bhsk[:, :, :key_end], mask_b1ts[:, :, start:end, :key_end],
                                 o_bhtk[:, :, start:end], lse_bht1[:, :, start:end],
                                 do_bhtk[:, :, start:end], scale)
    dqs.append(dq)
    pad = [(0, 0), (0, 0), (0, s - key_end), (0, 0)]
    dk_bhsk = dk_bhsk + jnp.pad(dk, pad)
    dv_bhsk = dv_bhsk + jnp.pad(dv, pad)
  back = lambda x, like: x.transpose(0, 2, 1, 3).astype(like.dtype)
  return (back(jnp.concatenate(dqs, axis=2), q_bhtk), back(dk_bhsk, k_bhsk),
          back(dv_bhsk, v_bhsk), None)


_blockwise.defvjp(_blockwise_forward, _blockwise_backward)


def blockwise_attention(q_bthk: jax.Array, k_bshk: jax.Array, v_bshk: jax.Array,
                        mask_b1ts: jax.Array, *, causal: bool, block: int) -> jax.Array:
  """softmax(q·k / sqrt(K) where `mask_b1ts`) · v, [B, T, H, K] -> [B, T, H, K], `block`
  queries at a time.

  `causal` promises that the mask allows no key after its query, so the key blocks above the
  diagonal are skipped; the mask still decides within the computed blocks. Scores, softmax and
  log-sum-exp are float32 whatever the input dtype. A query that sees no key outputs 0.
  """
  if block <= 0:
    raise ValueError(f"config.model.attention_block must be positive, got {block}")
  if causal and q_bthk.shape[1] != k_bshk.shape[1]:
    raise ValueError(f"causal blockwise attention needs as many queries as keys, got "
                     f"{q_bthk.shape[1]} and {k_bshk.shape[1]}")
  return _blockwise(q_bthk, k_bshk, v_bshk, mask_b1ts, causal, block)
