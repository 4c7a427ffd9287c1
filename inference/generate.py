"""`pretrax sample` (causal models): continuations of one prompt or of a file of prompts, and
`pretrax generate` (encoder-decoders, GPT trained on pairs): an output for each source of a
file; both with the KV
cache of inference/decoding.py, sampling (greedy, temperature, top-k, top-p) or beam search, and
stop strings (the text is cut before the first; it is not part of the generation).

A prompt becomes `[bos] + ids`. The model decodes `context` positions (`decoding.context_length`).
A prompt of context tokens or more keeps its last context // 2 (said on stderr). Past the context,
decoding goes on in windows: the last context // 2 tokens of each row are read again as a new
prompt (positions restart at 0) and the next tokens are drawn with the cache over them, as
nanoGPT crops to its block size (it does so for every token; a window here lasts about
context // 2 tokens). Beam search does not go on past the context: max_new_tokens is cut to what
the context leaves (said on stderr).

`generate` encodes each source as the seq2seq task trains on it (`source [eos]`, at most
config.data.seq_len tokens; longer ones are cut, said on stderr) and decodes from the start
token (BOS); a GPT trained on pairs continues `[bos] source [sep]` (data/decoder_pairs.py).
Batches have a fixed size and input lengths are rounded up to a power of two, so a file compiles
a handful of programs, not one per batch.
"""

import json
import math
import sys
import time

from flax import nnx
import numpy as np

from pretrax.data import decoder_pairs, seq2seq_pairs
from pretrax.data.errors import InputError
from pretrax.inference import decoding, loading, stop_strings
from pretrax.training.config import ConfigError

# The sampling functions every decoder shares.
filter_logits = decoding.filter_logits
tokenizer_logits = decoding.tokenizer_logits


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int,
                        top_p: float, num_samples: int = 1) -> None:
  """Raises InputError naming the flag for a value no sampler means (nan passes `<` tests)."""
  if max_new_tokens < 1:
    raise InputError(f"--max_new_tokens={max_new_tokens}: must be at least 1")
  if not (math.isfinite(temperature) and temperature >= 0):
    raise InputError(f"--temperature={temperature}: must be a finite number >= 0 (0 = greedy)")
  if top_k < 0:
    raise InputError(f"--top_k={top_k}: must be >= 0 (0 = off)")
  if not 0 < top_p <= 1:
    raise InputError(f"--top_p={top_p}: must be in (0, 1] (1 = off)")
  if num_samples < 1:
    raise InputError(f"--num_samples={num_samples}: must be at least 1")


def check_beam_args(num_beams: int, num_samples: int, length_penalty: float,
                    vocab_size: int) -> None:
  """Raises InputError naming the flag for beam settings that cannot work."""
  if num_beams < 1:
    raise InputError(f"--num_beams={num_beams}: must be at least 1 (1 = sampling, no beams)")
  if num_beams > 1 and num_samples > num_beams:
    raise InputError(f"--num_samples={num_samples} with --num_beams={num_beams}: beam search "
                     f"returns at most num_beams hypotheses per input")
  if not math.isfinite(length_penalty):
    raise InputError(f"--length_penalty={length_penalty}: must be a finite number")
  if 2 * num_beams > vocab_size - 1:
    raise InputError(f"--num_beams={num_beams}: beam search keeps 2 x num_beams candidates a "
                     f"step, more than the {vocab_size - 1} ids this tokenizer can emit")


def read_records(path: str, field: str, flag: str) -> list[dict]:
  """The JSON objects of a JSONL file (blank lines skipped), each with a string `field`; errors
  name FILE:LINE, or `flag` when the file is missing."""
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise InputError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
          raise InputError(f'{path}:{number}: expected {{"{field}": "..."}} with a string '
                           f'{field}')
        records.append(record)
  except FileNotFoundError:
    raise InputError(f"{flag}={path}: no such file") from None
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
  if not records:
    raise InputError(f'{path}: no {field}s (expected one JSON object with a "{field}" per line)')
  return records


def read_prompts(path: str) -> list[str]:
  """The `prompt` of each line of a JSONL file (blank lines skipped); errors name FILE:LINE."""
  return [record["prompt"] for record in read_records(path, "prompt", "--prompts")]


def _reporter(report):
  return report or (lambda line: print(line, file=sys.stderr, flush=True))


def _report_speed(report, count: int, rows: int, seconds: float) -> None:
  report(f"pretrax: {count:,} tokens generated for {rows} row(s) in {seconds:.2f} s "
         f"({count / seconds:,.0f} tokens/s, compilation included)")


