"""What a training run tells its user: progress lines for logs, and the summary at the end."""

import os
import sys
import time

PLAIN_PROGRESS_EVERY_S = 10.0  # at most one progress line this often when stderr is not a terminal


class PlainProgress:
  """Progress as plain lines on stderr, for logs (CI, nohup, a cluster's job log), where a
  carriage-return bar would be one endless line."""

  def __init__(self, total_steps: int, enabled: bool):
    self.total_steps = total_steps
    self.enabled = enabled
    self.started = time.perf_counter()
    self.last_line = None

  def update(self, step: int, record: dict, final: bool = False) -> None:
    now = time.perf_counter()
    if not self.enabled or (self.last_line is not None and not final
                            and now - self.last_line < PLAIN_PROGRESS_EVERY_S):
      return
    self.last_line = now
    speed = (f"{record['tokens_per_sec']:,.0f} tok/s  MFU {record['mfu']:.1%}"
             if record["tokens_per_sec"] > 0 else "(first step: compiled)")
    print(f"step {step}/{self.total_steps}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
          f"{speed}  {now - self.started:.0f} s", file=sys.stderr, flush=True)


def summary(task, first_step: int, last_step: int, seconds: float, last: dict,
            checkpoint_dir: str) -> str:
  """The lines printed when `train` ends: what happened, where it is, what to run next."""
  workdir = task.workdir
  lines = [f"pretrax: trained steps {first_step + 1}-{last_step} in {seconds:.0f} s"
           if last_step > first_step else f"pretrax: nothing left to train (step {last_step})"]
  if "loss" in last:
    lines.append(f"  final train loss {last['loss']:.4f}")
  evals = {k[len("eval_"):]: v for k, v in last.items()
           if k.startswith("eval_") and isinstance(v, float)}
  if evals:
    shown = [f"{k.replace('_', ' ')} {v:.4f}" for k, v in evals.items()
             if k in ("loss", "bits_per_byte", "accuracy", "macro_f1", "mlm_accuracy")]
    lines.append(f"  validation: {', '.join(shown)}")
  lines.append(f"  checkpoint: {checkpoint_dir}")
  lines.append(f"  metrics: {os.path.join(workdir, 'metrics.jsonl')}")
  lines.append("next:")
  lines += [f"  {command}" for command in task.next_commands()]
  return "\n".join(lines)
