"""AdamW with warmup + decay, global-norm clipping and weight decay by parameter role."""

import re

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


# Leaf name -> decayed, by the parameter's role; the first pattern that matches wins. Kernels
# (w_*) and the token embedding (also the tied output projection) decay; biases, norm scales and
# shifts, and the additive position / token-type tables do not. Shape cannot tell: the attention
# biases b_{q,k,v}_hk are [H, K].
DECAY_RULES = (
    (r"w_.*", True),                          # Dense / attention / MLP kernels
    (r"token_embed_.*", True),                # the token embedding, tied to the LM head
    (r"lm_head_.*", True),                    # an untied LM head
    (r"b_.*|bias_.*|mlm_bias_.*|final_logits_bias_.*", False),  # biases, also of heads
    (r"scale_.*", False),                     # norm scales
    (r"position_embed_.*|type_embed_.*|table_.*", False),  # position tables, T5's bias buckets
)


def _leaf_name(path) -> str:
  key = path[-1]
  return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def decays(path) -> bool:
  """Whether the parameter at `path` (a jax tree path) gets weight decay, by its leaf name.

  Raises ValueError naming the path when no rule of DECAY_RULES matches.
  """
  name = _leaf_name(path)
  for pattern, decayed in DECAY_RULES:
    if re.fullmatch(pattern, name):
      return decayed
  raise ValueError(
      f"no weight-decay rule for parameter {jax.tree_util.keystr(path)} (leaf name {name!r}); "
      "add a pattern for its role to DECAY_RULES in training/optimizer.py")


def decay_mask(params):
  """A tree of bools like `params`: True where weight decay applies (see DECAY_RULES)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """Built once, outside any jitted function."""
  chain = []
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  chain.append(optax.adamw(learning_rate_schedule(config, total_steps), b1=config.b1,
                           b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                           mask=decay_mask))
  return optax.chain(*chain)
