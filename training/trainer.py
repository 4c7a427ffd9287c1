"""The training loop of every task: set up the run directory, the mesh and the state, then step,
log, eval, save.

What differs between jobs (the model, its initialization, batches, loss terms, metrics) is the
task's (training/tasks/); everything here holds for all of them: the workdir lock, checkpoints
with the data position, SIGTERM/SIGINT, the non-finite policy, gradient accumulation, meshes and
several processes. The loop reads top to bottom; every periodic action is an explicit
`if step % every == 0` block.
"""

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from pretrax.data.errors import InputError
from pretrax.modeling import sharding
from pretrax.training import checkpointing, compile_cache, mesh as mesh_lib
from pretrax.training import metrics as metrics_lib, optimizer as optimizer_lib, run_dir
from pretrax.training import report, sharding_report, step as step_lib, tasks as tasks_lib
from pretrax.training import tracking
from pretrax.training.config import Config, ConfigError
from pretrax.training.tasks.base import Task


def evaluate(eval_step, params, eval_data, batch_sharding, task: Task) -> dict[str, float]:
  """The task's validation metrics: eval sums added over `eval_data` on the devices."""
  totals = None
  for batch in eval_data:
    sums = eval_step(params, mesh_lib.global_batch(batch, batch_sharding))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise InputError("the validation data produced no batch (an empty split?); set "
                     "config.data.eval_split or config.data.eval, or train.eval_every=0")
  return task.summarize(totals)


