"""Training-step throughput of presets, optionally against the same model in PyTorch, and the rate
of the input pipeline that would feed them.

  python benchmarks/throughput.py --preset=configs/gpt.py:tiny --preset=configs/gpt.py:small \
      [--steps=20 --warmup=3 --batch=B --seq=T] [--reference=torch] [--loop] [--smoke] \
      [--text=PATH] [-- --config.model.attention_impl=dot_product ...]
  python benchmarks/throughput.py --nanogpt --reference=torch --steps=100

For each preset (its own batch_size x seq_len unless --batch/--seq say otherwise):
  pretrax   the trainer's model, optimizer and jitted, donated train step on random token
            batches (not the data pipeline); the first step (compile + run) is timed on its own,
            then --warmup steps, then --steps timed steps.
  torch     (--reference=torch) the same shapes as transformers.GPT2LMHeadModel (BERT:
            BertForPreTraining; encoder-decoder: BartForConditionalGeneration, for BART-layout
            presets only), float32, torch.optim.AdamW with the same lr/betas/eps/weight
            decay (matrices only) and gradient clipping; eager, timed the same way, with
            --torch_threads CPU threads (default: all cores, like XLA's CPU thread pool).
  loop      (--loop) the whole trainer (`trainer.train`: input pipeline, host transfers,
            metrics every step, progress) on --text, twice: cold (nothing built or compiled
            yet) and warm (corpus built, programs in the compilation cache); first s is the
            run's startup_s, the steps are timed between its metrics lines.
  torch loop (--loop, GPT) nanoGPT's training loop (random windows of the token stream, AdamW,
            clipping, loss.item() every step) on the same model written in plain PyTorch.
            --nanogpt: nanoGPT's CPU baby-GPT shapes (4 layers, 4 heads, 128 wide, context 64,
            batch 12) on configs/gpt.py:tiny, with --loop.
  pipeline  the trainer's training batches (data.batches.pretraining_batches: packed rows
            read as global batches; BERT's masks and sentence pairs drawn as they are read)
            of a real corpus with the byte tokenizer (--text, default
            ../shared/data/tinyshakespeare.txt, else the built-in default corpus), rows built
            before timing; a "step" is one batch of the preset's shape.
Columns:
  batch       B x T (encoder-decoder: B x S+T, S = data.seq_len encoder positions, T =
              seq2seq_pipeline.decoder_length decoder positions)
  first s     seconds of the first step: compilation (pretrax) or lazy initialisation (torch)
  ms med/min/max  milliseconds per step over the timed steps
  tokens/s    tokens per step (the task's tokens_per_step: B·T; encoder-decoder B·(S + T)) /
              median step time (pipeline: / mean time per batch, as its batches are uneven:
              most slice already tokenized rows, a few read and tokenize documents)
  MFU         tokens/s x FLOPs per token / peak FLOP/s of the device (the task's
              flops_per_token; GPT: 6N + 12·L·d·T; the footer prints each preset's formula and
              where the peak came from)
  peak MiB    the device's peak_bytes_in_use when it reports one, else this process's peak RSS
  x           pretrax row: pretrax tokens/s ÷ torch tokens/s; loop rows: their tokens/s ÷ the
              torch loop's; pipeline row: pipeline tokens/s ÷ pretrax train tokens/s (its
              margin over the training step)

--smoke runs a few steps of the tiny preset (or of each --preset: configs/bart.py:tiny for
the encoder-decoder path) on a tiny batch (seconds; for CI).
On a shared machine the numbers are only as good as its load: the header prints the load average.
"""

import argparse
import dataclasses
import gc
import os
import resource
import statistics
import sys
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEXT = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")
SMOKE = {"presets": ["configs/gpt.py:tiny"], "batch": 4, "seq": 32, "steps": 3, "warmup": 1}
COLUMNS = ("row", "batch", "params", "first s", "ms med", "ms min", "ms max", "tokens/s", "MFU",
           "peak MiB", "x")


@dataclasses.dataclass
class Timing:
  """Wall-clock seconds of the first call, then of each timed call (after warmup)."""
  first_s: float
  step_s: list[float]
  uneven: bool = False  # calls do unequal work (pipeline batches), so rates use the mean

  @property
  def median_s(self) -> float:
    return statistics.median(self.step_s)

  @property
  def per_step_s(self) -> float:
    """Seconds per step behind tokens/s: the median, robust to a preempted step; for uneven
    steps the mean (total time / steps), as a median would ignore the expensive ones."""
    return statistics.fmean(self.step_s) if self.uneven else self.median_s


def time_steps(run_step: Callable[[], None], *, steps: int, warmup: int) -> Timing:
  """Times `run_step` (which must return only once its work is done): 1 + warmup + steps calls."""
  start = time.perf_counter()
  run_step()
  first_s = time.perf_counter() - start
  for _ in range(warmup):
    run_step()
  step_s = []
  for _ in range(steps):
    start = time.perf_counter()
    run_step()
    step_s.append(time.perf_counter() - start)
  return Timing(first_s, step_s)


