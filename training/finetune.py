"""`pretrax finetune`: a classifier trained over a pretrained run; `eval_classifier` scores it.

  pretrax finetune --config=configs/finetune.py:classify --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=train.jsonl --config.data.eval=dev.jsonl

The objective (modeling/classifier.py reads the vector; data/classification.py frames the text):
  bert  cross-entropy of a linear classifier on the pooled [CLS] vector (BERT).
  gpt   cross-entropy of a linear classifier on the last token's hidden state, plus
        λ = config.finetune.lm_weight times the next-token loss on the same sequences (GPT-1).
Every parameter is trained (backbone and head) with config.optimizer's own learning rate and
schedule over config.train.steps.

The fine-tuned workdir is self-contained; `pretrax eval` reads it with `eval_classifier`:
  config.json     the model section of --init, finetune.task="classify", num_labels resolved
  tokenizer.*     copied from --init
  labels.json     {"labels": [class of id 0, class of id 1, ...]}
  checkpoints/N/  {"step", "params": {"backbone", "head"}, "opt_state"}
  metrics.jsonl   loss / accuracy / lr / grad_norm at log steps; eval_accuracy, eval_macro_f1,
                  eval_loss at eval steps (always at the last step)
Batches are a pure function of (seed, step) (`classification.batch_indices`): a resumed run
needs no data-iterator state and reads exactly the batches the uninterrupted run would have.
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pretrax.data import classification, tokenizers
from pretrax.modeling import sharding
from pretrax.modeling.classifier import Classifier
from pretrax.modeling.config import ModelConfig
from pretrax.training import checkpointing, config as config_lib, mesh as mesh_lib
from pretrax.training import metrics as metrics_lib, optimizer as optimizer_lib, step as step_lib
from pretrax.training.config import Config, ConfigError

LABELS_FILENAME = "labels.json"
TASKS = ("classify",)


# --------------------------------------------------------------------------------------------
# The pretrained run and the fine-tuning run directory.


@dataclasses.dataclass
class Init:
  """The pretraining run fine-tuning starts from."""
  workdir: str
  config: Config
  tokenizer: tokenizers.Tokenizer
  step: int  # its latest checkpoint


def load_init(init_workdir: str) -> Init:
  """Reads --init's config, tokenizer and latest step; a clear error if it cannot be used."""
  if not init_workdir:
    raise ConfigError("pretrax finetune needs the pretrained run: --init=PRETRAINED_WORKDIR")
  config_path = os.path.join(init_workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"--init={init_workdir} is not a pretrax run directory: no "
                            "config.json (pretrain one with `pretrax train --workdir=...`)")
  try:
    config = config_lib.load_json(config_path)
  except (ValueError, TypeError) as e:
    raise ValueError(f"--init={init_workdir}: cannot read {config_path}: {e}") from None
  if config.finetune.task:
    raise ValueError(f"--init={init_workdir} is a fine-tuned run (finetune.task="
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


def _model_from_init(requested: ModelConfig, init: Init) -> ModelConfig:
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


def _check_finetune_config(config: Config) -> None:
  ft = config.finetune
  if ft.task not in TASKS:
    raise ConfigError(f"config.finetune.task={ft.task!r}: pretrax finetune supports "
                      f"{', '.join(TASKS)} (use --config=configs/finetune.py:classify)")
  if ft.num_labels < 0 or ft.lm_weight < 0:
    raise ConfigError("config.finetune.num_labels and config.finetune.lm_weight must be >= 0")
  if not 0.0 <= ft.classifier_dropout < 1.0:
    raise ConfigError(f"config.finetune.classifier_dropout must be in [0, 1), got "
                      f"{ft.classifier_dropout}")
  if not config.data.train:
    raise ConfigError("config.data.train is empty: give the training examples with "
                      "--config.data.train=FILE.jsonl or tfds:NAME[:SPLIT]")


def _load_labels(path: str) -> list:
  with open(path) as f:
    labels = json.load(f).get("labels")
  if not isinstance(labels, list) or not labels:
    raise ValueError(f"{path}: expected {{\"labels\": [...]}} with at least one label")
  return labels


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
    f.write("\n")
  os.replace(path + ".tmp", path)


@dataclasses.dataclass
class Prepared:
  config: Config
  init: Init
  tokenizer: tokenizers.Tokenizer
  labels: list
  train: dict  # input_ids, segment_ids, token_type_ids [N, T]; label [N]
  eval: dict | None


def _encode(config: Config, tokenizer, examples, labels, known_from: str) -> dict:
  ids = classification.label_ids(examples, labels, known_from)
  arrays, truncated = classification.encode_examples(
      tokenizer, examples, family=config.model.family, seq_len=config.data.seq_len)
  if truncated and jax.process_index() == 0:
    print(f"{truncated} of {len(examples)} examples truncated to config.data.seq_len="
          f"{config.data.seq_len} tokens", flush=True)
  return arrays | {"label": ids}


def prepare(config: Config, init_workdir: str, workdir: str) -> Prepared:
  """Resolves the config from --init and the data, reads the examples, writes the workdir files."""
  config = config_lib.from_dict(config_lib.to_dict(config))
  _check_finetune_config(config)
  init = load_init(init_workdir or config.finetune.init)
  config.model = _model_from_init(config.model, init)
  config.data.objective = init.config.data.objective  # (what validate checks against the family)
  config.data.tokenizer = init.config.data.tokenizer
  config.finetune.init = init.workdir
  config_lib.validate(config)

  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, "config.json")
  saved = config_lib.load_json(config_path) if os.path.exists(config_path) else None
  if saved is not None and (saved.finetune.task != "classify" or saved.model != config.model):
    raise ConfigError(f"{workdir} holds a different run (finetune.task={saved.finetune.task!r}, "
                      f"model family {saved.model.family!r}) than a classifier over --init="
                      f"{init.workdir}; refusing to resume it. Use a new --workdir.")
  if any(os.path.exists(os.path.join(workdir, f))
         for f in (tokenizers.MODEL_FILENAME, tokenizers.JSON_FILENAME)):
    tokenizer = tokenizers.load_from_directory(workdir)
  else:
    tokenizer = init.tokenizer
    if jax.process_index() == 0:
      tokenizer.save(workdir)

  data_dir = config.data.data_dir or None
  train = classification.read_examples(config.data.train, default_split="train",
                                       data_dir=data_dir, field="config.data.train")
  labels_path = os.path.join(workdir, LABELS_FILENAME)
  if os.path.exists(labels_path):
    labels = _load_labels(labels_path)
    known_from = f"{labels_path} (the labels this run started with)"
  else:
    labels = classification.label_vocabulary(train)
    known_from = f"the training data (config.data.train={config.data.train})"
  if len(labels) < 2:
    raise ValueError(f"config.data.train={config.data.train!r} has a single label "
                     f"{labels[0]!r}: a classifier needs at least 2 classes")
  num_labels = config.finetune.num_labels or len(labels)
  if num_labels < len(labels):
    raise ConfigError(f"config.finetune.num_labels={num_labels}, but the training data has "
                      f"{len(labels)} classes ({', '.join(map(repr, labels[:10]))}); set it to "
                      "0 (automatic) or at least that")
  if saved is not None and saved.finetune.num_labels != num_labels:
    raise ConfigError(f"config.finetune.num_labels={num_labels}, but {workdir} was started with "
                      f"{saved.finetune.num_labels}; use a new --workdir")
  config.finetune.num_labels = num_labels
  train_arrays = _encode(config, tokenizer, train, labels, known_from)
  eval_arrays = None
  if config.data.eval:
    examples = classification.read_examples(config.data.eval, default_split="validation",
                                            data_dir=data_dir, field="config.data.eval")
    eval_arrays = _encode(config, tokenizer, examples, labels, known_from)
  if jax.process_index() == 0:
    _write_json(labels_path, {"labels": labels})
    config_lib.save_json(config, config_path)
  return Prepared(config, init, tokenizer, labels, train_arrays, eval_arrays)


