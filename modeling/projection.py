"""The one dense primitive: an einsum with a weight, an optional bias, in the compute dtype.

`weight` and `bias` create a projection's parameters and `project` applies them; `Dense` bundles
the three for a plain [..., I] -> [..., O] layer. The parameters are attributes of the module that
uses them (attention's `w_q_dhk`, the MLP's `w_in_df`, a head's `w_io`), not of a submodule of
their own, because checkpoints and the Hugging Face conversion address them by those paths.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.config import ModelConfig


def compute_dtype(config: ModelConfig) -> jnp.dtype:
  return jnp.dtype(config.dtype)


def weight(config: ModelConfig, shape: tuple[int, ...], names: tuple[str | None, ...], *,
           rngs: nnx.Rngs, std: float | None = None) -> nnx.Param:
  """A float32 weight of `shape` with logical axis `names`, drawn from normal(`std`)
  (default config.init_std)."""
  std = config.init_std if std is None else std
  return sharding.param(nnx.initializers.normal(std), rngs.params(), shape, names)


def bias(config: ModelConfig, shape: tuple[int, ...], names: tuple[str | None, ...], *,
         rngs: nnx.Rngs) -> nnx.Param | None:
  """A zero float32 bias of `shape` with logical axis `names`; None without config.use_bias."""
  if not config.use_bias:
    return None
  return sharding.param(nnx.initializers.zeros, rngs.params(), shape, names)


def project(spec: str, x: jax.Array, w: nnx.Param, b: nnx.Param | None,
            dtype: jnp.dtype) -> jax.Array:
  """einsum(spec, x, w) (+ b over the trailing output axes), computed in `dtype`."""
  y = jnp.einsum(spec, x.astype(dtype), w[...].astype(dtype))
  return y if b is None else y + b[...].astype(dtype)


class Dense(nnx.Module):
  """[..., I] -> [..., O]: x @ w_io (+ b_o when config.use_bias), in the compute dtype."""

  def __init__(self, config: ModelConfig, in_dim: int, out_dim: int,
               names: tuple[str | None, str | None], *, rngs: nnx.Rngs):
    self.config = config
    self.w_io = weight(config, (in_dim, out_dim), names, rngs=rngs)
    self.b_o = bias(config, (out_dim,), names[1:], rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return project("...i,io->...o", x, self.w_io, self.b_o, compute_dtype(self.config))
