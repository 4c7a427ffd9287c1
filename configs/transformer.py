"""The Transformer (Vaswani et al., 2017) presets: encoder-decoder, post-LN, sinusoidal
positions, embeddings scaled by sqrt(d_model) and shared by encoder, decoder and output, ReLU,
dropout 0.1, label smoothing 0.1. Pretrains on data.objective=denoise by default.

  pretrax train --config=configs/transformer.py:tiny --workdir=/tmp/transformer_tiny
  pretrax train --config=transformer:multi30k --workdir=W --config.data.train=TRAIN.jsonl \
      --config.data.eval=VAL.jsonl
  pretrax generate --workdir=W --input=VAL.jsonl --output=out.jsonl --num_beams=4

Variants are small deltas on the base config, never copies.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax train --help lists them)
    "tiny": "2+2-layer Transformer on bytes; CPU, minutes",
    "base": "Transformer base: 6+6 layers, 8 heads, 512 wide, FFN 2048, 37k shared vocabulary",
    "multi30k": "English->German on Multi30k pairs (--config.data.train/--config.data.eval): "
                "3+3 layers, 256 wide, 8k shared SentencePiece vocabulary; 2 CPU cores, 30 min",
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
  elif variant == "multi30k":    # a CPU-sized translation recipe (benchmarks/RESULTS.md)
    m.num_layers, m.num_heads, m.d_model, m.d_ff, m.max_seq_len = 3, 4, 256, 1024, 64
    m.norm_position = "pre"       # trains without the paper's long warmup at this size
    m.attention_impl = "blockwise"
    config.data.objective = "seq2seq"
    config.data.tokenizer, config.data.tokenizer_vocab_size = "train", 8000  # on the pairs
    config.data.seq_len = 64      # Multi30k's longest sentence is ~45 subwords
    config.train.batch_size, config.train.steps = 32, 800  # ~30 min on 2 cores
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 200, 16, 20
    config.train.eval_generate = 1014  # the whole validation set, greedy: BLEU at every eval
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-3, 100
    config.checkpoint.every = 200
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
