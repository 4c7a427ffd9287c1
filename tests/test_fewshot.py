"""Few-shot evaluation: prompts, tokens and metrics as lm-evaluation-harness computes them."""

import hashlib
import json
import os
import random

import jax
import numpy as np
import pytest
import scipy.special

from pretrax.cli import main as cli
from pretrax.data import tokenizers
from pretrax.data.errors import InputError
from pretrax.inference import fewshot, loading, task_files
from pretrax.training import trainer

WORDS = ("red green blue cat dog fish one two three north south east west apple pear plum "
         "river hill stone cloud rain snow").split()


def _docs(n: int, seed: int) -> list[dict]:
  rnd = random.Random(seed)
  docs = []
  for i in range(n):
    words = rnd.sample(WORDS, 5)
    choices = [" ".join(rnd.sample(WORDS, rnd.randint(1, 3))) for _ in range(3)] + [words[-1]]
    rnd.shuffle(choices)
    docs.append({"id": i, "context": " ".join(words[:-1]), "word": words[-1], "choices": choices,
                 "label": choices.index(words[-1]), "a": words[0], "b": words[1]})
  return docs


def _write_task(directory, name: str, body: str, splits=("train", "test")) -> str:
  """A task file `name`.yaml with data files DIR/name_SPLIT.jsonl (absolute paths)."""
  os.makedirs(directory, exist_ok=True)
  files = {}
  for s, split in enumerate(splits):
    path = os.path.join(directory, f"{name}_{split}.jsonl")
    with open(path, "w") as f:
      f.writelines(json.dumps(d) + "\n" for d in _docs(24 if split == "test" else 12, s))
    files[split] = path
  data_files = "\n".join(f"    {split}: {path}" for split, path in files.items())
  path = os.path.join(directory, f"{name}.yaml")
  with open(path, "w") as f:
    f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n{data_files}\n"
            + body)
  return path


TASKS = {  # name -> the task file's body after the data
    "mc_train_shots": "test_split: test\nfewshot_split: train\noutput_type: multiple_choice\n"
                      "description: \"Pick the word.\\n\\n\"\n"
                      "doc_to_text: \"Words: {{context}}\\nNext:\"\ndoc_to_choice: choices\n"
                      "doc_to_target: label\n",
    "mc_same_split": "test_split: test\nfewshot_split: test\noutput_type: multiple_choice\n"
                     "doc_to_text: \"{{context}} \"\ndoc_to_choice: \"{{[a, b, word]}}\"\n"
                     "doc_to_target: word\ntarget_delimiter: \"\"\nfewshot_delimiter: \"\\n\"\n",
    "ll_template": "test_split: test\nfewshot_split: train\noutput_type: loglikelihood\n"
                   "doc_to_text: \"{{context}}\"\ndoc_to_target: \"{{' ' + word}}\"\n"
                   "target_delimiter: \"\"\n",
    "gen_until": "test_split: test\nfewshot_split: train\noutput_type: generate_until\n"
                 "doc_to_text: \"Q: {{context}}\\nA:\"\ndoc_to_target: word\n"
                 "generation_kwargs:\n  until: [\"\\n\", \".\"]\n  max_gen_toks: 5\n",
    "rolling": "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
               "doc_to_target: \"{{context}} {{word}}.\"\n",
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tasks")
  return {name: _write_task(str(directory), name, body) for name, body in TASKS.items()}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
  """lm-evaluation-harness, offline, with its dataset cache in a temporary directory."""
  cache = tmp_path_factory.mktemp("hf_cache")
  os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                    HF_DATASETS_CACHE=str(cache / "datasets"), HF_HOME=str(cache))
  import lm_eval.tasks
  return lm_eval


