"""The pure train and eval steps: `train_step(state, batch) -> (state, metrics)`.

`state` is a dict {"step": int32 [], "params": pure-dict tree, "opt_state": optax state}; a batch
is a dict of [B, T] arrays: inputs, targets, loss_weights, segment_ids, positions.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def cross_entropy_sums(logits_btv: jax.Array, targets_bt: jax.Array,
                       weights_bt: jax.Array) -> dict[str, jax.Array]:
  """Weighted sums of token loss (nats), correct argmax predictions and weights, all float32."""
  logits_btv = logits_btv.astype(jnp.float32)
  log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
  target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  loss_bt = log_z_bt - target_logit_bt
  correct_bt = (jnp.argmax(logits_btv, axis=-1) == targets_bt).astype(jnp.float32)
  return {"loss_sum": jnp.sum(loss_bt * weights_bt),
          "correct_sum": jnp.sum(correct_bt * weights_bt),
          "weight_sum": jnp.sum(weights_bt)}


def _forward_sums(graphdef, params, batch, rngs=None):
  model = nnx.merge(graphdef, params)
  logits_btv = model(batch["inputs"], batch["segment_ids"], batch["positions"], rngs=rngs)
  return cross_entropy_sums(logits_btv, batch["targets"], batch["loss_weights"])


def make_train_step(graphdef, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    *, grad_accum_steps: int, seed: int, dropout: bool):
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  With grad_accum_steps = A, the [B, T] batch is split into A micro-batches of B/A rows whose
  summed-loss gradients are added; the update then equals one step on the whole batch.
  Dropout keys derive from (seed, step), so a resumed run draws the same masks.
  """

  def loss_fn(params, micro_batch, dropout_key):
    rngs = nnx.Rngs(dropout=dropout_key) if dropout else None
    sums = _forward_sums(graphdef, params, micro_batch, rngs)
    return sums["loss_sum"], sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    step = state["step"]
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    if grad_accum_steps == 1:
      grads, sums = grad_fn(state["params"], batch, step_key)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]),
          batch)

      def accumulate(carry, index_and_batch):
        index, micro_batch = index_and_batch
        g, s = grad_fn(state["params"], micro_batch, jax.random.fold_in(step_key, index))
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = (jax.tree.map(jnp.zeros_like, state["params"]),
               {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct_sum", "weight_sum")})
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    denom = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": sums["loss_sum"] / denom, "accuracy": sums["correct_sum"] / denom,
               "grad_norm": optax.tree.norm(grads), "lr": schedule(step),
               "tokens": sums["weight_sum"]}
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

  return train_step


def make_eval_step(graphdef):
  """Returns `eval_step(params, batch, token_bytes_v) -> sums` (loss, correct, weights, bytes).

  `token_bytes_v` [V] is how many UTF-8 bytes each token id stands for, so bits per byte can be
  computed independently of the tokenizer.
  """

  def eval_step(params, batch, token_bytes_v):
    sums = _forward_sums(graphdef, params, batch)
    sums["byte_sum"] = jnp.sum(token_bytes_v[batch["targets"]] * batch["loss_weights"])
    return sums

  return eval_step


def summarize(sums: dict) -> dict[str, float]:
  """Eval sums -> loss (nats/token), perplexity, accuracy, bits_per_byte, tokens."""
  import math
  w = max(float(sums["weight_sum"]), 1.0)
  loss = float(sums["loss_sum"]) / w
  out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
         "accuracy": float(sums["correct_sum"]) / w, "tokens": int(sums["weight_sum"])}
  if "byte_sum" in sums and float(sums["byte_sum"]) > 0:
    out["bits_per_byte"] = float(sums["loss_sum"]) / math.log(2) / float(sums["byte_sum"])
    out["bytes"] = int(sums["byte_sum"])
  return out
