"""Fine-tuning presets: a classifier over a pretrained GPT or BERT run; an encoder-decoder on
source -> target pairs.

  pretrax finetune --config=finetune:classify --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=train.jsonl --config.data.eval=dev.jsonl
  pretrax finetune --config=finetune:classify --init=... --workdir=... \
      --config.data.train=tfds:glue/sst2 --config.data.eval=tfds:glue/sst2:validation
  pretrax finetune --config=finetune:entailment --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=nli_train.jsonl --config.data.eval=nli_dev.jsonl
  pretrax finetune --config=finetune:similarity --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=tfds:glue/qqp --config.data.eval=tfds:glue/qqp:validation
  pretrax finetune --config=finetune:multiple_choice --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=mc_train.jsonl --config.data.eval=mc_dev.jsonl
  pretrax finetune --config=finetune:seq2seq --init=PRETRAINED_BART_RUN --workdir=DIR \
      --config.data.train=train.jsonl --config.data.eval=val.jsonl

The classifier presets differ only in config.finetune.format, GPT-1's input transformations
(data/classification.py): entailment reads {"premise", "hypothesis", "label"} as a pair;
similarity {"text", "text_b", "label"}, GPT reading both orderings and adding their final states
(BERT: the pair); multiple_choice {"context", "choices": [...], "label": index}, one sequence
and one logit per choice, softmax over the choices (every example has the same number of
choices; a batch holds batch_size x choices sequences).

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
    "entailment": "classify premise -> hypothesis pairs (JSONL premise, hypothesis, label)",
    "similarity": "classify text pairs with no order (GPT: both orderings added)",
    "multiple_choice": "pick the correct choice for a context (JSONL context, choices, label)",
    "seq2seq": "a pretrained BART / T5 / Transformer run on source -> target pairs, judged by "
               "what it generates (exact match, BLEU, chrF, ROUGE)",
}


def get_config(variant: str | None = None) -> Config:
  variant = variant or "classify"
  if variant not in VARIANTS:
    raise KeyError(f"{variant!r}; choose one of {', '.join(VARIANTS)}")
  config = Config()
  if variant == "seq2seq":
    return _seq2seq(config)
  if variant != "classify":
    config.finetune.format = variant  # entailment, similarity, multiple_choice: classify's rest
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


def _seq2seq(config: Config) -> Config:
  """source -> target pairs (JSONL {"source", "target"} or tfds:NAME[:SPLIT]); at every eval the
  first 200 eval pairs are generated (greedy) and scored."""
  config.finetune.task = "seq2seq"
  config.data.seq_len = 128         # encoder and decoder positions each; <= the init's positions
  config.train.batch_size, config.train.steps = 32, 1000
  config.train.log_every, config.train.eval_every, config.train.eval_steps = 10, 200, 20
  config.train.eval_generate, config.train.eval_num_beams = 200, 1
  config.train.label_smoothing = 0.1
  config.optimizer.learning_rate = 5e-4   # tiny presets; 3e-5 .. 1e-4 for BART / T5 base
  config.optimizer.warmup_steps = 100
  config.optimizer.decay, config.optimizer.min_lr_ratio = "linear", 0.0
  config.optimizer.weight_decay = 0.01
  config.checkpoint.every = 200
  return config