# --------------------------------------------------------------------------------------------
# Peak memory and peak FLOP/s.


class PeakMemory:
  """Peak memory of one measurement, and where the figure comes from.

  The device's `memory_stats()["peak_bytes_in_use"]` when it has one (GPU/TPU; a high-water mark
  since the process started, it cannot be reset). Otherwise (CPU) this process's peak resident
  set size from `resource.getrusage`, reset before each row through /proc/self/clear_refs where
  Linux allows it.
  """

  def __init__(self):
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    self.device = "peak_bytes_in_use" in stats
    self.resettable = False
    if not self.device:
      try:
        with open("/proc/self/clear_refs", "w") as f:
          f.write("5")
        self.resettable = True
      except OSError:
        pass

  @property
  def source(self) -> str:
    if self.device:
      return "device memory_stats()['peak_bytes_in_use'] (high-water mark since process start)"
    if self.resettable:
      return "process peak RSS (resource.getrusage ru_maxrss, reset before each row)"
    return "process peak RSS (resource.getrusage ru_maxrss, high-water mark since process start)"

  def reset(self) -> None:
    from pretrax.cli import startup
    gc.collect()
    startup.release_free_host_memory()  # kept by startup.prepare's allocator setting
    if self.resettable:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

  def peak_bytes(self) -> int:
    if self.device:
      import jax
      return int(jax.devices()[0].memory_stats()["peak_bytes_in_use"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def peak_flops(override: float) -> tuple[float, str]:
  """(peak FLOP/s of one device, where it came from), as training/metrics.device_peak_flops."""
  import jax
  from pretrax.training import metrics
  kind = jax.devices()[0].device_kind
  flops = metrics.device_peak_flops(override)
  if override > 0:
    return flops, "config.train.peak_flops"
  if any(name.lower() in kind.lower() for name in metrics.PEAK_FLOPS):
    return flops, f"table (training/metrics.PEAK_FLOPS, dense bf16, {kind})"
  return flops, f"measured: best 1024x1024 float32 matmul on {kind} (no table entry)"


def gpt_batch(config, rng, batch_size: int, seq_len: int, token_vocab: int) -> dict:
  """Random causal-LM batch, keys and dtypes of the causal training batches: one document a row."""
  import numpy as np
  b, t = batch_size, seq_len
  ids = rng.integers(0, token_vocab, size=(b, t + 1), dtype=np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:],
          "loss_weights": np.ones((b, t), np.float32),
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}


def bert_batch(config, rng, batch_size: int, seq_len: int, token_vocab: int) -> dict:
  """Random masked-LM batch, keys and dtypes of the masked-LM training batches: one sentence
  pair a row (types 0 then 1), max_predictions_per_seq distinct masked positions."""
  import numpy as np
  b, t, p = batch_size, seq_len, config.data.max_predictions_per_seq
  positions_bp = np.sort(rng.permuted(np.tile(np.arange(1, t, dtype=np.int32), (b, 1)),
                                      axis=1)[:, :p], axis=1)
  return {"input_ids": rng.integers(0, token_vocab, size=(b, t), dtype=np.int32),
          "segment_ids": np.ones((b, t), np.int32),
          "token_type_ids": np.broadcast_to((np.arange(t) >= t // 2).astype(np.int32),
                                            (b, t)).copy(),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
          "masked_positions": positions_bp,
          "masked_ids": rng.integers(0, token_vocab, size=(b, p), dtype=np.int32),
          "masked_weights": np.ones((b, p), np.float32),
          "nsp_label": rng.integers(0, 2, size=(b,), dtype=np.int32)}


def seq2seq_batch(config, rng, batch_size: int, seq_len: int, token_vocab: int) -> dict:
  """Random encoder-decoder batch, keys and dtypes of data/seq2seq_pipeline.FEATURES: one
  example a row, S = seq_len encoder and T = decoder_length(config.data) decoder positions, all
  of them real tokens and targets."""
  import numpy as np
  from pretrax.data import seq2seq_pipeline
  b, s = batch_size, seq_len
  t = seq2seq_pipeline.decoder_length(dataclasses.replace(config.data, seq_len=s))
  ids_bt = rng.integers(0, token_vocab, size=(b, t + 1), dtype=np.int32)
  return {"encoder_inputs": rng.integers(0, token_vocab, size=(b, s), dtype=np.int32),
          "encoder_segment_ids": np.ones((b, s), np.int32),
          "encoder_positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
          "decoder_inputs": ids_bt[:, :-1], "decoder_targets": ids_bt[:, 1:],
          "decoder_segment_ids": np.ones((b, t), np.int32),
          "decoder_positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
          "loss_weights": np.ones((b, t), np.float32)}


# Per model family: a synthetic batch, the PyTorch reference and the FLOPs formula it is timed
# against. A new family is one entry in each.
SYNTHETIC_BATCHES = {"gpt": gpt_batch, "bert": bert_batch, "encoder_decoder": seq2seq_batch}
FLOPS_FORMULAS = {"gpt": "6N + 12·L·d·T",
                  "bert": "6(N − H) + 12·L·d·T + 6·H·P/T, H = d² + V·d (the MLM head)",
                  "encoder_decoder": "metrics.encoder_decoder_flops_per_token (weight matmuls, "
                                     "self- and cross-attention, LM head on the T decoder "
                                     "positions; over S + T)"}


def step_tokens(config) -> tuple[int, str]:
  """(tokens of one step, the batch column), as the task counts them (tokens_per_step): B·T, or
  B·(S + T) encoder and decoder positions for an encoder-decoder."""
  from pretrax.data import seq2seq_pipeline
  from pretrax.training import tasks
  b, s = config.train.batch_size, config.data.seq_len
  tokens = tasks.task_class(config)(config, tokenizer=None, workdir="").tokens_per_step
  if config.model.family == "encoder_decoder":
    return tokens, f"{b}x{s}+{seq2seq_pipeline.decoder_length(config.data)}"
  return tokens, f"{b}x{s}"


def run_pretrax(config, args, token_vocab: int, memory: PeakMemory):
  """(Timing, parameter count, FLOPs per token, peak bytes) of the jitted train step.

  The count includes the position table (as torch's does); the FLOPs are the task's
  flops_per_token (GPT, BERT: N without the position table).
  """
  import jax
  import numpy as np
  from flax import nnx
  from pretrax.modeling import models, sharding
  from pretrax.training import mesh as mesh_lib, metrics, tasks, trainer

  family = config.model.family
  if family not in SYNTHETIC_BATCHES:
    raise SystemExit(f"benchmarks/throughput.py has no synthetic batch for config.model.family="
                     f"{family!r}; add a function to SYNTHETIC_BATCHES")
  memory.reset()
  mesh = mesh_lib.make_mesh(config.mesh)
  abstract_params = nnx.to_pure_dict(models.abstract_model(config.model)[1])
  n_params = metrics.num_params(abstract_params, exclude_positions=False)
  rng = np.random.default_rng(0)
  b, t = config.train.batch_size, config.data.seq_len
  task = tasks.task_class(config)(config, tokenizer=None, workdir="")
  flops_token = task.flops_per_token(metrics.num_params(abstract_params))
  setup = trainer.build_train_setup(task, mesh)
  p_train_step, batch_sharding = setup.p_train_step, setup.batch_sharding
  with jax.set_mesh(mesh), sharding.axis_rules(config.mesh.axis_rules):
    state = setup.init_state()
    batches = [mesh_lib.global_batch(SYNTHETIC_BATCHES[family](config, rng, b, t, token_vocab),
                                     batch_sharding) for _ in range(2)]
    box = {"state": state, "i": 0}

    def run_step():
      batch = batches[box["i"] % len(batches)]
      box["state"], step_metrics = p_train_step(box["state"], batch)
      box["i"] += 1
      jax.block_until_ready((box["state"], step_metrics))
      if box["i"] == 1 and not np.isfinite(float(step_metrics["loss"])):
        raise FloatingPointError(f"non-finite loss {float(step_metrics['loss'])} at step 1")

    timing = time_steps(run_step, steps=args.steps, warmup=args.warmup)
    peak = memory.peak_bytes()
    del box, batches
  return timing, n_params, flops_token, peak


# --------------------------------------------------------------------------------------------
# PyTorch reference.


def _require_layout(m, expected: dict, model_name: str) -> None:
  for name, value in expected.items():
    if getattr(m, name) != value:
      raise SystemExit(f"--reference=torch builds transformers.{model_name}, which has "
                       f"config.model.{name}={value!r}; this preset has {getattr(m, name)!r}. "
                       "Drop --reference or the override.")


def torch_gpt2(config, tokenizer):
  """(GPT2LMHeadModel with the preset's shapes: tied head, gelu_new; loss(batch))."""
  import torch.nn.functional as F
  import transformers
  m = config.model
  _require_layout(m, {"norm": "layernorm", "norm_position": "pre", "activation": "gelu_tanh",
                      "position": "learned", "use_bias": True, "head_dim": 0,
                      "type_vocab_size": 0, "embed_norm": False}, "GPT2LMHeadModel")
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_layer=m.num_layers, n_head=m.num_heads, n_embd=m.d_model, n_inner=m.mlp_dim,
      n_positions=m.max_seq_len, vocab_size=m.vocab_size, activation_function="gelu_new",
      resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.attention_dropout,
      layer_norm_epsilon=m.norm_eps, bos_token_id=tokenizer.bos_id,
      eos_token_id=tokenizer.eos_id))

  def loss_fn(batch):
    logits_btv = model(input_ids=batch["inputs"]).logits
    return F.cross_entropy(logits_btv.flatten(0, 1), batch["targets"].flatten())

  return model, loss_fn