# --------------------------------------------------------------------------------------------
# The model, its loss and the pure steps.


def build_classifier(config: Config, seed: int = 0) -> Classifier:
  return Classifier(config.model, config.finetune.num_labels,
                    dropout=config.finetune.classifier_dropout, rngs=nnx.Rngs(params=seed))


def abstract_classifier(config: Config):
  """(graphdef, abstract nnx.State) of the classifier, without allocating parameters."""
  return nnx.split(nnx.eval_shape(lambda: build_classifier(config)))


def _example_weights(batch) -> jax.Array:
  """[B] 1 for real examples, 0 for the all-padding rows that fill the last eval batch."""
  return (batch["segment_ids"][:, 0] > 0).astype(jnp.float32)


def classifier_sums(model: Classifier, batch, rngs=None) -> dict[str, jax.Array]:
  """Forward pass -> cls_{loss,correct,weight}_sum (+ lm_* for GPT: next-token loss).

  The LM targets of position t are the row's token t + 1, weighted where that token is real.
  """
  logits_bn, lm_logits_btv = model(batch["input_ids"], batch["segment_ids"],
                                   batch["token_type_ids"], rngs=rngs)
  sums = {f"cls_{k}": v for k, v in step_lib.cross_entropy_sums(
      logits_bn, batch["label"], _example_weights(batch)).items()}
  if lm_logits_btv is not None:
    targets_bt = jnp.roll(batch["input_ids"], -1, axis=1)
    next_real_bt = jnp.pad(batch["segment_ids"][:, 1:] > 0, ((0, 0), (0, 1)))
    sums |= {f"lm_{k}": v for k, v in step_lib.cross_entropy_sums(
        lm_logits_btv, targets_bt, next_real_bt.astype(jnp.float32)).items()}
  sums["confusion_nn"] = _confusion(logits_bn, batch)
  return sums


