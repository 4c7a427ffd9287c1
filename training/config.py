"""The run configuration: typed dataclasses, presets loaded from files, command-line overrides.

A run is described by a preset, `--config=gpt:tiny` (configs/gpt.py shipped with pretrax) or
`--config=path/to/file.py:variant` (a Python file whose `get_config(variant)` returns a `Config`),
plus any number of `--config.SECTION.FIELD=VALUE` overrides. Overrides are
checked against the schema before anything else happens: a misspelled key or a value of the wrong
type is a `ConfigError` that names the key.
"""

import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import os
import re
import typing

from pretrax import configs as configs_package
from pretrax.data import files
from pretrax.data.config import DataConfig
from pretrax.data.errors import InputError
from pretrax.modeling.config import ModelConfig

# Logical axis name -> mesh axes. The one table that decides where every parameter and
# activation lives; `None` replicates.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("position", None),
)


class ConfigError(InputError):
  """A config key, value or combination that cannot run; the message says what to change."""


@dataclasses.dataclass
class OptimizerConfig:
  learning_rate: float = 3e-4   # peak, reached at the end of warmup
  warmup_steps: int = 100       # linear warmup from 0
  decay: str = "cosine"         # cosine | linear | constant, from the peak down to min_lr_ratio * peak
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1     # decoupled (AdamW), on kernels and the token embedding only
  grad_clip: float = 1.0        # global-norm clipping; 0 disables


@dataclasses.dataclass
class TrainConfig:
  steps: int = 1_000            # optimizer steps
  batch_size: int = 32          # global sequences per optimizer step, across all processes
  grad_accum_steps: int = 1     # micro-batches per step; batch_size must divide evenly
  seed: int = 0                 # parameter init, dropout and data shuffling
  log_every: int = 10           # steps between metrics.jsonl lines (metrics leave the device only then)
  eval_every: int = 200         # steps between validation evals; 0 disables
  eval_steps: int = 20          # validation batches per eval (same batches each time)
  peak_flops: float = 0.0       # peak FLOP/s of one device for MFU; 0: from a table, or measured on CPU
  loss_chunk_size: int = 0      # causal LM: compute the loss over chunks of this many positions, never
                                # holding [B, T, V] float32 logits at once; 0: all positions at once
  compile_cache_dir: str = ""   # JAX persistent compilation cache ("": $PRETRAX_COMPILE_CACHE,
                                # else ~/.cache/pretrax/xla; "off": none)
  label_smoothing: float = 0.0  # share of the target probability spread over the vocabulary (the Transformer: 0.1); eval losses stay unsmoothed
  eval_generate: int = 0        # seq2seq pairs: at each eval also generate for the first N eval pairs
                                # and report exact match, BLEU, chrF, ROUGE-1/2/L; 0: off
  eval_num_beams: int = 1       # those generations: 1 greedy, more: beam search
  nonfinite: str = "skip"       # a non-finite loss or gradient: skip (drop the update) | stop
  max_nonfinite_skips: int = 5  # with skip: abort after this many consecutive skipped steps
  tensorboard: bool = True      # metrics and hyper-parameters as event files in WORKDIR/tensorboard/
  wandb_project: str = ""       # also log to this Weights & Biases project ("": off; the wandb extra)


@dataclasses.dataclass
class MeshConfig:
  data: int = -1                # -1: all devices left after the other axes
  fsdp: int = 1
  tensor: int = 1
  axis_rules: tuple = DEFAULT_AXIS_RULES  # (logical name, mesh axis | tuple of axes | None) pairs


@dataclasses.dataclass
class CheckpointConfig:
  every: int = 500              # steps between saves (a final save always happens)
  keep: int = 3                 # most recent checkpoints kept
  async_save: bool = True       # write in the background while training continues


@dataclasses.dataclass
class FinetuneConfig:
  task: str = ""                # "": pretraining | classify: a label per example from [CLS] / last token
  # classify: how examples become sequences (GPT-1 §3.3): "classify" (text, optional text_b),
  # "entailment" (premise, hypothesis), "similarity" (text, text_b; GPT reads both orderings),
  # "multiple_choice" (context, choices, label = the correct choice's index)
  format: str = "classify"
  init: str = ""                # the pretrained run directory (set by `pretrax finetune --init=DIR`)
  num_labels: int = 0           # 0: the number of distinct labels in the training data
                                # (multiple_choice: the number of choices of every example)
  lm_weight: float = 0.5        # GPT only: weight λ of the auxiliary language-modelling loss
  classifier_dropout: float = 0.1  # on the pooled / last-token vector before the linear classifier


