"""Fine-tuning classifiers over pretrained runs: learning a real task, the workdir, resume, errors.

The learnable task: a line of tinyshakespeare (>= 30 characters) or the same line written
backwards, character by character; balanced, so chance is 0.5. Train on 3,000 lines from the
start of the file, evaluate on the last 400 lines (another play). The GPT is pretrained here
with `trainer.train`; the BERT "pretrained" run is a freshly initialized BERT saved as a run
directory (config.json, tokenizer.json, checkpoint), which is all fine-tuning reads. GPT-1's
task formats (entailment, similarity, multiple choice) run here on the same two runs.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from pretrax.modeling import models
from pretrax.inference import loading
from pretrax.data import classification, tokenizers
from pretrax.inference import evaluate
from pretrax.training import checkpointing, config as config_lib, trainer
from pretrax.training.tasks import classification as classification_task, init_run
from pretrax.training.config import ConfigError
SEQ_LEN = 64
ONE_DEVICE = jax.devices()[:1]


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory, shakespeare_text):
  """{train, eval: JSONL with string labels; train_int, eval_int: the same with 0/1}."""
  tmp = tmp_path_factory.mktemp("task")
  lines = [line.strip() for line in shakespeare_text.splitlines() if len(line.strip()) >= 30]
  out = {}
  for split, chosen in (("train", lines[:3000]), ("eval", lines[-400:])):
    records = [{"text": line[::-1] if i % 2 else line, "label": i % 2}
               for i, line in enumerate(chosen)]
    out[f"{split}_int"] = _write_jsonl(tmp / f"{split}_int.jsonl", records)
    out[split] = _write_jsonl(tmp / f"{split}.jsonl", [
        r | {"label": ["original", "reversed"][r["label"]]} for r in records])
  return out


@pytest.fixture(scope="module")
def gpt_init(build_once, shakespeare_text):
  """A GPT pretrained for 40 steps on the first 60 KB of tinyshakespeare (once per session)."""

  def build(tmp):
    corpus = tmp / "shakespeare.txt"
    corpus.write_text(shakespeare_text[:60_000])
    config = config_lib.apply_overrides(
        config_lib.load_preset("gpt:tiny"),
        {"data.source": f"text:{corpus}", "data.data_dir": str(tmp / "tfds"),
         "data.txt_documents": "paragraphs",  # short documents, each closed by </s>, like the
                                             # examples whose last token the classifier reads
         "model.num_layers": "2", "model.d_model": "64", "model.num_heads": "4",
         "model.max_seq_len": str(SEQ_LEN), "data.seq_len": str(SEQ_LEN),
         "train.batch_size": "16", "train.steps": "40", "train.eval_every": "0",
         "checkpoint.every": "40", "optimizer.warmup_steps": "5"})
    trainer.train(config, str(tmp / "run"), devices=ONE_DEVICE)

  return str(build_once("finetune_gpt_init", build) / "run")


@pytest.fixture(scope="module")
def bert_init(tmp_path_factory):
  """A freshly initialized 2-layer BERT saved as a pretraining run directory (step 0)."""
  workdir = str(tmp_path_factory.mktemp("bert_pre") / "run")
  config = config_lib.apply_overrides(
      config_lib.load_preset("bert:tiny"),
      {"model.num_layers": "2", "model.d_model": "64", "model.num_heads": "4",
       "model.max_seq_len": str(SEQ_LEN), "data.seq_len": str(SEQ_LEN),
       "model.vocab_size": "384"})
  os.makedirs(workdir)
  config_lib.save_json(config, os.path.join(workdir, "config.json"))
  tokenizers.load_tokenizer("byte").save(workdir)
  params = nnx.to_pure_dict(nnx.state(models.build_model(config.model, seed=0)))
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint)
  checkpointer.save(0, {"step": np.int32(0), "params": params})
  checkpointer.close()
  return workdir


def _config(train, eval_="", variant="classify", **overrides):
  values = {"data.train": train, "data.eval": eval_, "data.seq_len": str(SEQ_LEN),
            "optimizer.warmup_steps": "10"}
  values.update(overrides)
  return config_lib.apply_overrides(
      config_lib.load_preset(f"finetune:{variant}"), values)


def _finetune(config, init, workdir, **kwargs):
  """`pretrax finetune --init=INIT --workdir=WORKDIR` with `config`, in this process."""
  config = config_lib.apply_overrides(config, {"finetune.init": init})
  return trainer.train(config, workdir, **kwargs)


def _choice_task(n, seed, num_choices=4):
  """Multiple choice by a rule that needs the context: it is "big" or "small", and the correct
  choice is the one uppercase letter among lowercase ones ("big"), or the one lowercase letter
  among uppercase ones ("small"). Chance: 1 / num_choices."""
  rng = np.random.default_rng(seed)
  records = []
  for _ in range(n):
    big = bool(rng.integers(2))
    label = int(rng.integers(num_choices))
    choices = [str(c) if big else str(c).upper()
               for c in rng.choice(list("abcdefghijklmnop"), num_choices, replace=False)]
    choices[label] = choices[label].upper() if big else choices[label].lower()
    records.append({"context": "big" if big else "small", "choices": choices, "label": label})
  return records


# --------------------------------------------------------------------------------------------
# Learning a real task, and the workdir it leaves.


@pytest.mark.slow
@pytest.mark.long
def test_bert_learns_the_task_and_its_workdir_is_self_contained(task, bert_init, tmp_path,
                                                                 capsys, read_metrics):
  workdir = str(tmp_path / "bert_ft")
  config = _config(task["train"], task["eval"], **{"train.steps": "200",
                                                   "train.eval_every": "100"})
  last = _finetune(config, bert_init, workdir, devices=ONE_DEVICE)
  assert last["eval_accuracy"] >= 0.9 and last["eval_macro_f1"] >= 0.9  # chance: 0.5
  assert last["eval_examples"] == 400
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert printed["eval_accuracy"] == last["eval_accuracy"] and printed["step"] == 200

  saved = config_lib.load_json(os.path.join(workdir, "config.json"))
  init = config_lib.load_json(os.path.join(bert_init, "config.json"))
  assert saved.model == init.model
  assert (saved.finetune.task, saved.finetune.num_labels) == ("classify", 2)
  assert saved.finetune.init == os.path.abspath(bert_init)
  with open(os.path.join(workdir, "labels.json")) as f:
    assert json.load(f) == {"labels": ["original", "reversed"]}  # sorted: id 0, id 1
  assert tokenizers.load_from_directory(workdir).kind == "byte"
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(10, 201, 10))
  assert {"loss", "accuracy", "lr", "grad_norm"} <= set(records[0])
  assert [r["step"] for r in records if "eval_accuracy" in r] == [100, 200]

  # The workdir alone is enough to evaluate: the same numbers as the end of training.
  result = evaluate.eval_run(workdir)
  assert result["step"] == 200 and result["examples"] == 400
  np.testing.assert_allclose(result["accuracy"], last["eval_accuracy"])
  np.testing.assert_allclose(result["macro_f1"], last["eval_macro_f1"])
  np.testing.assert_allclose(result["loss"], last["eval_loss"], rtol=1e-5)
  # Re-running resumes from the last checkpoint: nothing left to train, the same report.
  again = _finetune(config, bert_init, workdir, devices=ONE_DEVICE)
  assert "Resumed from" in capsys.readouterr().out
  np.testing.assert_allclose(again["eval_accuracy"], last["eval_accuracy"])
  assert len(read_metrics(workdir)) == len(records)


@pytest.mark.slow
@pytest.mark.long
def test_gpt_learns_the_task_with_the_auxiliary_lm_loss(task, gpt_init, tmp_path):
  workdir = str(tmp_path / "gpt_ft")
  config = _config(task["train_int"], task["eval_int"], **{"train.steps": "150",
                                                           "train.eval_every": "150"})
  last = _finetune(config, gpt_init, workdir, devices=ONE_DEVICE)
  assert last["eval_accuracy"] >= 0.9 and last["eval_macro_f1"] >= 0.9  # chance: 0.5
  # loss = classification loss + λ LM loss, λ = 0.5; the LM loss stays far below uniform bytes.
  np.testing.assert_allclose(last["loss"], last["cls_loss"] + 0.5 * last["lm_loss"], rtol=1e-5)
  assert last["eval_lm_loss"] < np.log(256) - 1.0
  with open(os.path.join(workdir, "labels.json")) as f:
    assert json.load(f) == {"labels": [0, 1]}
  assert config_lib.load_json(os.path.join(workdir, "config.json")).model.family == "gpt"


@pytest.mark.slow
def test_resumed_sharded_run_equals_uninterrupted_run_on_pairs(bert_init, tmp_path,
                                                              read_metrics):
  """Sentence pairs end to end: 2 steps on a 2x2x2 data/fsdp/tensor mesh, then 2 more resumed
  on one device, equal 4 uninterrupted steps on one device (dropout included)."""
  rng = np.random.default_rng(0)
  words = "to be or not that is the question whether tis nobler in mind".split()
  records = [{"text": " ".join(rng.choice(words, 6)), "text_b": " ".join(rng.choice(words, 4)),
              "label": ["entail", "neutral", "contradict"][i % 3]} for i in range(40)]
  train = _write_jsonl(tmp_path / "pairs.jsonl", records)
  config = _config(train, **{"train.steps": "4", "train.batch_size": "8", "train.log_every": "1",
                             "checkpoint.every": "2", "optimizer.warmup_steps": "1"})
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  _finetune(config, bert_init, whole, devices=ONE_DEVICE)
  sharded = config_lib.apply_overrides(config, {"mesh.data": "2", "mesh.fsdp": "2",
                                                "mesh.tensor": "2"})
  _finetune(sharded, bert_init, split, stop_after=2)
  _finetune(config, bert_init, split, devices=ONE_DEVICE)  # resumed on another mesh
  ma, mb = read_metrics(whole), read_metrics(split)
  assert [m["step"] for m in ma] == [m["step"] for m in mb] == [1, 2, 3, 4]
  for ra, rb in zip(ma, mb):
    for key in ("loss", "accuracy", "grad_norm", "lr"):
      np.testing.assert_allclose(ra[key], rb[key], rtol=2e-5, err_msg=key)
  a, b = (checkpointing.Checkpointer(w, config.checkpoint, read_only=True) for w in (whole, split))
  assert a.all_steps() == b.all_steps() == [2, 4]
  with open(os.path.join(split, "labels.json")) as f:
    assert json.load(f) == {"labels": ["contradict", "entail", "neutral"]}


@pytest.mark.slow
@pytest.mark.long
def test_gradient_accumulation_equals_one_big_batch(bert_init, tmp_path, read_metrics):
  """Fine-tuning steps on the trainer's gradient accumulation: 4 micro-batches of 4 examples
  give the update of one batch of 16 (dropout off, so both see the same model)."""
  rng = np.random.default_rng(0)
  records = [{"text": "".join(rng.choice(list("abcdefgh"), 12)), "label": i % 3}
             for i in range(48)]
  train = _write_jsonl(tmp_path / "train.jsonl", records)
  base = {"train.steps": "3", "train.batch_size": "16", "train.log_every": "1",
          "train.eval_every": "0", "finetune.classifier_dropout": "0"}
  one, acc = str(tmp_path / "one"), str(tmp_path / "acc")
  _finetune(_config(train, **base), bert_init, one, devices=ONE_DEVICE)
  _finetune(_config(train, **base, **{"train.grad_accum_steps": "4"}), bert_init, acc,
            devices=ONE_DEVICE)
  for a, b in zip(read_metrics(one), read_metrics(acc), strict=True):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)


# --------------------------------------------------------------------------------------------
# GPT-1's task formats through the trainer (their data and model: test_finetune_formats.py).


@pytest.mark.slow
def test_gpt_multiple_choice_learns_a_rule_and_evaluates_again(gpt_init, tmp_path):
  train = _write_jsonl(tmp_path / "train.jsonl", _choice_task(2000, seed=0))
  eval_ = _write_jsonl(tmp_path / "eval.jsonl", _choice_task(200, seed=1))
  workdir = str(tmp_path / "mc")
  config = _config(train, eval_, "multiple_choice",
                   **{"data.seq_len": "16", "train.steps": "40", "train.batch_size": "8",
                      "train.eval_every": "40", "checkpoint.every": "40",
                      "optimizer.warmup_steps": "5", "finetune.classifier_dropout": "0"})
  last = _finetune(config, gpt_init, workdir, devices=ONE_DEVICE)
  assert last["eval_accuracy"] >= 0.8  # chance: 0.25
  assert "eval_macro_f1" not in last and last["eval_examples"] == 200
  saved = config_lib.load_json(os.path.join(workdir, "config.json"))
  assert (saved.finetune.format, saved.finetune.num_labels) == ("multiple_choice", 4)
  result = evaluate.eval_run(workdir)  # the format comes back from the run's config.json
  np.testing.assert_allclose(result["accuracy"], last["eval_accuracy"])
  np.testing.assert_allclose(result["loss"], last["eval_loss"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("format, family", [
    # One pair, as classify's pairs, whose resume CI checks above: long.
    pytest.param("entailment", "bert", marks=pytest.mark.long),
    # GPT's K-sequence path through the trainer: the multiple-choice test above; long.
    pytest.param("similarity", "gpt", marks=pytest.mark.long), ("multiple_choice", "bert")])
def test_each_format_resumed_equals_uninterrupted(format, family, request, tmp_path,
                                                  assert_equal_runs, read_metrics):
  """3 steps and an eval (dropout on), against 2 steps stopped and 1 resumed."""
  init = request.getfixturevalue(f"{family}_init")
  rng = np.random.default_rng(2)
  words = "to be or not that is the question whether tis nobler".split()
  records = [{"text": " ".join(rng.choice(words, 3)), "text_b": " ".join(rng.choice(words, 2)),
              "label": i % 2} for i in range(24)]
  if format == "entailment":
    records = [{"premise": r["text"], "hypothesis": r["text_b"], "label": r["label"]}
               for r in records]
  if format == "multiple_choice":
    records = _choice_task(24, seed=2)
  train = _write_jsonl(tmp_path / "train.jsonl", records)
  eval_ = _write_jsonl(tmp_path / "eval.jsonl", records[:6])  # 6: the last batch is padded
  config = _config(train, eval_, format, **{
      "data.seq_len": "32", "train.steps": "3", "train.batch_size": "4", "train.log_every": "1",
      "train.eval_every": "3", "checkpoint.every": "2", "optimizer.warmup_steps": "2"})
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  last = _finetune(config, init, whole, devices=ONE_DEVICE)
  _finetune(config, init, split, stop_after=2, devices=ONE_DEVICE)
  _finetune(config, init, split, devices=ONE_DEVICE)
  assert_equal_runs(whole, split)
  assert [r["step"] for r in read_metrics(whole) if "eval_accuracy" in r] == [3]
  assert last["eval_examples"] == 6 and ("lm_loss" in last) == (family == "gpt")
  assert config_lib.load_json(os.path.join(split, "config.json")).finetune.format == format
  with pytest.raises(ConfigError, match=rf"config.finetune.format='classify', but .* was started "
                                        rf"with '{format}'"):
    _finetune(config_lib.apply_overrides(config, {"finetune.format": "classify"}), init, split)


@pytest.mark.slow
def test_a_choice_count_other_than_the_runs_is_an_error(bert_init, tmp_path):
  train = _write_jsonl(tmp_path / "train.jsonl", _choice_task(4, seed=3))
  eval_ = _write_jsonl(tmp_path / "eval.jsonl", _choice_task(2, seed=3) + _choice_task(
      1, seed=4, num_choices=3))
  with pytest.raises(ValueError, match=rf"{eval_}:3: 3 choices, but this run has 4 \(the first "
                                       rf"training example, {train}:1\)"):
    _finetune(_config(train, eval_, "multiple_choice"), bert_init, str(tmp_path / "ft"))
  with pytest.raises(ValueError, match=rf"{train}:1: 4 choices, but this run has 3 \(config."
                                       rf"finetune.num_labels=3\)"):
    _finetune(_config(train, "", "multiple_choice", **{"finetune.num_labels": "3"}), bert_init,
              str(tmp_path / "ft3"))


# --------------------------------------------------------------------------------------------
# Data: framing, labels, TFDS.


def test_framing_token_types_and_truncation():
  tok = tokenizers.load_tokenizer("byte")
  a, b = tok.encode("abcdef"), tok.encode("xy")
  ids, types, cut = classification.frame(tok, "bert", a, b, seq_len=16)
  assert list(ids) == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id] and not cut
  assert list(types) == [0] * 8 + [1] * 3  # [CLS] a [SEP] | b [SEP]
  ids, types, _ = classification.frame(tok, "gpt", a, b, seq_len=16)
  assert list(ids) == [tok.bos_id, *a, tok.sep_id, *b, tok.eos_id] and not types.any()
  ids, _, _ = classification.frame(tok, "gpt", a, None, seq_len=16)
  assert list(ids) == [tok.bos_id, *a, tok.eos_id]
  # 6 + 2 tokens into 8 - 3 = 5: the longer side (a) loses its last tokens first.
  ids, types, cut = classification.frame(tok, "bert", a, b, seq_len=8)
  assert tok.decode(ids[1:4]) == "abc" and tok.decode(ids[5:7]) == "xy" and cut
  ids, _, _ = classification.frame(tok, "bert", tok.encode("abcd"), tok.encode("wxyz"), seq_len=8)
  assert tok.decode(ids[1:4]) == "abc" and tok.decode(ids[5:7]) == "wx"  # 4+4 -> 4+3 -> 3+3 -> 3+2
  examples = [classification.Example("hi", "yo", 0, "x:1"),
              classification.Example("", None, 1, "x:2")]
  arrays, _ = classification.encode_examples(tok, examples, family="bert", seq_len=10)
  # [N, K, T]: one sequence per example in the classify format.
  np.testing.assert_array_equal(arrays["segment_ids"], [[[1] * 7 + [0] * 3], [[1, 1] + [0] * 8]])
  np.testing.assert_array_equal(arrays["token_type_ids"][0, 0], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
  seen = np.concatenate([classification.batch_indices(s, 10, 4, seed=3) for s in range(5)])
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
  np.testing.assert_array_equal(classification.batch_indices(2, 10, 4, seed=3), seen[8:12])
  assert not np.array_equal(classification.batch_indices(0, 10, 4, seed=4), seen[:4])


def test_macro_f1_by_hand():
  # rows: true class, columns: predicted. Class 0: TP 3, FP 2, FN 1 -> F1 6/9.
  # Class 1: TP 2, FP 1, FN 2 -> 4/7. Class 2: no example, predicted once -> F1 0 (counted).
  # Class 3: no example, never predicted -> left out of the mean.
  confusion = np.array([[3, 1, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  confusion[1, 2] = 1  # one class-1 example predicted as 2: class 1 FN 3 -> F1 4/8
  m = classification_task.classification_metrics(confusion)
  np.testing.assert_allclose(m["accuracy"], 5 / 9)
  np.testing.assert_allclose(m["macro_f1"], (6 / 9 + 4 / 8 + 0.0) / 3)


def test_tfds_glue_examples_through_mock_data():
  with tfds.testing.mock_data(num_examples=6):
    examples = classification.read_examples("tfds:glue/sst2", default_split="train")
    assert len(examples) == 6 and all(isinstance(e.text, str) and e.text_b is None
                                      for e in examples)
    assert {e.label for e in examples} <= {0, 1}  # ClassLabel ids
    assert examples[2].where == "tfds:glue/sst2[train] example 2"
    pairs = classification.read_examples("tfds:glue/mnli:validation_matched",
                                         default_split="validation")
    assert len(pairs) == 6 and all(isinstance(e.text_b, str) for e in pairs)  # premise, hypothesis
    assert classification.parse_tfds("tfds:glue/sst2:2.0.0:test", "train") == ("glue/sst2:2.0.0",
                                                                                "test")


def test_labels_ints_strings_and_unseen():
  ex = classification.Example
  assert classification.label_vocabulary([ex("a", None, 2, "f:1"),
                                          ex("b", None, 0, "f:2")]) == [0, 1, 2]
  assert classification.label_vocabulary([ex("a", None, "pos", "f:1"),
                                          ex("b", None, "neg", "f:2")]) == ["neg", "pos"]
  with pytest.raises(ValueError,
                     match=r"f:2: label 'x' \(str\) is not of the kind of f:1's label 1 \(int\)"):
    classification.label_vocabulary([ex("a", None, 1, "f:1"), ex("b", None, "x", "f:2")])
  with pytest.raises(ValueError, match=r"g:7: label 'maybe' does not occur in the train"):
    classification.label_ids([ex("c", None, "maybe", "g:7")], ["neg", "pos"], "the training data")


# --------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.slow
def test_bad_examples_are_errors_naming_file_and_line(gpt_init, tmp_path):
  good = {"text": "some words", "label": "a"}
  cases = [("invalid JSON", ['{"text": "x", "label": "a"}', '{"text": "y", label: 1}'],
            r":2: invalid JSON"),
           ("no label", [json.dumps(good), "", json.dumps({"text": "z"})],
            r":3: missing field 'label'"),
           ("no text", [json.dumps({"label": "a"})], r":1: missing field 'text'"),
           ("bad label", [json.dumps({"text": "q", "label": 1.5})], r":1: label 1.5 must be")]
  for name, lines, match in cases:
    path = tmp_path / f"{name.replace(' ', '_')}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{path}{match}"):
      _finetune(_config(str(path)), gpt_init, str(tmp_path / "ft"))
  with pytest.raises(FileNotFoundError, match=r"config.data.train='/nonexistent.jsonl': no such"):
    _finetune(_config("/nonexistent.jsonl"), gpt_init, str(tmp_path / "ft"))

  train = _write_jsonl(tmp_path / "train.jsonl", [good, {"text": "other", "label": "b"}])
  eval_ = _write_jsonl(tmp_path / "eval.jsonl", [good, {"text": "w", "label": "c"}])
  with pytest.raises(ValueError, match=f"{eval_}:2: label 'c' does not occur in the training "
                                       f"data .*its labels: 'a', 'b'"):
    _finetune(_config(train, eval_), gpt_init, str(tmp_path / "ft2"))
  with pytest.raises(ConfigError, match=r"config.data.train is empty"):
    _finetune(_config(""), gpt_init, str(tmp_path / "ft3"))


@pytest.mark.slow
def test_backbone_starts_as_the_pretrained_model(gpt_init):
  config = config_lib.load_json(os.path.join(gpt_init, "config.json"))
  config.finetune.num_labels = 3
  task = classification_task.Classification(config, None, "",
                                            init=init_run.load_init(gpt_init))
  _, abstract_state = task.abstract_model()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device),
                          nnx.to_pure_dict(abstract_state))
  assert abstract["head"]["w_io"].shape == (64, 3)
  backbone = task.restore_backbone(abstract["backbone"])
  pretrained = loading.load_run(gpt_init)
  assert pretrained.step == 40
  jax.tree.map(np.testing.assert_array_equal, backbone, pretrained.params)


@pytest.mark.slow
def test_missing_or_incompatible_init_is_an_error(gpt_init, tmp_path):
  train = _write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0},
                                                  {"text": "b", "label": 1}])
  config = _config(train)
  with pytest.raises(FileNotFoundError, match=r"no config.json"):
    _finetune(config, str(tmp_path / "missing"), str(tmp_path / "ft"))
  with pytest.raises(ConfigError, match=r"needs the pretrained run: --init="):
    _finetune(config, "", str(tmp_path / "ft"))

  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join(gpt_init, name), no_checkpoint / name)
  with pytest.raises(FileNotFoundError, match=r"has no checkpoint under"):
    _finetune(config, str(no_checkpoint), str(tmp_path / "ft"))

  with pytest.raises(ConfigError, match=r"config.model.family='bert', but --init=.* holds a "
                                        r"model with family='gpt'"):
    _finetune(config_lib.apply_overrides(config, {"model.family": "bert"}),
                          gpt_init, str(tmp_path / "ft"))

  reshaped = tmp_path / "reshaped"
  shutil.copytree(gpt_init, reshaped)
  with open(reshaped / "config.json") as f:
    values = json.load(f)
  values["model"]["d_ff"] = 128  # the checkpoint's MLP is 4 * 64 = 256 wide
  with open(reshaped / "config.json", "w") as f:
    json.dump(values, f)
  with pytest.raises(ValueError, match=r"does not fit the model its config.json describes .*"
                                       r"w_in_df: checkpoint \(64, 256\), model \(64, 128\)"):
    _finetune(config, str(reshaped), str(tmp_path / "ft_reshaped"))

  finetuned = tmp_path / "finetuned"
  finetuned.mkdir()
  values["model"]["d_ff"], values["finetune"]["task"] = 0, "classify"
  with open(finetuned / "config.json", "w") as f:
    json.dump(values, f)
  with pytest.raises(ValueError, match=r"is a fine-tuned run .*needs a pretraining run"):
    _finetune(config, str(finetuned), str(tmp_path / "ft"))
