"""The transformer block shared by the decoder (GPT), the encoder (BERT) and both stacks of the
encoder-decoder, and `run_blocks`, the one place that decides how a stack of blocks runs.

The block has no notion of which model it is in: it is given its masks (causal or not), and the
config says the rest (norm placement, activation, positions). A block of an encoder-decoder's
decoder has a cross-attention sub-layer between self-attention and MLP.

How the blocks run (`run_blocks`):
  config.remat        none: keep every activation for the backward pass | full: keep only each
                      block's input and recompute the rest | dots: also keep the outputs of the
                      weight matmuls (q/k/v/o, MLP in/out) and recompute the attention scores and
                      elementwise ops (jax.checkpoint_policies.dots_with_no_batch_dims_saveable).
  config.scan_layers  one `lax.scan` over the layers instead of an unrolled Python loop: one
                      compiled block. The parameter layout stays `blocks[i]...` (checkpoints, HF
                      export and sharding rules are unchanged); the per-layer weights are stacked
                      into [L, ...] at call time, which costs one extra copy of the block weights.
Every combination computes the same function; dropout draws layer i's masks from
fold_in(key, i) in all of them, so they also agree with dropout on.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.attention import MultiHeadAttention
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.layers import MLP, Norm

# config.remat -> what the backward pass keeps from the forward pass of a block.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class TransformerBlock(nnx.Module):
  """x + Attn(Norm(x)), [x + Cross(Norm(x))], then x + MLP(Norm(x)) (pre-LN); or
  Norm(x + Attn(x)), ... (post-LN). `causal` defaults to config.causal; `cross_attention` adds the
  sub-layer that attends over an encoder's output."""

  def __init__(self, config: ModelConfig, *, causal: bool | None = None,
               cross_attention: bool = False, rngs: nnx.Rngs):
    self.config = config
    self.attn_norm = Norm(config, rngs=rngs)
    self.attn = MultiHeadAttention(config, causal=causal, rngs=rngs)
    if cross_attention:
      self.cross_norm = Norm(config, rngs=rngs)
      self.cross_attn = MultiHeadAttention(config, causal=False, rngs=rngs)
    self.mlp_norm = Norm(config, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout)

  def __call__(self, x_btd: jax.Array, mask_b1ts: jax.Array, positions_bt: jax.Array,
               rngs: nnx.Rngs | None = None, *, bias_bhts: jax.Array | None = None,
               memory_bsd: jax.Array | None = None,
               memory_mask_b1ts: jax.Array | None = None) -> jax.Array:
    """[B, T, D] -> [B, T, D]. `bias_bhts` is added to the self-attention scores; a block with
    cross-attention attends over `memory_bsd` [B, S, D] where `memory_mask_b1ts` allows."""
    def attend(y_btd):
      return self.attn(y_btd, mask_b1ts, positions_bt, rngs, bias_bhts=bias_bhts)

    cross = None
    if hasattr(self, "cross_attn"):
      if memory_bsd is None or memory_mask_b1ts is None:
        raise ValueError("a block with cross-attention needs memory_bsd and memory_mask_b1ts")

      def cross(y_btd):
        return self.cross_attn(y_btd, memory_mask_b1ts, positions_bt, rngs,
                               memory_bsd=memory_bsd)

    return self._apply(x_btd, attend, rngs, cross)

  def cached(self, x_btd: jax.Array, positions_bt: jax.Array,
             cache: tuple[jax.Array, jax.Array], *, bias_bhts: jax.Array | None = None,
             memory: tuple[jax.Array, jax.Array, jax.Array] | None = None
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Decoding: the block over T new tokens with this layer's (keys, values) cache
    (`MultiHeadAttention.cached`); a block with cross-attention also takes `memory`, the
    encoder's (keys, values) of this layer and its [B, S] valid mask. Returns ([B, T, D], the
    updated cache)."""
    updated = []

    def attend(y_btd):
      out_btd, k_cache, v_cache = self.attn.cached(y_btd, positions_bt, *cache,
                                                   bias_bhts=bias_bhts)
      updated.append((k_cache, v_cache))
      return out_btd

    cross = None
    if hasattr(self, "cross_attn"):
      if memory is None:
        raise ValueError("a block with cross-attention decodes over the encoder's keys and values")

      def cross(y_btd):
        return self.cross_attn.cached_over_memory(y_btd, *memory)

    return self._apply(x_btd, attend, None, cross), updated[0]

  def _apply(self, x_btd: jax.Array, attend, rngs: nnx.Rngs | None, cross=None) -> jax.Array:
    deterministic = rngs is None

    def branch(y):
      return self.dropout(y, deterministic=deterministic, rngs=rngs)

    sublayers = [(self.attn_norm, attend)]
    if cross is not None:
      sublayers.append((self.cross_norm, cross))
    sublayers.append((self.mlp_norm, self.mlp))
    for norm, sublayer in sublayers:
      if self.config.norm_position == "pre":
        x_btd = x_btd + branch(sublayer(norm(x_btd)))
      else:
        x_btd = norm(x_btd + branch(sublayer(x_btd)))
    return sharding.constrain(x_btd, ("batch", "length", "embed"))


def run_blocks(blocks: nnx.List, config: ModelConfig, x_btd: jax.Array,
               rngs: nnx.Rngs | None = None, **inputs: jax.Array | None) -> jax.Array:
  """[B, T, D] -> [B, T, D] through every block, with config.remat and config.scan_layers; each
  block is called as block(x_btd, rngs=..., **inputs) (masks, positions, memory)."""
  layers_key = None if rngs is None else rngs.dropout()  # layer i draws from fold_in(key, i)
  graphdef, state = nnx.split(blocks[0])
  treedef = jax.tree.structure(state)

  def layer(leaves, x_btd, index):
    block = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
    layer_rngs = (None if layers_key is None
                  else nnx.Rngs(dropout=jax.random.fold_in(layers_key, index)))
    return block(x_btd, rngs=layer_rngs, **inputs)

  if config.remat != "none":
    # Inside a scan, CSE cannot merge the recomputation into the forward pass anyway.
    layer = jax.checkpoint(layer, policy=REMAT_POLICIES[config.remat],
                           prevent_cse=not config.scan_layers)
  per_layer = []
  for block in blocks:
    variables = jax.tree.leaves(nnx.state(block), is_leaf=lambda x: isinstance(x, nnx.Variable))
    if jax.tree.structure(nnx.state(block)) != treedef:
      raise ValueError("the transformer blocks differ in structure; they must be identical")
    per_layer.append([v.get_value() for v in variables])
  if not config.scan_layers:
    for index, leaves in enumerate(per_layer):
      x_btd = layer(leaves, x_btd, jnp.int32(index))
    return x_btd
  # [L, ...] weights, each sharded like its per-layer parameter (replicated along L): without
  # the constraint the compiler may gather a stacked FSDP weight in full.
  names = [v.get_metadata().get("out_sharding") or (None,) * len(v.shape) for v in variables]
  stacked = [sharding.constrain(jnp.stack(ws), (None, *n))
             for ws, n in zip(zip(*per_layer), names)]

  def body(x_btd, leaves_and_index):
    leaves, index = leaves_and_index
    return layer(leaves, x_btd, index), None

  x_btd, _ = jax.lax.scan(body, x_btd, (stacked, jnp.arange(len(blocks), dtype=jnp.int32)))
  return x_btd
