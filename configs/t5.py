"""T5 v1.1 presets: encoder-decoder, pre-LN RMS norm without bias, T5's relative position
buckets (32, max distance 128, one table per stack), unscaled attention, gated GELU, untied head,
no dropout in pretraining; span corruption (data.objective=span_corruption: noise density 0.15,
mean span 3, 100 sentinels).

  pretrax train --config=configs/t5.py:tiny --workdir=/tmp/t5_tiny
  pretrax train --config=configs/t5.py:base --workdir=... --config.data.source=tfds:c4:text

For T5 v1.0 (ReLU, tied head scaled by d_model**-0.5): --config.model.activation=relu
--config.model.tie_embeddings=True --config.model.tied_logit_scale=True.
Variants are small deltas on the base config, never copies.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax train --help lists them)
    "tiny": "2+2-layer T5 v1.1 on bytes; CPU, minutes",
    "small": "T5 v1.1 small: 8+8 layers, 6 heads of 64, 512 wide, FFN 1024",
    "base": "T5 v1.1 base: 12+12 layers, 12 heads of 64, 768 wide, FFN 2048",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "tiny"
  config = Config()
  m = config.model
  m.family, m.position, m.norm_position = "encoder_decoder", "relative", "pre"
  m.norm, m.norm_eps, m.use_bias = "rmsnorm", 1e-6, False
  m.activation, m.attention_scale, m.tie_embeddings = "geglu", False, False
  m.relative_buckets, m.relative_max_distance = 32, 128
  config.data.objective = "span_corruption"
  config.optimizer.weight_decay = 0.0
  if variant == "tiny":          # CPU, minutes: 2+2 layers, 128 wide
    m.num_layers, m.num_heads, m.head_dim, m.d_model, m.d_ff = 2, 4, 32, 128, 320
    config.data.seq_len = 128    # 141 raw tokens -> 128 inputs, 29 targets
    config.train.batch_size, config.train.steps = 16, 300
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 100, 4, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 30
    config.checkpoint.every = 100
  elif variant in ("small", "base"):  # the paper's shapes and its 32k SentencePiece vocabulary
    if variant == "small":
      m.num_layers, m.num_heads, m.d_model, m.d_ff = 8, 6, 512, 1024
    else:
      m.num_layers, m.num_heads, m.d_model, m.d_ff = 12, 12, 768, 2048
    m.head_dim, m.vocab_size = 64, 32_128
    config.data.seq_len = 512    # 568 raw tokens -> 512 inputs, 114 targets
    config.train.batch_size, config.train.steps = 128, 524_288
    config.train.eval_every, config.train.eval_steps = 10_000, 50
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-3, 10_000
    config.optimizer.decay = "linear"
    config.checkpoint.every = 10_000
  else:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  return config
