"""GPT: the shared stack, causal, with the LM head tied to the token embedding."""

import jax
from flax import nnx

from pretrax.modeling import sharding
from pretrax.modeling.transformer import Transformer


class GPT(Transformer):
  """Causal language model. Call with [B, T] token ids; returns [B, T, V] float32 logits."""

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, V] float32 logits through the tied token embedding."""
    return sharding.constrain(self.tied_logits(hidden_btd), ("batch", "length", "vocab"))

  def __call__(self, inputs_bt: jax.Array, segment_ids_bt: jax.Array | None = None,
               positions_bt: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.logits(self.hidden_states(inputs_bt, segment_ids_bt, positions_bt, rngs=rngs))

  def cached_logits(self, inputs_bt: jax.Array, positions_bt: jax.Array, cache: dict
                    ) -> tuple[jax.Array, dict]:
    """Decoding: [B, T] new tokens at `positions_bt` over the key/value cache -> ([B, T, V]
    float32 logits, the updated cache); see `Transformer.cached_hidden_states`."""
    hidden_btd, cache = self.cached_hidden_states(inputs_bt, positions_bt, cache)
    return self.logits(hidden_btd), cache
