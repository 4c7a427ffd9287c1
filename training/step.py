"""The pure train and eval steps of every task: `train_step(state, batch) -> (state, metrics)`.

`state` is a dict {"step": int32 [] (steps taken), "params": pure-dict tree, "opt_state": optax
state, "nonfinite_streak", "nonfinite_steps": int32 []}. What a batch holds and how it is scored
is the task's (training/tasks/): `task.weights(batch)` gives each loss term's weight over the
whole batch and `task.sums(model, batch, rngs)` its sums, so splitting the batch into
micro-batches (gradient accumulation) gives exactly the same update.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def initial_state(params, optimizer: optax.GradientTransformation) -> dict:
  """The train state at step 0 for `params`."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params),
          "nonfinite_streak": jnp.zeros((), jnp.int32), "nonfinite_steps": jnp.zeros((), jnp.int32)}


def all_finite(tree) -> jax.Array:
  """True when every element of every leaf is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def applied_updates(opt_state) -> jax.Array:
  """How many updates the optimizer has applied: the count its learning-rate schedule reads.

  Skipped (non-finite) steps leave the optimizer state unchanged, so this, not state["step"],
  is where the schedule stands.
  """
  counts = [value for path, value in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
            if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"]
  if len(counts) != 1:
    raise ValueError(f"expected one learning-rate schedule in the optimizer, found {len(counts)}")
  return counts[0]


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
                    task, *, grad_accum_steps: int, seed: int):
  """Returns the pure `train_step(state, batch) -> (state, metrics)` of `task`.

  With grad_accum_steps = A, the batch is split into A micro-batches whose gradients are added.
  Dropout keys derive from (seed, step, micro-batch), so a resumed run draws the same masks.
  """
  terms = task.terms

  def loss_fn(params, micro_batch, totals, dropout_key):
    model = nnx.merge(graphdef, params)
    rngs = nnx.Rngs(dropout=dropout_key) if task.uses_dropout else None
    sums = task.sums(model, micro_batch, rngs)
    loss = sum(w * sums[f"{t}loss_sum"] / jnp.maximum(totals[t], 1.0) for t, w in terms.items())
    return loss, sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    step = state["step"]
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    totals = task.weights(batch)
    grads, sums = accumulate_gradients(grad_fn, state["params"], batch, totals, step_key,
                                       grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = task.metrics(sums)
    metrics |= {"grad_norm": optax.tree.norm(grads),
                "lr": schedule(applied_updates(state["opt_state"]))}
    # A non-finite loss, gradient or result is never applied: the state stays the last finite
    # one (the batch is dropped) and the streak tells the host when to give up. A cond, not a
    # select per leaf: selects get the whole update fused into each, which more than doubles
    # compilation.
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & all_finite(params)
    params, opt_state = jax.lax.cond(finite, lambda: (params, opt_state),
                                     lambda: (state["params"], state["opt_state"]))
    streak = jnp.where(finite, 0, state["nonfinite_streak"] + 1)
    skipped = state["nonfinite_steps"] + (1 - finite.astype(jnp.int32))
    metrics |= {"skipped": 1 - finite.astype(jnp.int32), "nonfinite_streak": streak,
                "nonfinite_steps": skipped}
    return {"step": step + 1, "params": params, "opt_state": opt_state, "nonfinite_streak": streak,
            "nonfinite_steps": skipped}, metrics

  return train_step


def make_eval_step(graphdef, task):
  """Returns `eval_step(params, batch) -> sums` of `task`, to be added over batches."""

  def eval_step(params, batch):
    return task.eval_sums(nnx.merge(graphdef, params), batch)

  return eval_step
