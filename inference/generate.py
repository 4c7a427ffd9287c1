"""`pretrax sample`: continuations of one prompt or of a file of prompts, with a KV cache
(inference/decoding.py), greedy or with temperature, top-k and top-p sampling.

A prompt becomes `[bos] + ids`. The model decodes `context` positions (`decoding.context_length`).
A prompt of context tokens or more keeps its last context // 2 (said on stderr). Past the context,
decoding goes on in windows: the last context // 2 tokens of each row are read again as a new
prompt (positions restart at 0) and the next tokens are drawn with the cache over them, as
nanoGPT crops to its block size (it does so for every token; a window here lasts about
context // 2 tokens).
"""

import json
import math
import sys
import time

from flax import nnx
import numpy as np

from pretrax.data.errors import InputError
from pretrax.inference import decoding, loading

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


def read_prompts(path: str) -> list[str]:
  """The `prompt` of each line of a JSONL file (blank lines skipped); errors name FILE:LINE."""
  prompts = []
  try:
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise InputError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
          raise InputError(f'{path}:{number}: expected {{"prompt": "..."}} with a string prompt')
        prompts.append(record["prompt"])
  except FileNotFoundError:
    raise InputError(f"--prompts={path}: no such file") from None
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
  if not prompts:
    raise InputError(f"{path}: no prompts (expected one JSON object with a \"prompt\" per line)")
  return prompts


def sample_prompts(workdir: str, prompts: list[str], max_new_tokens: int, *,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                   num_samples: int = 1, step: int | None = None, stop_at_eos: bool = True,
                   report=None) -> list[dict]:
  """Continues each prompt `num_samples` times in one batch; returns one dict per prompt and
  sample, in order: {"prompt", "sample", "generation"} (the generation without the prompt).

  `report(line)` (default: stderr) gets one line with the generated tokens per second.
  """
  check_sampling_args(max_new_tokens, temperature, top_k, top_p, num_samples)
  run = loading.load_run(workdir, step)
  loading.require_language_model(run, "sample", workdir)
  tok = run.tokenizer
  context = decoding.context_length(run.config)
  keep = max(1, context // 2)
  ids, cut = [], 0
  for prompt in prompts:
    prompt_ids = np.concatenate([[tok.bos_id], tok.encode(prompt)]).astype(np.int32)
    cut += len(prompt_ids) >= context
    ids.append(prompt_ids if len(prompt_ids) < context else prompt_ids[-keep:])
  report = report or (lambda line: print(line, file=sys.stderr, flush=True))
  if cut:
    report(f"pretrax: {cut} prompt(s) of {context} tokens or more keep their last {keep} (the "
           f"model decodes {context} positions)")
  sampling = decoding.Sampling(temperature=float(temperature), top_k=int(top_k),
                               top_p=float(top_p), vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                               eos_id=tok.eos_id if stop_at_eos else -1)
  decoder = decoding.Decoder(nnx.merge(run.graphdef, run.params))
  batch = [row for row in ids for _ in range(num_samples)]
  start = time.perf_counter()
  generated = continue_rows(decoder, batch, max_new_tokens, sampling, context, seed)
  seconds = time.perf_counter() - start
  count = sum(len(t) for t in generated)
  report(f"pretrax: {count:,} tokens generated for {len(batch)} row(s) in {seconds:.2f} s "
         f"({count / seconds:,.0f} tokens/s, compilation included)")
  return [{"prompt": prompts[i // num_samples], "sample": i % num_samples,
           "generation": tok.decode(tokens)} for i, tokens in enumerate(generated)]


def continue_rows(decoder: decoding.Decoder, rows: list[np.ndarray], max_new_tokens: int,
                  sampling: decoding.Sampling, context: int, seed: int) -> list[np.ndarray]:
  """Up to `max_new_tokens` new tokens for each row (prompts shorter than `context`), in windows
  of the context (see the module doc). Every row is decoded in every window, so a row's tokens
  never depend on the others'; a row that drew EOS keeps what it had."""
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
    decoded = decoder(prompts, new, sampling, seed=window_seed if window else seed)
    for r, tokens in enumerate(decoded.tokens):
      if not done[r]:
        out[r] = np.concatenate([out[r], tokens])
        done[r] = len(tokens) < new  # stopped at EOS
    window += 1
  return out


def sample(workdir: str, prompt: str, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, step: int | None = None,
           stop_at_eos: bool = True, report=None) -> str:
  """Returns the continuation of `prompt` (without the prompt)."""
  return sample_prompts(workdir, [prompt], max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, step=step, stop_at_eos=stop_at_eos,
                        report=report)[0]["generation"]