def _harness_requests(harness, task_path: str, k: int, limit: int, seed: int = 1234):
  manager = harness.tasks.TaskManager(include_path=os.path.dirname(task_path),
                                      include_defaults=False)
  name = os.path.splitext(os.path.basename(task_path))[0]
  task = manager.load([name])["tasks"][name]
  task.set_config(key="num_fewshot", value=k)
  task.set_fewshot_seed(seed=seed)
  task.build_all_requests(limit=limit)
  return [inst.args for inst in task.instances]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_equal_the_harness(task_dir, harness, name):
  """Every request (context, continuation / generation settings) is the harness's, byte for
  byte: worked examples drawn the same way, delimiters, description, trailing spaces."""
  task = task_files.load_task(task_dir[name])
  k = 0 if name == "rolling" else 3
  rnd = random.Random(1234)
  ours = [r for doc in task.docs[:20] for r in task.requests(doc, k, rnd)]
  theirs = _harness_requests(harness, task_dir[name], k, limit=20)
  assert len(ours) == len(theirs) > 0
  for mine, (context, *rest) in zip(ours, theirs):
    if name == "rolling":
      assert (mine.context, mine.continuation) == ("", context)
    elif name == "gen_until":
      assert mine.context == context
      assert list(mine.until) == rest[0]["until"] and task.max_gen_toks == rest[0]["max_gen_toks"]
    else:
      assert (mine.context, mine.continuation) == (context, rest[0])


def test_same_split_shots_exclude_the_document(task_dir):
  task = task_files.load_task(task_dir["mc_same_split"])
  rnd = random.Random(0)
  for doc in task.docs:
    assert doc not in task.examples(doc, 5, rnd)


def test_tokens_split_as_the_harness():
  """Trailing context spaces move to the continuation; the continuation's ids come from
  encoding the whole text; BOS starts the context; an empty context is BOS alone."""
  tok = tokenizers.ByteTokenizer()
  context, continuation = fewshot.encode_request(tok, "Q: sky A: ", "blue")
  assert list(context) == [tok.bos_id] + list(tok.encode("Q: sky A:"))
  assert tok.decode(continuation) == " blue"
  context, continuation = fewshot.encode_request(tok, "", "abc")
  assert list(context) == [tok.bos_id] and tok.decode(continuation) == "abc"
  context, _ = fewshot.encode_request(tok, "x", "y", add_bos=False)
  assert list(context) == list(tok.encode("x"))


def test_rolling_windows_are_the_harness(harness):
  from lm_eval import utils
  ids = list(range(10, 47))
  for width in (1, 5, 8, 36, 37, 64):
    want = [utils.make_disjoint_window(w)
            for w in utils.get_rolling_token_windows(ids, prefix_token=2, max_seq_len=width,
                                                     context_len=1)]
    got = [(list(a), list(b)) for a, b in fewshot.rolling_windows(np.array(ids), 2, width)]
    assert got == [(list(a), list(b)) for a, b in want]


def test_pack_fills_rows_without_overflow():
  lengths = [5, 9, 3, 16, 1, 7, 7, 2]
  rows = fewshot.pack(lengths, 16)
  assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
  assert all(sum(lengths[i] for i in row) <= 16 for row in rows)
  assert len(rows) == 4  # 57 tokens: at least 4 rows of 16


@pytest.fixture(scope="module")
def tiny_run(build_once, tiny_gpt_config):
  def build(root):
    config = tiny_gpt_config(root, **{"model.max_seq_len": "64", "data.seq_len": "64",
                                      "train.steps": "12", "checkpoint.every": "12",
                                      "model.attention_impl": "einsum"})
    trainer.train(config, str(root / "run"))
  return str(build_once("fewshot_run", build) / "run")


def test_packed_and_shared_scores_equal_one_request_at_a_time(tiny_run):
  """Packing requests into rows, and scoring continuations from a shared context's cache, give
  each request the log-likelihood and greediness the model gives it alone; truncated requests
  keep their last tokens."""
  run = loading.load_run(tiny_run)
  scorer = fewshot.Scorer(run)
  tok, model = run.tokenizer, run.model()
  forward = jax.jit(lambda ids: model(ids))
  rnd = random.Random(0)
  requests = []
  for i in range(12):
    context = " ".join(rnd.sample(WORDS, rnd.randint(1, 8)))
    for choice in rnd.sample(WORDS, 3):
      requests.append((context, " " + choice))
  requests.append(("x" * 80, " long"))  # longer than the 64 positions: truncated on the left
  requests.append(("", "from nothing"))
  lls, greedy = scorer.loglikelihood(requests)
  for (context, continuation), ll, g in zip(requests, lls, greedy):
    c, t = fewshot.encode_request(tok, context, continuation)
    seq = np.concatenate([c, t])[-65:]
    padded = np.pad(seq[:-1], (0, 65 - len(seq)))[None]  # causal: the padding after is unseen
    logits = np.asarray(forward(padded), np.float64)[0, :len(seq) - 1]
    logp = scipy.special.log_softmax(logits, axis=-1)
    rows = np.arange(len(seq) - 1 - len(t), len(seq) - 1)
    np.testing.assert_allclose(ll, logp[rows, seq[1:][rows]].sum(), rtol=1e-4, atol=1e-4)
    assert g == bool((logits[rows].argmax(-1) == seq[1:][rows]).all())


