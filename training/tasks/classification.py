"""Fine-tuning a classifier over a pretrained run: `pretrax finetune`, finetune.task=classify.

  pretrax finetune --config=finetune:classify --init=PRETRAINED_WORKDIR --workdir=DIR \
      --config.data.train=train.jsonl --config.data.eval=dev.jsonl

config.finetune.format says how an example becomes K sequences (data/classification.py frames
them; modeling/classifier.py folds K into the batch and reads one vector per sequence):
  classify, entailment  K = 1: a text or a pair; class logits [B, N].
  similarity            GPT: K = 2, both orderings, their vectors added; BERT: K = 1, the pair.
  multiple_choice       K = C choices; one logit per choice [B, C], softmax over the choices.
The objective:
  bert  cross-entropy of a linear layer on the pooled [CLS] vector (BERT).
  gpt   cross-entropy of a linear layer on the last token's hidden state, plus
        λ = config.finetune.lm_weight times the next-token loss on every sequence of the example
        (GPT-1's L3 = L2 + λ·L1 over the task's inputs: both similarity orderings, every choice of
        a multiple-choice example, so the term never sees the label).
Every parameter is trained (backbone and head). Terms: "cls_" (weight 1) and, for GPT with λ > 0,
"lm_" (weight λ). Batches: input_ids, segment_ids, token_type_ids [B, K, T]; label [B] (a class,
or the correct choice's index).

The fine-tuned workdir is self-contained (`pretrax eval` reads it with `evaluate_checkpoint`):
  config.json     the model section of --init, finetune.task="classify", finetune.format,
                  num_labels resolved (multiple_choice: the number of choices)
  tokenizer.*     copied from --init
  labels.json     {"labels": [class of id 0, class of id 1, ...]} (multiple_choice: 0..C-1)
  checkpoints/N/  {"params": {"backbone", "head"}, ...} and the batch position
Eval metrics: accuracy, macro_f1 (not for multiple_choice: its classes are answer positions),
loss (the classifier's), lm_loss (GPT), examples.
"""

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.data.errors import InputError
from pretrax.data import classification, files
from pretrax.modeling.classifier import Classifier
from pretrax.training import config as config_lib, losses
from pretrax.training import metrics as metrics_lib, run_dir
from pretrax.training.config import Config, ConfigError
from pretrax.training.tasks import init_run
from pretrax.training.tasks.base import Task

LABELS_FILENAME = "labels.json"


def _check_finetune_config(config: Config) -> None:
  config_lib.validate_finetune(config.finetune)
  if not config.data.train:
    raise ConfigError("config.data.train is empty: give the training examples with "
                      "--config.data.train=FILE.jsonl or tfds:NAME[:SPLIT]")


def load_labels(workdir: str) -> list:
  path = os.path.join(workdir, LABELS_FILENAME)
  with open(path) as f:
    labels = json.load(f).get("labels")
  if not isinstance(labels, list) or not labels:
    raise InputError(f"{path}: expected {{\"labels\": [...]}} with at least one label")
  return labels


def read(config: Config, spec: str, default_split: str, field: str) -> list:
  """The examples of `spec` in the run's format (config.finetune.format)."""
  return classification.read_examples(spec, default_split=default_split,
                                      data_dir=config.data.data_dir or None, field=field,
                                      format=config.finetune.format)


def encode(config: Config, tokenizer, examples, labels, known_from: str) -> dict:
  """Examples -> {input_ids, segment_ids, token_type_ids [N, K, T], label [N]}."""
  if config.finetune.format == "multiple_choice":
    classification.check_choices(examples, len(labels), known_from)
  ids = classification.label_ids(examples, labels, known_from)
  arrays, truncated = classification.encode_examples(
      tokenizer, examples, family=config.model.family, seq_len=config.data.seq_len,
      format=config.finetune.format)
  if truncated and jax.process_index() == 0:
    print(f"{truncated} of {arrays['input_ids'][..., 0].size} sequences ({len(examples)} "
          f"examples) truncated to config.data.seq_len={config.data.seq_len} tokens", flush=True)
  return arrays | {"label": ids}


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


def _example_weights(batch) -> jax.Array:
  """[B] 1 for real examples, 0 for the all-padding rows that fill the last eval batch."""
  return (batch["segment_ids"][:, 0, 0] > 0).astype(jnp.float32)


def _labels_of(config: Config, train: list) -> tuple[list, str]:
  """The label of each id for a new run, and where they come from (for errors)."""
  known_from = f"the training data (config.data.train={config.data.train})"
  if config.finetune.format != "multiple_choice":
    return classification.label_vocabulary(train), known_from
  if config.finetune.num_labels:
    return (list(range(config.finetune.num_labels)),
            f"config.finetune.num_labels={config.finetune.num_labels}")
  return list(range(len(train[0].choices))), f"the first training example, {train[0].where}"


# --------------------------------------------------------------------------------------------
# The task.