def torch_bert(config, tokenizer):
  """(BertForPreTraining with the preset's shapes; MLM + NSP loss(batch)).

  Like pretrax's BERT, the MLM head runs only at the P masked positions (BertForPreTraining's
  own forward would project all T positions onto the vocabulary).
  """
  import torch
  import torch.nn.functional as F
  import transformers
  m = config.model
  _require_layout(m, {"norm": "layernorm", "norm_position": "post", "activation": "gelu",
                      "position": "learned", "use_bias": True, "head_dim": 0,
                      "embed_norm": True}, "BertForPreTraining")
  model = transformers.BertForPreTraining(transformers.BertConfig(
      vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads, intermediate_size=m.mlp_dim, hidden_act="gelu",
      max_position_embeddings=m.max_seq_len, type_vocab_size=m.type_vocab_size,
      layer_norm_eps=m.norm_eps, hidden_dropout_prob=m.dropout,
      attention_probs_dropout_prob=m.attention_dropout, pad_token_id=tokenizer.pad_id))
  nsp = config.data.objective != "mlm"

  def loss_fn(batch):
    hidden_btd, pooled_bd = model.bert(input_ids=batch["input_ids"],
                                       attention_mask=batch["segment_ids"] > 0,
                                       token_type_ids=batch["token_type_ids"])[:2]
    index_bpd = batch["masked_positions"][..., None].expand(-1, -1, hidden_btd.shape[-1])
    logits_bpv = model.cls.predictions(torch.gather(hidden_btd, 1, index_bpd))
    loss = F.cross_entropy(logits_bpv.flatten(0, 1), batch["masked_ids"].flatten())
    if nsp:
      loss = loss + F.cross_entropy(model.cls.seq_relationship(pooled_bd), batch["nsp_label"])
    return loss

  return model, loss_fn