@dataclasses.dataclass
class Config:
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


# --------------------------------------------------------------------------------------------
# Loading presets and applying overrides.


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig,
            "train": TrainConfig, "mesh": MeshConfig, "checkpoint": CheckpointConfig,
            "finetune": FinetuneConfig}


def _field_comments(cls) -> dict[str, str]:
  """Each field's comment in a dataclass's source: a `# ...` block above it and the `# ...` after
  it (with its continuation lines, indented past the field)."""
  import inspect
  comments, last, above = {}, None, []
  for line in inspect.getsource(cls).splitlines():
    indent = len(line) - len(line.lstrip())
    field = re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s?(.*))?$", line)
    if field:
      last, after = field.group(1), (field.group(2) or "").strip()
      comments[last] = " ".join(above + ([after] if after else []))
      above = []
    elif line.lstrip().startswith("#") and last and indent > 4:
      comments[last] += " " + line.strip().lstrip("#").strip()
    elif line.lstrip().startswith("#"):
      above.append(line.strip().lstrip("#").strip())
      last = None
    else:
      last, above = None, []
  return comments


def describe_schema() -> str:
  """Every config field with its default and comment (`pretrax train --help_config`)."""
  lines = []
  for section, cls in SECTIONS.items():
    defaults, comments = cls(), _field_comments(cls)
    lines.append(f"{section}:")
    for field in dataclasses.fields(cls):
      value = getattr(defaults, field.name)
      if field.name == "axis_rules":
        value = json.dumps(value)
      lines.append(f"  {section}.{field.name} = {value!r}" +
                   (f"   # {comments[field.name]}" if comments.get(field.name) else ""))
  return "\n".join(lines)


def available_presets() -> list[str]:
  """The preset files shipped with pretrax, by name (`gpt`, `bert`, `finetune`)."""
  folder = os.path.dirname(os.path.abspath(configs_package.__file__))
  return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def preset_catalog() -> list[tuple[str, str]]:
  """("gpt:tiny", "what it is for") for every variant of every preset shipped with pretrax."""
  import importlib
  catalog = []
  for name in available_presets():
    variants = getattr(importlib.import_module(f"pretrax.configs.{name}"), "VARIANTS", {})
    catalog += [(f"{name}:{v}", (variants.get(v, "") if isinstance(variants, dict) else ""))
                for v in variants]
  return catalog


def describe_presets() -> str:
  """The preset catalog as lines for --help and errors."""
  return "\n".join(f"  {spec:<20} {what}" for spec, what in preset_catalog())