@dataclasses.dataclass
class Classification(Task):
  init: init_run.Init = None
  labels: list = None
  train_arrays: dict = None
  eval_arrays: dict | None = None

  families = ("gpt", "bert")

  @classmethod
  def check_config(cls, config: Config) -> None:
    """The fine-tuning fields; the model section is checked once taken from --init (`open`)."""
    _check_finetune_config(config)

  @classmethod
  def open(cls, config: Config, workdir: str) -> "Classification":
    """Resolves the config from --init and the data, reads the examples, writes the run files."""
    config, init, tokenizer = init_run.open_finetuning(config, workdir, cls.families)
    saved = run_dir.saved_config(workdir) if run_dir.checkpoint_steps(workdir) else None
    if saved is not None and saved.finetune.format != config.finetune.format:
      raise ConfigError(f"config.finetune.format={config.finetune.format!r}, but {workdir} was "
                        f"started with {saved.finetune.format!r}; use a new --workdir")

    train = read(config, config.data.train, "train", "config.data.train")
    labels_path = os.path.join(workdir, LABELS_FILENAME)
    if os.path.exists(labels_path):
      labels = load_labels(workdir)
      known_from = f"{labels_path} (the labels this run started with)"
    else:
      labels, known_from = _labels_of(config, train)
    if len(labels) < 2:
      raise InputError(f"config.data.train={config.data.train!r} has a single label "
                       f"{labels[0]!r}: a classifier needs at least 2 classes")
    num_labels = config.finetune.num_labels or len(labels)
    if num_labels < len(labels):
      raise ConfigError(f"config.finetune.num_labels={num_labels}, but the training data has "
                        f"{len(labels)} classes ({', '.join(map(repr, labels[:10]))}); set it "
                        "to 0 (automatic) or at least that")
    if saved is not None and saved.finetune.num_labels != num_labels:
      raise ConfigError(f"config.finetune.num_labels={num_labels}, but {workdir} was started "
                        f"with {saved.finetune.num_labels}; use a new --workdir")
    config.finetune.num_labels = num_labels
    train_arrays = encode(config, tokenizer, train, labels, known_from)
    eval_arrays = None
    if config.data.eval:
      examples = read(config, config.data.eval, "validation", "config.data.eval")
      eval_arrays = encode(config, tokenizer, examples, labels, known_from)
    if jax.process_index() == 0:
      files.atomic_write_json(labels_path, {"labels": labels})
    return cls(config, tokenizer, workdir, init, labels, train_arrays, eval_arrays)

  def data_fingerprint(self) -> dict:
    digest = hashlib.sha256()
    for name in sorted(self.train_arrays):
      digest.update(name.encode() + np.ascontiguousarray(self.train_arrays[name]).tobytes())
    return {**super().data_fingerprint(), "labels": list(self.labels),
            "train examples": len(self.train_arrays["label"]),
            "train examples sha256": digest.hexdigest()}

  @property
  def terms(self):
    lm_weight = self.config.finetune.lm_weight
    return {"cls_": 1.0} | ({"lm_": lm_weight} if self.config.model.family == "gpt"
                            and lm_weight > 0 else {})

  # ------------------------------------------------------------------------------------------
  # The model: a pretrained backbone and a fresh head.

  def build_model(self, seed: int) -> Classifier:
    return Classifier(self.config.model, self.config.finetune.num_labels,
                      dropout=self.config.finetune.classifier_dropout,
                      per_choice=self.config.finetune.format == "multiple_choice",
                      rngs=nnx.Rngs(params=seed))

  @property
  def uses_dropout(self) -> bool:
    return super().uses_dropout or self.config.finetune.classifier_dropout > 0

  def init_params(self, abstract_params, params_sharding) -> dict:
    backbone = self.restore_backbone(jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_params["backbone"], params_sharding["backbone"]))
    seed = self.config.train.seed

    def combine(backbone):
      params = nnx.to_pure_dict(nnx.state(self.build_model(seed)))
      params["backbone"] = backbone  # the freshly initialized backbone is unused (and pruned)
      return params

    return jax.jit(combine, out_shardings=params_sharding)(backbone)

  def restore_backbone(self, abstract_backbone):
    """The pretrained parameters of --init's latest checkpoint, in the shardings asked for."""
    return init_run.restore_params(self.init, abstract_backbone)

  # ------------------------------------------------------------------------------------------
  # Data.

  def train_batches(self):
    return classification.ExampleBatches(
        self.train_arrays, global_batch_size=self.config.train.batch_size,
        seed=self.config.train.seed, shuffle=self.config.data.shuffle,
        process_index=jax.process_index(), process_count=jax.process_count())

  def eval_batches(self, max_batches=None, arrays=None):
    arrays = self.eval_arrays if arrays is None else arrays
    if arrays is None:
      return None
    return classification.eval_batches(arrays, global_batch_size=self.config.train.batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())

  # ------------------------------------------------------------------------------------------
  # Loss and metrics.

  def weights(self, batch):
    totals = {"cls_": jnp.sum(_example_weights(batch))}
    if "lm_" in self.terms:
      totals["lm_"] = jnp.sum(batch["segment_ids"][..., 1:] > 0).astype(jnp.float32)
    return totals

  def _forward(self, model, batch, rngs=None):
    """(sums, logits [B, N] over classes or choices): cls_{loss,correct,weight}_sum, and lm_*
    for GPT (the next-token loss of every sequence: position t's target is the sequence's token
    t + 1, weighted where it is real)."""
    logits_bn, lm_logits_bktv = model(batch["input_ids"], batch["segment_ids"],
                                      batch["token_type_ids"], rngs=rngs)
    sums = losses.cross_entropy_sums(logits_bn, batch["label"], _example_weights(batch),
                                     prefix="cls_")
    if lm_logits_bktv is not None:
      targets_bkt = jnp.roll(batch["input_ids"], -1, axis=-1)
      next_real_bkt = jnp.pad(batch["segment_ids"][..., 1:] > 0, ((0, 0), (0, 0), (0, 1)))
      sums |= losses.cross_entropy_sums(lm_logits_bktv, targets_bkt,
                                        next_real_bkt.astype(jnp.float32), prefix="lm_")
    return sums, logits_bn

  def sums(self, model, batch, rngs=None):
    return self._forward(model, batch, rngs)[0]

  def metrics(self, sums):
    out = super().metrics(sums)
    out["accuracy"] = out["cls_accuracy"]
    return out

  def eval_sums(self, model, batch):
    sums, logits_bn = self._forward(model, batch)
    # [N, N] counts: row = true class, column = predicted class, real examples only.
    n = logits_bn.shape[-1]
    true_bn = jax.nn.one_hot(batch["label"], n) * _example_weights(batch)[:, None]
    pred_bn = jax.nn.one_hot(jnp.argmax(logits_bn, axis=-1), n)
    sums["confusion_nn"] = jnp.einsum("bi,bj->ij", true_bn, pred_bn)
    return sums

  def summarize(self, totals):
    totals = {k: np.asarray(v, np.float64) for k, v in jax.device_get(totals).items()}
    out = classification_metrics(totals["confusion_nn"])
    if self.config.finetune.format == "multiple_choice":
      del out["macro_f1"]  # its classes are answer positions: only accuracy means something
    out["loss"] = float(totals["cls_loss_sum"] / max(totals["cls_weight_sum"], 1.0))
    if "lm_loss_sum" in totals:
      out["lm_loss"] = float(totals["lm_loss_sum"] / max(totals["lm_weight_sum"], 1.0))
    out["examples"] = int(totals["cls_weight_sum"])
    return out

  # ------------------------------------------------------------------------------------------
  # Accounting and reports.

  @property
  def sequences_per_example(self) -> int:
    """K: 2 for GPT similarity (both orderings), the choices for multiple choice, else 1 (and
    before the data is read)."""
    return 1 if self.train_arrays is None else self.train_arrays["input_ids"].shape[1]

  @property
  def tokens_per_step(self) -> int:
    return super().tokens_per_step * self.sequences_per_example

  def describe_step(self) -> str:
    k = self.sequences_per_example
    return (super().describe_step() if k == 1 else
            f"{self.config.train.batch_size}x{k}x{self.config.data.seq_len} tokens/step")

  def flops_per_token(self, n_params: int) -> float:
    # No MLM head runs during fine-tuning: a BERT counts zero masked positions.
    data = dataclasses.replace(self.config.data, max_predictions_per_seq=0)
    return metrics_lib.flops_per_token(self.config.model, n_params, self.config.data.seq_len, data)

  def describe(self) -> str:
    n_eval = 0 if self.eval_arrays is None else len(self.eval_arrays["label"])
    ft = self.config.finetune
    classes = (f"{ft.num_labels} choices" if ft.format == "multiple_choice"
               else f"{ft.num_labels} labels")
    return (f"{self.config.model.family} classifier, format {ft.format} ({classes}) "
            f"from {self.init.workdir} (step {self.init.step}), "
            f"{len(self.train_arrays['label'])} train / {n_eval} eval examples")

  def eval_data(self, split: str | None, max_batches: int | None):
    """`split`: None, "eval" or "validation": config.data.eval; "train": config.data.train;
    anything else a JSONL file or tfds:NAME[:SPLIT]. Always every example of it."""
    if max_batches is not None:
      raise ConfigError("--batches does not apply to a classifier: it is evaluated on the whole "
                        "eval set")
    config, workdir = self.config, self.workdir
    spec = {None: config.data.eval, "eval": config.data.eval, "validation": config.data.eval,
            "train": config.data.train}.get(split, split)
    if not spec:
      raise ConfigError(f"{workdir} has no config.data.eval; pass a data set with "
                        "--split=FILE.jsonl or tfds:NAME[:SPLIT]")
    examples = read(config, spec, "train" if spec == config.data.train else "validation",
                    "--split" if spec == split else "config.data.eval")
    arrays = encode(config, self.tokenizer, examples, load_labels(workdir),
                    f"{os.path.join(workdir, LABELS_FILENAME)} (the training labels)")
    return spec, self.eval_batches(arrays=arrays)
