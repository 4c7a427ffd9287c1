"""A sweep's runs: one base config and, per run, the overrides that make it, each run named after
its overrides.

A sweep comes from flags (`--config=gpt:tiny --grid=model.norm_position=pre,post --set=...
--seeds=3`), from a sweep file (`--sweep=configs/sweeps/NAME.py`), or both (the flags' grid
multiplies the file's runs, `--set` adds to every run, `--seeds` replaces the file's SEEDS).

A sweep file is a preset file whose docstring says what question the sweep answers:

  get_config(variant=None) -> Config       the config every run starts from
  get_runs() -> list[dict]                 one dict of overrides per run (`product` builds a grid)
  SEEDS = 3                                optional: every run with train.seed = seed + 0, 1, 2

Every run is checked (unknown key, wrong type, a value out of range, a setting its task cannot
run) before any of them starts.
"""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re

from pretrax import configs as configs_package
from pretrax.training import config as config_lib
from pretrax.training.config import Config, ConfigError

SEED_KEY = "train.seed"
SWEEPS_DIR = os.path.join(os.path.dirname(os.path.abspath(configs_package.__file__)), "sweeps")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=,-]")
MAX_NAME = 120  # characters of a run's directory name before it is shortened with a hash


@dataclasses.dataclass(frozen=True)
class SweepRun:
  name: str                     # the run's directory under the sweep's workdir
  overrides: dict[str, str]     # its own overrides (grid and seed), as command-line strings
  config: Config                # the resolved config: base, --set, then its own overrides


@dataclasses.dataclass(frozen=True)
class Sweep:
  config: str                   # the --config every run is trained with (a preset or a file)
  common: dict[str, str]        # overrides of every run (--set)
  runs: list[SweepRun]
  question: str = ""            # the sweep file's docstring

  def train_args(self, run: SweepRun, workdir: str) -> list[str]:
    """The `pretrax train` arguments of `run` in `workdir` (after the program name)."""
    overrides = self.common | run.overrides
    return ["train", f"--config={self.config}", f"--workdir={workdir}",
            *[f"--config.{key}={value}" for key, value in overrides.items()]]


def product(axes: dict[str, list]) -> list[dict]:
  """Every combination of the values of `axes` ({key: [values]}), the last key varying fastest."""
  for key, values in axes.items():
    _check_values(key, [to_text(v) for v in values], "product")
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in itertools.product(*axes.values())]


def to_text(value) -> str:
  """A Python value as the command line writes it: true/false, JSON lists, plain numbers."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return json.dumps(value)
  return str(value)


def _check_values(key: str, values: list[str], where: str) -> None:
  if not key:
    raise ConfigError(f"{where}: a grid axis without a key; write KEY=VALUE,VALUE")
  if not values:
    raise ConfigError(f"{where}: {key} has no values; give at least one")
  if any(v == "" for v in values):
    raise ConfigError(f"{where}: {key} has an empty value ({','.join(values)!r})")
  repeated = sorted({v for v in values if values.count(v) > 1})
  if repeated:
    raise ConfigError(f"{where}: {key} lists {repeated[0]!r} twice; each run must differ")


def parse_grid(flags: list[str]) -> dict[str, list[str]]:
  """`["model.norm_position=pre,post", ...]` -> {key: values}; values are comma-separated (a
  value holding a comma goes in a sweep file)."""
  axes = {}
  for flag in flags:
    key, eq, raw = flag.partition("=")
    key = key.strip().removeprefix("--config.").removeprefix("config.")
    if not eq:
      raise ConfigError(f"--grid={flag!r}: expected KEY=VALUE,VALUE,... e.g. "
                        "--grid=model.norm_position=pre,post")
    values = raw.split(",") if raw else []
    _check_values(key, values, f"--grid={flag}")
    if key in axes:
      raise ConfigError(f"--grid: {key} is given twice; list all its values in one --grid")
    axes[key] = values
  return axes


def parse_set(flags: list[str]) -> dict[str, str]:
  """`["train.steps=500", ...]` -> {key: value}."""
  common = {}
  for flag in flags:
    key, eq, value = flag.partition("=")
    key = key.strip().removeprefix("--config.").removeprefix("config.")
    if not eq or not key:
      raise ConfigError(f"--set={flag!r}: expected KEY=VALUE, e.g. --set=train.steps=500")
    common[key] = value
  return common


def sweep_file_path(spec: str) -> str:
  """`--sweep`: a file, or the name of a sweep shipped with pretrax (configs/sweeps/NAME.py)."""
  if os.path.isfile(spec):
    return spec
  shipped = os.path.join(SWEEPS_DIR, f"{spec.removesuffix('.py')}.py")
  if os.sep not in spec and os.path.isfile(shipped):
    return shipped
  names = sorted(f[:-3] for f in os.listdir(SWEEPS_DIR) if f.endswith(".py") and f[0] != "_")
  raise ConfigError(f"--sweep={spec}: no such file, and no sweep of that name; the sweeps "
                    f"shipped with pretrax: {', '.join(names)}")


def _load_sweep_file(path: str):
  module_spec = importlib.util.spec_from_file_location(f"pretrax_sweep_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  for name in ("get_config", "get_runs"):
    if not callable(getattr(module, name, None)):
      raise ConfigError(f"--sweep={path} defines no {name}(); a sweep file defines "
                        "get_config(variant=None) -> Config and get_runs() -> list of dicts")
  runs = module.get_runs()
  if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
    raise ConfigError(f"--sweep={path}: get_runs() must return a non-empty list of dicts of "
                      "overrides, e.g. product({'model.norm': ['layernorm', 'rmsnorm']})")
  runs = [{key: to_text(value) for key, value in run.items()} for run in runs]
  return runs, getattr(module, "SEEDS", None), (module.__doc__ or "").strip()


def short_keys(keys: list[str]) -> dict[str, str]:
  """Each key's last component, unless two keys share it (then the whole dotted key)."""
  last = [key.rsplit(".", 1)[-1] for key in keys]
  return {key: (short if last.count(short) == 1 else key) for key, short in zip(keys, last)}


