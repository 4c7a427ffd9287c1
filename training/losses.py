"""Loss sums shared by the tasks: cross-entropy sums and the metrics made from them.

Every loss term is a triple of sums over a batch, named PREFIX + loss_sum (nats), correct_sum
(argmax hits) and weight_sum (how many targets count). Sums add over micro-batches and eval
batches; a term's mean is loss_sum / weight_sum.
"""

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits_xv: jax.Array, targets_x: jax.Array,
                       weights_x: jax.Array, prefix: str = "",
                       label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Weighted sums of token loss (nats), correct argmax predictions and weights, all float32.

  With `label_smoothing` ε the loss is the cross-entropy against (1 - ε)·one-hot + ε/V: the
  target's -log p weighted 1 - ε plus ε times the mean of -log p over the V ids.
  """
  logits_xv = logits_xv.astype(jnp.float32)
  log_z_x = jax.nn.logsumexp(logits_xv, axis=-1)
  target_logit_x = jnp.take_along_axis(logits_xv, targets_x[..., None], axis=-1)[..., 0]
  correct_x = (jnp.argmax(logits_xv, axis=-1) == targets_x).astype(jnp.float32)
  loss_x = log_z_x - target_logit_x
  if label_smoothing:
    loss_x = (1.0 - label_smoothing) * loss_x + label_smoothing * (
        log_z_x - jnp.mean(logits_xv, axis=-1))
  return {f"{prefix}loss_sum": jnp.sum(loss_x * weights_x),
          f"{prefix}correct_sum": jnp.sum(correct_x * weights_x),
          f"{prefix}weight_sum": jnp.sum(weights_x).astype(jnp.float32)}


def chunked_lm_sums(logits_fn, hidden_btd: jax.Array, targets_bt: jax.Array,
                    weights_bt: jax.Array, chunk: int) -> dict[str, jax.Array]:
  """Causal LM sums computed `chunk` positions at a time: the [B, chunk, V] logits of one chunk
  exist at once (and are recomputed in the backward pass), never the full [B, T, V]."""
  b, t, _ = hidden_btd.shape
  n = t // chunk
  split = lambda x: x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(args):
    h_bcd, t_bc, w_bc = args
    return cross_entropy_sums(logits_fn(h_bcd), t_bc, w_bc)

  per_chunk = jax.lax.map(one_chunk, (split(hidden_btd), split(targets_bt), split(weights_bt)))
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_chunk)


def term_metrics(sums: dict, terms: dict[str, float]) -> dict:
  """Sums -> `loss` (Σ weight · mean loss of each term) and PREFIX loss / accuracy per term.

  A term with the empty prefix reports its accuracy as `accuracy`; its loss is `loss` itself.
  """
  out, total = {}, 0.0
  for t, weight in terms.items():
    w = jnp.maximum(sums[f"{t}weight_sum"], 1.0)
    loss = sums[f"{t}loss_sum"] / w
    total = total + weight * loss
    if t:
      out[f"{t}loss"] = loss
    out[f"{t}accuracy"] = sums[f"{t}correct_sum"] / w
  out["loss"] = total
  return out