def _confusion(logits_bn, batch) -> jax.Array:
  """[N, N] float32 counts: row = true class, column = predicted class, real examples only."""
  n = logits_bn.shape[-1]
  true_bn = jax.nn.one_hot(batch["label"], n) * _example_weights(batch)[:, None]
  pred_bn = jax.nn.one_hot(jnp.argmax(logits_bn, axis=-1), n)
  return jnp.einsum("bi,bj->ij", true_bn, pred_bn)


def _terms(family: str, lm_weight: float) -> dict[str, float]:
  """Loss terms and their weights: cls alone, or cls + λ lm (GPT with lm_weight > 0)."""
  return {"cls_": 1.0} | ({"lm_": lm_weight} if family == "gpt" and lm_weight > 0 else {})


def make_train_step(graphdef, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    *, family: str, lm_weight: float, grad_accum_steps: int, seed: int,
                    dropout: bool):
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  Each term is a weighted sum divided by its weight over the whole batch, so gradient
  accumulation over micro-batches gives the same update. Dropout keys derive from
  (seed, step, micro-batch), so a resumed run draws the same masks.
  """
  terms = _terms(family, lm_weight)

  def loss_fn(params, micro_batch, totals, dropout_key):
    rngs = nnx.Rngs(dropout=dropout_key) if dropout else None
    sums = classifier_sums(nnx.merge(graphdef, params), micro_batch, rngs)
    loss = sum(w * sums[f"{t}loss_sum"] / jnp.maximum(totals[t], 1.0) for t, w in terms.items())
    return loss, sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    step = state["step"]
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    totals = {"cls_": jnp.sum(_example_weights(batch))}
    if "lm_" in terms:
      totals["lm_"] = jnp.sum(batch["segment_ids"][:, 1:] > 0).astype(jnp.float32)
    grads, sums = step_lib.accumulate_gradients(grad_fn, state["params"], batch, totals,
                                                step_key, grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"grad_norm": optax.tree.norm(grads), "lr": schedule(step)}
    loss = 0.0
    for t, w in terms.items():
      metrics[f"{t}loss"] = sums[f"{t}loss_sum"] / jnp.maximum(sums[f"{t}weight_sum"], 1.0)
      loss = loss + w * metrics[f"{t}loss"]
    metrics["loss"] = loss
    metrics["accuracy"] = sums["cls_correct_sum"] / jnp.maximum(sums["cls_weight_sum"], 1.0)
    return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

  return train_step


def make_eval_step(graphdef):
  """Returns `eval_step(params, batch) -> sums` (incl. the confusion matrix), added over batches."""

  def eval_step(params, batch):
    return classifier_sums(nnx.merge(graphdef, params), batch)

  return eval_step


def classification_metrics(confusion_nn: np.ndarray) -> dict[str, float]:
  """[N, N] counts (row: true, column: predicted) -> accuracy and macro-F1.

  Macro-F1 is the unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class that has
  no example and is never predicted (2 TP + FP + FN = 0) is left out of the mean (as
  scikit-learn's f1_score(average="macro") does with its default labels).
  """
  confusion_nn = np.asarray(confusion_nn, np.float64)
  total = confusion_nn.sum()
  tp = np.diag(confusion_nn)
  denominator = confusion_nn.sum(0) + confusion_nn.sum(1)  # 2 TP + FP + FN
  present = denominator > 0
  f1 = 2 * tp[present] / denominator[present]
  return {"accuracy": float(tp.sum() / total) if total else 0.0,
          "macro_f1": float(f1.mean()) if present.any() else 0.0}


# --------------------------------------------------------------------------------------------
# Batches and evaluation.


def _batch_shardings(mesh, rules) -> dict[str, NamedSharding]:
  rows = mesh_lib.batch_sharding(mesh, rules)
  by_row = NamedSharding(mesh, PartitionSpec(rows.spec[0]))
  return {k: rows for k in classification.FEATURES} | {"label": by_row}


def _global_batch(arrays: dict, indices: np.ndarray, shardings: dict) -> dict:
  """This process's rows of the global batch `indices`, assembled into sharded global arrays."""
  per_process = len(indices) // jax.process_count()
  mine = indices[jax.process_index() * per_process:(jax.process_index() + 1) * per_process]
  return {k: jax.make_array_from_process_local_data(shardings[k], v[mine])
          for k, v in arrays.items()}


def _pad_rows(arrays: dict, multiple: int) -> dict:
  n = len(arrays["label"])
  pad = -n % multiple
  return {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
          for k, v in arrays.items()}


def evaluate(eval_step, params, arrays: dict, batch_size: int, shardings: dict) -> dict:
  """Accuracy, macro-F1 and mean losses over every example of `arrays` (one pass, in order)."""
  padded = _pad_rows(arrays, batch_size)
  totals = None
  for start in range(0, len(padded["label"]), batch_size):
    batch = _global_batch(padded, np.arange(start, start + batch_size), shardings)
    sums = jax.device_get(eval_step(params, batch))
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
  out = classification_metrics(totals["confusion_nn"])
  out["loss"] = float(totals["cls_loss_sum"] / max(totals["cls_weight_sum"], 1.0))
  if "lm_loss_sum" in totals:
    out["lm_loss"] = float(totals["lm_loss_sum"] / max(totals["lm_weight_sum"], 1.0))
  out["examples"] = int(totals["cls_weight_sum"])
  return out


# --------------------------------------------------------------------------------------------
# Loading the pretrained backbone.


def _flat_shapes(tree) -> dict[str, tuple]:
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_backbone(init: Init, abstract_backbone):
  """The pretrained parameters of --init's latest checkpoint, in the shardings asked for."""
  step_dir = os.path.join(init.workdir, "checkpoints", str(init.step))
  try:
    saved = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata
    saved = _flat_shapes(saved["params"])
  except Exception as e:  # an unreadable checkpoint: say which
    raise ValueError(f"--init={init.workdir}: cannot read the checkpoint {step_dir}: {e}") from None
  wanted = _flat_shapes(abstract_backbone)
  if saved != wanted:
    diffs = [f"{k}: checkpoint {saved.get(k)}, model {wanted.get(k)}"
             for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    raise ValueError(f"--init={init.workdir}: the checkpoint {step_dir} does not fit the model "
                     f"its config.json describes ({len(diffs)} parameters differ: "
                     f"{'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''})")
  checkpointer = checkpointing.Checkpointer(init.workdir, init.config.checkpoint, read_only=True)
  params = checkpointer.restore_params(init.step, abstract_backbone)
  checkpointer.close()
  return params


# --------------------------------------------------------------------------------------------
# Fine-tuning.


def run_finetune(config: Config, init_workdir: str, workdir: str, *,
                 stop_after: int | None = None, devices=None) -> dict:
  """Fine-tunes (or resumes) a classifier over `init_workdir` in `workdir`; returns the last
  logged metrics (with eval_accuracy / eval_macro_f1 when config.data.eval is set) and prints
  them as the last line of stdout.

  `stop_after` ends this invocation after that step (saving a checkpoint); the schedule still
  spans config.train.steps, so a later call resumes the same run. `devices`: the mesh's devices.
  """
  run = prepare(config, init_workdir, workdir)
  config, tc = run.config, run.config.train
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = config.mesh.axis_rules
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if tc.batch_size % rows or tc.batch_size % jax.process_count():
    raise ConfigError(f"config.train.batch_size={tc.batch_size} is not divisible by the "
                      f"data*fsdp mesh size {rows} and the {jax.process_count()} processes")
  if tc.batch_size % tc.grad_accum_steps:
    raise ConfigError(f"config.train.batch_size={tc.batch_size} is not divisible by "
                      f"config.train.grad_accum_steps={tc.grad_accum_steps}")

  graphdef, abstract_state = abstract_classifier(config)
  abstract_params = nnx.to_pure_dict(abstract_state)
  optimizer = optimizer_lib.make_optimizer(config.optimizer, tc.steps)
  schedule = optimizer_lib.learning_rate_schedule(config.optimizer, tc.steps)
  params_specs = mesh_lib.param_specs(abstract_state, rules, mesh)
  state_specs = {"step": PartitionSpec(), "params": params_specs,
                 "opt_state": mesh_lib.opt_state_specs(optimizer, abstract_params, params_specs)}
  state_sharding = mesh_lib.named(mesh, state_specs)
  backbone_sharding = mesh_lib.named(mesh, params_specs["backbone"])
  shardings = _batch_shardings(mesh, rules)

  def init_state(backbone):
    params = nnx.to_pure_dict(nnx.state(build_classifier(config, tc.seed)))
    params["backbone"] = backbone  # the freshly initialized backbone is unused (and pruned)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params)}

  dropout = (config.finetune.classifier_dropout > 0 or config.model.dropout > 0
             or config.model.attention_dropout > 0)
  train_step = make_train_step(graphdef, optimizer, schedule, family=config.model.family,
                               lm_weight=config.finetune.lm_weight,
                               grad_accum_steps=tc.grad_accum_steps, seed=tc.seed, dropout=dropout)
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    abstract_backbone = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_params["backbone"], backbone_sharding)
    abstract = jax.eval_shape(init_state, abstract_backbone)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, state_sharding)
    p_train_step = jax.jit(train_step, in_shardings=(state_sharding, shardings),
                           out_shardings=(state_sharding, None), donate_argnums=0)
    p_eval_step = jax.jit(make_eval_step(graphdef))

    checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
    writer = metrics_lib.MetricsWriter(workdir)
    start = checkpointer.latest_step()
    if start is not None:
      state = checkpointer.restore(start, abstract)
      if writer.enabled:
        metrics_lib.truncate_after(writer.path, start)
      print(f"Resumed from {checkpointer.directory}/{start}", flush=True)
    else:
      backbone = restore_backbone(run.init, abstract_backbone)
      state = jax.jit(init_state, out_shardings=state_sharding)(backbone)
      start = 0

    n_train = len(run.train["label"])
    if jax.process_index() == 0:
      n_eval = 0 if run.eval is None else len(run.eval["label"])
      print(f"pretrax finetune: {config.model.family} "
            f"{metrics_lib.num_params(abstract_params) / 1e6:.2f}M params from {run.init.workdir} "
            f"(step {run.init.step}), {config.finetune.num_labels} labels, {n_train} train / "
            f"{n_eval} eval examples, mesh {dict(mesh.shape)}, workdir {workdir}", flush=True)

    bar = tqdm.tqdm(total=tc.steps, initial=start, disable=jax.process_index() != 0,
                    dynamic_ncols=True, mininterval=1.0)
    last, step = {}, start
    tick, tick_step = time.perf_counter(), start
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)
    while step < end:
      indices = classification.batch_indices(step, n_train, tc.batch_size, tc.seed,
                                             shuffle=config.data.shuffle)
      state, step_metrics = p_train_step(state, _global_batch(run.train, indices, shardings))
      step += 1
      bar.update(1)
      if step == start + 1:  # keep compilation out of the throughput figure
        jax.block_until_ready(state)
        tick, tick_step = time.perf_counter(), step

      do_log = step % tc.log_every == 0 or step == tc.steps
      do_eval = run.eval is not None and (
          (tc.eval_every > 0 and step % tc.eval_every == 0) or step == tc.steps)
      if do_log or do_eval:
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        if not np.isfinite(values["loss"]):
          raise FloatingPointError(f"non-finite loss {values['loss']} at step {step}; no "
                                   "checkpoint was written for it")
        elapsed = time.perf_counter() - tick
        record = {"step": step, **values,
                  "examples_per_sec": (step - tick_step) * tc.batch_size / max(elapsed, 1e-9)}
        if do_eval:
          eval_metrics = evaluate(p_eval_step, state["params"], run.eval, tc.batch_size, shardings)
          record.update({f"eval_{k}": v for k, v in eval_metrics.items()})
          if jax.process_index() == 0:
            bar.write(f"step {step}: eval accuracy {eval_metrics['accuracy']:.4f}, macro-F1 "
                      f"{eval_metrics['macro_f1']:.4f}, loss {eval_metrics['loss']:.4f}")
        writer.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                        lr=f"{record['lr']:.2e}", refresh=False)
        last = record
        tick, tick_step = time.perf_counter(), step

      if step % config.checkpoint.every == 0 or step == end:
        checkpointer.save(step, state)

    bar.close()
    checkpointer.close()
    if not last and run.eval is not None:  # nothing left to train: report the checkpoint
      last = {"step": step, **{f"eval_{k}": v for k, v in evaluate(
          p_eval_step, state["params"], run.eval, tc.batch_size, shardings).items()}}
  if jax.process_index() == 0:
    print(json.dumps(last | {"step": step}), flush=True)
  return last