def run_names(runs: list[dict[str, str]]) -> list[str]:
  """Directory names from each run's own overrides: `norm_position=pre,position=rope,seed=1`.

  Every key counts, even one with a single value, so a run keeps its name when the grid grows.
  """
  short = short_keys(list(dict.fromkeys(key for run in runs for key in run)))
  names = []
  for run in runs:
    name = ",".join(f"{short[k]}={_NAME_CHARS.sub('_', value)}" for k, value in run.items())
    names.append(name or "base")
  # A name too long, or sanitized into another's, ends with a digest of its overrides.
  return [f"{name[:MAX_NAME - 9]}-{_digest(run)}"
          if len(name) > MAX_NAME or names.count(name) > 1 else name
          for name, run in zip(names, runs)]


def _digest(overrides: dict[str, str]) -> str:
  return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def make_sweep(config: str | None, grid: list[str], common: list[str], seeds: int | None,
               sweep_file: str | None, extra_common: dict[str, str] | None = None) -> Sweep:
  """The runs of a sweep, each resolved and checked; raises ConfigError naming the run and field
  before any run starts."""
  from pretrax.training import tasks as tasks_lib  # the task's own checks, before anything runs
  runs, file_seeds, question = [{}], None, ""
  if sweep_file:
    if config:
      raise ConfigError("give --sweep=FILE or --config=PRESET, not both: a sweep file's "
                        "get_config() is the base config")
    config = sweep_file_path(sweep_file)
    runs, file_seeds, question = _load_sweep_file(config)
  elif not config:
    raise ConfigError("pretrax sweep needs --config=PRESET (e.g. --config=gpt:tiny) or "
                      "--sweep=FILE")
  axes = parse_grid(grid)
  clash = sorted({key for run in runs for key in run} & set(axes))
  if clash:
    raise ConfigError(f"--grid={clash[0]}=...: the sweep file sweeps {clash[0]} already")
  runs = [run | combo for run in runs for combo in product(axes)] if axes else runs
  common_overrides = (extra_common or {}) | parse_set(common)
  both = sorted(set(common_overrides) & {key for run in runs for key in run})
  if both:
    raise ConfigError(f"{both[0]} is both swept and set for every run (--set or "
                      "--config.KEY); keep one")
  base_config = config_lib.load_preset(config)  # once; each run applies its overrides to a copy
  seeds = file_seeds if seeds is None else seeds
  if seeds is not None:
    if not isinstance(seeds, int) or seeds < 1:
      raise ConfigError(f"--seeds={seeds}: expected a positive number of seeds")
    if any(SEED_KEY in run for run in runs):
      raise ConfigError(f"{SEED_KEY} is swept already; drop --seeds (or SEEDS)")
    base = _resolve(base_config, common_overrides, {}, "the base config")
    # Seeds outermost: one run of every configuration comes before any configuration's second.
    runs = [run | {SEED_KEY: str(base.train.seed + i)} for i in range(seeds) for run in runs]
  names = run_names(runs)
  if len(runs) != len(set(json.dumps(r, sort_keys=True) for r in runs)):
    raise ConfigError("two runs of the sweep have the same overrides; each run must differ")
  resolved = []
  for name, run in zip(names, runs):
    run_config = _resolve(base_config, common_overrides, run, f"run {name}")
    try:
      tasks_lib.task_class(run_config).check_config(run_config)
    except ConfigError as e:
      raise ConfigError(f"run {name}: {e}") from None
    resolved.append(SweepRun(name, run, run_config))
  return Sweep(config, common_overrides, resolved, question)


def _resolve(base: Config, common: dict[str, str], run: dict[str, str], what: str) -> Config:
  """`base` with `common` and `run` applied, as a copy (apply_overrides copies)."""
  try:
    return config_lib.apply_overrides(base, common | run)
  except ConfigError as e:
    raise ConfigError(f"{what}: {e}") from None
