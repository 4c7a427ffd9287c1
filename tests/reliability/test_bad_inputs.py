"""Promises 6 and 7: bad configs and bad data are clear errors before compute, or documented."""

import os
import random
import shutil
import sys

import pytest

from pretrax.cli import main as cli


def _train(tmp_path, tiny_args, *args, source=None, name="run"):
  corpus = tmp_path / "ok.txt"
  corpus.write_text("\n\n".join(f"Paragraph {i} of a small but real corpus." for i in range(40)))
  workdir = tmp_path / name
  argv = ["train", "--config=gpt:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={tmp_path / 'tfds'}", *tiny_args, "--config.train.steps=2",
          f"--config.data.source={source or f'text:{corpus}'}", *args]
  return cli.main(argv), workdir


@pytest.mark.parametrize("args,message", [
    (["--config.model.num_layer=2"], "unknown config key 'model.num_layer'; did you mean model.num_layers"),
    (["--config.train.batch_size=eight"], "--config.train.batch_size='eight': expected an integer"),
    (["--config.model.num_heads=3"], "config.model.d_model=32 is not divisible by config.model.num_heads=3"),
    (["--config.data.seq_len=64"], "config.data.seq_len=64 is longer than the position table"),
    (["--config.model.vocab_size=128"], "config.model.vocab_size=128 is smaller than the tokenizer's vocabulary (263)"),
    (["--config.mesh.data=3"], "config.mesh: data*fsdp*tensor = 3*1*1 = 3, but there are 8 devices"),
    (["--config.mesh.tensor=4", "--config.mesh.data=2"], "is not divisible by mesh axes ('tensor',)"),
    (["--config.optimizer.learning_rate=nan"], "config.optimizer.learning_rate=nan is not a finite number"),
    (["--config.train.peak_flops=inf"], "config.train.peak_flops=inf is not a finite number"),
    (["--config.model.dropout=-inf"], "config.model.dropout=-inf is not a finite number"),
    (["--config.finetune.lm_weight=nan"], "config.finetune.lm_weight=nan is not a finite number"),
    (["--config.optimizer.b2=1"], "config.optimizer.b2 must be in [0, 1), got 1.0"),
    (["--config.optimizer.eps=0"], "config.optimizer.eps must be > 0, got 0.0"),
    (["--config.optimizer.weight_decay=-0.1"], "config.optimizer.weight_decay must be >= 0, got -0.1"),
    (["--config.optimizer.grad_clip=-1"], "config.optimizer.grad_clip must be >= 0, got -1.0"),
    (["--config.train.eval_every=-5"], "config.train.eval_every must be >= 0, got -5"),
    (["--config.finetune.lm_weight=-1"], "config.finetune.lm_weight must be >= 0, got -1.0"),
    (["--config.model.rope_theta=0"], "config.model.rope_theta must be > 0, got 0.0"),
])
def test_bad_config_is_a_clear_error_before_compute(tmp_path, tiny_args, capsys, args, message):
  code, workdir = _train(tmp_path, tiny_args, *args)
  err = capsys.readouterr().err
  assert code == 2 and message in err, err
  assert "Traceback" not in err
  assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("make,message", [
    (lambda d: f"text:{d}/missing.txt", "missing.txt"),
    (lambda d: (d / "empty.txt").write_text("") and None or f"text:{d}/empty.txt", "empty.txt: file has no documents"),
    (lambda d: (d / "emptydir").mkdir() or f"text:{d}/emptydir", "emptydir"),
    (lambda d: (d / "one.txt").write_text("just one paragraph") and None or f"text:{d}/one.txt", "found 1 document"),
    (lambda d: (d / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n') and None or f"text:{d}/bad.jsonl", "bad.jsonl:2"),
    (lambda d: shutil.copy(os.path.realpath(sys.executable), d / "python.txt") and f"text:{d}/python.txt",
     "python.txt: {}% of its characters are not valid UTF-8 text (invalid bytes or NUL); is it a binary file?"),
    (lambda d: (d / "random.txt").write_bytes(random.Random(0).randbytes(200_000)) and f"text:{d}/random.txt",
     "random.txt: 44% of its characters are not valid UTF-8 text"),
    (lambda d: (d / "utf16.txt").write_text("Paragraph one.\n\nParagraph two.\n", encoding="utf-16") and f"text:{d}/utf16.txt",
     "utf16.txt: 52% of its characters are not valid UTF-8 text"),
])
def test_bad_corpus_names_the_file(tmp_path, tiny_args, capsys, make, message):
  source = make(tmp_path)
  code, _ = _train(tmp_path, tiny_args, source=source)
  err = capsys.readouterr().err
  assert code == 2 and all(part in err for part in message.split("{}")), err  # {}: any number
  assert "Traceback" not in err


@pytest.mark.slow
def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, tiny_args, capsys, caplog):
  corpus = tmp_path / "latin1.txt"
  corpus.write_bytes(b"\n\n".join(b"caf\xe9 number %d, fa\xe7ade" % i for i in range(30)))
  code, workdir = _train(tmp_path, tiny_args, source=f"text:{corpus}")
  assert code == 0
  logged = caplog.text + capsys.readouterr().err
  assert "latin1.txt" in logged and "60" in logged  # 2 bad bytes in each of 30 documents


@pytest.mark.slow
def test_one_enormous_document_trains(tmp_path, tiny_args):
  big = tmp_path / "big.txt"
  big.write_text("word " * 200_000 + "\n\n" + "a short second document")  # 1 MB, no blank line
  code, workdir = _train(tmp_path, tiny_args, source=f"text:{big}", name="big")
  assert code == 0 and (workdir / "checkpoints" / "2").is_dir()


@pytest.mark.slow
def test_a_corpus_smaller_than_one_batch_is_repeated(tmp_path, tiny_args):
  """Documented: the training stream repeats the corpus (reshuffled) to fill every batch."""
  small = tmp_path / "small.txt"
  small.write_text("tiny one\n\ntiny two")  # far fewer tokens than one 8x32 batch
  code, workdir = _train(tmp_path, tiny_args, source=f"text:{small}", name="small")
  assert code == 0 and (workdir / "checkpoints" / "2").is_dir()


@pytest.mark.parametrize("args,message", [
    (["sample", "--max_new_tokens=-5"], "--max_new_tokens=-5: must be at least 1"),
    (["sample", "--max_new_tokens=0"], "--max_new_tokens=0: must be at least 1"),
    (["sample", "--temperature=-1"], "--temperature=-1.0: must be a finite number >= 0"),
    (["sample", "--temperature=nan"], "--temperature=nan: must be a finite number >= 0"),
    (["sample", "--top_k=-1"], "--top_k=-1: must be >= 0"),
    (["sample", "--top_p=0"], "--top_p=0.0: must be in (0, 1]"),
    (["sample", "--top_p=1.5"], "--top_p=1.5: must be in (0, 1]"),
    (["sample", "--step=-1"], "--step=-1: a checkpoint's step is >= 0"),
    (["eval", "--batches=-2"], "--batches=-2: must be >= 0"),
    (["eval", "--step=-3"], "--step=-3: a checkpoint's step is >= 0"),
    (["score", "--text=/dev/null", "--step=-1"], "--step=-1: a checkpoint's step is >= 0"),
])
def test_bad_reader_flags_are_one_line_errors_naming_the_flag(tmp_path, capsys, monkeypatch,
                                                               args, message):
  monkeypatch.setenv("PRETRAX_TRACEBACK", "")
  # Checked before the run is read: an empty --workdir shows the flag is what is refused.
  code = cli.main([*args[:1], f"--workdir={tmp_path}", *args[1:]])
  err = capsys.readouterr().err
  assert code == 2 and f"pretrax: error: {message}" in err, err
  assert "Traceback" not in err


def test_input_errors_are_one_line_and_internal_errors_keep_their_traceback(tmp_path, capsys,
                                                                            monkeypatch):
  from pretrax.data.errors import InputError
  from pretrax.inference import evaluate
  monkeypatch.setenv("PRETRAX_TRACEBACK", "")

  def user_error(*args):
    raise InputError("--split=nope.jsonl: no such data set")

  monkeypatch.setattr(evaluate, "eval_run", user_error)
  assert cli.main(["eval", f"--workdir={tmp_path}"]) == 2
  assert "pretrax: error: --split=nope.jsonl: no such data set" in capsys.readouterr().err

  def bug(*args):
    raise ValueError("operands could not be broadcast together")  # not the user's doing

  monkeypatch.setattr(evaluate, "eval_run", bug)
  with pytest.raises(ValueError, match="could not be broadcast"):
    cli.main(["eval", f"--workdir={tmp_path}"])
