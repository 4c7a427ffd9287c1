"""`pretrax compare`: collate run directories into a table, summary.csv and plots.

    pretrax compare runs/norm_sweep                 # every run directory of a sweep
    pretrax compare runs/a runs/b --output=cmp      # runs or sweeps side by side
    pretrax compare runs/norm_sweep --metric=eval_accuracy

Each path is a run directory (it holds config.json) or a directory whose immediate subdirectories
include run directories (`pretrax sweep`'s runs/NAME/; subdirectories without config.json are
skipped, sweep.json only orders the rows when present). Finished and partial runs alike: a run
without metrics.jsonl yet is listed as "not started".

One row per run (summary.csv; the `runs` of a `Comparison`):
  run              the directory name (several paths: its path below the runs' common parent)
  <config fields>  every flattened config field (model.norm_position, train.seed, ...) whose value
                   differs between the runs; fields equal in all runs are left out
  status           "finished" (last logged step == train.steps), "step N/M" or "not started"
  steps            the last logged step
  train_loss       `loss` of the last record that has one
  best_eval_X      the best value of each eval metric X over the run's evals: the MINIMUM for
                   names containing loss, perplexity or bits_per_byte, the MAXIMUM otherwise
                   (accuracy, BLEU, chrF, ROUGE, exact match)
  tokens_per_sec   median over the log records that measured throughput (a record logged at the
  mfu              first step after compilation reports 0 and is left out)
  wall_s           sum over invocations (the first and each resume) of the seconds from the
                   command's start to its last log line: setup_s (logged once per invocation:
                   data, tokenizer, restore, before the loop) + its last elapsed_s; an
                   invocation begins at a record with startup_s or where elapsed_s decreases
  num_params       as the run logged it (blank if absent)

Seeds: runs whose differing fields are equal except train.seed are one configuration. When a
configuration has more than one run, summary_by_config.csv holds each numeric column's mean and
sample standard deviation (ddof=1) per configuration, and the printed table is per configuration.

Files go to --output, else to the one path given: summary.csv, summary_by_config.csv (seeds
repeated), plots/*.png (experiments/plots.py).
"""

import csv
import dataclasses
import io
import json
import math
import os
import re

import numpy as np

from pretrax.data import files
from pretrax.data.errors import InputError
from pretrax.experiments import grid, plots
from pretrax.training import config as config_lib

# As training/run_dir.py names them (not imported: it brings JAX, and compare needs none).
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SWEEP = "sweep.json"
SEED = "train.seed"
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_byte")
EVAL_COUNTS = ("eval_tokens", "eval_bytes", "eval_examples")  # how much was evaluated: no metric


@dataclasses.dataclass
class Run:
  name: str
  path: str
  config: dict            # flattened: {"model.norm_position": "pre", "train.seed": 0, ...}
  records: list[dict]     # metrics.jsonl, oldest first; [] when not started


@dataclasses.dataclass
class Comparison:
  table: str              # per configuration when seeds repeat, else per run
  files: list[str]        # summary.csv, summary_by_config.csv, plots
  runs: list[dict]        # one row of summary.csv per run
  configs: list[dict]     # one row of summary_by_config.csv per configuration
  fields: list[str]       # the config fields that differ between runs
  metric: str             # the metric plotted
  output: str

  def summary(self) -> dict:
    """What the CLI prints as its last line: counts, the best run (or configuration), files."""
    column = _final_column(self.metric)
    if any(c["n"] > 1 for c in self.configs):  # seeds repeat: the best configuration's mean
      scored = [(c["config"], c.get(f"{column}_mean")) for c in self.configs]
    else:
      scored = [(r["run"], r.get(column)) for r in self.runs]
    scored = [(name, value) for name, value in scored if _finite(value)]
    best = None
    if scored:
      pick = min if lower_is_better(self.metric) else max
      name, value = pick(scored, key=lambda s: s[1])
      best = {"name": name, column: value}
    return {"runs": len(self.runs), "configurations": len(self.configs),
            "finished": sum(r["status"] == "finished" for r in self.runs),
            "fields": self.fields, "metric": self.metric, "best": best,
            "output": self.output, "files": self.files}


def lower_is_better(metric: str) -> bool:
  return any(word in metric for word in LOWER_IS_BETTER)


def best(metric: str, values) -> float | None:
  """The best finite value of `metric` (see the module docstring for the rule); None if none."""
  values = [v for v in values if _finite(v)]
  if not values:
    return None
  return min(values) if lower_is_better(metric) else max(values)


