"""Few-shot evaluation (GPT-3 style): `pretrax eval --workdir=RUN --task=TASK.yaml`.

A task file (inference/task_files.py) turns each document into requests; this module scores
them and computes lm-evaluation-harness's metrics from the scores, as the harness does:

  multiple_choice        acc: the choice of highest log-likelihood is a correct one; acc_norm:
                         the same with log-likelihood / len(choice) (characters, the delimiter
                         not counted); acc_bytes: / UTF-8 bytes.
  loglikelihood          perplexity: exp(-mean log-likelihood); acc: every target token is the
                         model's argmax.
  loglikelihood_rolling  bits_per_byte = -sum log-likelihood / sum UTF-8 bytes / ln 2;
                         byte_perplexity, word_perplexity (words: re.split(r"\\s+")).
  generate_until         exact_match of the greedy generation, cut before the first `until`.

Tokens, as the harness's causal `_encode_pair`: trailing whitespace of a context moves to the
continuation; the continuation's tokens are those of encode(context + continuation) after the
tokens of encode(context); with BOS (the default, as pretrax models are trained) every context
starts with the tokenizer's BOS, which an exported pretrax tokenizer also adds in Hugging Face
`transformers`. An empty context (rolling) is BOS alone. A request longer than the model's
positions keeps its last tokens (the harness truncates the same way). Rolling log-likelihood
uses the harness's windows: disjoint chunks of the model's positions, each conditioned on the
tokens before it that fit.

Scoring packs requests: sorted by length, several to a row of the model's positions (segment
ids keep them apart, positions restart in each), rows in batches of one compiled shape; the
log-probabilities are over the model's whole output vocabulary, as `transformers` computes them
from an exported model. Encoder-decoders score log p(continuation | context): the context is the
source (as fine-tuning frames it), the decoder starts at BOS.
"""

import dataclasses
import functools
import json
import math
import os
import random
import re
import string
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.data import seq2seq_pairs
from pretrax.data.errors import InputError
from pretrax.inference import decoding, loading, stop_strings, task_files

_LOGITS_BYTES = 1 << 28  # a batch's [R, W, V] float32 logits stay under 256 MiB