def sample_prompts(workdir: str, prompts: list[str], max_new_tokens: int, *,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   num_samples: int = 1, step: int | None = None, stop_at_eos: bool = True,
                   num_beams: int = 1, length_penalty: float = 1.0,
                   early_stopping: bool | str = False, stop: tuple[str, ...] = (),
                   report=None) -> list[dict]:
  """Continues each prompt `num_samples` times in one batch (sampling), or returns its
  `num_samples` best hypotheses (beam search, `num_beams` > 1); one dict per prompt and sample,
  in order: {"prompt", "sample", "generation"} (the generation without the prompt, cut before
  the first stop string).

  `report(line)` (default: stderr) gets one line with the generated tokens per second.
  """
  check_sampling_args(max_new_tokens, temperature, top_k, top_p, num_samples)
  run = loading.load_run(workdir, step)
  loading.require_language_model(run, "sample", workdir)
  tok = run.tokenizer
  check_beam_args(num_beams, num_samples, length_penalty, tok.vocab_size)
  stops = stop_strings.StopStrings(tok, stop)
  context = decoding.context_length(run.config)
  keep = max(1, context // 2)
  ids, cut = [], 0
  for prompt in prompts:
    prompt_ids = np.concatenate([[tok.bos_id], tok.encode(prompt)]).astype(np.int32)
    cut += len(prompt_ids) >= context
    ids.append(prompt_ids if len(prompt_ids) < context else prompt_ids[-keep:])
  report = _reporter(report)
  if cut:
    report(f"pretrax: {cut} prompt(s) of {context} tokens or more keep their last {keep} (the "
           f"model decodes {context} positions)")
  sampling = decoding.Sampling(temperature=float(temperature), top_k=int(top_k),
                               top_p=float(top_p), vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                               eos_id=tok.eos_id if stop_at_eos else -1)
  decoder = decoding.Decoder(nnx.merge(run.graphdef, run.params))
  start = time.perf_counter()
  if num_beams > 1:
    room = context - max(len(row) for row in ids)
    if room < max_new_tokens:
      report(f"pretrax: beam search makes at most {room} new tokens here (--max_new_tokens="
             f"{max_new_tokens}; the model decodes {context} positions)")
    beam = decoding.Beam(num_beams, float(length_penalty), early_stopping, num_return=num_samples)
    generated = decoder.beam_search(ids, min(max_new_tokens, room), beam, sampling,
                                    stop=stops).tokens
  else:
    batch = [row for row in ids for _ in range(num_samples)]
    generated = continue_rows(decoder, batch, max_new_tokens, sampling, context, seed, stops)
  _report_speed(report, sum(len(t) for t in generated), len(generated),
                time.perf_counter() - start)
  return [{"prompt": prompts[i // num_samples], "sample": i % num_samples,
           "generation": stops.truncate(tok.decode(tokens))[0]}
          for i, tokens in enumerate(generated)]


def continue_rows(decoder: decoding.Decoder, rows: list[np.ndarray], max_new_tokens: int,
                  sampling: decoding.Sampling, context: int, seed: int,
                  stop: stop_strings.StopStrings | None = None) -> list[np.ndarray]:
  """Up to `max_new_tokens` new tokens for each row (prompts shorter than `context`), in windows
  of the context (see the module doc). Every row is decoded in every window, so a row's tokens
  never depend on the others'; a row that stopped (EOS, a stop string) keeps what it had. (A stop
  string across two windows is found when the text is cut.)"""
  keep = max(1, context // 2)
  out = [np.zeros(0, np.int32) for _ in rows]
  done = [False] * len(rows)
  window = 0
  while not all(done) and min(len(o) for o, d in zip(out, done) if not d) < max_new_tokens:
    prompts = [row if window == 0 else np.concatenate([row, o])[-keep:]
               for row, o in zip(rows, out)]
    made = min(len(o) for o, d in zip(out, done) if not d)
    new = min(max_new_tokens - made, context - max(len(p) for p in prompts))
    window_seed = int(np.random.SeedSequence([seed, window]).generate_state(1)[0])
    decoded = decoder(prompts, new, sampling, seed=window_seed if window else seed, stop=stop)
    for r, (tokens, stopped) in enumerate(zip(decoded.tokens, decoded.stopped)):
      if not done[r]:
        out[r] = np.concatenate([out[r], tokens])
        done[r] = stopped
    window += 1
  return out


def sample(workdir: str, prompt: str, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, step: int | None = None,
           stop_at_eos: bool = True, report=None) -> str:
  """Returns the continuation of `prompt` (without the prompt)."""
  return sample_prompts(workdir, [prompt], max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, step=step, stop_at_eos=stop_at_eos,
                        report=report)[0]["generation"]


def _seq2seq_inputs(run: loading.Run, workdir: str, texts: list[str], max_new_tokens: int,
                    report) -> tuple[list[np.ndarray], int, int]:
  """(inputs, max_new_tokens, widest input) for `generate`: encoder ids for an encoder-decoder;
  for a GPT trained on pairs (data.objective or finetune.task seq2seq) prompts `[bos] source
  [sep]` (data/decoder_pairs.py), max_new_tokens cut to what its positions leave (said)."""
  cfg, tok = run.config, run.tokenizer
  limit = cfg.data.seq_len
  if cfg.model.family == "encoder_decoder":
    if cfg.model.position == "learned" and max_new_tokens + 1 > cfg.model.max_seq_len:
      raise InputError(f"--max_new_tokens={max_new_tokens}: the decoder has "
                       f"{cfg.model.max_seq_len} learned positions, the start token included")
    encoded = tok.encode_batch(texts)
    cut = sum(len(ids) + 1 > limit for ids in encoded)
    if cut:
      report(f"pretrax: {cut} source(s) longer than {limit - 1} tokens are cut to that "
             f"(config.data.seq_len={limit}, the EOS included)")
    sources = [seq2seq_pairs.ends_with_eos(ids, limit, tok.eos_id) for ids in encoded]
    return sources, max_new_tokens, limit
  if cfg.model.family == "gpt" and "seq2seq" in (cfg.finetune.task, cfg.data.objective):
    prompts = [decoder_pairs.prompt(tok, ids, limit) for ids in tok.encode_batch(texts)]
    width = max(len(p) for p in prompts)
    room = decoding.context_length(cfg) - width
    if room < max_new_tokens:
      report(f"pretrax: at most {room} new tokens here (--max_new_tokens={max_new_tokens}; the "
             f"model has {decoding.context_length(cfg)} positions)")
    return prompts, min(max_new_tokens, room), width
  raise ConfigError(f"pretrax generate needs an encoder-decoder or a GPT trained on pairs "
                    f"(data.objective=seq2seq); {workdir} holds a {cfg.model.family!r} model "
                    f"trained on {cfg.finetune.task or cfg.data.objective!r} (`pretrax sample` "
                    f"continues prompts of a causal model)")


def generate_records(workdir: str, records: list[dict], max_new_tokens: int, *,
                     num_beams: int = 1, length_penalty: float = 1.0,
                     early_stopping: bool | str = False, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 32,
                     stop: tuple[str, ...] = (), step: int | None = None, field: str = "source",
                     report=None) -> list[dict]:
  """The output of an encoder-decoder, or of a GPT trained on pairs, for the `field` of each
  record, greedy by default: each record with "generation" added, in order (module doc)."""
  check_sampling_args(max_new_tokens, temperature, top_k, top_p)
  if batch_size < 1:
    raise InputError(f"--batch_size={batch_size}: must be at least 1")
  run = loading.load_run(workdir, step)
  tok = run.tokenizer
  check_beam_args(num_beams, 1, length_penalty, tok.vocab_size)
  report = _reporter(report)
  inputs, max_new_tokens, width = _seq2seq_inputs(
      run, workdir, [record[field] for record in records], max_new_tokens, report)
  sampling = decoding.Sampling(temperature=float(temperature), top_k=int(top_k),
                               top_p=float(top_p), vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                               eos_id=tok.eos_id)
  stops = stop_strings.StopStrings(tok, stop)
  seq2seq = run.config.model.family == "encoder_decoder"
  decoder = decoding.Decoder(nnx.merge(run.graphdef, run.params),
                             start_id=tok.bos_id if seq2seq else None)
  start = time.perf_counter()
  generated = decoding.decode_all(
      decoder, inputs, max_new_tokens, sampling,
      beam=decoding.Beam(num_beams, float(length_penalty), early_stopping), stop=stops,
      batch_size=batch_size, max_width=width, seed=seed)
  _report_speed(report, sum(len(t) for t in generated), len(generated),
                time.perf_counter() - start)
  return [{**record, "generation": stops.truncate(tok.decode(tokens))[0]}
          for record, tokens in zip(records, generated)]