def torch_bart(config, tokenizer):
  """(BartForConditionalGeneration with the preset's shapes: post-LN, learned positions,
  embedding LayerNorm, erf GELU, tied head with a logits bias; loss(batch)).

  Only BART-layout presets (configs/bart.py); T5's relative positions, the Transformer's
  sinusoids and the other switches BART lacks are refused, naming the field. The loss is the
  cross-entropy over the decoder targets weighted by loss_weights, label smoothing as
  config.train.label_smoothing. torch counts 2 more position rows per stack (BART reads row
  position + 2) and keeps final_logits_bias as a buffer, not a parameter.
  """
  import torch.nn.functional as F
  import transformers
  m = config.model
  _require_layout(m, {"position": "learned", "norm": "layernorm", "norm_position": "post",
                      "activation": "gelu", "use_bias": True, "head_dim": 0, "embed_norm": True,
                      "attention_scale": True, "tie_embeddings": True,
                      "tied_logit_scale": False, "final_logits_bias": True, "norm_eps": 1e-5},
                  "BartForConditionalGeneration")
  h, f = m.num_heads, m.mlp_dim
  model = transformers.BartForConditionalGeneration(transformers.BartConfig(
      vocab_size=m.vocab_size, d_model=m.d_model, encoder_layers=m.num_layers,
      decoder_layers=m.num_decoder_layers, encoder_attention_heads=h, decoder_attention_heads=h,
      encoder_ffn_dim=f, decoder_ffn_dim=f, max_position_embeddings=m.max_seq_len,
      activation_function="gelu", dropout=m.dropout, attention_dropout=m.attention_dropout,
      activation_dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
      init_std=m.init_std, scale_embedding=m.embed_scale, pad_token_id=tokenizer.pad_id,
      bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
      decoder_start_token_id=tokenizer.bos_id))
  smoothing = config.train.label_smoothing

  def loss_fn(batch):
    # Full segments, no padding: no attention masks (the decoder is causal by itself).
    logits_btv = model(input_ids=batch["encoder_inputs"],
                       decoder_input_ids=batch["decoder_inputs"]).logits
    loss_bt = F.cross_entropy(logits_btv.transpose(1, 2), batch["decoder_targets"],
                              reduction="none", label_smoothing=smoothing)
    weights_bt = batch["loss_weights"]
    return (loss_bt * weights_bt).sum() / weights_bt.sum().clamp(min=1.0)

  return model, loss_fn


TORCH_REFERENCES = {"gpt": torch_gpt2, "bert": torch_bert, "encoder_decoder": torch_bart}


def torch_adamw(model, o):
  """torch.optim.AdamW with config.optimizer `o`'s settings, decaying matrices only (as
  training/optimizer.decay_mask)."""
  import torch
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)


