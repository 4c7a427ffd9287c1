"""Norms, the MLP, rotary positions: the pieces a transformer block is made of.

Layers take the model config and read the one switch that concerns them; they carry no flags of
their own.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.config import ModelConfig


def compute_dtype(config: ModelConfig) -> jnp.dtype:
  return jnp.dtype(config.dtype)


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

  jax.nn.gelu(approximate=False) computes the same through erfc, which XLA's CPU backend
  evaluates about 2x slower (forward and backward); the two differ by < 1e-6.
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


class Dense(nnx.Module):
  """[..., I] -> [..., O]: x @ w (+ b when config.use_bias), in the compute dtype."""

  def __init__(self, config: ModelConfig, in_dim: int, out_dim: int,
               names: tuple[str | None, str | None], *, rngs: nnx.Rngs):
    self.config = config
    self.w_io = sharding.param(nnx.initializers.normal(config.init_std), rngs.params(),
                               (in_dim, out_dim), names)
    if config.use_bias:
      self.b_o = sharding.param(nnx.initializers.zeros, rngs.params(), (out_dim,), names[1:])

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = compute_dtype(self.config)
    y = jnp.einsum("...i,io->...o", x.astype(dtype), self.w_io[...].astype(dtype))
    return y + self.b_o[...].astype(dtype) if self.config.use_bias else y


class MLP(nnx.Module):
  """[B, T, D] -> [B, T, D]: up-projection, activation (gated for swiglu/geglu), down-projection."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, f = config.d_model, config.mlp_dim
    init = nnx.initializers.normal(config.init_std)
    out_init = nnx.initializers.normal(config.init_std / math.sqrt(2 * config.num_layers))
    zeros = nnx.initializers.zeros
    self.gated = config.activation in ("swiglu", "geglu")
    self.w_in_df = sharding.param(init, rngs.params(), (d, f), ("embed", "mlp"))
    if self.gated:
      self.w_gate_df = sharding.param(init, rngs.params(), (d, f), ("embed", "mlp"))
    self.w_out_fd = sharding.param(out_init, rngs.params(), (f, d), ("mlp", "embed"))
    if config.use_bias:
      self.b_in_f = sharding.param(zeros, rngs.params(), (f,), ("mlp",))
      if self.gated:
        self.b_gate_f = sharding.param(zeros, rngs.params(), (f,), ("mlp",))
      self.b_out_d = sharding.param(zeros, rngs.params(), (d,), ("embed",))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    cfg = self.config
    dtype = compute_dtype(cfg)
    x_btd = x_btd.astype(dtype)

    def dense_in(w, b):
      y = jnp.einsum("btd,df->btf", x_btd, w[...].astype(dtype))
      return y + b[...].astype(dtype) if cfg.use_bias else y

    h_btf = dense_in(self.w_in_df, getattr(self, "b_in_f", None))
    if self.gated:
      gate_btf = dense_in(self.w_gate_df, getattr(self, "b_gate_f", None))
      h_btf = activation(cfg.activation, gate_btf) * h_btf
    else:
      h_btf = activation(cfg.activation, h_btf)
    h_btf = sharding.constrain(h_btf, ("batch", "length", "mlp"))
    out_btd = jnp.einsum("btf,fd->btd", h_btf, self.w_out_fd[...].astype(dtype))
    if cfg.use_bias:
      out_btd = out_btd + self.b_out_d[...].astype(dtype)
    return out_btd


def apply_rope(x_bthk: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
  """Rotates feature pairs (i, i + K/2) of each head by angle position * theta^(-2i/K)."""
  k = x_bthk.shape[-1]
  inv_freq_k2 = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  angles_btk2 = positions_bt[..., None].astype(jnp.float32) * inv_freq_k2
  sin, cos = jnp.sin(angles_btk2)[:, :, None, :], jnp.cos(angles_btk2)[:, :, None, :]
  x1, x2 = jnp.split(x_bthk.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_bthk.dtype)