def wall_time(records: list[dict]) -> float | None:
  """Seconds from each invocation's start to its last log line (setup_s + its last elapsed_s),
  summed over invocations."""
  total, last = 0.0, None
  for record in records:
    elapsed = _number(record.get("elapsed_s"))
    if elapsed is None:
      continue
    if last is not None and ("startup_s" in record or elapsed < last):
      total += last  # a resume: its clock starts again from ~0
      last = None
    total += _number(record.get("setup_s")) or 0.0
    last = elapsed
  return None if last is None else total + last


# --------------------------------------------------------------------------------------------
# Reading runs.


def find_runs(paths: list[str]) -> list[str]:
  """The run directories of `paths`, each a run directory or a directory of them, in order."""
  found = []
  for path in paths:
    if not os.path.exists(path):
      raise InputError(f"{path}: no such directory; give a run directory (it holds {CONFIG}) "
                       "or a directory of them (a sweep)")
    if not os.path.isdir(path):
      raise InputError(f"{path}: not a directory; give a run directory (it holds {CONFIG}) or "
                       "a directory of them (a sweep)")
    if os.path.isfile(os.path.join(path, CONFIG)):
      found.append(path)
      continue
    names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n, CONFIG))]
    if not names:
      raise InputError(f"{path}: holds no run: neither it nor any of its subdirectories has a "
                       f"{CONFIG}")
    found += [os.path.join(path, n) for n in _sweep_order(path, names)]
  unique = {}
  for path in found:
    unique.setdefault(os.path.realpath(path), path)  # a run given twice is listed once
  return list(unique.values())


def _sweep_order(directory: str, names: list[str]) -> list[str]:
  """sweep.json's order when it lists the runs, then the rest by name (runs 2 before 10)."""
  names = sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])
  try:
    with open(os.path.join(directory, SWEEP)) as f:
      listed = [run["name"] for run in json.load(f)["runs"]]
  except (OSError, ValueError, KeyError, TypeError):
    return names  # only an ordering hint: missing or unreadable changes nothing else
  position = {name: i for i, name in enumerate(listed) if isinstance(name, str)}
  return sorted(names, key=lambda n: position.get(n, len(position)))


def read_config(path: str) -> dict:
  """config.json as flat dotted keys, through the schema (so old files read like new ones)."""
  try:
    config = config_lib.load_json(path)
  except OSError as e:
    raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: not JSON ({e.msg}, line {e.lineno}); a run directory's "
                     f"{CONFIG} is the resolved config `pretrax train` writes") from None
  except InputError as e:
    raise InputError(f"{path}: {e}") from None
  except (TypeError, AttributeError, ValueError) as e:
    raise InputError(f"{path}: not a pretrax config ({e})") from None
  return config_lib.to_flat_dict(config)


def read_metrics(path: str) -> list[dict]:
  """metrics.jsonl's records; [] if there is none yet. A last line without its newline that is
  not JSON is being written (or was cut by a crash) and is skipped; any other is an error."""
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = f.readlines()
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:
      if number == len(lines) and not line.endswith("\n"):
        break
      raise InputError(f"{path} line {number}: not JSON ({e}); repair or delete that line"
                       ) from None
    if not isinstance(record, dict):
      raise InputError(f"{path} line {number}: a JSON {type(record).__name__}, not an object of "
                       "metrics; repair or delete that line")
    records.append(record)
  return records


def load_runs(paths: list[str]) -> list[Run]:
  directories = find_runs(paths)
  # Names relative to the runs' common parent: the directory name for one sweep or run.
  parents = [os.path.dirname(os.path.abspath(d)) for d in directories]
  common = os.path.commonpath(parents)
  return [Run(name=os.path.relpath(os.path.abspath(d), common), path=d,
              config=read_config(os.path.join(d, CONFIG)),
              records=read_metrics(os.path.join(d, METRICS)))
          for d in directories]


# --------------------------------------------------------------------------------------------
# Summaries.


def differing_fields(runs: list[Run]) -> list[str]:
  """Config fields whose value is not the same in every run, in the schema's order."""
  keys = list(runs[0].config)
  for run in runs[1:]:
    keys += [k for k in run.config if k not in keys]
  return [k for k in keys
          if len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1]


def eval_metrics(runs: list[Run]) -> list[str]:
  """The numeric eval_* keys any run logged, in the order first seen."""
  names = {}
  for run in runs:
    for record in run.records:
      for key, value in record.items():
        if key.startswith("eval_") and key not in EVAL_COUNTS and _number(value) is not None:
          names.setdefault(key, None)
  return list(names)


