"""Blockwise attention: queries in blocks, causal block skipping, and a memory-light custom VJP.

Queries go `block` at a time; a causal model skips the key blocks above the diagonal, and the
custom VJP keeps only the output and the log-sum-exp per query for the backward pass, which
recomputes the probabilities block by block. It never holds the [B, H, T, S] scores at once and
does ~(n + 1) / 2n of the score work for n causal blocks. Scores, softmax and log-sum-exp are
float32 whatever the input dtype.
"""

import functools
import math

import jax
import jax.numpy as jnp

from pretrax.modeling import sharding

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
                        mask_b1ts: jax.Array, *, causal: bool, block: int,
                        dropout_rate: float = 0.0,
                        dropout_key: jax.Array | None = None,
                        bias_bhts: jax.Array | None = None) -> jax.Array:
  """softmax(q·k / sqrt(K) where `mask_b1ts`) · v, [B, T, H, K] -> [B, T, H, K], `block`
  queries at a time.

  `causal` promises that the mask allows no key after its query, so the key blocks above the
  diagonal are skipped; the mask still decides within the computed blocks. Scores, softmax and
  log-sum-exp are float32 whatever the input dtype. A query that sees no key outputs 0.
  There is no attention dropout: a `dropout_key` with a positive `dropout_rate` is an error, and
  no score bias: `bias_bhts` must be None.
  """
  if bias_bhts is not None:
    raise ValueError("attention_impl='blockwise' takes no score bias (config.model.position="
                     "'relative'); use config.model.attention_impl=einsum or dot_product")
  if dropout_key is not None and dropout_rate > 0:
    raise ValueError("attention_impl='blockwise' has no attention dropout; set "
                     "config.model.attention_dropout=0 or config.model.attention_impl=einsum")
  if block <= 0:
    raise ValueError(f"config.model.attention_block must be positive, got {block}")
  if causal and q_bthk.shape[1] != k_bshk.shape[1]:
    raise ValueError(f"causal blockwise attention needs as many queries as keys, got "
                     f"{q_bthk.shape[1]} and {k_bshk.shape[1]}")
  return _blockwise(q_bthk, k_bshk, v_bshk, mask_b1ts, causal, block)
