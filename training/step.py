"""The pure train and eval steps: `train_step(state, batch) -> (state, metrics)`.

`state` is a dict {"step": int32 [], "params": pure-dict tree, "opt_state": optax state}.
Batches depend on the objective:
  causal (GPT):  inputs, targets, loss_weights, segment_ids, positions           [B, T]
  mlm* (BERT):   input_ids, segment_ids, token_type_ids, positions              [B, T]
                 masked_positions, masked_ids, masked_weights                   [B, P]
                 nsp_label                                                      [B]
Each loss term is a weighted sum divided by its weight over the whole batch, so splitting the
batch into micro-batches (gradient accumulation) gives exactly the same update.
"""

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pretrax.training import metrics as metrics_lib


def cross_entropy_sums(logits_xv: jax.Array, targets_x: jax.Array,
                       weights_x: jax.Array) -> dict[str, jax.Array]:
  """Weighted sums of token loss (nats), correct argmax predictions and weights, all float32."""
  logits_xv = logits_xv.astype(jnp.float32)
  log_z_x = jax.nn.logsumexp(logits_xv, axis=-1)
  target_logit_x = jnp.take_along_axis(logits_xv, targets_x[..., None], axis=-1)[..., 0]
  correct_x = (jnp.argmax(logits_xv, axis=-1) == targets_x).astype(jnp.float32)
  return {"loss_sum": jnp.sum((log_z_x - target_logit_x) * weights_x),
          "correct_sum": jnp.sum(correct_x * weights_x),
          "weight_sum": jnp.sum(weights_x).astype(jnp.float32)}


def loss_terms(objective: str) -> tuple[str, ...]:
  """Metric prefixes of the losses an objective adds up."""
  return {"causal": ("",), "mlm": ("mlm_",), "mlm+nsp": ("mlm_", "nsp_"),
          "mlm+sop": ("mlm_", "nsp_")}[objective]


def _nsp_weights(batch) -> jax.Array:
  """[B] 1 for real pairs, 0 for all-padding rows (eval batches are padded with them)."""
  return (batch["segment_ids"][:, 0] > 0).astype(jnp.float32)


def weights(batch, objective: str) -> dict[str, jax.Array]:
  """The weight of each loss term over `batch`: its normalizer."""
  if objective == "causal":
    return {"": jnp.sum(batch["loss_weights"])}
  out = {"mlm_": jnp.sum(batch["masked_weights"])}
  if "nsp_" in loss_terms(objective):
    out["nsp_"] = jnp.sum(_nsp_weights(batch))
  return out


def chunked_lm_sums(model, hidden_btd: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array,
                    chunk: int) -> dict[str, jax.Array]:
  """Causal LM sums computed `chunk` positions at a time: the [B, chunk, V] logits of one chunk
  exist at once (and are recomputed in the backward pass), never the full [B, T, V]."""
  b, t, d = hidden_btd.shape
  n = t // chunk
  split = lambda x: x.reshape((b, n, chunk) + x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(args):
    h_bcd, t_bc, w_bc = args
    return cross_entropy_sums(model.logits(h_bcd), t_bc, w_bc)

  per_chunk = jax.lax.map(one_chunk, (split(hidden_btd), split(targets_bt), split(weights_bt)))
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_chunk)


def model_sums(model, batch, objective: str, rngs=None, loss_chunk: int = 0) -> dict[str, jax.Array]:
  """Forward pass -> {PREFIX + loss_sum / correct_sum / weight_sum} for each loss term."""
  if objective == "causal":
    hidden_btd = model.hidden_states(batch["inputs"], batch["segment_ids"], batch["positions"],
                                     rngs=rngs)
    if loss_chunk and loss_chunk < hidden_btd.shape[1]:
      return chunked_lm_sums(model, hidden_btd, batch["targets"], batch["loss_weights"],
                             loss_chunk)
    return cross_entropy_sums(model.logits(hidden_btd), batch["targets"], batch["loss_weights"])
  mlm_bpv, nsp_b2 = model(batch["input_ids"], batch["masked_positions"], batch["segment_ids"],
                          batch["positions"], batch["token_type_ids"], rngs=rngs)
  sums = {f"mlm_{k}": v for k, v in cross_entropy_sums(
      mlm_bpv, batch["masked_ids"], batch["masked_weights"]).items()}
  if "nsp_" in loss_terms(objective):
    sums |= {f"nsp_{k}": v for k, v in cross_entropy_sums(
        nsp_b2, batch["nsp_label"], _nsp_weights(batch)).items()}
  return sums


