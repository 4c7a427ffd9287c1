"""Norms, activations, the MLP, rotary positions: the pieces a transformer block is made of.

Layers take the model config and read the one switch that concerns them; they carry no flags of
their own.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.projection import bias, compute_dtype, project, weight


class Norm(nnx.Module):
  """LayerNorm (scale and, with use_bias, shift) or RMSNorm (scale only), per `config.norm`.

  Statistics are computed in float32 whatever the compute dtype.
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    d = config.d_model
    self.scale_d = sharding.param(nnx.initializers.ones, rngs.params(), (d,), ("embed",))
    if config.norm == "layernorm" and config.use_bias:
      self.bias_d = sharding.param(nnx.initializers.zeros, rngs.params(), (d,), ("embed",))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    cfg = self.config
    x = x_btd.astype(jnp.float32)
    if cfg.norm == "layernorm":
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)
    x = x * self.scale_d[...]
    if hasattr(self, "bias_d"):
      x = x + self.bias_d[...]
    return x.astype(compute_dtype(cfg))


def _gelu_erf(x: jax.Array) -> jax.Array:
  """x·Φ(x) = x/2·(1 + erf(x/√2)), the exact GELU as BERT and PyTorch write it.

  jax.nn.gelu(approximate=False) computes the same through erfc, which is slower on XLA's CPU
  backend (benchmarks/RESULTS.md).
  """
  return x * 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def activation(name: str, x: jax.Array) -> jax.Array:
  """The nonlinearity of `config.activation`; for gated names (swiglu, geglu), their gate's."""
  if name in ("gelu_tanh", "geglu"):
    return jax.nn.gelu(x, approximate=True)
  if name == "gelu":
    return _gelu_erf(x)
  if name == "relu":
    return jax.nn.relu(x)
  if name == "swiglu":
    return jax.nn.silu(x)
  raise ValueError(f"unknown activation {name!r}")


class MLP(nnx.Module):
  """[B, T, D] -> [B, T, D]: up-projection, activation (gated for swiglu/geglu), down-projection."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, f = config.d_model, config.mlp_dim
    out_std = config.init_std / math.sqrt(2 * config.num_layers)
    self.gated = config.activation in ("swiglu", "geglu")
    self.w_in_df = weight(config, (d, f), ("embed", "mlp"), rngs=rngs)
    if self.gated:
      self.w_gate_df = weight(config, (d, f), ("embed", "mlp"), rngs=rngs)
    self.w_out_fd = weight(config, (f, d), ("mlp", "embed"), rngs=rngs, std=out_std)
    self.b_in_f = bias(config, (f,), ("mlp",), rngs=rngs)
    if self.gated:
      self.b_gate_f = bias(config, (f,), ("mlp",), rngs=rngs)
    self.b_out_d = bias(config, (d,), ("embed",), rngs=rngs)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    h_btf = project("btd,df->btf", x_btd, self.w_in_df, self.b_in_f, dtype)
    if self.gated:
      gate_btf = project("btd,df->btf", x_btd, self.w_gate_df, self.b_gate_f, dtype)
      h_btf = activation(cfg.activation, gate_btf) * h_btf
    else:
      h_btf = activation(cfg.activation, h_btf)
    h_btf = sharding.constrain(h_btf, ("batch", "length", "mlp"))
    return project("btf,fd->btd", h_btf, self.w_out_fd, self.b_out_d, dtype)


def apply_rope(x_bthk: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
  """Rotates feature pairs (i, i + K/2) of each head by angle position * theta^(-2i/K)."""
  k = x_bthk.shape[-1]
  inv_freq_k2 = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  angles_btk2 = positions_bt[..., None].astype(jnp.float32) * inv_freq_k2
  sin, cos = jnp.sin(angles_btk2)[:, :, None, :], jnp.cos(angles_btk2)[:, :, None, :]
  x1, x2 = jnp.split(x_bthk.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_bthk.dtype)
