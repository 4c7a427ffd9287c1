"""The pretrained run fine-tuning starts from (`pretrax finetune --init=RUN`): its config,
tokenizer and latest checkpoint, the model section a fine-tuning run takes from it, and its
parameters restored into the fine-tuning run's shardings."""

import dataclasses
import os

import jax
import orbax.checkpoint as ocp

from pretrax.data import tokenizers
from pretrax.data.errors import InputError
from pretrax.modeling.config import ModelConfig
from pretrax.training import checkpointing, config as config_lib, run_dir
from pretrax.training.config import Config, ConfigError


@dataclasses.dataclass
class Init:
  workdir: str
  config: Config
  tokenizer: tokenizers.Tokenizer
  step: int  # its latest checkpoint


def load_init(init_workdir: str) -> Init:
  """Reads --init's config, tokenizer and latest step; a clear error if it cannot be used."""
  if not init_workdir:
    raise ConfigError("pretrax finetune needs the pretrained run: --init=PRETRAINED_WORKDIR")
  config = run_dir.read_config(init_workdir, "--init")
  if config.finetune.task:
    raise ConfigError(f"--init={init_workdir} is a fine-tuned run (finetune.task="
                      f"{config.finetune.task!r}); --init needs a pretraining run, e.g. its own "
                      f"--init {config.finetune.init or '(unknown)'}")
  checkpointer = checkpointing.Checkpointer(init_workdir, config.checkpoint, read_only=True)
  steps = checkpointer.all_steps()
  checkpointer.close()
  if not steps:
    raise FileNotFoundError(f"--init={init_workdir} has no checkpoint under "
                            f"{os.path.join(init_workdir, 'checkpoints')} (did its training "
                            "save one?)")
  tokenizer = tokenizers.load_from_directory(init_workdir)
  return Init(os.path.abspath(init_workdir), config, tokenizer, max(steps))


def model_from_init(requested: ModelConfig, init: Init) -> ModelConfig:
  """The init run's model section; a field set here to something else than both the default
  and the init's value (e.g. --config.model.family=bert over a GPT run) is an error."""
  default = ModelConfig()
  for field in dataclasses.fields(ModelConfig):
    mine, theirs = getattr(requested, field.name), getattr(init.config.model, field.name)
    if mine != getattr(default, field.name) and mine != theirs:
      raise ConfigError(f"config.model.{field.name}={mine!r}, but --init={init.workdir} holds a "
                        f"model with {field.name}={theirs!r}; fine-tuning takes the model "
                        f"section from --init: drop --config.model.{field.name}")
  return dataclasses.replace(init.config.model)


def open_finetuning(config: Config, workdir: str, families: tuple[str, ...],
                    objective: str | None = None) -> tuple[Config, Init, tokenizers.Tokenizer]:
  """A fine-tuning run's config, --init and tokenizer: the model section, tokenizer (and
  data.extra_ids) from --init, data.objective `objective` (None: --init's), validated; a workdir
  that holds another run is refused; the tokenizer is the workdir's, or --init's copied there."""
  task = config.finetune.task
  config = config_lib.from_dict(config_lib.to_dict(config))
  init = load_init(config.finetune.init)
  if init.config.model.family not in families:
    raise ConfigError(f"--init={init.workdir} holds a config.model.family="
                      f"{init.config.model.family!r} model; finetune.task={task} fine-tunes "
                      f"{' or '.join(families)} models")
  config.model = model_from_init(config.model, init)
  config.data.objective = objective or init.config.data.objective  # validated with the family
  config.data.tokenizer = init.config.data.tokenizer
  config.data.extra_ids = init.config.data.extra_ids
  config.finetune.init = init.workdir
  config_lib.validate(config)
  saved = run_dir.saved_config(workdir) if run_dir.checkpoint_steps(workdir) else None
  if saved is not None and (saved.finetune.task != task or saved.model != config.model):
    raise ConfigError(f"{workdir} holds a different run (finetune.task={saved.finetune.task!r}, "
                      f"model family {saved.model.family!r}) than finetune.task={task} over "
                      f"--init={init.workdir}; refusing to resume it. Use a new --workdir.")
  if run_dir.has_tokenizer(workdir):
    tokenizer = tokenizers.load_from_directory(workdir)
  else:
    tokenizer = init.tokenizer
    if jax.process_index() == 0:
      tokenizer.save(workdir)
  return config, init, tokenizer


def restore_params(init: Init, abstract_params):
  """The parameters of --init's latest checkpoint, in the shardings of `abstract_params`
  (ShapeDtypeStructs); a clear error when the checkpoint does not fit them."""
  step_dir = os.path.join(init.workdir, "checkpoints", str(init.step))
  try:
    saved = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata
    saved = _flat_shapes(saved["params"])
  except Exception as e:  # an unreadable checkpoint: say which
    raise InputError(f"--init={init.workdir}: cannot read the checkpoint {step_dir}: "
                     f"{e}") from None
  wanted = _flat_shapes(abstract_params)
  if saved != wanted:
    diffs = [f"{k}: checkpoint {saved.get(k)}, model {wanted.get(k)}"
             for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    raise InputError(f"--init={init.workdir}: the checkpoint {step_dir} does not fit the model "
                     f"its config.json describes ({len(diffs)} parameters differ: "
                     f"{'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''})")
  checkpointer = checkpointing.Checkpointer(init.workdir, init.config.checkpoint, read_only=True)
  params = checkpointer.restore_params(init.step, abstract_params)
  checkpointer.close()
  return params


def _flat_shapes(tree) -> dict[str, tuple]:
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
