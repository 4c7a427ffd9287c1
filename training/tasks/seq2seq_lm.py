"""Encoder-decoder training: predict every target token from the encoder's input and the targets
before it. `Seq2SeqLM` pretrains on a corpus (BART's denoise, T5's span_corruption);
`Seq2SeqPairs` trains on supervised source -> target pairs (seq2seq: data.train, data.eval).

Batches: data/seq2seq_pipeline.py FEATURES. One loss term, "", over the decoder targets, with
config.train.label_smoothing in training; validation reports the unsmoothed target loss, its
perplexity and token accuracy.
"""

import math
import shlex

import jax
import jax.numpy as jnp

from pretrax.data import decoder_pairs, global_batches, seq2seq_pairs, seq2seq_pipeline
from pretrax.training import config as config_lib, losses, metrics as metrics_lib, run_dir
from pretrax.training.config import Config, ConfigError
from pretrax.training.tasks import init_run
from pretrax.training.tasks.base import Task
from pretrax.training.tasks.pretraining import PretrainingTask


class Seq2SeqLM(PretrainingTask):
  terms = {"": 1.0}
  families = ("encoder_decoder",)

  @classmethod
  def check_config(cls, config: Config) -> None:
    super().check_config(config)
    if config.train.loss_chunk_size:
      raise ConfigError("config.train.loss_chunk_size chunks the causal LM loss only; set it to 0 "
                        f"for data.objective={config.data.objective!r}")

  @property
  def decoder_length(self) -> int:
    return seq2seq_pipeline.decoder_length(self.config.data)

  def weights(self, batch):
    return {"": jnp.sum(batch["loss_weights"])}

  def sums(self, model, batch, rngs=None, label_smoothing=None):
    if label_smoothing is None:
      label_smoothing = self.config.train.label_smoothing
    logits_btv = model(batch["encoder_inputs"], batch["decoder_inputs"],
                       batch["encoder_segment_ids"], batch["decoder_segment_ids"],
                       batch["encoder_positions"], batch["decoder_positions"], rngs=rngs)
    return losses.cross_entropy_sums(logits_btv, batch["decoder_targets"], batch["loss_weights"],
                                     label_smoothing=label_smoothing)

  def eval_sums(self, model, batch):
    return self.sums(model, batch, label_smoothing=0.0)

  def summarize(self, totals):
    """Target loss (nats per target token, unsmoothed), its perplexity, token accuracy."""
    out = super().summarize(totals)
    out["perplexity"] = math.exp(min(out["loss"], 50.0))
    out["tokens"] = int(jax.device_get(totals)["weight_sum"])
    return out

  @property
  def tokens_per_step(self) -> int:
    """Encoder and decoder positions of a global batch (the unit of tokens/s and of MFU)."""
    return self.config.train.batch_size * (self.config.data.seq_len + self.decoder_length)

  def describe_step(self) -> str:
    return (f"{self.config.train.batch_size}x({self.config.data.seq_len}+{self.decoder_length}) "
            "encoder+decoder tokens/step")

  def flops_per_token(self, n_params: int) -> float:
    return metrics_lib.encoder_decoder_flops_per_token(self.config.model, self.config.data.seq_len,
                                                       self.decoder_length)

  def next_commands(self) -> list[str]:
    # Fine-tuning a classifier on an encoder-decoder is not a task yet.
    return [c for c in super().next_commands() if "finetune" not in c]