def summarize(run: Run, fields: list[str], eval_names: list[str]) -> dict:
  """One row of summary.csv: see the module docstring for each column."""
  records = [r for r in run.records if _number(r.get("step")) is not None]
  total = run.config.get("train.steps")
  row = {"run": run.name, **{k: _cell(run.config.get(k)) for k in fields}}
  if not records:
    row["status"], row["steps"] = "not started", None
  else:
    step = int(records[-1]["step"])
    row["status"] = "finished" if step == total else f"step {step}/{total}"
    row["steps"] = step
  losses = [r["loss"] for r in records if _number(r.get("loss")) is not None]
  row["train_loss"] = float(losses[-1]) if losses else None
  for name in eval_names:
    row[f"best_{name}"] = best(name, [r.get(name) for r in records])
  measured = [r for r in records if (_number(r.get("tokens_per_sec")) or 0) > 0]
  row["tokens_per_sec"] = _median([r["tokens_per_sec"] for r in measured])
  row["mfu"] = _median([r.get("mfu") for r in measured])
  row["wall_s"] = wall_time(records)
  params = [r["num_params"] for r in records if _number(r.get("num_params")) is not None]
  row["num_params"] = int(params[-1]) if params else None
  row["path"] = run.path
  return row


def configurations(runs: list[Run], fields: list[str]) -> list[list[int]]:
  """Indices of the runs of each configuration (equal fields but for train.seed), first seen
  first."""
  groups = {}
  for i, run in enumerate(runs):
    key = tuple(json.dumps(run.config.get(k), sort_keys=True) for k in fields if k != SEED)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def config_label(run: Run, fields: list[str]) -> str:
  """A configuration's name for legends: `norm_position=post lr=0.001`; "all runs" if only seeds
  differ."""
  swept = [k for k in fields if k != SEED]
  names = grid.short_keys(swept)
  return " ".join(f"{names[k]}={_text(run.config.get(k))}" for k in swept) or "all runs"


def aggregate(rows: list[dict], label: str, fields: list[str], numeric: list[str]) -> dict:
  """One row of summary_by_config.csv: each numeric column's mean and sample std (ddof=1) over
  the runs that have a value (std blank for fewer than 2)."""
  first = rows[0]
  out = {"config": label, **{k: first[k] for k in fields if k != SEED}, "n": len(rows),
         "finished": sum(r["status"] == "finished" for r in rows)}
  for column in numeric:
    values = np.array([r[column] for r in rows if r[column] is not None], np.float64)
    out[f"{column}_mean"] = float(values.mean()) if values.size else None
    out[f"{column}_std"] = float(values.std(ddof=1)) if values.size > 1 else None
  out["runs"] = ";".join(r["run"] for r in rows)
  return out


# --------------------------------------------------------------------------------------------
# Printing and writing.


HEADERS = {"train_loss": "train loss", "tokens_per_sec": "tok/s", "mfu": "MFU",
           "wall_s": "wall (s)", "num_params": "params"}


def _format(column: str, value) -> str:
  if value is None:
    return ""
  if not math.isfinite(value):
    return str(value)
  if column in ("steps", "tokens_per_sec"):
    return f"{value:,.0f}"
  if column == "mfu":
    return f"{value:.1%}" if value >= 0.01 else f"{value * 100:.2g}%"
  if column == "wall_s":
    return f"{value:,.1f}"
  if column == "num_params":
    return f"{value / 1e6:.2f}M"
  return f"{value:.4f}"  # losses and eval metrics


def _header(column: str) -> str:
  if column.startswith("best_"):
    return f"best {column[len('best_'):]}"
  return HEADERS.get(column, column)


def format_table(header: list[str], rows: list[list[str]]) -> str:
  """Columns padded to their widest cell; text left-aligned, numbers right-aligned."""
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
  numeric = [all(re.match(r"^-?[\d.,]+(%|M|s)?( ± .*)?$", r[i]) or not r[i] for r in rows)
             for i in range(len(header))]

  def line(cells):
    return "  ".join(c.rjust(w) if num else c.ljust(w)
                     for c, w, num in zip(cells, widths, numeric)).rstrip()
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_table(rows: list[dict], fields: list[str], numeric: list[str]) -> str:
  header = ["run", *fields, "status", *(_header(c) for c in numeric)]
  return format_table(header, [[r["run"], *(_text(r[k]) for k in fields), r["status"],
                                *(_format(c, r[c]) for c in numeric)] for r in rows])