class StopRequest:
  """Turns SIGTERM / SIGINT into a request to checkpoint and exit at the end of the current step.

  A second SIGINT ends the process at once, even while XLA compiles or a step runs (when Python
  signal handlers cannot run): the C-level handler writes every signal to a wake-up pipe, and a
  watcher thread exits on the second SIGINT. Checkpoints are committed atomically, so the last
  complete one is what the next run resumes from.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    self._wakeup = None

  def _handle(self, signum, frame):
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  def _watch(self, read_fd: int) -> None:
    interrupts = 0
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
      while data := pipe.read(64):  # b"" once __exit__ closes the write end
        interrupts += data.count(bytes([signal.SIGINT]))
        if interrupts >= 2:
          os.write(2, b"\npretrax: interrupted by a second SIGINT; the last complete checkpoint "
                      b"is kept: run the same command again to resume from it\n")
          os._exit(130)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)
      previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
      self._wakeup = (read_fd, write_fd, previous_fd)
      threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                       name="pretrax-sigint").start()
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if self._wakeup is not None:
      read_fd, write_fd, previous_fd = self._wakeup
      signal.set_wakeup_fd(previous_fd)
      os.close(write_fd)  # the watcher reads end-of-file and returns; it owns read_fd
      self._wakeup = None

  def requested(self, step: int, every: int) -> bool:
    if jax.process_count() > 1:  # all processes must stop at the same step: agree every few steps
      if step % every:
        return False
      from jax.experimental import multihost_utils
      return bool(multihost_utils.process_allgather(np.int32(self.signal_name is not None)).any())
    return self.signal_name is not None


# --------------------------------------------------------------------------------------------
# The train state and the jitted step, in their shardings.


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a training step needs, built once per run (`build_train_setup`).

  `init_state()` makes the step-0 state; call it and `p_train_step(state, batch)` inside
  `jax.set_mesh(mesh)` and `sharding.axis_rules(...)`.
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
  p_eval_step: Callable


def build_train_setup(task: Task, mesh) -> TrainSetup:
  """The model, optimizer, state shardings and jitted steps of `task` on `mesh`.

  The trainer and benchmarks/throughput.py both use it, so what is benchmarked is what trains.
  """
  config = task.config
  tc, rules = config.train, config.mesh.axis_rules
  graphdef, abstract_state = task.abstract_model()
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
    params = task.init_params(abstract_params, state_sharding["params"])
    return jax.jit(lambda p: step_lib.initial_state(p, optimizer),
                   out_shardings=state_sharding)(params)

  train_step = step_lib.make_train_step(graphdef, optimizer, schedule, task,
                                        grad_accum_steps=tc.grad_accum_steps, seed=tc.seed)
  p_train_step = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, None), donate_argnums=0)
  p_eval_step = jax.jit(step_lib.make_eval_step(graphdef, task),
                        in_shardings=(state_sharding["params"], batch_sharding))
  return TrainSetup(graphdef, abstract_state, abstract_params, optimizer, schedule, state_specs,
                    state_sharding, batch_sharding, init_state, p_train_step, p_eval_step)


def train(config: Config, workdir: str, *, stop_after: int | None = None, devices=None,
          print_sharding: bool = False, restart_data: bool = False,
          restart: bool = False) -> dict:
  """Trains (or resumes) the run in `workdir` on its task (config.finetune.task, else
  config.data.objective); returns the last logged metrics.

  `stop_after` ends this invocation after that step (saving a checkpoint) as if the process had
  been stopped there; the schedule still spans config.train.steps, so a later call resumes the
  very same run. `devices` (default: all) are the devices the mesh is built from.
  `print_sharding` prints every parameter's placement and the per-device memory, then returns.
  `restart_data` restores model and optimizer state but starts the data stream over (on changed
  data, or BERT's per-process data on another number of processes). `restart` sets a previous
  run in `workdir` aside (WORKDIR/previous_runs/) and starts a new one; without it a workdir that
  has trained is resumed or refused, never started over.
  """
  called = time.perf_counter()
  tasks_lib.task_class(config).check_config(config)  # before the workdir is touched
  run_dir.check_writable(workdir)
  with run_dir.WorkdirLock(workdir), StopRequest() as stop:
    if restart and not print_sharding:
      moved = run_dir.set_aside_previous_run(workdir)
      if moved and jax.process_index() == 0:
        print(f"pretrax: --restart: the previous run in {workdir} was moved to {moved}",
              flush=True)
    else:
      run_dir.check_resumable(workdir)
    saved = run_dir.saved_config(workdir) if run_dir.checkpoint_steps(workdir) else None
    task = tasks_lib.open_task(config, workdir)
    if saved is not None:
      changed = run_dir.check_resume_config(saved, task.config, workdir)
      if changed and jax.process_index() == 0:
        print(f"pretrax: resuming with changed settings: {'; '.join(changed)}", flush=True)
    return _train(task, stop, stop_after, devices, print_sharding, restart_data, called)


def _train(task: Task, stop: StopRequest, stop_after, devices, print_sharding,
           restart_data, called: float) -> dict:
  config, workdir = task.config, task.workdir
  tc = config.train
  compile_cache.enable(tc.compile_cache_dir)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = config.mesh.axis_rules
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if tc.batch_size % rows:
    raise ConfigError(f"config.train.batch_size={tc.batch_size} is not divisible by the "
                      f"data*fsdp mesh size {rows}")

  setup = build_train_setup(task, mesh)
  mesh_lib.check_process_rows(setup.batch_sharding, tc.batch_size)
  if print_sharding:
    if jax.process_index() == 0:
      print(sharding_report.describe_sharding(
          setup.abstract_state, setup.state_specs["params"], mesh,
          jax.eval_shape(setup.optimizer.init, setup.abstract_params),
          setup.state_specs["opt_state"]), flush=True)
    return {}
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            jax.eval_shape(lambda p: step_lib.initial_state(p, setup.optimizer),
                                           setup.abstract_params),
                            setup.state_sharding)
    data_iter = task.train_batches()
    fingerprint = task.data_fingerprint()
    checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
    writer = metrics_lib.MetricsWriter(workdir)
    restored = checkpointer.restore_latest(abstract, data_iter, fingerprint, restart_data)
    note = {}  # said once, in the next metrics line (the first of each invocation)
    if restored is not None:
      start, state = restored.step, restored.state
      if writer.enabled:
        metrics_lib.truncate_after(writer.path, start)
      print(f"Resumed from {checkpointer.directory}/{start}", flush=True)
      if restart_data:
        why = "; ".join(restored.data_changes) or "--restart_data"
        if jax.process_index() == 0:
          print(f"pretrax: --restart_data: the data stream starts over at step {start} ({why})",
                flush=True)
        # In the next metrics line, so every line stays one step.
        note = {"data_restarted_at": start, "data_changes": restored.data_changes}
    else:
      state = setup.init_state()
      start = 0
    run_dir.write_config(config, workdir)  # the settings the run now continues under

    n_params = metrics_lib.num_params(setup.abstract_params)
    flops_token = task.flops_per_token(n_params)
    peak = metrics_lib.mesh_peak_flops(mesh.devices.flat, tc.peak_flops)
    note["num_params"] = n_params
    if jax.process_index() == 0:
      print(f"pretrax: {task.describe()}, {n_params / 1e6:.2f}M params, mesh "
            f"{dict(mesh.shape)}, {task.describe_step()}, "
            f"{mesh.size} {mesh.devices.flat[0].platform} device(s), workdir {workdir}",
            flush=True)

    def run_eval(params):
      data = task.eval_batches(tc.eval_steps)
      if data is None:
        return None
      metrics = evaluate(setup.p_eval_step, params, data, setup.batch_sharding, task)
      generated = task.generation_metrics(nnx.merge(setup.graphdef, params))
      return metrics if generated is None else metrics | generated

    # A bar on a terminal; plain lines where stderr is a log (CI, nohup, a cluster's job log).
    terminal = sys.stderr.isatty()
    bar = tqdm.tqdm(total=tc.steps, initial=start, dynamic_ncols=True, mininterval=1.0,
                    disable=jax.process_index() != 0 or not terminal)
    plain = report.PlainProgress(tc.steps, jax.process_index() == 0 and not terminal)
    began = time.perf_counter()
    note["setup_s"] = began - called  # data, tokenizer, restore: before the loop's clock starts
    last, tick, tick_step = {}, time.perf_counter(), start
    step, saved_step, previous_metrics = start, start, None
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)
    trackers = tracking.Trackers(config, workdir, start)  # TensorBoard, W&B: what writer writes
    try:
      while step < end:
        # Dispatch is asynchronous: this batch is read (Grain prefetches in threads) and copied
        # to the devices while the previous step is still running.
        batch = mesh_lib.global_batch(next(data_iter), setup.batch_sharding)
        state, step_metrics = setup.p_train_step(state, batch)
        step += 1
        bar.update(1)
        checkpointer.poll()  # the manifest of a checkpoint just committed
        if step == start + 1:  # keep compilation out of the throughput figures
          jax.block_until_ready(state)
          tick, tick_step = time.perf_counter(), step
          note["startup_s"] = tick - called  # data, tokenizer, restore, compilation, one step

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
          tokens_per_sec = (step - tick_step) * task.tokens_per_step / elapsed
          record = {"step": step, **values, "tokens": step * task.tokens_per_step,
                    "tokens_per_sec": tokens_per_sec,
                    "mfu": tokens_per_sec * flops_token / peak,
                    "elapsed_s": time.perf_counter() - began}
          eval_metrics = run_eval(state["params"]) if do_eval else None
          if eval_metrics is not None:
            record.update({f"eval_{k}": v for k, v in eval_metrics.items()})
            if jax.process_index() == 0:
              bar.write(f"step {step}: " + ", ".join(
                  f"{k} {v:.4f}" for k, v in eval_metrics.items() if isinstance(v, float)))
          writer.write(record | note)
          trackers.write(record | note)
          note = {}
          bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                          tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{record['mfu']:.1%}",
                          refresh=False)
          plain.update(step, record, final=step == end)
          last = record
          tick, tick_step = time.perf_counter(), step

        if step % config.checkpoint.every == 0 or step == end:
          checkpointer.save(step, state, data_iter, fingerprint)
          saved_step = step

        if stop.requested(step, tc.log_every):
          if saved_step != step:
            checkpointer.save(step, state, data_iter, fingerprint)
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
      trackers.close()  # also when stopped by a signal or an error
    checkpointer.close()
    if not last and tc.eval_every > 0:  # nothing left to train: report the checkpoint's eval
      eval_metrics = run_eval(state["params"])
      if eval_metrics is not None:
        last = {f"eval_{k}": v for k, v in eval_metrics.items()}
  if jax.process_index() == 0:
    print(report.summary(task, start, step, time.perf_counter() - began, last,
                         os.path.join(workdir, "checkpoints", str(step))), flush=True)
    print(json.dumps(last | {"step": step}), flush=True)
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