def torch_update(model, optimizer, loss, grad_clip: float) -> None:
  """Backward pass, gradient clipping (when grad_clip > 0) and one optimizer step."""
  import torch
  loss.backward()
  if grad_clip > 0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  optimizer.step()
  optimizer.zero_grad(set_to_none=True)


def run_torch(config, args, tokenizer, token_vocab: int, memory: PeakMemory):
  """(Timing, total parameter count, peak bytes, attention implementation) of an eager step."""
  try:
    import torch
  except ImportError as e:
    raise SystemExit(f"--reference=torch needs PyTorch and transformers ({e}); install the "
                     "test extra: pip install -e .[test] torch transformers") from None
  import numpy as np
  import jax

  family = config.model.family
  if family not in TORCH_REFERENCES:
    raise SystemExit(f"--reference=torch: no PyTorch reference for config.model.family="
                     f"{family!r}; add one to TORCH_REFERENCES in benchmarks/throughput.py")
  device = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  torch.manual_seed(0)
  memory.reset()
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  model, loss_fn = TORCH_REFERENCES[family](config, tokenizer)
  model = model.to(device=device, dtype=torch.float32).train()
  optimizer = torch_adamw(model, config.optimizer)
  rng = np.random.default_rng(0)
  b, t = config.train.batch_size, config.data.seq_len

  def to_torch(x):  # integer ids -> int64, as torch's embeddings and losses want
    x = torch.from_numpy(np.ascontiguousarray(x))
    return (x.long() if not x.is_floating_point() else x).to(device)

  batches = [{k: to_torch(v)
              for k, v in SYNTHETIC_BATCHES[family](config, rng, b, t, token_vocab).items()}
             for _ in range(2)]
  box = {"i": 0}

  def run_step():
    torch_update(model, optimizer, loss_fn(batches[box["i"] % len(batches)]),
                 config.optimizer.grad_clip)
    box["i"] += 1
    if device == "cuda":
      torch.cuda.synchronize()

  timing = time_steps(run_step, steps=args.steps, warmup=args.warmup)
  if device == "cuda":
    peak = torch.cuda.max_memory_allocated()
  else:
    peak = memory.peak_bytes()
  n_params = sum(p.numel() for p in model.parameters())
  attn = getattr(model.config, "_attn_implementation", "?")
  del model, optimizer, batches
  return timing, n_params, peak, f"{device}, {torch.get_num_threads()} threads, attention {attn}"


# --------------------------------------------------------------------------------------------
# Input pipeline.


def corpus_source(text: str | None) -> tuple[str, str]:
  """(config.data.source, description): `text` as a local corpus if the file exists, else the
  built-in default corpus."""
  if text and os.path.isfile(text):
    path = os.path.abspath(text)
    return f"text:{path}", f"text:{path}"
  return "default", "default (the embedded Python docs corpus)"


def run_pipeline(config, tokenizer, source: str, args) -> Timing:
  """Times `next()` on the trainer's training batches of `source`, with the preset's batch,
  seq_len and objective."""
  from pretrax.data import batches
  from pretrax.training import config as config_lib
  config = config_lib.apply_overrides(config, {"data.source": source})
  iterator = iter(batches.pretraining_batches(
      config.data, tokenizer, config.data.train_split, global_batch_size=config.train.batch_size,
      seed=config.train.seed, shuffle=True, repeat=True))
  timing = time_steps(lambda: next(iterator), steps=args.pipeline_steps, warmup=args.warmup)
  return dataclasses.replace(timing, uneven=True)


# --------------------------------------------------------------------------------------------
# Whole training loops (--loop): what a user waits for, not only the jitted step.

# nanoGPT's CPU "baby GPT" (its README: 4 layers, 4 heads, 128 wide, context 64, batch 12).
NANOGPT_SHAPES = {"model.num_layers": "4", "model.num_heads": "4", "model.d_model": "128",
                  "model.max_seq_len": "64", "data.seq_len": "64", "train.batch_size": "12"}


def loop_timing(records: list[dict], warmup: int) -> Timing:
  """Timing of a trainer run logged at every step: first = its `startup_s` (call to the end of
  step 1), then the time between consecutive metrics lines after `warmup` more steps."""
  elapsed = [r["elapsed_s"] for r in records]
  return Timing(records[0]["startup_s"],
                [b - a for a, b in zip(elapsed[warmup:], elapsed[warmup + 1:])])


