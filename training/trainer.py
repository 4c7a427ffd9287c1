"""The training loop: set up the run directory, the mesh and the state, then step, log, eval, save.

The loop reads top to bottom; every periodic action is an explicit `if step % every == 0` block.
"""

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from pretrax.data import bert_pipeline, pipeline, sources, tokenizers
from pretrax.modeling import sharding
from pretrax.training import checkpointing, config as config_lib, mesh as mesh_lib, metrics as metrics_lib
from pretrax.training import optimizer as optimizer_lib, sharding_report, step as step_lib
from pretrax.training.config import Config, ConfigError

log = logging.getLogger("pretrax")

TOKENIZER_TRAIN_DOCUMENTS = 200_000  # documents read to train a tokenizer when data.tokenizer=train


# --------------------------------------------------------------------------------------------
# Run directory: tokenizer and resolved config.


def _prepare_tokenizer(config: Config, workdir: str) -> tokenizers.Tokenizer:
  """The run's tokenizer: the workdir's own when resuming, else the configured one, copied in."""
  if any(os.path.exists(os.path.join(workdir, f)) for f in ("tokenizer.model", "tokenizer.json")):
    return tokenizers.load_from_directory(workdir)
  spec = config.data.tokenizer
  if spec == "train" and jax.process_index() != 0:  # process 0 trains it; the others load it
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("pretrax tokenizer trained")
    return tokenizers.load_from_directory(workdir)
  if spec == "train":
    print(f"Training a {config.data.tokenizer_model_type} SentencePiece tokenizer "
          f"(vocab {config.data.tokenizer_vocab_size}) on {config.data.source} ...", flush=True)
    texts = sources.iter_texts(config.data, config.data.train_split,
                               max_documents=TOKENIZER_TRAIN_DOCUMENTS)
    tokenizer = tokenizers.train_sentencepiece(
        texts, os.path.join(workdir, "tokenizer"), vocab_size=config.data.tokenizer_vocab_size,
        model_type=config.data.tokenizer_model_type)
    if os.path.exists(os.path.join(workdir, "tokenizer.vocab")):
      os.remove(os.path.join(workdir, "tokenizer.vocab"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("pretrax tokenizer trained")
    return tokenizer
  tokenizer = tokenizers.load_tokenizer(spec)
  tokenizer.save(workdir)
  return tokenizer


def resolve_vocab(config: Config, tokenizer: tokenizers.Tokenizer) -> Config:
  """Fills model.vocab_size from the tokenizer (rounded up to 128) and checks it is big enough."""
  if config.model.vocab_size == 0:
    config.model.vocab_size = -(-tokenizer.vocab_size // 128) * 128
  elif config.model.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"config.model.vocab_size={config.model.vocab_size} is smaller than the "
                      f"tokenizer's vocabulary ({tokenizer.vocab_size}); set it to 0 (automatic) "
                      f"or at least {tokenizer.vocab_size}")
  return config


def _check_same_model(saved: Config, config: Config, workdir: str) -> None:
  differing = [f"model.{k}: saved {v!r}, requested {getattr(config.model, k)!r}"
               for k, v in config_lib.to_dict(saved)["model"].items()
               if getattr(config.model, k) != v]
  if differing:
    raise ConfigError(f"{workdir} holds a run with a different model; refusing to resume it "
                      f"with this config ({'; '.join(differing)}). Use a new --workdir.")


def prepare_workdir(config: Config, workdir: str) -> tuple[Config, tokenizers.Tokenizer]:
  """Resolves tokenizer and vocabulary, checks a resumed run's model, writes config.json."""
  tokenizer = _prepare_tokenizer(config, workdir)
  config = resolve_vocab(config, tokenizer)
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    _check_same_model(config_lib.load_json(config_path), config, workdir)
  if jax.process_index() == 0:
    config_lib.save_json(config, config_path)
  return config, tokenizer


# --------------------------------------------------------------------------------------------
# Data.


def batches(config: Config, tokenizer, split: str, *, shuffle: bool, repeat: bool,
            pad_final_batch: bool = False):
  """This process's batches of `split` for config.data.objective (a Grain IterDataset)."""
  process_count = jax.process_count()
  if config.train.batch_size % process_count:
    raise ConfigError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                      f"the {process_count} processes")
  kwargs = dict(batch_size=config.train.batch_size // process_count, seed=config.train.seed,
                shuffle=shuffle, repeat=repeat, process_index=jax.process_index(),
                process_count=process_count, num_workers=config.data.num_workers,
                pad_final_batch=pad_final_batch)
  source = sources.open_source(config.data, split)
  if config.data.objective == "causal":
    return pipeline.lm_batches(source, tokenizer, seq_len=config.data.seq_len, **kwargs)
  return bert_pipeline.bert_batches(source, tokenizer, config.data, **kwargs)


def eval_batches(config: Config, tokenizer, split: str | None = None, max_batches: int | None = None):
  """Yields the first `max_batches` validation batches, the same ones every time (no shuffle).

  With several processes each one reads its own shard of documents; shards can yield different
  numbers of batches, so a process that runs out yields all-padding batches (weight 0) until
  `max_batches`, keeping every process in the same collective steps.
  """
  split = split or sources.eval_split(config.data)
  process_count = jax.process_count()
  if process_count > 1 and not max_batches:
    raise ConfigError("evaluating the whole split with several processes is not supported; "
                      "give a number of batches (config.train.eval_steps / --batches)")
  count = 0
  for batch in batches(config, tokenizer, split, shuffle=False, repeat=False, pad_final_batch=True):
    if max_batches and count >= max_batches:
      return
    count += 1
    yield batch
  while process_count > 1 and count < max_batches:
    count += 1
    yield jax.tree.map(np.zeros_like, batch)


def evaluate(eval_step, params, eval_data, token_bytes_v, batch_sharding,
             objective: str) -> dict[str, float]:
  totals = None
  for batch in eval_data:
    sums = eval_step(params, mesh_lib.global_batch(batch, batch_sharding), token_bytes_v)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("the validation split produced no batch")
  return step_lib.summarize(totals, objective)


# --------------------------------------------------------------------------------------------
# Training.


class StopRequest:
  """Turns SIGTERM / SIGINT into a request to checkpoint and exit at the end of the current step.

  A second SIGINT interrupts at once (KeyboardInterrupt).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signal_name and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, step: int, every: int) -> bool:
    if jax.process_count() > 1:  # all processes must stop at the same step: agree every few steps
      if step % every:
        return False
      from jax.experimental import multihost_utils
      return bool(multihost_utils.process_allgather(np.int32(self.signal_name is not None)).any())
    return self.signal_name is not None


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be written: {e.strerror or e}") from None


# --------------------------------------------------------------------------------------------
# The train state and the jitted step, in their shardings.


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a training step needs, built once per run (`build_train_setup`).

  `init_state()` makes the step-0 state; call it (jitted with `out_shardings=state_sharding`) and
  `p_train_step(state, batch)` inside `jax.set_mesh(mesh)` and `sharding.axis_rules(...)`.
  """
  graphdef: Any
  abstract_state: Any           # nnx.State of ShapeDtypeStructs
  abstract_params: dict         # the same as a pure dict
  optimizer: Any                # optax.GradientTransformation, built once
  schedule: Any                 # optax.Schedule
  state_specs: dict             # PartitionSpecs of the train state
  state_sharding: Any
  batch_sharding: Any
  init_state: Callable[[], dict]
  p_train_step: Callable        # jitted, donating the state


def build_train_setup(config: Config, mesh) -> TrainSetup:
  """The model, optimizer, state shardings and jitted train step of `config` on `mesh`.

  The trainer and benchmarks/throughput.py both use it, so what is benchmarked is what trains.
  """
  tc, rules = config.train, config.mesh.axis_rules
  graphdef, abstract_state = checkpointing.abstract_model(config.model)
  abstract_params = nnx.to_pure_dict(abstract_state)
  optimizer = optimizer_lib.make_optimizer(config.optimizer, tc.steps)
  schedule = optimizer_lib.learning_rate_schedule(config.optimizer, tc.steps)
  params_specs = mesh_lib.param_specs(abstract_state, rules, mesh)
  scalar = jax.sharding.PartitionSpec()
  state_specs = {"step": scalar, "params": params_specs,
                 "opt_state": mesh_lib.opt_state_specs(optimizer, abstract_params, params_specs),
                 "nonfinite_streak": scalar, "nonfinite_steps": scalar}
  state_sharding = mesh_lib.named(mesh, state_specs)
  batch_sharding = mesh_lib.batch_sharding(mesh, rules)

  def init_state():
    params = nnx.to_pure_dict(nnx.state(checkpointing.build_model(config.model, tc.seed)))
    return step_lib.initial_state(params, optimizer)

  train_step = step_lib.make_train_step(
      graphdef, optimizer, schedule, objective=config.data.objective,
      grad_accum_steps=tc.grad_accum_steps, seed=tc.seed,
      dropout=config.model.dropout > 0 or config.model.attention_dropout > 0,
      loss_chunk=tc.loss_chunk_size)
  p_train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, None), donate_argnums=0)
  return TrainSetup(graphdef, abstract_state, abstract_params, optimizer, schedule, state_specs,
                    state_sharding, batch_sharding, init_state, p_train_step)


