"""The Transformer (Vaswani et al., 2017) presets: encoder-decoder, post-LN, sinusoidal
positions, embeddings scaled by sqrt(d_model) and shared by encoder, decoder and output, ReLU,
dropout 0.1, label smoothing 0.1. Pretrains on data.objective=denoise by default.

  pretrax train --config=configs/transformer.py:tiny --workdir=/tmp/transformer_tiny

Variants are small deltas on the base config, never copies.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax train --help lists them)
    "tiny": "2+2-layer Transformer on bytes; CPU, minutes",
    "base": "Transformer base: 6+6 layers, 8 heads, 512 wide, FFN 2048, 37k shared vocabulary",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "tiny"
  config = Config()
  m = config.model
  m.family, m.position, m.norm_position = "encoder_decoder", "sinusoidal", "post"
  m.activation, m.embed_scale = "relu", True
  m.dropout = 0.1
  config.train.label_smoothing = 0.1
  config.data.objective = "denoise"
  config.optimizer.b1, config.optimizer.b2, config.optimizer.eps = 0.9, 0.98, 1e-9
  if variant == "tiny":          # CPU, minutes: 2+2 layers, 128 wide
    m.num_layers, m.num_heads, m.d_model, m.max_seq_len = 2, 4, 128, 128
    m.attention_impl = "blockwise"  # dropout is on the residual branches only
    config.data.seq_len = 128
    config.train.batch_size, config.train.steps = 16, 300
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 100, 4, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-3, 100  # post-LN
    config.checkpoint.every = 100
  elif variant == "base":        # the paper's base model
    m.num_layers, m.num_heads, m.d_model, m.d_ff = 6, 8, 512, 2048
    m.vocab_size, m.max_seq_len = 37_000, 1024
    config.data.seq_len = 256
    config.train.batch_size, config.train.steps = 64, 100_000
    config.train.eval_every, config.train.eval_steps = 5_000, 50
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 7e-4, 4_000
    config.checkpoint.every = 5_000
  else:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  return config