def test_eval_task_records_its_settings(tiny_run, task_dir, capsys):
  cli.main(["eval", f"--workdir={tiny_run}", f"--task={task_dir['mc_train_shots']}",
            "--num_fewshot=2", "--limit=10", "--seed=7"])
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  with open(os.path.join(tiny_run, fewshot.RESULTS_FILE)) as f:
    recorded = [json.loads(line) for line in f][-1]
  assert printed == recorded
  assert 0 <= printed["acc"] <= 1 and 0 <= printed["acc_norm"] <= 1
  settings = printed["settings"]
  assert (settings["num_fewshot"], settings["seed"], settings["limit"], settings["bos"]) == (
      2, 7, 10, True)
  assert settings["target_delimiter"] == " " and settings["fewshot_delimiter"] == "\n\n"
  with open(task_dir["mc_train_shots"], "rb") as f:
    assert settings["task_sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert printed["documents"] == 10 and printed["requests"] == 40


def test_every_output_type_runs(tiny_run, task_dir):
  run = loading.load_run(tiny_run)
  got = {name: fewshot.evaluate(run, task_files.load_task(path), num_fewshot=0 if
                                name == "rolling" else 1, limit=6).metrics
         for name, path in task_dir.items()}
  assert set(got["ll_template"]) >= {"perplexity", "acc"} and got["ll_template"]["perplexity"] > 1
  assert 0 < got["rolling"]["bits_per_byte"] < 12
  assert got["rolling"]["byte_perplexity"] == pytest.approx(
      2 ** got["rolling"]["bits_per_byte"])
  assert 0 <= got["gen_until"]["exact_match"] <= 1


def test_bad_task_files_name_the_problem(tmp_path, task_dir):
  def write(text):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return str(path)
  head = f"dataset_path: json\ndataset_kwargs:\n  data_files: {tmp_path / 'missing.jsonl'}\n"
  with pytest.raises(InputError, match="does not exist"):
    task_files.load_task(write(head + "test_split: train\noutput_type: loglikelihood\n"
                               "doc_to_text: a\ndoc_to_target: b\n"))
  with pytest.raises(InputError, match="!function"):
    task_files.load_task(write("doc_to_text: !function utils.doc_to_text\n"))
  with pytest.raises(InputError, match="process_docs"):
    task_files.load_task(write(head + "process_docs: x\n"))
  with pytest.raises(InputError, match="unknown key 'doc_to_txt'"):
    task_files.load_task(write(head + "doc_to_txt: x\n"))
  with pytest.raises(InputError, match="output_type"):
    task_files.load_task(write(head + "output_type: ranking\n"))
  with pytest.raises(InputError, match="dataset_path"):
    task_files.load_task(write("dataset_path: hellaswag\n"))
  task = task_files.load_task(task_dir["mc_train_shots"])
  with pytest.raises(InputError, match="13 worked examples asked for"):
    task.examples(task.docs[0], 13, random.Random(0))


def test_an_exported_run_scores_the_same_in_lm_eval_hf(tiny_run, task_dir, harness, tmp_path):
  """The same 2-shot task through pretrax's evaluator, through the harness's `hf` model on the
  exported checkpoint (transformers + the exported tokenizer), and through the harness with the
  `pretrax` model: equal acc and acc_norm, and each request's log-likelihood within float32
  rounding. Some requests are longer than the model's 64 positions (truncated alike)."""
  from lm_eval.tasks import TaskManager
  from pretrax.interop import export, lm_eval_model  # noqa: F401  (registers "pretrax")
  out = str(tmp_path / "hf")
  export.export_hf(tiny_run, out)
  path, k, limit = task_dir["mc_train_shots"], 2, 24
  ours = fewshot.evaluate(loading.load_run(tiny_run), task_files.load_task(path), num_fewshot=k,
                          limit=limit)
  manager = TaskManager(include_path=os.path.dirname(path), include_defaults=False)
  results = {}
  for model, args in (("hf", f"pretrained={out},dtype=float32"), ("pretrax", f"workdir={tiny_run}")):
    results[model] = harness.simple_evaluate(
        model=model, model_args=args, tasks=["mc_train_shots"], num_fewshot=k, limit=limit,
        task_manager=manager, log_samples=True, batch_size=8, device="cpu")
  for model, result in results.items():
    got = result["results"]["mc_train_shots"]
    assert (got["acc,none"], got["acc_norm,none"]) == (ours.metrics["acc"],
                                                       ours.metrics["acc_norm"]), model
  assert 0 < ours.metrics["acc"] < 1  # the task separates right from wrong, not all ties
  samples = {model: sorted(r["samples"]["mc_train_shots"], key=lambda s: s["doc_id"])
             for model, r in results.items()}
  hf = np.array([resp[0][0] for s in samples["hf"] for resp in s["resps"]])
  mine = np.array([resp[0][0] for s in samples["pretrax"] for resp in s["resps"]])
  assert len(hf) == ours.requests == limit * 4
  np.testing.assert_allclose(mine, hf, rtol=1e-4, atol=1e-3)


def test_an_encoder_decoder_scores_the_target_given_the_source(random_model):
  """log p(continuation | context) of an encoder-decoder: the context is the source (`</s>`
  last, as fine-tuning frames it), the decoder starts at `<s>`; batched with padding it equals
  the model on each pair alone."""
  from flax import nnx
  from pretrax.modeling.config import ModelConfig
  from pretrax.training.config import Config
  config = Config()
  config.model = ModelConfig(family="encoder_decoder", vocab_size=384, max_seq_len=32,
                             num_layers=2, num_heads=2, d_model=32, d_ff=64, init_std=0.35,
                             position="relative", norm="rmsnorm", use_bias=False,
                             relative_buckets=16, relative_max_distance=24)
  config.data.seq_len = 32
  model, _ = random_model(config.model, seed=3)
  graphdef, params = nnx.split(model)
  tok = tokenizers.ByteTokenizer()
  run = loading.Run(config=config, tokenizer=tok, task=None, graphdef=graphdef, params=params,
                    step=0)
  requests = [("translate: cat", " Katze"), ("a", " b"), ("a longer source text", "x y z "),
              ("trailing space ", "word")]
  lls, greedy = fewshot.Scorer(run).loglikelihood(requests)
  forward = jax.jit(lambda source, inputs: model(source, inputs))
  for (context, continuation), ll, g in zip(requests, lls, greedy):
    context, continuation = fewshot.move_trailing_space(context, continuation)
    source = np.concatenate([tok.encode(context), [tok.eos_id]])[None]
    target = tok.encode(continuation)
    inputs = np.concatenate([[tok.bos_id], target[:-1]])[None]
    logits = np.asarray(forward(source, inputs), np.float64)[0]
    logp = scipy.special.log_softmax(logits, -1)[np.arange(len(target)), target]
    np.testing.assert_allclose(ll, logp.sum(), rtol=1e-4, atol=1e-4)
    assert g == bool((logits.argmax(-1) == target).all())


def test_example_tasks_run_on_the_data_they_are_made_from(tiny_run, repo_dir, tmp_path,
                                                           monkeypatch, capsys):
  """`pretrax data tasks` writes the data the task files of configs/tasks/ read (paths relative
  to the repository root, here a stand-in directory), and each of them evaluates."""
  monkeypatch.chdir(tmp_path)
  cli.main(["data", "tasks", "--output=workdirs/tasks"])
  written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"]
  assert written["next_sentence_test.jsonl"] == 200
  names = sorted(os.listdir(os.path.join(repo_dir, "configs", "tasks")))
  assert len(names) == 4
  for name in names:
    task = task_files.load_task(os.path.join(repo_dir, "configs", "tasks", name))
    if task.output_type == "multiple_choice":  # choices that fit the tiny run's 64 positions
      task.docs = [d for d in task.docs if max(len(c) for c in task.choices(d)) < 60]
    result = fewshot.evaluate(loading.load_run(tiny_run), task, limit=4,
                              num_fewshot=0 if task.output_type == "loglikelihood_rolling" else 1)
    assert result.metrics and all(np.isfinite(v) for v in result.metrics.values()), name
