"""Position signals that are not a learned table: the Transformer's sinusoids and T5's bucketed
relative attention bias. (Rotary positions act on queries and keys: layers.apply_rope.)"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.config import ModelConfig


def sinusoidal_positions(positions_bt: jax.Array, d: int) -> jax.Array:
  """[B, T] positions -> [B, T, D] float32: the Transformer paper's sin(p / 10000^(2i/D)) in the
  first ceil(D/2) features and cos(p / 10000^(2i/D)) in the rest (i = 0, 1, ...), the layout of
  Marian's (transformers.MarianMTModel) tables."""
  p_bt1 = positions_bt[..., None].astype(jnp.float32)
  freq = lambda n: jnp.exp(jnp.arange(n, dtype=jnp.float32) * (-2.0 * math.log(10_000.0) / d))
  return jnp.concatenate([jnp.sin(p_bt1 * freq(d - d // 2)), jnp.cos(p_bt1 * freq(d // 2))],
                         axis=-1)


def relative_position_bucket(relative_bts: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """Key position minus query position -> int32 bucket, as T5 buckets it.

  Half the buckets (all of them when causal, where only the past counts) hold exact distances
  0, 1, ...; the other half cover distances up to `max_distance` on a log scale, and farther ones
  share the last bucket. Bidirectional: keys after the query get the upper half of the buckets.
  """
  buckets = jnp.zeros_like(relative_bts, jnp.int32)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_bts > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_bts)
  else:
    distance = -jnp.minimum(relative_bts, 0)
  max_exact = num_buckets // 2
  # max(distance, 1): the log branch is only taken from max_exact on; 0 would give -inf there.
  log_ratio = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
               / math.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nnx.Module):
  """T5's relative attention bias: a [buckets, H] table, one per stack, read by bucket of
  (key position - query position) and added to every self-attention layer's scores."""

  def __init__(self, config: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs):
    self.config = config
    self.bidirectional = bidirectional
    self.table_rh = sharding.param(nnx.initializers.normal(config.init_std), rngs.params(),
                                   (config.relative_buckets, config.num_heads), (None, "heads"))

  def __call__(self, query_positions_bt: jax.Array, key_positions_bs: jax.Array) -> jax.Array:
    """[B, T] query and [B, S] key positions (restarting in each packed example) -> [B, H, T, S]
    float32 bias."""
    cfg = self.config
    relative_bts = key_positions_bs[:, None, :] - query_positions_bt[:, :, None]
    bucket_bts = relative_position_bucket(relative_bts, bidirectional=self.bidirectional,
                                          num_buckets=cfg.relative_buckets,
                                          max_distance=cfg.relative_max_distance)
    bias_btsh = jnp.take(self.table_rh[...], bucket_bts, axis=0)
    return bias_btsh.transpose(0, 3, 1, 2).astype(jnp.float32)
