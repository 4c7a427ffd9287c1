"""BART presets: encoder-decoder, BERT-like encoder and GPT-like decoder, post-LN, learned
positions, embedding LayerNorm, erf GELU, tied head with a logits bias; text infilling and
sentence permutation (data.objective=denoise).

  pretrax train --config=configs/bart.py:tiny --workdir=/tmp/bart_tiny
  pretrax train --config=configs/bart.py:base --workdir=... --config.data.source=tfds:c4:text

Variants are small deltas on the base config, never copies.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax train --help lists them)
    "tiny": "2+2-layer BART on bytes; CPU, minutes",
    "base": "BART-base: 6+6 layers, 12 heads, 768 wide, 1024 positions",
    "large": "BART-large: 12+12 layers, 16 heads, 1024 wide",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "tiny"
  config = Config()
  m = config.model
  m.family, m.position, m.norm_position, m.activation = "encoder_decoder", "learned", "post", "gelu"
  m.embed_norm, m.final_logits_bias = True, True
  config.data.objective = "denoise"
  config.optimizer.b2, config.optimizer.weight_decay = 0.98, 0.01
  if variant == "tiny":          # CPU, minutes: 2+2 layers, 128 wide
    m.num_layers, m.num_heads, m.d_model, m.max_seq_len = 2, 4, 128, 128
    m.attention_impl = "blockwise"  # no attention dropout here (base and large: einsum)
    config.data.seq_len = 128
    config.train.batch_size, config.train.steps = 16, 300
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 100, 4, 10
    # Post-LN: at 2e-3 after 30 warmup steps it stays at byte unigram statistics for 300 steps.
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-3, 100
    config.checkpoint.every = 100
  elif variant in ("base", "large"):  # the paper's shapes and GPT-2's byte-level BPE vocabulary
    if variant == "base":       # 6+6 layers, 12 heads, 768 wide
      m.num_layers, m.num_heads, m.d_model = 6, 12, 768
    else:                       # 12+12 layers, 16 heads, 1024 wide
      m.num_layers, m.num_heads, m.d_model = 12, 16, 1024
    m.vocab_size, m.max_seq_len = 50_265, 1024
    m.dropout, m.attention_dropout = 0.1, 0.1
    config.data.seq_len = 512
    config.train.batch_size, config.train.steps = 8_000, 500_000
    config.train.eval_every, config.train.eval_steps = 10_000, 50
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 4e-4, 10_000
    config.optimizer.decay = "linear"
    config.checkpoint.every = 10_000
  else:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  return config
