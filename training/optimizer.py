"""AdamW with warmup + decay, global-norm clipping and weight decay on matrices only."""

import jax
import optax

from pretrax.training.config import OptimizerConfig


def learning_rate_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine/linear decay to min_lr_ratio * peak."""
  peak, end = config.learning_rate, config.learning_rate * config.min_lr_ratio
  warmup = min(config.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if config.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio)
  elif config.decay == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for matrices (ndim >= 2); biases, norm scales and other vectors are not decayed."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """Built once, outside any jitted function."""
  chain = []
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  chain.append(optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1,
                           b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                           mask=decay_mask))
  return optax.chain(*chain)