def config_table(configs: list[dict], fields: list[str], numeric: list[str]) -> str:
  swept = [k for k in fields if k != SEED]
  header = [*swept, "n", "finished", *(_header(c) for c in numeric)]
  cells = []
  for c in configs:
    cells.append([*(_text(c[k]) for k in swept), str(c["n"]), f"{c['finished']}/{c['n']}"] + [
        _format(k, c[f"{k}_mean"]) + ("" if c[f"{k}_std"] is None else
                                      f" ± {_format(k, c[f'{k}_std'])}") for k in numeric])
  return format_table(header, cells)


def write_csv(path: str, rows: list[dict]) -> None:
  """Plain numbers (full precision), blanks for missing values; written atomically."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
  writer.writeheader()
  writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
  files.atomic_write(path, buffer.getvalue())


def choose_metric(metric: str | None, runs: list[Run], eval_names: list[str]) -> str:
  """`metric` (bare names such as `bleu` mean eval_bleu), else eval_loss if any run has it, else
  the first eval metric, else the train loss."""
  if metric is None:
    return "eval_loss" if "eval_loss" in eval_names else (eval_names or ["loss"])[0]
  logged = {k for run in runs for r in run.records for k, v in r.items()
            if _number(v) is not None}
  for name in (metric, "loss" if metric == "train_loss" else f"eval_{metric}"):
    if name in logged:
      return name
  raise InputError(f"--metric={metric}: no run logged it; the runs log "
                   f"{', '.join(sorted(logged)) or 'nothing yet'}")


def compare(paths: list[str], output: str | None = None, metric: str | None = None) -> Comparison:
  """Reads the runs of `paths`, writes OUTPUT/summary.csv (and summary_by_config.csv, plots/),
  returns the table and rows. See the module docstring for the columns."""
  if not paths:
    raise InputError("pretrax compare: give at least one run or sweep directory")
  if output is None:
    if len(paths) > 1:
      raise InputError(f"pretrax compare of {len(paths)} paths: give --output=DIR for "
                       "summary.csv and the plots")
    output = paths[0]
  if os.path.exists(output) and not os.path.isdir(output):
    raise InputError(f"--output={output} is a file; give a directory")
  runs = load_runs(paths)
  fields = differing_fields(runs)
  eval_names = eval_metrics(runs)
  metric = choose_metric(metric, runs, eval_names)
  numeric = ["steps", "train_loss", *(f"best_{n}" for n in eval_names), "tokens_per_sec", "mfu",
             "wall_s", "num_params"]
  rows = [summarize(run, fields, eval_names) for run in runs]
  groups = configurations(runs, fields)
  labels = [config_label(runs[g[0]], fields) for g in groups]
  configs = [aggregate([rows[i] for i in g], label, fields, numeric)
             for g, label in zip(groups, labels)]

  written = [os.path.join(output, "summary.csv")]
  write_csv(written[0], rows)
  seeds_repeat = any(len(g) > 1 for g in groups)
  if seeds_repeat:
    written.append(os.path.join(output, "summary_by_config.csv"))
    write_csv(written[-1], configs)
  table = (config_table(configs, fields, numeric) if seeds_repeat
           else run_table(rows, fields, numeric))

  series = []
  for group, (members, label) in enumerate(zip(groups, labels)):
    for member, i in enumerate(members):
      records = [r for r in runs[i].records if _finite(r.get(metric))]
      series.append(plots.Series(
          name=runs[i].name, label=label, group=group, member=member, size=len(members),
          steps=[r.get("step") for r in records], tokens=[r.get("tokens") for r in records],
          values=[float(r[metric]) for r in records], final=_final(metric, rows[i], records),
          fields={k: runs[i].config.get(k) for k in fields if k != SEED}))
  written += plots.write_all(series, metric, os.path.join(output, "plots"))
  return Comparison(table=table, files=written, runs=rows, configs=configs, fields=fields,
                    metric=metric, output=output)


def _final_column(metric: str) -> str:
  return f"best_{metric}" if metric.startswith("eval_") else (
      "train_loss" if metric == "loss" else metric)


def _final(metric: str, row: dict, records: list[dict]) -> float | None:
  """The value a run is judged by: the best eval value, else the last logged one."""
  if metric.startswith("eval_"):
    return row[f"best_{metric}"]
  return float(records[-1][metric]) if records else None


def _number(value) -> float | None:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  return None


def _finite(value) -> bool:
  number = _number(value)
  return number is not None and math.isfinite(number)


def _median(values) -> float | None:
  values = [v for v in (_number(v) for v in values) if v is not None]
  return float(np.median(values)) if values else None


def _cell(value):
  """A config value as a CSV cell: scalars as they are, tuples and lists as JSON."""
  return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _text(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  return str(_cell(value))
