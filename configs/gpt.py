"""GPT presets: causal decoder, GPT-2 layout (pre-LN, GELU, learned positions, tied head).

  pretrax train --config=gpt:tiny --workdir=/tmp/gpt_tiny
  pretrax train --config=gpt:gpt2_124m --workdir=gs://... --config.data.source=tfds:c4:text

Variants are small deltas on the base config, never copies.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax train --help lists them)
    "quickstart": "README's first run: a 4-layer GPT and a SentencePiece vocabulary trained on "
                  "the corpus; readable text in 5 CPU minutes",
    "tiny": "~0.4M-parameter GPT on bytes; learns on 2 CPU cores in minutes",
    "small": "~10M-parameter GPT; CPU hours, minutes on an accelerator",
    "gpt2_124m": "GPT-2 small: 12 layers, 12 heads, 768 wide, 1024 context",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "tiny"
  config = Config()
  config.model.family = "gpt"
  # The fastest exact attention without dropout: causal blocks above the diagonal are skipped.
  config.model.attention_impl = "blockwise"
  if variant == "tiny":          # ~0.4M params on the byte tokenizer; trains on 2 CPU cores in minutes
    config.model.num_layers, config.model.num_heads, config.model.d_model = 2, 4, 128
    config.model.max_seq_len = 128
    config.data.seq_len = 128
    config.train.batch_size, config.train.steps = 16, 300
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 100, 4, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 30
    config.checkpoint.every = 100
  elif variant == "quickstart":  # tuned on 2 CPU cores: benchmarks/first_run.py, RESULTS.md
    config.model.num_layers, config.model.num_heads, config.model.d_model = 4, 4, 128
    config.model.max_seq_len = 128
    config.data.seq_len = 128
    config.data.tokenizer, config.data.tokenizer_vocab_size = "train", 2048
    config.train.batch_size, config.train.steps = 16, 400
    config.train.eval_every, config.train.eval_steps, config.train.log_every = 100, 8, 25
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 50
    config.checkpoint.every = 200
  elif variant == "small":       # ~10M params; a few CPU hours, minutes on an accelerator
    config.model.num_layers, config.model.num_heads, config.model.d_model = 6, 6, 384
    config.model.max_seq_len = 256
    config.data.seq_len = 256
    config.train.batch_size, config.train.steps = 32, 5_000
    config.train.eval_every, config.train.eval_steps = 500, 20
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-3, 200
    config.checkpoint.every = 1_000
  elif variant == "gpt2_124m":   # GPT-2 small: 12 layers, 12 heads, 768 wide, 1024 context
    config.model.num_layers, config.model.num_heads, config.model.d_model = 12, 12, 768
    config.model.max_seq_len = 1024
    config.model.vocab_size = 50_304   # GPT-2's 50,257 rounded up to a multiple of 128
    config.data.seq_len = 1024
    config.train.batch_size, config.train.steps = 512, 20_000
    config.train.eval_every, config.train.eval_steps = 1_000, 50
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 6e-4, 700
    config.checkpoint.every = 1_000
  else:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  return config