def encode_request(tok, context: str, continuation: str, add_bos: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(context, continuation) -> (context ids [>= 1], continuation ids) as the harness splits
  them (module doc)."""
  prefix = [tok.bos_id] if add_bos else []
  if not context:
    return np.array([tok.bos_id], np.int32), tok.encode(continuation).astype(np.int32)
  context, continuation = move_trailing_space(context, continuation)
  whole = np.concatenate([prefix, tok.encode(context + continuation)]).astype(np.int32)
  context_ids = np.concatenate([prefix, tok.encode(context)]).astype(np.int32)
  if not len(context_ids):
    raise InputError(f"context {context!r} has no tokens and no BOS: score it with BOS")
  return context_ids, whole[len(context_ids):]


def move_trailing_space(context: str, continuation: str) -> tuple[str, str]:
  """Trailing whitespace of the context begins the continuation instead (the harness's rule: a
  word's tokens carry the space before it)."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    return context[:-spaces], context[-spaces:] + continuation
  return context, continuation


def rolling_windows(ids: np.ndarray, prefix_id: int, width: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
  """A document's ids -> (context, continuation) windows as the harness's
  `get_rolling_token_windows(context_len=1)` + `make_disjoint_window`: every id is a
  continuation token exactly once, in chunks of `width`; the first is conditioned on
  `prefix_id`, each later one on the tokens before it that fit in `width` + 1."""
  ids = np.asarray(ids, np.int32)
  if not len(ids):
    return []
  first = min(width, len(ids))
  windows = [(np.array([prefix_id], np.int32), ids[:first])]
  done = first
  while done < len(ids):
    end = min(len(ids), done + width)
    windows.append((ids[end - width - 1:done], ids[done:end]))
    done = end
  return windows


def pack(lengths: list[int], width: int) -> list[list[int]]:
  """First-fit decreasing: request indices -> rows whose lengths sum to at most `width`."""
  rows, room = [], []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    for r, free in enumerate(room):
      if lengths[i] <= free:
        rows[r].append(i)
        room[r] -= lengths[i]
        break
    else:
      rows.append([i])
      room.append(width - lengths[i])
  return rows


def _target_scores(logits_btv: jax.Array, targets_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[B, T, V] logits, [B, T] targets -> ([B, T] log p(target), [B, T] target is the argmax),
  over all of the model's logits."""
  logits_btv = logits_btv.astype(jnp.float32)
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  logp_bt = jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
  return logp_bt, jnp.argmax(logits_btv, axis=-1) == targets_bt


def _token_scores(graphdef, params, inputs_bt, targets_bt, segment_ids_bt, positions_bt):
  """Packed rows -> `_target_scores` of every position."""
  model = nnx.merge(graphdef, params)
  return _target_scores(model(inputs_bt, segment_ids_bt, positions_bt), targets_bt)


def _shared_context_scores(graphdef, params, contexts_gp, context_lengths_g, continuations_nl,
                           group_n, *, width: int):
  """`_token_scores` of continuations that share contexts: each context [G, P] (right-padded,
  lengths [G]) runs once into a key/value cache; continuation n [N, L] (right-padded) continues
  context group_n[n] from a copy of its cache. -> ([N, L] log p(continuation token), [N, L]
  it is the argmax). Positions past `width` - 1 (padding only) are clipped to stay in range."""
  model = nnx.merge(graphdef, params)
  (g, p), l = contexts_gp.shape, continuations_nl.shape[1]
  cache = model.init_cache(g, p + l)
  positions_gp = jnp.minimum(jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (g, p)), width - 1)
  hidden_gpd, cache = model.cached_hidden_states(contexts_gp, positions_gp, cache)
  last_nd = hidden_gpd[group_n, context_lengths_g[group_n] - 1]
  cache_n = jax.tree.map(lambda x: x[group_n], cache)
  positions_nl = jnp.minimum(context_lengths_g[group_n][:, None] + jnp.arange(l, dtype=jnp.int32),
                             width - 1)
  hidden_nld, _ = model.cached_hidden_states(continuations_nl, positions_nl, cache_n)
  # Token j of a continuation is predicted by the state before it: the context's last for j = 0.
  before_nld = jnp.concatenate([last_nd[:, None], hidden_nld[:, :-1]], axis=1)
  return _target_scores(model.logits(before_nld), continuations_nl)


def _round_up(n: int, multiple: int) -> int:
  return -(-max(n, 1) // multiple) * multiple


def _seq2seq_scores(graphdef, params, sources_bs, inputs_bt, targets_bt, source_segments_bs,
                    target_segments_bt):
  """An encoder-decoder's `_token_scores`: one source and target per row, padding segment 0."""
  model = nnx.merge(graphdef, params)
  return _target_scores(model(sources_bs, inputs_bt, source_segments_bs, target_segments_bt),
                        targets_bt)


class Scorer:
  """Log-likelihoods of continuations after contexts under one run's model, batched and packed."""

  def __init__(self, run: loading.Run, add_bos: bool = True):
    self.run, self.tok, self.add_bos = run, run.tokenizer, add_bos
    self.seq2seq = run.config.model.family == "encoder_decoder"
    if run.config.model.family not in ("gpt", "encoder_decoder") or run.config.finetune.task not in (
        "", "seq2seq"):
      raise InputError("few-shot evaluation needs a language model (GPT or encoder-decoder); "
                       f"this run is a {run.config.model.family} {run.config.finetune.task or ''} "
                       "model")
    self.width = (run.config.data.seq_len if self.seq2seq
                  else decoding.context_length(run.config))
    vocab = run.config.model.vocab_size
    self.rows = int(max(1, min(32, _LOGITS_BYTES // (self.width * vocab * 4))))
    fn = _seq2seq_scores if self.seq2seq else _token_scores
    self._compiled = jax.jit(functools.partial(fn, run.graphdef))
    self._shared = jax.jit(functools.partial(_shared_context_scores, run.graphdef,
                                             width=self.width))

  def score(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """[(context ids, continuation ids)] -> ([n] float64 log-likelihood, [n] bool greedy)."""
    for context, continuation in pairs:
      if not len(continuation):
        raise InputError("a continuation has no tokens (an empty choice or target?)")
      if len(context) < 1:
        raise InputError("a context has no tokens")
      if len(continuation) > self.width:
        raise InputError(f"a continuation of {len(continuation)} tokens is longer than the "
                         f"model's {self.width} positions")
    if self.seq2seq:
      return self._score_seq2seq(pairs)
    logprob, greedy = np.zeros(len(pairs)), np.ones(len(pairs), bool)
    groups: dict[bytes, list[int]] = {}
    for i, (context, continuation) in enumerate(pairs):
      if len(context) + len(continuation) - 1 <= self.width:  # else truncated: its own context
        groups.setdefault(np.asarray(context, np.int32).tobytes(), []).append(i)
    shared = [members for members in groups.values() if len(members) > 1]
    self._score_shared(pairs, shared, logprob, greedy)
    done = {i for members in shared for i in members}
    self._score_packed(pairs, [i for i in range(len(pairs)) if i not in done], logprob, greedy)
    return logprob, greedy

  def _score_shared(self, pairs, groups: list[list[int]], logprob, greedy) -> None:
    """Requests with one context: the context once, its continuations from its cache."""
    groups = sorted(groups, key=lambda members: len(pairs[members[0]][0]))
    per_batch = max(1, self.rows // 2)
    batches, batch = [], []
    for group in groups:  # at most per_batch contexts and 2 x rows continuations a batch
      if batch and (len(batch) == per_batch or
                    sum(map(len, batch)) + len(group) > 2 * self.rows):
        batches.append(batch)
        batch = []
      batch.append(group)
    if batch:
      batches.append(batch)
    for batch in batches:
      members = [i for group in batch for i in group]
      # Lengths rounded up to multiples of 16: little padding, a few compiled shapes.
      p = min(self.width, _round_up(max(len(pairs[g[0]][0]) for g in batch), 16))
      l = _round_up(max(len(pairs[i][1]) for i in members), 16)
      n = _round_up(len(members), 16)
      contexts, lengths = np.zeros((per_batch, p), np.int32), np.ones(per_batch, np.int32)
      continuations, group_n = np.zeros((n, l), np.int32), np.zeros(n, np.int32)
      row = 0
      for g, group in enumerate(batch):
        context = pairs[group[0]][0]
        contexts[g, :len(context)], lengths[g] = context, len(context)
        for i in group:
          continuations[row, :len(pairs[i][1])], group_n[row] = pairs[i][1], g
          row += 1
      logp_nl, greedy_nl = jax.device_get(self._shared(self.run.params, contexts, lengths,
                                                       continuations, group_n))
      for row, i in enumerate(members):
        m = len(pairs[i][1])
        logprob[i] = np.asarray(logp_nl[row, :m], np.float64).sum()
        greedy[i] = bool(greedy_nl[row, :m].all())

  def _score_packed(self, pairs, requests: list[int], logprob, greedy) -> None:
    """Requests packed several to a row (segment ids apart)."""
    if not requests:
      return
    seqs = {i: np.concatenate(pairs[i])[-(self.width + 1):] for i in requests}
    rows = [[requests[j] for j in row]
            for row in pack([len(seqs[i]) - 1 for i in requests], self.width)]
    for first in range(0, len(rows), self.rows):
      batch = rows[first:first + self.rows]
      shape = (self.rows, self.width)
      inputs, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
      segments, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
      spans = []  # (request, row, start of its scored positions, end)
      for r, members in enumerate(batch):
        at = 0
        for segment, i in enumerate(members, 1):
          n = len(seqs[i]) - 1
          inputs[r, at:at + n], targets[r, at:at + n] = seqs[i][:-1], seqs[i][1:]
          segments[r, at:at + n], positions[r, at:at + n] = segment, np.arange(n)
          spans.append((i, r, at + n - len(pairs[i][1]), at + n))
          at += n
      logp_bt, greedy_bt = jax.device_get(self._compiled(self.run.params, inputs, targets,
                                                         segments, positions))
      logp_bt = np.asarray(logp_bt, np.float64)
      for i, r, start, end in spans:
        logprob[i] = logp_bt[r, start:end].sum()
        greedy[i] = bool(greedy_bt[r, start:end].all())

  def _score_seq2seq(self, pairs):
    s = self.width
    sources = [seq2seq_pairs.ends_with_eos(c, s, self.tok.eos_id) for c, _ in pairs]
    logprob, greedy = np.zeros(len(pairs)), np.ones(len(pairs), bool)
    order = sorted(range(len(pairs)), key=lambda i: len(sources[i]) + len(pairs[i][1]))
    for first in range(0, len(order), self.rows):
      batch = order[first:first + self.rows]
      src, inputs, targets, src_seg, tgt_seg = (np.zeros((self.rows, s), np.int32)
                                                for _ in range(5))
      for r, i in enumerate(batch):
        target = pairs[i][1]
        src[r, :len(sources[i])], src_seg[r, :len(sources[i])] = sources[i], 1
        inputs[r, :len(target)] = np.concatenate([[self.tok.bos_id], target[:-1]])
        targets[r, :len(target)], tgt_seg[r, :len(target)] = target, 1
      logp_bt, greedy_bt = jax.device_get(self._compiled(self.run.params, src, inputs,
                                                         targets, src_seg, tgt_seg))
      for r, i in enumerate(batch):
        n = len(pairs[i][1])
        logprob[i] = np.asarray(logp_bt[r, :n], np.float64).sum()
        greedy[i] = bool(greedy_bt[r, :n].all())
    return logprob, greedy

  def loglikelihood(self, requests: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """[(context, continuation)] strings -> ([n] log-likelihood, [n] greedy)."""
    if self.seq2seq:
      pairs = [tuple(self.tok.encode(text).astype(np.int32)
                     for text in move_trailing_space(c, t)) for c, t in requests]
    else:
      pairs = [encode_request(self.tok, c, t, self.add_bos) for c, t in requests]
    return self.score(pairs)

  def loglikelihood_rolling(self, texts: list[str]) -> np.ndarray:
    """[text] -> [n] log-likelihood of each whole text (harness windows, module doc)."""
    if self.seq2seq:
      raise InputError("loglikelihood_rolling needs a causal language model; this run is an "
                       f"encoder-decoder ({self.run.config.model.family})")
    windows, owner = [], []
    for n, text in enumerate(texts):
      for window in rolling_windows(self.tok.encode(text), self.tok.bos_id, self.width):
        windows.append(window)
        owner.append(n)
    logprob, _ = self.score(windows) if windows else (np.zeros(0), None)
    return np.bincount(np.asarray(owner, np.int64), weights=logprob, minlength=len(texts))

  def generate(self, contexts: list[str], until: tuple[str, ...], max_gen_toks: int,
               batch_size: int = 16) -> list[str]:
    """Greedy generations after each context, cut before the first string of `until` (and at
    EOS)."""
    tok = self.tok
    if self.seq2seq:
      sources = seq2seq_pairs.encode_sources(tok, contexts, self.width)
      decoder = decoding.Decoder(self.run.model(), start_id=tok.bos_id)
      inputs = sources
    else:
      room = self.width - max_gen_toks
      if room < 1:
        raise InputError(f"generation_kwargs.max_gen_toks={max_gen_toks} leaves no room for a "
                         f"context in the model's {self.width} positions")
      prefix = [tok.bos_id] if self.add_bos else []
      inputs = [np.concatenate([prefix, tok.encode(c)]).astype(np.int32)[-room:]
                for c in contexts]
      decoder = decoding.Decoder(self.run.model())
    stops = stop_strings.StopStrings(tok, [u for u in until if u])
    sampling = decoding.Sampling(temperature=0.0, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                 eos_id=tok.eos_id)
    generated = decoding.decode_all(decoder, inputs, max_gen_toks, sampling, stop=stops,
                                    batch_size=batch_size, max_width=self.width)
    return [stops.truncate(tok.decode(ids))[0] for ids in generated]


# -- metrics ----------------------------------------------------------------------------------


def exact_match(prediction: str, reference: str, *, ignore_case=False, ignore_punctuation=False,
                ignore_numbers=False, regexes_to_ignore=None) -> float:
  """The harness's exact_match (HF `evaluate`'s) for one pair."""
  for pattern in regexes_to_ignore or []:
    prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
  if ignore_case:
    prediction, reference = prediction.lower(), reference.lower()
  for on, chars in ((ignore_punctuation, string.punctuation), (ignore_numbers, string.digits)):
    if on:
      table = str.maketrans("", "", chars)
      prediction, reference = prediction.translate(table), reference.translate(table)
  return float(prediction == reference)


def _choice_metrics(task, doc, lls: np.ndarray, greedy: np.ndarray) -> dict:
  choices, gold = task.choices(doc), task.gold(doc)
  chars = np.array([float(len(c)) for c in choices])
  nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
  return {"acc": float(int(np.argmax(lls)) in gold),
          "acc_norm": float(int(np.argmax(lls / chars)) in gold),
          "acc_bytes": float(int(np.argmax(lls / nbytes)) in gold)}


@dataclasses.dataclass
class Result:
  metrics: dict
  settings: dict
  documents: int
  requests: int
  seconds: float


def evaluate(run: loading.Run, task: task_files.TaskFile, *, num_fewshot: int | None = None,
             limit: int | None = None, seed: int = task_files.DEFAULT_SEED,
             add_bos: bool = True, report=None) -> Result:
  """Scores `task`'s documents (the first `limit`) with `num_fewshot` worked examples each
  (default: the task file's num_fewshot, else 0)."""
  k = num_fewshot if num_fewshot is not None else (task.num_fewshot or 0)
  if k < 0:
    raise InputError(f"--num_fewshot={k}: must be >= 0")
  if limit is not None and limit < 1:
    raise InputError(f"--limit={limit}: must be >= 1")
  if k and task.output_type == "loglikelihood_rolling":
    raise InputError("loglikelihood_rolling scores whole documents: --num_fewshot must be 0")
  docs = task.docs[:limit] if limit else task.docs
  rnd = random.Random(seed)
  per_doc = [task.requests(doc, k, rnd) for doc in docs]
  requests = [r for rs in per_doc for r in rs]
  scorer = Scorer(run, add_bos)
  start = time.perf_counter()
  kind = task.output_type
  if kind == "generate_until":
    outputs = scorer.generate([r.context for r in requests], task.until, task.max_gen_toks)
  elif kind == "loglikelihood_rolling":
    outputs = scorer.loglikelihood_rolling([r.continuation for r in requests])
  else:
    lls, greedy = scorer.loglikelihood([(r.context, r.continuation) for r in requests])
  seconds = time.perf_counter() - start

  values: dict[str, list] = {}
  at = 0
  for doc, rs in zip(docs, per_doc):
    span = slice(at, at + len(rs))
    at += len(rs)
    if kind == "multiple_choice":
      got = _choice_metrics(task, doc, lls[span], greedy[span])
    elif kind == "loglikelihood":
      got = {"perplexity": float(lls[span][0]), "acc": float(greedy[span][0])}
    elif kind == "loglikelihood_rolling":
      text = rs[0].continuation
      ll = float(outputs[span][0])
      got = {"word_perplexity": (ll, len(re.split(r"\s+", text))),
             "byte_perplexity": (ll, len(text.encode("utf-8"))),
             "bits_per_byte": (ll, len(text.encode("utf-8")))}
    else:
      target = task.target(doc)
      if task.doc_to_choice is not None and isinstance(target, int):
        target = task.choices(doc)[target]
      targets = target if isinstance(target, list) else [target]
      options = task.metrics.get("exact_match", {})
      got = {"exact_match": max(exact_match(outputs[span][0], str(t), **options)
                                for t in targets)}
    for name, value in got.items():
      if name in task.metrics:
        values.setdefault(name, []).append(value)

  metrics = {}
  for name, items in values.items():
    if name == "perplexity":
      metrics[name] = math.exp(-float(np.mean(items)))
    elif name in ("word_perplexity", "byte_perplexity"):
      metrics[name] = math.exp(-sum(a for a, _ in items) / sum(b for _, b in items))
    elif name == "bits_per_byte":
      metrics[name] = -sum(a for a, _ in items) / sum(b for _, b in items) / math.log(2)
    else:
      metrics[name] = float(np.mean(items))
      if len(items) > 1:  # the harness's standard error of a mean
        metrics[name + "_stderr"] = float(np.std(items, ddof=1) / math.sqrt(len(items)))
  settings = {"task": task.name, "task_file": task.path, "task_sha256": task.sha256,
              "output_type": kind, "num_fewshot": k, "seed": seed, "limit": limit,
              "target_delimiter": task.target_delimiter,
              "fewshot_delimiter": task.fewshot_delimiter, "bos": add_bos}
  if kind == "generate_until":
    settings.update(until=list(task.until), max_gen_toks=task.max_gen_toks)
  return Result(metrics=metrics, settings=settings, documents=len(docs), requests=len(requests),
                seconds=seconds)


RESULTS_FILE = "fewshot.jsonl"  # in the run directory: one record per `pretrax eval --task`


def eval_task(workdir: str, task_path: str, *, num_fewshot: int | None = None,
              limit: int | None = None, seed: int = task_files.DEFAULT_SEED, add_bos: bool = True,
              step: int | None = None) -> dict:
  """`pretrax eval --task`: loads the run and the task, evaluates, appends the record to
  WORKDIR/fewshot.jsonl and returns it (metrics, settings, requests/s)."""
  task = task_files.load_task(task_path)
  run = loading.load_run(workdir, step)
  result = evaluate(run, task, num_fewshot=num_fewshot, limit=limit, seed=seed, add_bos=add_bos)
  record = {"step": run.step, **result.metrics, "settings": result.settings,
            "documents": result.documents, "requests": result.requests,
            "seconds": round(result.seconds, 3),
            "requests_per_s": round(result.requests / max(result.seconds, 1e-9), 1)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_FILE), "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
  return record
