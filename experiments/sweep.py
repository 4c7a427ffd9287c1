"""Running a sweep: every run is an ordinary `pretrax train` process in WORKDIR/<run name>/.

The sweep's workdir holds:
  sweep.json         the sweep: its base config, common overrides, question, and each run's name
                     and overrides
  sweep_log.jsonl    one line per run per invocation: skipped (finished already), started (from
                     its latest checkpoint's step), then finished / stopped / failed (at the step
                     of its latest checkpoint)
  <run>/             a run directory (training/run_dir.py) plus sweep_run.json (the run's config
                     and overrides, to refuse a different run under the same name) and train.log
                     (the run's output, appended at each invocation)

Running the same command again skips finished runs and resumes the others from their latest
checkpoint. SIGTERM or SIGINT stops the sweep: the running runs get SIGTERM, checkpoint their
current step and exit, and no new run starts; a second SIGINT ends them at once (their last
complete checkpoints are kept). Each run's process gets SIGTERM if the sweep's process dies.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

from pretrax.data import files
from pretrax.experiments.grid import Sweep, SweepRun
from pretrax.training import run_dir
from pretrax.training.config import ConfigError

SWEEP_JSON = "sweep.json"
RUN_JSON = "sweep_run.json"
JOURNAL = "sweep_log.jsonl"
TRAIN_LOG = "train.log"
POLL_S = 0.2


def command_lines(sweep: Sweep, workdir: str) -> list[str]:
  """One `pretrax train ...` shell command per run: what `--dry_run` prints."""
  return [shlex.join(["pretrax", *sweep.train_args(run, os.path.join(workdir, run.name))])
          for run in sweep.runs]


def latest_step(run_workdir: str) -> int:
  return max(run_dir.checkpoint_steps(run_workdir), default=0) if os.path.isdir(run_workdir) else 0


def _run_record(sweep: Sweep, run: SweepRun) -> dict:
  return {"config": sweep.config, "overrides": sweep.common | run.overrides}


def check_existing_runs(sweep: Sweep, workdir: str) -> None:
  """Refuses a run whose directory holds another run (other config or overrides, or a run the
  sweep did not make): a changed sweep adds runs and never trains over one."""
  for run in sweep.runs:
    directory = os.path.join(workdir, run.name)
    record_path = os.path.join(directory, RUN_JSON)
    if os.path.exists(record_path):
      with open(record_path) as f:
        recorded = json.load(f)
      wanted = _run_record(sweep, run)
      if recorded != wanted:
        changes = [f"--config={recorded.get('config')} there, {wanted['config']} here"] \
            if recorded.get("config") != wanted["config"] else []
        before, after = recorded.get("overrides", {}), wanted["overrides"]
        changes += [f"{key}={before.get(key, '(unset)')} there, {after.get(key, '(unset)')} here"
                    for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
        raise ConfigError(f"{directory} holds a run of another sweep ({'; '.join(changes)}); a "
                          "sweep never trains over a run: use another --workdir, or move that "
                          "run away")
    elif os.path.isdir(directory) and run_dir.history(directory):
      raise ConfigError(f"{directory} holds a run that this sweep did not start; use another "
                        "--workdir, or move that run away")


def _write_sweep_json(sweep: Sweep, workdir: str, argv: list[str]) -> None:
  path = os.path.join(workdir, SWEEP_JSON)
  runs = [{"name": run.name, "overrides": run.overrides} for run in sweep.runs]
  if os.path.exists(path):  # runs of an earlier grid stay listed after the current ones
    with open(path) as f:
      names = {run["name"] for run in runs}
      runs += [run for run in json.load(f).get("runs", []) if run["name"] not in names]
  files.atomic_write_json(path, {"config": sweep.config, "common": sweep.common,
                                 "question": sweep.question, "command": argv, "runs": runs})


class _Journal:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, JOURNAL)

  def write(self, run: SweepRun, event: str, **fields) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run": run.name,
                          "event": event, **fields}) + "\n")


class _Signals:
  """The first SIGTERM/SIGINT asks the runs to checkpoint and stop; a second SIGINT ends them."""

  def __init__(self):
    self.received, self.interrupts, self._previous = None, 0, {}
    self.children: list[subprocess.Popen] = []

  def _handle(self, signum, frame):
    first = self.received is None
    self.received = self.received or signal.Signals(signum).name
    self.interrupts += signum == signal.SIGINT
    for child in self.children:
      if child.poll() is None:
        if first:
          child.send_signal(signal.SIGTERM)
        elif self.interrupts >= 2:  # as `pretrax train` does on a second SIGINT: at once
          child.send_signal(signal.SIGINT)
          child.send_signal(signal.SIGINT)

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _parent_death_signal():
  """A function run in each child before exec: SIGTERM it when the sweep's process dies (Linux;
  elsewhere nothing), so a killed sweep leaves no run training unattended."""
  if not sys.platform.startswith("linux"):
    return None
  import ctypes
  prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
  parent = os.getpid()

  def set_signal():
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the sweep died before the line above
      os.kill(os.getpid(), signal.SIGTERM)
  return set_signal


def run_sweep(sweep: Sweep, workdir: str, *, parallel: int = 1, argv: list[str] | None = None,
              log=print) -> dict:
  """Trains every run of `sweep` not finished yet, `parallel` at a time; returns
  {"finished": [...], "failed": [...], "stopped": [...], "skipped": [...]} of run names."""
  if parallel < 1:
    raise ConfigError(f"--parallel={parallel}: expected a positive number of runs at a time")
  run_dir.check_writable(workdir)
  check_existing_runs(sweep, workdir)
  _write_sweep_json(sweep, workdir, argv or [])
  journal = _Journal(workdir)
  total = len(sweep.runs)
  outcome = {"finished": [], "failed": [], "stopped": [], "skipped": []}
  pending = []
  for index, run in enumerate(sweep.runs, 1):
    step = latest_step(os.path.join(workdir, run.name))
    if step >= run.config.train.steps:
      journal.write(run, "skipped", step=step)
      outcome["skipped"].append(run.name)
      log(f"[{index}/{total}] {run.name}: finished already (step {step})")
    else:
      pending.append((index, run))

  preexec = _parent_death_signal()
  active = {}  # Popen -> (index, run, first step, start time)
  with _Signals() as signals:
    while pending or active:
      while pending and len(active) < parallel and signals.received is None:
        index, run = pending.pop(0)
        directory = os.path.join(workdir, run.name)
        os.makedirs(directory, exist_ok=True)
        files.atomic_write_json(os.path.join(directory, RUN_JSON), _run_record(sweep, run))
        args = sweep.train_args(run, directory)
        step = latest_step(directory)
        with open(os.path.join(directory, TRAIN_LOG), "a") as out:
          out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pretrax sweep: "
                    f"{shlex.join(['pretrax', *args])}\n")
          out.flush()
          child = subprocess.Popen([sys.executable, "-m", "pretrax.cli", *args], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=preexec)
        signals.children.append(child)
        active[child] = (index, run, step, time.time())
        journal.write(run, "started", step=step)
        log(f"[{index}/{total}] {run.name}: " +
            (f"resuming from step {step}" if step else "training") +
            f" (log: {os.path.join(directory, TRAIN_LOG)})")
      time.sleep(POLL_S)
      for child in [c for c in active if c.poll() is not None]:
        index, run, first, began = active.pop(child)
        signals.children.remove(child)
        directory = os.path.join(workdir, run.name)
        step, seconds = latest_step(directory), round(time.time() - began, 1)
        if child.returncode == 0 and step >= run.config.train.steps:
          event = "finished"
          log(f"[{index}/{total}] {run.name}: finished in {seconds:.0f} s"
              f"{_last_eval(directory)}")
        elif child.returncode == 0 or signals.received:  # stopped, maybe before it began
          event = "stopped"
          log(f"[{index}/{total}] {run.name}: stopped at step {step} (checkpointed)")
        else:
          event = "failed"
          log(f"[{index}/{total}] {run.name}: FAILED (exit {child.returncode}); its last "
              f"lines:\n{_tail(os.path.join(directory, TRAIN_LOG))}")
        journal.write(run, event, step=step, from_step=first, exit_code=child.returncode,
                      seconds=seconds)
        outcome[event].append(run.name)
  outcome["signal"] = signals.received
  return outcome


def _last_eval(directory: str) -> str:
  """", eval_loss 2.3456 at step 300" from the run's last metrics line with an eval loss."""
  try:
    with open(os.path.join(directory, run_dir.METRICS)) as f:
      records = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError):
    return ""
  evals = [r for r in records if "eval_loss" in r]
  return f", eval_loss {evals[-1]['eval_loss']:.4f} at step {evals[-1]['step']}" if evals else ""


def _tail(path: str, lines: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-lines:]).rstrip()
  except OSError:
    return "(no log)"