def train(config: Config, workdir: str, *, stop_after: int | None = None, devices=None,
          print_sharding: bool = False, restart_data: bool = False) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

  `stop_after` ends this invocation after that step (saving a checkpoint) as if the process had
  been stopped there; the schedule still spans config.train.steps, so a later call resumes the
  very same run. `devices` (default: all) are the devices the mesh is built from.
  `print_sharding` prints every parameter's placement and the per-device memory, then returns.
  `restart_data` restores model and optimizer state but starts the data stream over (needed to
  resume with a different number of processes).
  """
  config_lib.validate(config)
  _check_writable(workdir)
  with checkpointing.WorkdirLock(workdir), StopRequest() as stop:
    return _train(config, workdir, stop, stop_after, devices, print_sharding, restart_data)


def enable_compile_cache(directory: str) -> None:
  """Persists compiled programs in `directory` so a restarted run skips recompilation."""
  directory = directory or os.environ.get("PRETRAX_COMPILE_CACHE", "")
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _train(config: Config, workdir: str, stop: StopRequest, stop_after, devices, print_sharding,
           restart_data) -> dict:
  config, tokenizer = prepare_workdir(config, workdir)
  tc = config.train
  enable_compile_cache(tc.compile_cache_dir)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = config.mesh.axis_rules
  if tc.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ConfigError(f"config.train.batch_size={tc.batch_size} is not divisible by the "
                      f"data*fsdp mesh size {mesh.shape['data'] * mesh.shape['fsdp']}")

  setup = build_train_setup(config, mesh)
  if print_sharding:
    if jax.process_index() == 0:
      print(sharding_report.describe_sharding(
          setup.abstract_state, setup.state_specs["params"], mesh,
          jax.eval_shape(setup.optimizer.init, setup.abstract_params),
          setup.state_specs["opt_state"]), flush=True)
    return {}
  graphdef, abstract_params, init_state = setup.graphdef, setup.abstract_params, setup.init_state
  state_sharding, batch_sharding = setup.state_sharding, setup.batch_sharding
  p_train_step = setup.p_train_step
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    abstract = jax.eval_shape(init_state)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sharding)
    p_eval_step = jax.jit(step_lib.make_eval_step(graphdef, config.data.objective,
                                                  tc.loss_chunk_size))

    data_iter = iter(batches(config, tokenizer, config.data.train_split,
                             shuffle=config.data.shuffle, repeat=True))
    checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
    writer = metrics_lib.MetricsWriter(workdir)
    start, state = checkpointer.restore_latest(abstract, None if restart_data else data_iter)
    if start is not None:
      if writer.enabled:
        metrics_lib.truncate_after(writer.path, start)
      print(f"Resumed from {checkpointer.directory}/{start}", flush=True)
    else:
      state = jax.jit(init_state, out_shardings=state_sharding)()
      start = 0

    n_params = metrics_lib.num_params(abstract_params)
    flops_token = metrics_lib.flops_per_token(config.model, n_params, config.data.seq_len,
                                              config.data)
    peak = metrics_lib.device_peak_flops(tc.peak_flops) * mesh.size
    token_bytes_v = jnp.asarray(tokenizer.token_byte_lengths(), jnp.float32)
    token_bytes_v = jnp.pad(token_bytes_v, (0, config.model.vocab_size - token_bytes_v.shape[0]))
    if jax.process_index() == 0:
      print(f"pretrax: {config.model.family} {n_params / 1e6:.2f}M params, mesh "
            f"{dict(mesh.shape)}, {tc.batch_size}x{config.data.seq_len} tokens/step, "
            f"{mesh.size} {mesh.devices.flat[0].platform} device(s), workdir {workdir}",
            flush=True)

    bar = tqdm.tqdm(total=tc.steps, initial=start, disable=jax.process_index() != 0,
                    dynamic_ncols=True, mininterval=1.0)
    last, tick, tick_step = {}, time.perf_counter(), start
    step, saved_step, previous_metrics = start, start, None
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)
    try:
      while step < end:
        # Dispatch is asynchronous: this batch is read (Grain prefetches in threads) and copied
        # to the devices while the previous step is still running.
        batch = mesh_lib.global_batch(next(data_iter), batch_sharding)
        state, step_metrics = p_train_step(state, batch)
        step += 1
        bar.update(1)
        if step == start + 1:  # keep compilation out of the throughput figures
          jax.block_until_ready(state)
          tick, tick_step = time.perf_counter(), step

        # Non-finite steps were not applied (see step.py); read the previous step's verdict,
        # which is done by now, so this never stalls the device.
        if previous_metrics is not None:
          _check_nonfinite(jax.device_get(previous_metrics), step - 1, tc, checkpointer)
        previous_metrics = {k: step_metrics[k] for k in ("skipped", "nonfinite_streak")}

        do_log = step % tc.log_every == 0 or step == tc.steps
        do_eval = tc.eval_every > 0 and (step % tc.eval_every == 0 or step == tc.steps)
        if do_log or do_eval:
          values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          elapsed = time.perf_counter() - tick
          tokens_per_sec = (step - tick_step) * tc.batch_size * config.data.seq_len / elapsed
          record = {"step": step, **values, "tokens_per_sec": tokens_per_sec,
                    "mfu": tokens_per_sec * flops_token / peak}
          if do_eval:
            eval_metrics = evaluate(p_eval_step, state["params"],
                                    eval_batches(config, tokenizer, max_batches=tc.eval_steps),
                                    token_bytes_v, batch_sharding, config.data.objective)
            record.update({f"eval_{k}": v for k, v in eval_metrics.items()})
            if jax.process_index() == 0:
              bar.write(f"step {step}: " + ", ".join(
                  f"{k} {v:.4f}" for k, v in eval_metrics.items() if isinstance(v, float)))
          writer.write(record)
          bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                          tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{record['mfu']:.1%}",
                          refresh=False)
          last = record
          tick, tick_step = time.perf_counter(), step

        if step % config.checkpoint.every == 0 or step == end:
          checkpointer.save(step, state, data_iter)
          saved_step = step

        if stop.requested(step, tc.log_every):
          if saved_step != step:
            checkpointer.save(step, state, data_iter)
          checkpointer.close()
          bar.close()
          print(f"pretrax: received {stop.signal_name or 'a stop request'} at step {step}: "
                f"checkpointed to {checkpointer.step_dir(step)}; run the same command again to "
                "resume", flush=True)
          return last
      if previous_metrics is not None:
        _check_nonfinite(jax.device_get(previous_metrics), step, tc, checkpointer)
    finally:
      bar.close()
    checkpointer.close()
  if jax.process_index() == 0:
    print(json.dumps({k: v for k, v in last.items()} | {"step": step}), flush=True)
  return last


def _check_nonfinite(flags: dict, step: int, tc, checkpointer) -> None:
  """Stops the run when config.train.nonfinite says so; the state kept is the last finite one."""
  streak = int(flags["nonfinite_streak"])
  if not flags["skipped"]:
    return
  if tc.nonfinite == "stop" or streak >= tc.max_nonfinite_skips:
    why = ("config.train.nonfinite=stop" if tc.nonfinite == "stop" else
           f"{streak} consecutive steps (config.train.max_nonfinite_skips="
           f"{tc.max_nonfinite_skips})")
    checkpointer.close()
    raise FloatingPointError(
        f"non-finite loss or gradients at step {step} ({why}). Those updates were not applied; "
        "the checkpoints hold only finite states. Lower the learning rate or inspect the data, "
        "then rerun.")
  print(f"WARNING: non-finite loss or gradients at step {step}: update skipped "
        f"({streak} in a row)", flush=True)


