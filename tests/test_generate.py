"""`pretrax generate` and the decoding flags of `pretrax sample`: a tiny seq2seq task learned
from scratch and judged by what the model generates; beams, stop strings, bad input."""

import json

import numpy as np
import pytest

from pretrax.cli import main as cli
from pretrax.inference import generate, text_metrics
from pretrax.training import config as config_lib
from pretrax.training import trainer


def _pairs(n: int, seed: int) -> list[dict]:
  """Lower-case strings of 3-8 letters and their upper-case copies: each target token is the
  source token at the same position, so the decoder must align with the encoder."""
  rng = np.random.default_rng(seed)
  words = ["".join(rng.choice(list("abcdefghij"), rng.integers(3, 9))) for _ in range(n)]
  return [{"source": w, "target": w.upper()} for w in words]


def _write(path, records) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


@pytest.fixture(scope="module")
def upper_run(build_once):
  def build(root):
    train, val = _write(root / "train.jsonl", _pairs(4000, 0)), _write(root / "val.jsonl",
                                                                        _pairs(100, 1))
    config = config_lib.apply_overrides(config_lib.load_preset("transformer:tiny"), {
        "data.objective": "seq2seq", "data.train": train, "data.eval": val,
        "data.seq_len": "24", "model.max_seq_len": "24", "model.d_model": "64",
        "model.num_heads": "4", "model.d_ff": "128", "model.dropout": "0",
        "model.norm_position": "pre", "model.attention_impl": "einsum",
        "train.label_smoothing": "0", "optimizer.learning_rate": "3e-3",
        "optimizer.warmup_steps": "50", "train.steps": "240", "train.batch_size": "16",
        "train.eval_every": "0", "checkpoint.every": "240"})
    trainer.train(config, str(root / "run"))

  return build_once("generate_upper_run", build)


@pytest.mark.long  # in CI: fine-tuning from this run is judged by generation (below)
def test_a_tiny_seq2seq_task_is_learned_and_judged_by_generation(upper_run, tmp_path, capsys):
  val = [json.loads(line) for line in (upper_run / "val.jsonl").read_text().splitlines()]
  out = tmp_path / "out.jsonl"
  cli.main(["generate", f"--workdir={upper_run / 'run'}", f"--input={upper_run / 'val.jsonl'}",
            f"--output={out}", "--max_new_tokens=12", "--batch_size=16"])
  captured = capsys.readouterr()
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r["source"], r["target"]) for r in rows] == [(r["source"], r["target"]) for r in val]
  exact = np.mean([r["generation"] == r["target"] for r in rows])
  assert exact >= 0.9, rows[:5]
  metrics = json.loads(captured.out.splitlines()[-1])
  assert metrics["exact_match"] == pytest.approx(exact)
  assert metrics == pytest.approx(text_metrics.generation_metrics(
      [r["generation"] for r in rows], [r["target"] for r in rows]))
  assert "tokens/s" in captured.err
  # Beam search finds outputs at least as likely; here the same strings.
  beams = generate.generate_records(str(upper_run / "run"), val[:20], 12, num_beams=4,
                                    report=lambda line: None)
  assert np.mean([b["generation"] == r["generation"] for b, r in zip(beams, rows)]) >= 0.9
  # A stop string cuts the text before it.
  stopped = generate.generate_records(str(upper_run / "run"), val[:20], 12, stop=("C",),
                                      report=lambda line: None)
  for s, r in zip(stopped, rows):
    assert s["generation"] == r["generation"].split("C")[0]


def test_generate_bad_input(upper_run, tmp_path, build_once, tiny_gpt_config):
  run = str(upper_run / "run")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="no sources"):
    generate.read_records(str(empty), "source", "--input")
  with pytest.raises(ValueError, match="--input=missing.jsonl: no such file"):
    generate.read_records("missing.jsonl", "source", "--input")
  records = [{"source": "abc"}]
  with pytest.raises(ValueError, match="--num_beams=200"):
    generate.generate_records(run, records, 4, num_beams=200)
  with pytest.raises(ValueError, match="--max_new_tokens=0"):
    generate.generate_records(run, records, 0)
  lines = []
  long = generate.generate_records(run, [{"source": "a" * 100}], 4, report=lines.append)
  assert isinstance(long[0]["generation"], str)
  assert any("longer than 23 tokens are cut" in line for line in lines)
  with pytest.raises(ValueError, match="pretrax sample needs a causal"):
    generate.sample_prompts(run, ["x"], 4)