class Seq2SeqPairs(Seq2SeqLM):
  """Supervised pairs from JSONL files or TFDS (data/seq2seq_pairs.py), several packed to a row:
  config.data.train, and config.data.eval for validation. Encoder and decoder have
  config.data.seq_len positions each.

  Trained from scratch (data.objective=seq2seq), or fine-tuned from a pretrained run
  (finetune.task=seq2seq, `pretrax finetune --init=RUN`): the model section, tokenizer and every
  parameter come from --init's latest checkpoint.

  GPT is the same task with another model: each pair is one causal sequence `[bos] source [sep]
  target [eos]` with the loss on the target and EOS (data/decoder_pairs.py), and generation
  continues the prompt `[bos] source [sep]`.
  """

  families = ("encoder_decoder", "gpt")  # GPT: one causal sequence per pair (decoder_pairs)
  init: init_run.Init | None = None       # the pretrained run, when fine-tuning
  _generation: tuple | None = None        # generation_metrics: inputs, sizes, targets, Decoder

  @classmethod
  def check_config(cls, config: Config) -> None:
    if config.finetune.init:  # the model section is checked once taken from --init (`open`)
      config_lib.validate_finetune(config.finetune)
    else:
      super().check_config(config)
    if not config.data.train:
      raise ConfigError("config.data.train is empty: give the training pairs with "
                        "--config.data.train=FILE.jsonl ({\"source\": ..., \"target\": ...} lines) "
                        "or tfds:NAME[:SPLIT]")
    if config.data.tokenizer == "train" and config.finetune.init:
      raise ConfigError("config.data.tokenizer=train: a fine-tuning run keeps --init's "
                        "tokenizer; drop --config.data.tokenizer")

  @classmethod
  def open(cls, config: Config, workdir: str) -> "Seq2SeqPairs":
    if not config.finetune.init:
      # data.tokenizer=train: one SentencePiece vocabulary for both sides, trained on the pairs
      def training_texts():
        pairs = seq2seq_pairs.read_pairs(config.data.train, "config.data.train",
                                         data_dir=config.data.data_dir or None,
                                         features=config.data.pair_features)
        return ([text for pair in pairs for text in pair],
                f"the {len(pairs):,} source and target texts of {config.data.train}")

      tokenizer = run_dir.prepare_tokenizer(config, workdir, training_texts)
      return cls(run_dir.resolve_vocab(config, tokenizer), tokenizer, workdir)
    config, init, tokenizer = init_run.open_finetuning(config, workdir, cls.families,
                                                       objective="seq2seq")
    task = cls(config, tokenizer, workdir)
    task.init = init
    return task

  def init_params(self, abstract_params, params_sharding) -> dict:
    """From scratch: a fresh init; fine-tuning: --init's parameters."""
    if self.init is None:
      return super().init_params(abstract_params, params_sharding)
    return init_run.restore_params(self.init, jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
        params_sharding))

  def next_commands(self) -> list[str]:
    run, data = shlex.quote(self.workdir.rstrip("/")), self.config.data
    pairs = shlex.quote(data.eval) if data.eval.endswith(".jsonl") else "pairs.jsonl"
    return super().next_commands() + [
        f"pretrax generate --workdir={run} --input={pairs} --output=generations.jsonl "
        "--num_beams=4"]

  @property
  def decoder_only(self) -> bool:
    return self.config.model.family == "gpt"

  def _rows(self, spec: str, field: str):
    data = self.config.data
    pairs = seq2seq_pairs.read_pairs(
        spec, field, default_split="train" if spec == data.train else "validation",
        data_dir=data.data_dir or None, features=data.pair_features)
    if self.decoder_only:
      return decoder_pairs.PackedSequences(pairs, self.tokenizer, t=data.seq_len, name=spec)
    return seq2seq_pairs.PackedPairs(pairs, self.tokenizer, s=data.seq_len, t=data.seq_len,
                                     name=spec)

  def _batches(self, rows, *, shuffle: bool, repeat: bool, num_batches=None):
    size, seed = self.config.train.batch_size, self.config.train.seed
    make_examples = (decoder_pairs.SequenceRows(sep_id=self.tokenizer.sep_id)
                     if self.decoder_only else
                     seq2seq_pairs.PairRows(s=self.config.data.seq_len,
                                            bos_id=self.tokenizer.bos_id))
    return global_batches.GlobalBatches(
        rows, make_examples,
        global_batch_size=size, seed=seed, shuffle=shuffle, repeat=repeat,
        num_batches=num_batches,
        rows=global_batches.process_slice(size, jax.process_index(), jax.process_count()))

  def data_fingerprint(self) -> dict:
    # The data position counts rows of the pairs file, not of config.data.source.
    return {**Task.data_fingerprint(self),
            "pairs": seq2seq_pairs.identity(self.config.data.train)}

  def train_batches(self):
    return self._batches(self._rows(self.config.data.train, "config.data.train"),
                         shuffle=self.config.data.shuffle, repeat=True)

  def eval_batches(self, max_batches: int | None, split: str | None = None):
    path = split or self.config.data.eval
    if not path:
      return None
    rows = self._rows(path, "--split" if split else "config.data.eval")
    return _closing(self._batches(rows, shuffle=False, repeat=False,
                                  num_batches=max_batches or None))

  def sums(self, model, batch, rngs=None, label_smoothing=None):
    if not self.decoder_only:
      return super().sums(model, batch, rngs, label_smoothing)
    if label_smoothing is None:
      label_smoothing = self.config.train.label_smoothing
    hidden_btd = model.hidden_states(batch["inputs"], batch["segment_ids"], batch["positions"],
                                     rngs=rngs)
    return losses.cross_entropy_sums(model.logits(hidden_btd), batch["targets"],
                                     batch["loss_weights"], label_smoothing=label_smoothing)

  @property
  def tokens_per_step(self) -> int:
    if self.decoder_only:
      return Task.tokens_per_step.fget(self)
    return super().tokens_per_step

  def describe_step(self) -> str:
    return Task.describe_step(self) if self.decoder_only else super().describe_step()

  def flops_per_token(self, n_params: int) -> float:
    if self.decoder_only:
      return metrics_lib.flops_per_token(self.config.model, n_params, self.config.data.seq_len,
                                         self.config.data)
    return super().flops_per_token(n_params)

  def generation_inputs(self, sources: list[str]) -> tuple[list, int, int]:
    """What generation decodes for source texts: (the inputs, the most new tokens, the widest
    input): encoder ids, or GPT's prompts `[bos] source [sep]` (module doc)."""
    t, tok = self.config.data.seq_len, self.tokenizer
    if not self.decoder_only:
      return seq2seq_pairs.encode_sources(tok, sources, t), t, t
    new = decoder_pairs.target_room(t)
    prompts = [decoder_pairs.prompt(tok, ids, t) for ids in tok.encode_batch(sources)]
    return prompts, new, t + 1 - new

  def generation_metrics(self, model):
    """With config.train.eval_generate = N: the model's outputs for the first N eval pairs
    (greedy, or beam search with config.train.eval_num_beams), up to data.seq_len tokens each,
    scored against their targets: exact match, BLEU, chrF, ROUGE-1/2/L
    (inference/text_metrics.py)."""
    from pretrax.inference import decoding, text_metrics  # inference is not needed to train
    tc, data, tok = self.config.train, self.config.data, self.tokenizer
    if not tc.eval_generate or not data.eval:
      return None
    if self._generation is None:
      pairs = seq2seq_pairs.read_pairs(data.eval, "config.data.eval", default_split="validation",
                                       data_dir=data.data_dir or None,
                                       features=data.pair_features)[:tc.eval_generate]
      inputs, new, width = self.generation_inputs([p[0] for p in pairs])
      decoder = decoding.Decoder(model, start_id=None if self.decoder_only else tok.bos_id)
      self._generation = (inputs, new, width, [p[1] for p in pairs], decoder)
    inputs, new, width, targets, decoder = self._generation
    decoder.load(model)
    sampling = decoding.Sampling(temperature=0.0, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                 eos_id=tok.eos_id)
    tokens = decoding.decode_all(decoder, inputs, new, sampling,
                                 beam=decoding.Beam(tc.eval_num_beams),
                                 batch_size=min(tc.batch_size, 64), max_width=width)
    scores = text_metrics.generation_metrics([tok.decode(t) for t in tokens], targets)
    return {("generated" if k == "count" else k): v for k, v in scores.items()}

  def eval_data(self, split: str | None, max_batches: int | None):
    """`split`: None, "eval" or "validation": config.data.eval; "train": config.data.train;
    anything else a JSONL file of pairs or tfds:NAME[:SPLIT]."""
    data = self.config.data
    path = {None: data.eval, "eval": data.eval, "validation": data.eval,
            "train": data.train}.get(split, split)
    if not path:
      raise ConfigError(f"{self.workdir} has no config.data.eval; pass pairs with "
                        "--split=FILE.jsonl or tfds:NAME[:SPLIT]")
    if max_batches is None:
      max_batches = self.config.train.eval_steps
    return path, self.eval_batches(max_batches or None, path)


def _closing(reader: global_batches.GlobalBatches):
  """Yields the reader's batches and stops its threads when done (or abandoned)."""
  try:
    yield from reader
  finally:
    reader.close()