def load_preset(spec: str) -> Config:
  """Loads `NAME[:variant]` (a preset shipped with pretrax: configs/NAME.py, from any directory)
  or `path/to/file.py[:variant]`, by calling the file's `get_config(variant)`."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path) and os.sep not in path and not path.endswith(".py"):
    if path not in available_presets():
      raise ConfigError(f"--config: no preset {path!r}; give a file (--config=path/to/file.py:"
                        f"variant) or one of the presets:\n{describe_presets()}")
    path = os.path.join(os.path.dirname(os.path.abspath(configs_package.__file__)), f"{path}.py")
  if not os.path.isfile(path):
    raise ConfigError(f"--config: no such file {path!r} (expected a preset name such as gpt:tiny, "
                      "or a file such as configs/gpt.py:tiny)")
  module_spec = importlib.util.spec_from_file_location(f"pretrax_preset_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config: {path} defines no get_config(variant)")
  try:
    config = module.get_config(variant or None)
  except KeyError as e:
    raise ConfigError(f"--config: {path} has no variant {variant!r}: {e}. The presets:\n"
                      f"{describe_presets()}") from None
  if not isinstance(config, Config):
    raise ConfigError(f"--config: {path}:get_config returned {type(config).__name__}, not Config")
  return config


def _field_types(obj) -> dict[str, typing.Any]:
  hints = typing.get_type_hints(type(obj))
  return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _parse_value(key: str, raw: str, kind, current):
  """Parses the command-line string `raw` as the type of the field `key`."""
  if kind is bool:
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ConfigError(f"--config.{key}={raw!r}: expected a boolean (true/false)")
  if kind is int:
    try:
      return int(raw.replace("_", ""))
    except ValueError:
      raise ConfigError(f"--config.{key}={raw!r}: expected an integer") from None
  if kind is float:
    try:
      return float(raw)
    except ValueError:
      raise ConfigError(f"--config.{key}={raw!r}: expected a number") from None
  if kind is str:
    return raw
  if kind is tuple or typing.get_origin(kind) is tuple:
    try:
      value = json.loads(raw)
    except json.JSONDecodeError as e:
      raise ConfigError(f"--config.{key}: expected a JSON list, got {raw!r} ({e})") from None
    if not isinstance(value, list):
      raise ConfigError(f"--config.{key}: expected a JSON list, got {raw!r}")
    return _to_tuple(value)
  raise ConfigError(f"--config.{key}: fields of type {kind} cannot be set from the command line")


def _to_tuple(value):
  if isinstance(value, list):
    return tuple(_to_tuple(v) for v in value)
  return value


def _unknown_key(key: str, name: str, candidates) -> ConfigError:
  close = difflib.get_close_matches(name, list(candidates), n=1)
  hint = f"; did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?" if close else ""
  valid = ", ".join(sorted(candidates))
  return ConfigError(f"unknown config key {key!r}{hint} (valid here: {valid})")


def set_value(config: Config, key: str, raw: str) -> None:
  """Sets the dotted `key` (e.g. "model.num_layers") from its command-line string `raw`."""
  parts = key.split(".")
  node = config
  for depth, name in enumerate(parts):
    types_here = _field_types(node)
    if name not in types_here:
      raise _unknown_key(".".join(parts[:depth + 1]), name, types_here)
    if depth == len(parts) - 1:
      if dataclasses.is_dataclass(getattr(node, name)):
        raise ConfigError(f"--config.{key} is a section; set one of its fields, e.g. "
                          f"--config.{key}.{next(iter(_field_types(getattr(node, name))))}=...")
      setattr(node, name, _parse_value(key, raw, types_here[name], getattr(node, name)))
      return
    node = getattr(node, name)
    if not dataclasses.is_dataclass(node):
      raise ConfigError(f"--config.{key}: {'.'.join(parts[:depth + 1])} is a value, not a section")


def apply_overrides(config: Config, overrides: dict[str, str]) -> Config:
  """Returns a copy of `config` with `{"model.num_layers": "2", ...}` applied."""
  config = from_dict(to_dict(config))
  for key, raw in overrides.items():
    set_value(config, key, raw)
  return config


def split_overrides(argv: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
  """Separates `--config=...` and `--config.KEY=VALUE` from the other arguments."""
  preset, overrides, rest = None, {}, []
  args = iter(argv)
  for arg in args:
    if arg.startswith("--config=") or arg == "--config":
      preset = arg.partition("=")[2] if "=" in arg else next(args, "")
    elif arg.startswith("--config."):
      key, eq, raw = arg[len("--config."):].partition("=")
      if not eq:
        raw = next(args, None)
        if raw is None:
          raise ConfigError(f"--config.{key} needs a value: --config.{key}=VALUE")
      overrides[key] = raw
    else:
      rest.append(arg)
  return preset, overrides, rest


# --------------------------------------------------------------------------------------------
# Serialization: the resolved config is written to WORKDIR/config.json and read back by eval.


def to_dict(config) -> dict:
  return dataclasses.asdict(config)


def to_flat_dict(config: Config) -> dict:
  """{"section.field": value} of every field (run_dir's resume check, trackers, compare)."""
  return {f"{section}.{key}": value for section, fields in to_dict(config).items()
          for key, value in fields.items()}


def _build(cls, values: dict, prefix: str):
  types_here = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(values) - names
  if unknown:
    key = f"{prefix}{sorted(unknown)[0]}"
    raise _unknown_key(key, sorted(unknown)[0], names)
  kwargs = {}
  for name, value in values.items():
    kind = types_here[name]
    if dataclasses.is_dataclass(kind):
      kwargs[name] = _build(kind, value, f"{prefix}{name}.")
    elif kind is tuple or typing.get_origin(kind) is tuple:
      kwargs[name] = _to_tuple(list(value))
    else:
      kwargs[name] = value
  return cls(**kwargs)


def from_dict(values: dict) -> Config:
  return _build(Config, values, "")


def save_json(config: Config, path: str) -> None:
  files.atomic_write_json(path, to_dict(config))


# Fields that a config.json of an earlier version may hold and that no longer exist: dropped
# when such a file is read, so its run still loads (eval, export; a resume sees a data change).
REMOVED_FIELDS = {
    ("data", "num_workers"): "BERT's sentence pairs are built ahead, without Grain workers",
}


def load_json(path: str) -> Config:
  with open(path) as f:
    values = json.load(f)
  for (section, name), why in REMOVED_FIELDS.items():
    if isinstance(values.get(section), dict) and name in values[section]:
      del values[section][name]
      logging.getLogger("pretrax").info("%s: ignoring %s.%s, a field that no longer exists (%s)",
                                        path, section, name, why)
  return from_dict(values)


# --------------------------------------------------------------------------------------------
# Cross-field validation, before any compute.


def _check_finite(section, prefix: str) -> None:
  """Refuses nan and inf in every float field: they pass `x <= 0`-style range checks."""
  for field in dataclasses.fields(section):
    value, name = getattr(section, field.name), f"{prefix}.{field.name}"
    if dataclasses.is_dataclass(value):
      _check_finite(value, name)
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{name}={value} is not a finite number; set it to a finite value")


def _check_at_least(section, prefix: str, names, low: float = 0) -> None:
  for name in names:
    if getattr(section, name) < low:
      raise ConfigError(f"{prefix}.{name} must be >= {low}, got {getattr(section, name)}")


FINETUNE_FORMATS = ("classify", "entailment", "similarity", "multiple_choice")


def validate_finetune(ft: FinetuneConfig) -> None:
  """The fine-tuning fields on their own (checked before the model is taken from --init)."""
  _check_finite(ft, "config.finetune")
  if ft.format not in FINETUNE_FORMATS:
    raise ConfigError(f"config.finetune.format={ft.format!r} is not a format; choose one of "
                      f"{', '.join(FINETUNE_FORMATS)}")
  if ft.format != "classify" and ft.task != "classify":
    raise ConfigError(f"config.finetune.format={ft.format!r} applies to finetune.task=classify, "
                      f"not {ft.task!r}; drop --config.finetune.format")
  _check_at_least(ft, "config.finetune", ("num_labels", "lm_weight"))
  if not 0.0 <= ft.classifier_dropout < 1.0:
    raise ConfigError(f"config.finetune.classifier_dropout must be in [0, 1), got "
                      f"{ft.classifier_dropout}")


def validate(config: Config) -> None:
  """Raises ConfigError naming the field for every combination that cannot run."""
  _check_finite(config, "config")
  try:
    config.model.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  t, d, o = config.train, config.data, config.optimizer
  for name in ("steps", "batch_size", "grad_accum_steps", "log_every", "eval_steps"):
    if getattr(t, name) <= 0:
      raise ConfigError(f"config.train.{name} must be positive, got {getattr(t, name)}")
  _check_at_least(t, "config.train", ("eval_every", "peak_flops", "eval_generate"))  # 0: off
  if t.eval_num_beams < 1:
    raise ConfigError(f"config.train.eval_num_beams must be at least 1, got {t.eval_num_beams}")
  if t.eval_generate and "seq2seq" not in (config.finetune.task, d.objective):
    raise ConfigError(f"config.train.eval_generate={t.eval_generate} generates for the eval pairs "
                      "of a seq2seq run (data.objective=seq2seq or finetune.task=seq2seq); set "
                      "it to 0")
  if d.tokenizer_vocab_size <= 0:
    raise ConfigError(f"config.data.tokenizer_vocab_size must be positive, got "
                      f"{d.tokenizer_vocab_size}")
  if t.batch_size % t.grad_accum_steps:
    raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by "
                      f"config.train.grad_accum_steps={t.grad_accum_steps}")
  if t.loss_chunk_size < 0 or (t.loss_chunk_size and d.seq_len % t.loss_chunk_size):
    raise ConfigError(f"config.train.loss_chunk_size={t.loss_chunk_size} must be 0 or divide "
                      f"config.data.seq_len={d.seq_len}")
  if not 0.0 <= t.label_smoothing < 1.0:
    raise ConfigError(f"config.train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
  if t.nonfinite not in ("skip", "stop") or t.max_nonfinite_skips <= 0:
    raise ConfigError(f"config.train.nonfinite={t.nonfinite!r} must be skip or stop, and "
                      f"config.train.max_nonfinite_skips={t.max_nonfinite_skips} positive")
  if d.seq_len <= 0:
    raise ConfigError(f"config.data.seq_len must be positive, got {d.seq_len}")
  if config.model.position == "learned" and d.seq_len > config.model.max_seq_len:
    raise ConfigError(f"config.data.seq_len={d.seq_len} is longer than the position table "
                      f"config.model.max_seq_len={config.model.max_seq_len}; lower seq_len or "
                      "raise max_seq_len")
  if not (d.source == "default" or d.source.startswith(("text:", "tfds:"))):
    raise ConfigError(f"config.data.source={d.source!r}: expected default, text:PATH or "
                      "tfds:NAME[:FEATURE]")
  rates = (d.mask_rate, d.mask_token_rate, d.random_token_rate)
  if not (0 < d.mask_rate < 1 and min(rates) >= 0 and d.mask_token_rate + d.random_token_rate <= 1):
    raise ConfigError("config.data: mask_rate must be in (0, 1); mask_token_rate and "
                      "random_token_rate must be >= 0 and sum to at most 1")
  if d.max_predictions_per_seq <= 0:
    raise ConfigError(f"config.data.max_predictions_per_seq must be positive, got "
                      f"{d.max_predictions_per_seq}")
  if d.tokenizer_model_type not in ("unigram", "bpe"):
    raise ConfigError(f"config.data.tokenizer_model_type={d.tokenizer_model_type!r}: expected "
                      "unigram or bpe")
  if not d.txt_documents:
    raise ConfigError("config.data.txt_documents is empty: expected stream, paragraphs or a "
                      "separator string such as <|endoftext|>")
  if not 0.0 < d.validation_fraction < 1.0:
    raise ConfigError(f"config.data.validation_fraction must be in (0, 1), got "
                      f"{d.validation_fraction}")
  if o.decay not in ("cosine", "linear", "constant"):
    raise ConfigError(f"config.optimizer.decay={o.decay!r}: expected cosine, linear or constant")
  if o.learning_rate <= 0 or o.warmup_steps < 0 or not 0.0 <= o.min_lr_ratio <= 1.0:
    raise ConfigError("config.optimizer: learning_rate must be > 0, warmup_steps >= 0 and "
                      "min_lr_ratio in [0, 1]")
  for name in ("b1", "b2"):  # Adam's moment decays; at 1 its bias correction 1 - b**t is 0
    if not 0.0 <= getattr(o, name) < 1.0:
      raise ConfigError(f"config.optimizer.{name} must be in [0, 1), got {getattr(o, name)}")
  if o.eps <= 0:  # guards Adam's division by sqrt(v), which is 0 for a never-used parameter
    raise ConfigError(f"config.optimizer.eps must be > 0, got {o.eps}")
  _check_at_least(o, "config.optimizer", ("weight_decay", "grad_clip"))
  for name in ("data", "fsdp", "tensor"):
    value = getattr(config.mesh, name)
    if value == 0 or value < -1:
      raise ConfigError(f"config.mesh.{name}={value}: expected a positive size or -1")
  if sum(getattr(config.mesh, n) == -1 for n in ("data", "fsdp", "tensor")) > 1:
    raise ConfigError("config.mesh: at most one of data, fsdp, tensor may be -1")
  if config.checkpoint.every <= 0 or config.checkpoint.keep <= 0:
    raise ConfigError("config.checkpoint.every and config.checkpoint.keep must be positive")
  validate_finetune(config.finetune)
