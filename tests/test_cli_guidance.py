"""What the command line tells a new user: presets in --help, the summary at the end of a run
(files that exist, commands that run), plain progress lines in logs, a missing extra in one line."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from pretrax.cli import main as cli

TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.max_seq_len=32", "--config.data.seq_len=32",
        "--config.train.batch_size=8", "--config.train.log_every=1",
        "--config.optimizer.warmup_steps=2"]


def test_train_help_lists_every_preset_with_a_line_each(capsys):
  from pretrax.training import config as config_lib
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  catalog = config_lib.preset_catalog()
  assert {"gpt:tiny", "gpt:small", "bert:tiny", "finetune:classify"} <= {s for s, _ in catalog}
  for spec, what in catalog:
    assert what and f"{spec:<20} {what}" in out
  assert "pretrax train --config=gpt:tiny --workdir=" in out  # an example to copy


def test_export_without_the_hf_extra_is_one_line_and_writes_nothing(tmp_path, capsys,
                                                                    monkeypatch):
  monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
  monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
  output = tmp_path / "out"
  code = cli.main(["export", f"--workdir={tmp_path / 'run'}", "--format=hf",
                   f"--output={output}"])
  err = capsys.readouterr().err
  assert code == 2
  assert 'pip install -e ".[hf]"' in err and "Traceback" not in err
  assert not output.exists()


@pytest.mark.slow
@pytest.mark.long  # eval, sample, export and finetune each run in CI tests of their own
def test_a_run_in_a_log_ends_with_a_summary_whose_commands_run(tmp_path, shakespeare_text):
  (tmp_path / "corpus.txt").write_text(shakespeare_text[:40_000])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PRETRAX_DATA_DIR=str(tmp_path / "tfds"))
  env.pop("XLA_FLAGS", None)
  pretrax = [sys.executable, "-m", "pretrax.cli"]
  out = subprocess.run([*pretrax, "train", "--config=gpt:tiny", "--workdir=run",
                        "--config.data.source=text:corpus.txt", "--config.train.steps=4",
                        "--config.train.eval_every=4", *TINY],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "\r" not in out.stdout + out.stderr  # stdout and stderr are pipes here, not terminals
  assert "step 4/4  loss" in out.stderr

  summary = out.stdout[out.stdout.index("pretrax: trained steps 1-4"):].splitlines()
  assert json.loads(summary[-1])["step"] == 4  # the JSON line stays last
  fields = dict(line.strip().split(": ", 1) for line in summary if line.startswith("  ") and
                ": " in line and not line.startswith("  pretrax"))
  assert "bits per byte" in fields["validation"]
  assert os.path.isdir(tmp_path / fields["checkpoint"])
  assert os.path.isfile(tmp_path / fields["metrics"])
  with open(tmp_path / fields["metrics"]) as f:
    records = [json.loads(line) for line in f]
  # How long start-up took, said once: data, tokenizer, compilation and the first step.
  assert [r["step"] for r in records if "startup_s" in r] == [records[0]["step"]]
  assert 0 < records[0]["startup_s"]

  commands = [line.strip() for line in summary if line.startswith("  pretrax ")]
  assert [c.split()[1] for c in commands] == ["eval", "sample", "export", "finetune"]
  with open(tmp_path / "train.jsonl", "w") as f:  # the files the finetune command names
    for i, line in enumerate(shakespeare_text.splitlines()[:64]):
      f.write(json.dumps({"text": line, "label": i % 2}) + "\n")
  (tmp_path / "dev.jsonl").write_text((tmp_path / "train.jsonl").read_text())
  for command in commands:
    args = shlex.split(command)[1:]
    if args[0] == "finetune":  # as printed, shortened to a few steps
      args += ["--config.train.steps=2", "--config.train.batch_size=8",
               "--config.data.seq_len=32"]
    if args[0] == "sample":
      args += ["--max_new_tokens=20"]
    ran = subprocess.run([*pretrax, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert ran.returncode == 0, (command, ran.stderr[-2000:])
    if args[0] in ("eval", "sample", "export"):  # each says in one line what to do next
      assert len([l for l in ran.stderr.splitlines() if l.startswith("pretrax: next: ")]) == 1
    if args[0] == "eval":
      assert "pretrax score --workdir=run --text=FILE" in ran.stderr


def test_sampling_never_draws_the_padded_vocabulary_rows_or_padding():
  import jax
  import jax.numpy as jnp
  from pretrax.inference import generate
  logits_v = jnp.zeros(384).at[300:].set(50.0).at[0].set(40.0).at[42].set(10.0)  # pads win
  masked_v = generate.tokenizer_logits(logits_v, vocab_size=263, pad_id=0)
  draws = jax.vmap(lambda k: jax.random.categorical(k, masked_v))(
      jax.random.split(jax.random.key(0), 2000))
  assert int(draws.max()) < 263 and int(draws.min()) > 0
  greedy = generate.filter_logits(masked_v, temperature=0, top_k=0, top_p=1.0)
  assert int(jnp.argmax(greedy)) == 42


def test_help_config_lists_every_field_with_default_and_comment(capsys):
  from pretrax.training import config as config_lib
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--help_config"])  # no --workdir needed, as with --help
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  for section, cls in config_lib.SECTIONS.items():
    for field in cls.__dataclass_fields__:
      assert f"\n  {section}.{field} = " in "\n" + out, (section, field)
  assert "  optimizer.grad_clip = 1.0   # global-norm clipping; 0 disables" in out
  assert "  data.objective = 'causal'   # What the batches teach." in out  # a comment above
