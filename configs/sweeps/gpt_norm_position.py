"""Pre-LN or post-LN, learned or rotary positions: which small GPT learns the default corpus best?

GPT-2 moved the layer norm to the start of each residual branch (pre-LN); the original Transformer
normalizes after the residual sum (post-LN), which needs a gentler warmup. RoPE rotates queries and
keys by their position instead of adding a learned table. Four configurations of gpt:tiny (bytes,
300 steps) with three seeds each, compared on held-out bits per byte.

  pretrax sweep --sweep=gpt_norm_position --workdir=runs/gpt_norm_position
  pretrax compare runs/gpt_norm_position
"""

from pretrax.experiments.grid import product
from pretrax.training import config as config_lib

SEEDS = 3


def get_config(variant=None):
  return config_lib.load_preset("gpt:tiny")


def get_runs():
  return product({"model.norm_position": ["pre", "post"], "model.position": ["learned", "rope"]})
