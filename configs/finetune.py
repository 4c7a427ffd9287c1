"""Fine-tuning presets: a classifier over a pretrained GPT or BERT run.

  pretrax finetune --config=finetune:classify --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=train.jsonl --config.data.eval=dev.jsonl
  pretrax finetune --config=finetune:classify --init=... --workdir=... \
      --config.data.train=tfds:glue/sst2 --config.data.eval=tfds:glue/sst2:validation

The model section is ignored: it is taken from --init (the architecture must match its
checkpoint), and so are the tokenizer and data.objective. A model field set to something other
than its default (e.g. `--config.model.family=bert` over a GPT run) must agree with --init, or
fine-tuning stops with an error naming the field.

The defaults suit the tiny presets of configs/gpt.py and configs/bert.py, which need a larger
learning rate than the papers': 1e-3 here. For BERT-base/large use the paper's 2e-5 .. 5e-5
(`--config.optimizer.learning_rate=5e-5`, batch 32, 2-4 epochs); GPT-1 used 6.25e-5.
"""

from pretrax.training.config import Config

VARIANTS = {  # name -> what it is for (pretrax finetune --help lists them)
    "classify": "a classifier over a pretrained GPT or BERT run (pretrax finetune --init=RUN)",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "classify"
  if variant not in VARIANTS:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  config = Config()
  config.finetune.task = "classify"
  config.finetune.lm_weight = 0.5   # GPT-1's λ for the auxiliary LM loss (ignored for BERT)
  config.finetune.classifier_dropout = 0.1
  config.data.seq_len = 128         # must not exceed the init model's max_seq_len
  config.train.batch_size, config.train.steps = 32, 300
  config.train.log_every, config.train.eval_every = 10, 100
  config.optimizer.learning_rate = 1e-3  # tiny models; 5e-5 for BERT-base (see above)
  config.optimizer.warmup_steps = 30     # 10% of the steps, as BERT
  config.optimizer.decay, config.optimizer.min_lr_ratio = "linear", 0.0  # linear to 0, as BERT
  config.optimizer.b2, config.optimizer.weight_decay = 0.999, 0.01
  config.checkpoint.every = 100
  return config