def run_pretrax_loop(config, args, text: str) -> tuple[Timing, Timing]:
  """(cold, warm) Timings of `trainer.train` on the --text file, logging every step like
  nanoGPT's CPU command (log_interval=1), no eval. Cold: a fresh corpus directory and
  compilation cache; warm: the same run again in a new workdir, corpus built and programs
  compiled."""
  import contextlib
  import json
  import tempfile
  from pretrax.training import compile_cache, config as config_lib, trainer
  steps = 1 + args.warmup + args.steps
  timings = []
  with tempfile.TemporaryDirectory() as scratch:
    run = config_lib.apply_overrides(config, {
        "data.source": f"text:{os.path.abspath(text)}", "data.data_dir": f"{scratch}/data",
        "train.steps": str(steps), "train.log_every": "1", "train.eval_every": "0",
        "checkpoint.every": str(steps), "train.compile_cache_dir": f"{scratch}/xla"})
    for attempt in ("cold", "warm"):
      workdir = os.path.join(scratch, attempt)
      with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
          contextlib.redirect_stderr(quiet):
        trainer.train(run, workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        timings.append(loop_timing([json.loads(line) for line in f], args.warmup))
  compile_cache.enable(compile_cache.OFF)  # the other rows compile as before
  return timings[0], timings[1]


def torch_gpt(config):
  """A GPT in plain PyTorch with the preset's layout (pre-LN, GELU tanh, learned positions, tied
  head, biases as config.model.use_bias), in the manner of nanoGPT's model.py;
  `model(inputs_bt, targets_bt)` is the mean cross-entropy."""
  import torch
  import torch.nn.functional as F
  from torch import nn
  m = config.model
  _require_layout(m, {"norm": "layernorm", "norm_position": "pre", "activation": "gelu_tanh",
                      "position": "learned", "head_dim": 0, "type_vocab_size": 0,
                      "embed_norm": False}, "(plain PyTorch GPT)")
  d, h, bias = m.d_model, m.num_heads, m.use_bias

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=m.norm_eps), nn.LayerNorm(d, eps=m.norm_eps)
      self.qkv, self.out = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
      self.fc, self.proj = nn.Linear(d, m.mlp_dim, bias=bias), nn.Linear(m.mlp_dim, d, bias=bias)

    def forward(self, x_btd):
      b, t, _ = x_btd.shape
      q, k, v = (z.view(b, t, h, d // h).transpose(1, 2)
                 for z in self.qkv(self.ln_1(x_btd)).split(d, dim=2))
      y_bhtk = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      x_btd = x_btd + self.out(y_bhtk.transpose(1, 2).reshape(b, t, d))
      return x_btd + self.proj(F.gelu(self.fc(self.ln_2(x_btd)), approximate="tanh"))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.wte, self.wpe = nn.Embedding(m.vocab_size, d), nn.Embedding(m.max_seq_len, d)
      self.blocks = nn.ModuleList(Block() for _ in range(m.num_layers))
      self.ln_f = nn.LayerNorm(d, eps=m.norm_eps)
      for module in self.modules():  # GPT-2's (and nanoGPT's) initialization
        if isinstance(module, (nn.Linear, nn.Embedding)):
          nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
          nn.init.zeros_(module.bias)

    def forward(self, inputs_bt, targets_bt):
      x_btd = self.wte(inputs_bt) + self.wpe(torch.arange(inputs_bt.shape[1]))
      for block in self.blocks:
        x_btd = block(x_btd)
      logits_btv = self.ln_f(x_btd) @ self.wte.weight.T
      return F.cross_entropy(logits_btv.flatten(0, 1), targets_bt.flatten())

  return GPT()


def run_torch_loop(config, args, tokenizer, text: str) -> Timing:
  """Timing of nanoGPT's training loop on the --text file, tokenized as pretrax does: random
  windows of the token stream (get_batch), forward, backward, gradient clipping, AdamW with the
  learning rate set each step, and loss.item() every step (log_interval=1). First: from reading
  the text to the end of step 1."""
  import numpy as np
  import torch
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  torch.manual_seed(0)
  from pretrax.training import optimizer as optimizer_lib
  o, b, t = config.optimizer, config.train.batch_size, config.data.seq_len
  schedule = optimizer_lib.learning_rate_schedule(o, config.train.steps)
  box = {}

  def prepare():
    with open(text, encoding="utf-8") as f:
      ids = tokenizer.encode(f.read()).astype(np.int64)
    box["train"] = torch.from_numpy(ids[:int(0.9 * len(ids))])
    model = torch_gpt(config).train()
    box["model"], box["optimizer"] = model, torch_adamw(model, o)
    box["step"] = 0

  def run_step():
    if not box:
      prepare()
    data, model, optimizer = box["train"], box["model"], box["optimizer"]
    starts = torch.randint(len(data) - t - 1, (b,))
    window_bt = torch.stack([data[i:i + t + 1] for i in starts.tolist()])
    for group in optimizer.param_groups:
      group["lr"] = float(schedule(box["step"]))
    loss = model(window_bt[:, :-1], window_bt[:, 1:])
    torch_update(model, optimizer, loss, o.grad_clip)
    loss.item()
    box["step"] += 1

  return time_steps(run_step, steps=args.steps, warmup=args.warmup)


# --------------------------------------------------------------------------------------------
# Main.


def _parse_args(argv: list[str]):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", action="append", dest="presets",
                      help="PATH[:VARIANT] (repeatable); default configs/gpt.py:tiny")
  parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
  parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (3)")
  parser.add_argument("--batch", type=int, default=None, help="default: the preset's batch_size")
  parser.add_argument("--seq", type=int, default=None, help="default: the preset's seq_len")
  parser.add_argument("--reference", choices=("none", "torch"), default="none")
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="torch.set_num_threads for the reference (default 0: os.cpu_count())")
  parser.add_argument("--text", default=DEFAULT_TEXT,
                      help="corpus for the pipeline row (default: tinyshakespeare if present, "
                           "else the built-in default corpus)")
  parser.add_argument("--pipeline_steps", type=int, default=None,
                      help="timed pipeline batches (default: 100, or --steps if more; smoke 10)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny preset (or --preset's), batch 4 x 32, 3 steps: seconds, for CI")
  parser.add_argument("--loop", action="store_true",
                      help="add the whole training loop on --text: the trainer cold and warm, "
                           "and (GPT) nanoGPT's loop in plain PyTorch")
  parser.add_argument("--nanogpt", action="store_true",
                      help="nanoGPT's CPU baby-GPT shapes (4 layers, 128 wide, context 64, "
                           "batch 12) on configs/gpt.py:tiny, with --loop")
  split = argv.index("--") if "--" in argv else len(argv)
  own, overrides = argv[:split], argv[split + 1:]
  args = parser.parse_args(own)
  defaults = SMOKE if args.smoke else {"presets": ["configs/gpt.py:tiny"], "steps": 20,
                                       "warmup": 3}
  if args.nanogpt:
    args.loop = True
    if args.batch or args.seq:
      parser.error("--nanogpt sets the batch (12) and sequence length (64)")
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  # Pipeline batches take milliseconds: time many, so the rare expensive ones are represented.
  args.pipeline_steps = args.pipeline_steps or max(args.steps, 10 if args.smoke else 100)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0")
  if args.loop and not os.path.isfile(args.text):
    parser.error(f"--loop trains on a text file: --text={args.text} does not exist")
  return parser, args, overrides