def test_sample_beams_and_stop_strings(build_once, tiny_gpt_config, capsys):
  def build(root):
    trainer.train(tiny_gpt_config(root, **{"train.steps": "2", "train.eval_every": "0"}),
                  str(root / "run"))

  run = str(build_once("decoding_run", build) / "run")
  rows = generate.sample_prompts(run, ["To be", "First"], 10, num_beams=3, num_samples=2,
                                 report=lambda line: None)
  assert [(r["prompt"], r["sample"]) for r in rows] == [("To be", 0), ("To be", 1),
                                                         ("First", 0), ("First", 1)]
  free = generate.sample_prompts(run, ["To be"], 12, temperature=0, report=lambda line: None)
  text = free[0]["generation"]
  stop = text[4:6]
  cut = generate.sample_prompts(run, ["To be"], 12, temperature=0, stop=(stop,),
                                report=lambda line: None)
  assert cut[0]["generation"] == text[:text.find(stop)]
  with pytest.raises(ValueError, match="--num_samples=4 with --num_beams=3"):
    generate.sample_prompts(run, ["x"], 4, num_beams=3, num_samples=4)
  with pytest.raises(ValueError, match="pretrax generate needs an encoder-decoder"):
    generate.generate_records(run, [{"source": "x"}], 4)


def _pairs_finetune_config(upper_run, init: str, **overrides):
  """finetune:seq2seq on the upper-casing pairs from `init`, 24 positions, batch 16."""
  config = config_lib.apply_overrides(config_lib.load_preset("finetune:seq2seq"), {
      "data.train": str(upper_run / "train.jsonl"), "data.eval": str(upper_run / "val.jsonl"),
      "data.seq_len": "24", "train.eval_steps": "2", "train.batch_size": "16", **overrides})
  config.finetune.init = init
  return config


@pytest.mark.slow
@pytest.mark.long  # GPT's seq2seq fine-tuning, judged by generation too, runs in CI
def test_seq2seq_finetuning_starts_from_init_and_is_judged_by_generation(
    upper_run, tmp_path, read_metrics):
  """finetune:seq2seq from the upper-casing run: its first eval already generates the targets
  (the parameters are --init's), and every eval reports the generation metrics."""
  config = _pairs_finetune_config(upper_run, str(upper_run / "run"), **{
      "train.steps": "4", "train.eval_every": "2", "train.eval_generate": "20",
      "train.log_every": "2", "checkpoint.every": "4", "optimizer.learning_rate": "1e-5",
      "optimizer.warmup_steps": "1"})
  workdir = str(tmp_path / "ft")
  trainer.train(config, workdir)
  evals = [r for r in read_metrics(workdir) if "eval_bleu" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert evals[0]["eval_generated"] == 20 and evals[0]["eval_exact_match"] >= 0.9
  for key in ("eval_bleu", "eval_chrf", "eval_rouge1", "eval_rouge2", "eval_rougeL"):
    assert 0 <= evals[-1][key] <= 100
  rows = generate.generate_records(workdir, [{"source": "abc"}], 8, report=lambda line: None)
  assert isinstance(rows[0]["generation"], str)
  with pytest.raises(config_lib.ConfigError, match="eval_generate=5 generates"):
    trainer.train(config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"),
                                             {"train.eval_generate": "5"}), str(tmp_path / "x"))


def test_gpt_fine_tuned_as_a_decoder_only_seq2seq_model(upper_run, tmp_path, read_metrics,
                                                        build_once, tiny_gpt_config):
  """finetune:seq2seq over a GPT run: each pair one causal sequence `[bos] source [sep] target
  [eos]`, the loss on the target; evals generate by continuing `[bos] source [sep]`."""
  gpt = build_once("decoding_run", lambda root: trainer.train(
      tiny_gpt_config(root, **{"train.steps": "2", "train.eval_every": "0"}), str(root / "run")))
  config = _pairs_finetune_config(upper_run, str(gpt / "run"), **{
      "train.steps": "30", "train.eval_every": "15", "train.eval_generate": "10",
      "train.log_every": "5", "checkpoint.every": "30", "optimizer.learning_rate": "3e-3",
      "optimizer.warmup_steps": "5"})
  workdir = str(tmp_path / "gpt_pairs")
  trainer.train(config, workdir)
  records = read_metrics(workdir)
  train = [r for r in records if "loss" in r]
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  evals = [r for r in records if "eval_bleu" in r]
  assert [r["step"] for r in evals] == [15, 30] and evals[-1]["eval_generated"] == 10
  rows = generate.generate_records(workdir, [{"source": "abc"}, {"source": "x" * 40}], 30,
                                   num_beams=2, report=(lines := []).append)
  assert all(isinstance(r["generation"], str) for r in rows)
  # 32 learned positions less the longest prompt: [bos], 11 source tokens, [sep]
  assert any("at most 19 new tokens" in line for line in lines)
