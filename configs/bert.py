"""BERT presets: bidirectional encoder, original layout (post-LN, erf GELU, token types,
embedding LayerNorm), MLM + NSP pretraining.

  pretrax train --config=bert:tiny --workdir=/tmp/bert_tiny
  pretrax train --config=bert:base --workdir=... --config.data.objective=mlm  # RoBERTa-style

Variants are small deltas on the base config, never copies.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax train --help lists them)
    "tiny": "2-layer BERT, MLM + NSP; CPU, minutes",
    "base": "BERT-base: 12 layers, 12 heads, 768 wide, 512 positions",
    "large": "BERT-large: 24 layers, 16 heads, 1024 wide",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "tiny"
  config = Config()
  m = config.model
  m.family, m.norm_position, m.activation, m.norm_eps = "bert", "post", "gelu", 1e-12
  m.type_vocab_size, m.embed_norm = 2, True
  config.data.objective = "mlm+nsp"
  config.optimizer.b2, config.optimizer.weight_decay = 0.999, 0.01
  if variant == "tiny":          # CPU, minutes: 2 layers, 128 wide
    m.num_layers, m.num_heads, m.d_model, m.max_seq_len = 2, 4, 128, 128
    m.attention_impl = "blockwise"  # no attention dropout here (base and large have 0.1: einsum)
    config.data.seq_len, config.data.max_predictions_per_seq = 128, 20
    config.train.batch_size, config.train.steps = 32, 300
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 100, 4, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 2e-3, 30
    config.checkpoint.every = 100
  elif variant in ("base", "large"):  # the papers' shapes; 128-token phase of pretraining
    if variant == "base":       # BERT-base: 12 layers, 12 heads, 768 wide
      m.num_layers, m.num_heads, m.d_model = 12, 12, 768
    else:                       # BERT-large: 24 layers, 16 heads, 1024 wide
      m.num_layers, m.num_heads, m.d_model = 24, 16, 1024
    m.max_seq_len, m.dropout, m.attention_dropout = 512, 0.1, 0.1
    config.data.seq_len, config.data.max_predictions_per_seq = 128, 20
    config.train.batch_size, config.train.steps = 256, 1_000_000
    config.train.eval_every, config.train.eval_steps = 10_000, 50
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-4, 10_000
    config.optimizer.decay = "linear"
    config.checkpoint.every = 10_000
  else:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  return config