def load_config(preset: str, args, overrides: dict[str, str], tokenizer):
  from pretrax.training import config as config_lib, run_dir
  path = preset if os.path.isabs(preset) or os.path.exists(preset.partition(":")[0]) else (
      os.path.join(REPO, preset))
  config = config_lib.load_preset(path)
  sizes = {}
  if args.batch:
    sizes["train.batch_size"] = str(args.batch)
  if args.seq:
    sizes["data.seq_len"] = str(args.seq)
  config = config_lib.apply_overrides(config, sizes | overrides)
  config_lib.validate(config)
  return run_dir.resolve_vocab(config, tokenizer)


def _format_row(name, batch, params, timing: Timing, tokens_per_step, mfu, peak_bytes, x):
  def fmt(value, spec):
    return "-" if value is None else format(value, spec)
  return (name, batch, fmt(params, ","), f"{timing.first_s:.2f}", f"{1e3 * timing.median_s:.1f}",
          f"{1e3 * min(timing.step_s):.1f}", f"{1e3 * max(timing.step_s):.1f}",
          f"{tokens_per_step / timing.per_step_s:,.0f}", fmt(mfu, ".2%"),
          fmt(None if peak_bytes is None else peak_bytes / 2**20, ",.0f"), fmt(x, ".2f"))