def initial_state(params, optimizer: optax.GradientTransformation) -> dict:
  """The train state at step 0 for `params`."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params),
          "nonfinite_streak": jnp.zeros((), jnp.int32), "nonfinite_steps": jnp.zeros((), jnp.int32)}


def all_finite(tree) -> jax.Array:
  """True when every element of every leaf is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def accumulate_gradients(grad_fn, params, batch, totals, step_key, grad_accum_steps: int):
  """(grads, sums) of `grad_fn(params, micro_batch, totals, key)` added over `grad_accum_steps`
  micro-batches of `batch` (each with its own dropout key); one call when it is 1."""
  if grad_accum_steps == 1:
    return grad_fn(params, batch, totals, step_key)
  micro = jax.tree.map(
      lambda x: x.reshape((grad_accum_steps, x.shape[0] // grad_accum_steps) + x.shape[1:]), batch)

  def accumulate(carry, index_and_batch):
    index, micro_batch = index_and_batch
    g, s = grad_fn(params, micro_batch, totals, jax.random.fold_in(step_key, index))
    return jax.tree.map(jnp.add, carry, (g, s)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      grad_fn, params, jax.tree.map(lambda x: x[0], micro), totals, step_key))
  (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
  return grads, sums


def make_train_step(graphdef, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    *, objective: str, grad_accum_steps: int, seed: int, dropout: bool,
                    loss_chunk: int = 0):
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  With grad_accum_steps = A, the batch is split into A micro-batches whose gradients are added.
  Dropout keys derive from (seed, step, micro-batch), so a resumed run draws the same masks.
  """
  terms = loss_terms(objective)

  def loss_fn(params, micro_batch, totals, dropout_key):
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=dropout_key) if dropout else None
    sums = model_sums(model, micro_batch, objective, rngs, loss_chunk)
    loss = sum(sums[f"{t}loss_sum"] / jnp.maximum(totals[t], 1.0) for t in terms)
    return loss, sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    step = state["step"]
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    totals = weights(batch, objective)
    grads, sums = accumulate_gradients(grad_fn, state["params"], batch, totals, step_key,
                                       grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = term_metrics(sums, objective)
    metrics |= {"grad_norm": optax.tree.norm(grads), "lr": schedule(step)}
    # A non-finite loss, gradient or result is never applied: the state stays the last finite
    # one (the batch is dropped) and the streak tells the host when to give up.
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & all_finite(params)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    streak = jnp.where(finite, 0, state["nonfinite_streak"] + 1)
    skipped = state["nonfinite_steps"] + (1 - finite.astype(jnp.int32))
    metrics |= {"skipped": 1 - finite.astype(jnp.int32), "nonfinite_streak": streak,
                "nonfinite_steps": skipped}
    return {"step": step + 1, "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]), "nonfinite_streak": streak,
            "nonfinite_steps": skipped}, metrics

  return train_step


def make_eval_step(graphdef, objective: str, loss_chunk: int = 0):
  """Returns `eval_step(params, batch, token_bytes_v) -> sums` to be added over batches.

  `token_bytes_v` [V] is how many UTF-8 bytes each token id stands for, so a causal model's bits
  per byte can be computed independently of the tokenizer (metrics.text_byte_sums).
  """

  def eval_step(params, batch, token_bytes_v):
    model = nnx.merge(graphdef, params)
    if objective != "causal":
      return model_sums(model, batch, objective, loss_chunk=loss_chunk)
    sums_fn = lambda w: model_sums(model, dict(batch, loss_weights=w), objective,
                                   loss_chunk=loss_chunk)
    return metrics_lib.text_byte_sums(sums_fn, batch["targets"], batch["loss_weights"],
                                      token_bytes_v)

  return eval_step


def term_metrics(sums: dict, objective: str) -> dict:
  """Sums -> `loss` (the sum of the terms' mean losses) and PREFIX loss / accuracy per term."""
  out, total = {}, 0.0
  for t in loss_terms(objective):
    w = jnp.maximum(sums[f"{t}weight_sum"], 1.0)
    loss = sums[f"{t}loss_sum"] / w
    total = total + loss
    if t:
      out[f"{t}loss"] = loss
    out[f"{t}accuracy"] = sums[f"{t}correct_sum"] / w
  out["loss"] = total
  return out


def summarize(sums: dict, objective: str) -> dict[str, float]:
  """Eval sums -> term metrics plus perplexity, tokens and (causal) bits per byte, as floats."""
  sums = jax.device_get(sums)
  out = {k: float(v) for k, v in term_metrics(sums, objective).items()}
  main = "" if objective == "causal" else "mlm_"
  out[f"{main}perplexity"] = math.exp(min(out[f"{main}loss" if main else "loss"], 50.0))
  out["tokens"] = int(sums[f"{main}weight_sum"])
  if float(sums.get("byte_sum", 0.0)) > 0:  # the definition: metrics.text_byte_sums
    out["bits_per_byte"] = float(sums["text_loss_sum"]) / math.log(2) / float(sums["byte_sum"])
    out["bytes"] = int(sums["byte_sum"])
  return out