# --------------------------------------------------------------------------------------------
# `pretrax eval` on a fine-tuned workdir.


def is_classifier_run(workdir: str) -> bool:
  """True if `workdir` holds a fine-tuned classifier (its config.json says finetune.task)."""
  path = os.path.join(workdir, "config.json")
  return os.path.isfile(path) and config_lib.load_json(path).finetune.task == "classify"


def eval_classifier(workdir: str, split: str | None = None, step: int | None = None) -> dict:
  """Accuracy, macro-F1 and loss of checkpoint `step` (default: latest) on a whole data set.

  `split`: None, "eval" or "validation" -> config.data.eval; "train" -> config.data.train;
  anything else is a JSONL file or tfds:NAME[:SPLIT]. Runs on one device.
  """
  config_path = os.path.join(workdir, "config.json")
  if not is_classifier_run(workdir):
    raise FileNotFoundError(f"{workdir} is not a fine-tuned classifier run: no config.json "
                            "with finetune.task='classify' (create one with `pretrax finetune`)")
  config = config_lib.load_json(config_path)
  tokenizer = tokenizers.load_from_directory(workdir)
  labels = _load_labels(os.path.join(workdir, LABELS_FILENAME))
  spec = {None: config.data.eval, "eval": config.data.eval, "validation": config.data.eval,
          "train": config.data.train}.get(split, split)
  if not spec:
    raise ConfigError(f"{workdir} has no config.data.eval; pass a data set with --split=FILE.jsonl "
                      "or tfds:NAME[:SPLIT]")
  examples = classification.read_examples(
      spec, default_split="train" if spec == config.data.train else "validation",
      data_dir=config.data.data_dir or None,
      field="--split" if spec == split else "config.data.eval")
  arrays = _encode(config, tokenizer, examples, labels,
                   f"{os.path.join(workdir, LABELS_FILENAME)} (the training labels)")

  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint, read_only=True)
  steps = checkpointer.all_steps()
  if not steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint under {checkpointer.directory}")
  step = max(steps) if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint for step {step}; available: "
                            f"{sorted(steps)}")
  graphdef, abstract_state = abstract_classifier(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device),
                                 nnx.to_pure_dict(abstract_state))
  params = checkpointer.restore_params(step, abstract_params)
  checkpointer.close()
  shardings = {k: device for k in (*classification.FEATURES, "label")}
  metrics = evaluate(jax.jit(make_eval_step(graphdef)), params, arrays,
                     config.train.batch_size, shardings)
  return {"step": step, "split": spec, **metrics}