def main(argv: list[str] | None = None) -> int:
  parser, args, override_args = _parse_args(sys.argv[1:] if argv is None else argv)
  load_at_start = os.getloadavg()[0]
  from pretrax.cli import main as cli
  from pretrax.cli import startup
  from pretrax.training import config as config_lib
  process_setup = startup.prepare()  # as the pretrax command does; applies to both rows
  cli._quiet_logs()
  from pretrax.data import tokenizers
  import jax

  _, overrides, rest = config_lib.split_overrides(override_args)
  if rest:
    parser.error(f"unrecognized arguments after --: {rest} (expected --config.SECTION.FIELD=V)")
  if args.nanogpt:
    overrides = NANOGPT_SHAPES | overrides
  tokenizer = tokenizers.load_tokenizer("byte")
  configs = [(p, load_config(p, args, overrides, tokenizer)) for p in args.presets]
  memory = PeakMemory()
  source, source_name = corpus_source(args.text)
  peak, peak_source = peak_flops(configs[0][1].train.peak_flops)

  rows, notes = [], []
  for preset, config in configs:
    name = preset.rpartition("/")[2]
    tokens_per_step, shape = step_tokens(config)
    timing, n_params, flops_token, peak_bytes = run_pretrax(config, args, tokenizer.vocab_size,
                                                            memory)
    tok_s = tokens_per_step / timing.per_step_s
    pretrax_row = [name + " pretrax", shape, n_params, timing, tokens_per_step,
                   tok_s * flops_token / peak, peak_bytes, None]
    rows.append(pretrax_row)
    m = config.model
    at = (f"S+T={shape.partition('x')[2]} (L_d={m.num_decoder_layers}; tokens = B·(S+T))"
          if m.family == "encoder_decoder" else
          f"T={config.data.seq_len} (N without the position table)")
    notes.append(f"{name}: {config.model.family}, L={m.num_layers} d={m.d_model} "
                 f"heads={m.num_heads} V={m.vocab_size}, attention_impl={m.attention_impl}, "
                 f"dtype={m.dtype}; {FLOPS_FORMULAS[m.family]} = {flops_token / 1e6:.2f} "
                 f"MFLOP/token at {at}")
    if args.reference == "torch":
      t_timing, t_params, t_peak, t_desc = run_torch(config, args, tokenizer, tokenizer.vocab_size,
                                                     memory)
      t_tok_s = tokens_per_step / t_timing.per_step_s
      rows.append([name + " torch", shape, t_params, t_timing, tokens_per_step,
                   t_tok_s * flops_token / peak, t_peak, None])
      pretrax_row[-1] = tok_s / t_tok_s
      notes.append(f"{name}: torch reference on {t_desc}; pretrax/torch tokens/s = "
                   f"{tok_s / t_tok_s:.2f}")
    if args.loop:
      cold, warm = run_pretrax_loop(config, args, args.text)
      loop_rows = [[f"{name} loop cold", shape, n_params, cold, tokens_per_step,
                    tokens_per_step / cold.per_step_s * flops_token / peak, None, None],
                   [f"{name} loop warm", shape, n_params, warm, tokens_per_step,
                    tokens_per_step / warm.per_step_s * flops_token / peak, None, None]]
      rows += loop_rows
      notes.append(f"{name}: loop = trainer.train on {args.text}, logging every step; first s = "
                   "its startup_s (call to the end of step 1: corpus build, tokenizer, "
                   "compilation); cold: nothing built or cached, warm: the same run again")
      if m.family == "gpt":
        l_timing = run_torch_loop(config, args, tokenizer, args.text)
        l_tok_s = tokens_per_step / l_timing.per_step_s
        rows.append([f"{name} torch loop", shape, None, l_timing, tokens_per_step,
                     l_tok_s * flops_token / peak, None, None])
        for row in loop_rows:
          row[-1] = tokens_per_step / row[3].per_step_s / l_tok_s
        notes.append(f"{name}: torch loop = nanoGPT's loop (get_batch, AdamW, clipping, "
                     "loss.item() each step) on the same model in plain PyTorch, "
                     f"{args.torch_threads or os.cpu_count()} threads; first s from reading the "
                     "text; x of the loop rows = their tokens/s ÷ the torch loop's")
    p_timing = run_pipeline(config, tokenizer, source, args)
    p_tok_s = tokens_per_step / p_timing.per_step_s
    rows.append([name + " pipeline", shape, None, p_timing, tokens_per_step, None, None,
                 p_tok_s / tok_s])
    notes.append(f"{name}: pipeline {1 / p_timing.per_step_s:,.1f} batches/s, {p_tok_s:,.0f} "
                 f"tokens/s = {p_tok_s / tok_s:.1f}x the train step's tokens/s")

  table = [COLUMNS] + [_format_row(*row) for row in rows]
  widths = [max(len(str(r[i])) for r in table) for i in range(len(COLUMNS))]
  device = jax.devices()[0]
  print(f"\ndevice: {device.device_kind} x{jax.device_count()} ({device.platform}), "
        f"{os.cpu_count()} CPU cores (1-minute load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end), jax {jax.__version__}; {args.steps} timed "
        f"steps after {args.warmup} warmup")
  for i, row in enumerate(table):
    print("  ".join(str(x).rjust(w) if j else str(x).ljust(w)
                    for j, (x, w) in enumerate(zip(row, widths))))
    if i == 0:
      print("  ".join("-" * w for w in widths))
  print(f"\nMFU = tokens/s x FLOPs/token (the task's flops_per_token, training/metrics.py; per "
        f"preset below) / peak; peak = {peak / 1e9:,.1f} GFLOP/s per device, {peak_source}")
  print(f"peak MiB: {memory.source}")
  print(f"pipeline: training batches (data/batches.py) of {source_name}, byte tokenizer")
  print(f"process set-up (cli/startup.py, as the pretrax command): "
        f"{'; '.join(process_setup) or 'nothing'}")
  for note in notes:
    print(note)
  return 0


if __name__ == "__main__":
  sys.exit(main())
