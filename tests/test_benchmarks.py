"""benchmarks/throughput.py runs end to end and prints the table it promises (so it cannot rot)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

COLUMNS = ["row", "batch", "params", "first s", "ms med", "ms min", "ms max", "tokens/s", "MFU",
           "peak MiB", "x"]
PRESETS = ["gpt.py:tiny", "bert.py:tiny"]


def _number(cell: str) -> float:
  return float(cell.replace(",", "").rstrip("%"))


def _table(stdout: str) -> dict[str, dict[str, str]]:
  """{row name: {column: cell}} from the printed table (columns separated by 2+ spaces)."""
  lines = stdout.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("row "))
  header = re.split(r"\s{2,}", lines[start].strip())
  assert header == COLUMNS, header
  rows = {}
  for line in lines[start + 2:]:
    if not line.strip():
      break
    cells = re.split(r"\s{2,}", line.strip())
    assert len(cells) == len(COLUMNS), line
    rows[cells[0]] = dict(zip(COLUMNS, cells))
  return rows


@pytest.mark.slow
@pytest.mark.long
def test_throughput_smoke_with_torch_reference(tmp_path, repo_dir):
  missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
  if missing:
    pytest.fail(f"{' and '.join(missing)} not importable: benchmarks/throughput.py "
                "--reference=torch needs them (a test dependency): pip install torch transformers")
  command = [sys.executable, os.path.join(repo_dir, "benchmarks", "throughput.py"), "--smoke",
             "--reference=torch"]
  command += [f"--preset=configs/{p}" for p in PRESETS]
  env = dict(os.environ, PRETRAX_DATA_DIR=str(tmp_path / "data"))  # the corpus is built here
  result = subprocess.run(command, cwd=repo_dir, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = _table(result.stdout)
  assert sorted(rows) == sorted(f"{p} {kind}" for p in PRESETS
                                for kind in ("pretrax", "torch", "pipeline"))

  for preset in PRESETS:
    pretrax, torch, pipeline = (rows[f"{preset} {k}"] for k in ("pretrax", "torch", "pipeline"))
    for row in (pretrax, torch):
      for column in ("params", "first s", "ms med", "ms min", "ms max", "tokens/s", "MFU",
                     "peak MiB"):
        assert _number(row[column]) > 0, (row["row"], column, row[column])
      assert _number(row["ms min"]) <= _number(row["ms med"]) <= _number(row["ms max"])
    # The PyTorch reference has exactly pretrax's shapes.
    assert pretrax["params"] == torch["params"]
    assert pretrax["batch"] == torch["batch"] == pipeline["batch"] == "4x32"
    assert _number(pretrax["x"]) > 0 and torch["x"] == "-"  # pretrax ÷ torch tokens/s
    assert _number(pipeline["tokens/s"]) > 0 and _number(pipeline["x"]) > 0  # margin over train

  out = result.stdout
  assert "6N + 12·L·d·T" in out and "MFU = tokens/s x" in out
  assert re.search(r"peak = [\d,.]+ GFLOP/s per device, (table|measured|config)", out)
  assert "peak MiB: " in out and "pretrax/torch tokens/s = " in out


def _throughput_module(repo_dir):
  spec = importlib.util.spec_from_file_location(
      "throughput", os.path.join(repo_dir, "benchmarks", "throughput.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_loop_rows_time_the_steps_between_metrics_lines(repo_dir):
  throughput = _throughput_module(repo_dir)
  records = [{"step": s, "startup_s": 9.0, "elapsed_s": e} if s == 1 else
             {"step": s, "elapsed_s": e} for s, e in [(1, 5.0), (2, 5.5), (3, 5.75), (4, 6.5)]]
  timing = throughput.loop_timing(records, warmup=1)  # step 2 is the warmup
  assert timing.first_s == 9.0 and timing.step_s == [0.25, 0.75]


def test_the_plain_pytorch_loop_trains_pretrax_model_shapes(repo_dir):
  pytest.importorskip("torch")
  from flax import nnx
  from pretrax.modeling import models
  from pretrax.training import config as config_lib, metrics
  throughput = _throughput_module(repo_dir)
  config = config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"),
                                      throughput.NANOGPT_SHAPES | {"model.vocab_size": "384"})
  torch_model = throughput.torch_gpt(config)
  pretrax_params = nnx.to_pure_dict(models.abstract_model(config.model)[1])
  assert (sum(p.numel() for p in torch_model.parameters()) ==
          metrics.num_params(pretrax_params, exclude_positions=False))
  import torch
  ids_bt = torch.randint(0, 384, (2, 65))
  loss = torch_model(ids_bt[:, :-1], ids_bt[:, 1:])
  assert abs(loss.item() - torch.log(torch.tensor(384.0)).item()) < 1.0  # near uniform at init


# --------------------------------------------------------------------------------------------
# Encoder-decoder (BART) path: throughput.py's seq2seq_batch and torch_bart reference.


def _bart_tiny(throughput, **overrides):
  from pretrax.data import tokenizers
  from pretrax.training import config as config_lib, run_dir
  tokenizer = tokenizers.load_tokenizer("byte")
  smoke = {"train.batch_size": str(throughput.SMOKE["batch"]),
           "data.seq_len": str(throughput.SMOKE["seq"])}
  config = config_lib.apply_overrides(config_lib.load_preset("bart:tiny"), smoke | overrides)
  return run_dir.resolve_vocab(config, tokenizer), tokenizer


def test_seq2seq_batch_has_the_pipeline_features_and_the_tasks_token_count(repo_dir):
  import numpy as np
  from pretrax.data import seq2seq_pipeline
  from pretrax.training import config as config_lib, tasks
  throughput = _throughput_module(repo_dir)
  for preset in ("bart:tiny", "t5:tiny"):  # denoise (T = S - 1), span_corruption (T = 29)
    config = config_lib.load_preset(preset)
    b, s = config.train.batch_size, config.data.seq_len
    t = seq2seq_pipeline.decoder_length(config.data)
    batch = throughput.seq2seq_batch(config, np.random.default_rng(0), b, s, 259)
    assert sorted(batch) == sorted(seq2seq_pipeline.FEATURES)
    for name, value in batch.items():
      assert value.shape == ((b, s) if name.startswith("encoder") else (b, t)), name
      assert value.dtype == (np.float32 if name == "loss_weights" else np.int32), name
    # Teacher forcing: the decoder reads the targets shifted right by one.
    np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:], batch["decoder_targets"][:, :-1])
    tokens, shape = throughput.step_tokens(config)
    task = tasks.task_class(config)(config, tokenizer=None, workdir="")
    assert tokens == task.tokens_per_step == b * (s + t) and shape == f"{b}x{s}+{t}"


def test_the_bart_reference_has_pretrax_shapes_and_trains(repo_dir):
  pytest.importorskip("transformers")
  import numpy as np
  import torch
  from flax import nnx
  from pretrax.modeling import models
  from pretrax.training import metrics
  throughput = _throughput_module(repo_dir)
  config, tokenizer = _bart_tiny(throughput)
  m = config.model
  model, loss_fn = throughput.torch_bart(config, tokenizer)
  pretrax_params = nnx.to_pure_dict(models.abstract_model(m)[1])
  # BART keeps 2 unused position rows per stack; its final_logits_bias is a buffer.
  assert (sum(p.numel() for p in model.parameters()) ==
          metrics.num_params(pretrax_params, exclude_positions=False) + 2 * 2 * m.d_model
          - m.vocab_size)
  assert model.config.activation_function == "gelu" and model.config.encoder_ffn_dim == m.mlp_dim
  b, s = config.train.batch_size, config.data.seq_len
  batch = {k: torch.from_numpy(v).long() if v.dtype == np.int32 else torch.from_numpy(v)
           for k, v in throughput.seq2seq_batch(config, np.random.default_rng(0), b, s,
                                                tokenizer.vocab_size).items()}
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # tiny shapes: OpenMP threads only contend on a busy machine
  try:
    model.train()
    loss = loss_fn(batch)
    assert abs(loss.item() - np.log(m.vocab_size)) < 1.0  # near uniform at init
    optimizer = throughput.torch_adamw(model, config.optimizer)
    throughput.torch_update(model, optimizer, loss, config.optimizer.grad_clip)
    assert np.isfinite(loss_fn(batch).item())
  finally:
    torch.set_num_threads(threads)


@pytest.mark.parametrize("preset", ["t5:tiny", "transformer:tiny"])  # relative, sinusoidal
def test_the_bart_reference_refuses_what_bart_cannot_compute(repo_dir, preset):
  pytest.importorskip("transformers")
  from pretrax.data import tokenizers
  from pretrax.training import config as config_lib, run_dir
  throughput = _throughput_module(repo_dir)
  tokenizer = tokenizers.load_tokenizer("byte")
  config = run_dir.resolve_vocab(config_lib.load_preset(preset), tokenizer)
  with pytest.raises(SystemExit, match="config.model.position"):
    throughput.torch_bart(config, tokenizer)
  config, _ = _bart_tiny(throughput, **{"model.activation": "relu"})
  with pytest.raises(SystemExit, match="config.model.activation"):
    throughput.torch_bart(config, tokenizer)


@pytest.mark.slow
@pytest.mark.long  # its pieces (batch, BART reference) are tested in CI above
def test_throughput_smoke_runs_the_encoder_decoder_path(tmp_path, repo_dir, shakespeare_text):
  pytest.importorskip("transformers")
  text = tmp_path / "corpus.txt"
  text.write_text(shakespeare_text[:50_000], encoding="utf-8")  # a small corpus: a quick build
  command = [sys.executable, os.path.join(repo_dir, "benchmarks", "throughput.py"), "--smoke",
             "--reference=torch", "--preset=configs/bart.py:tiny", f"--text={text}"]
  env = dict(os.environ, PRETRAX_DATA_DIR=str(tmp_path / "data"))
  result = subprocess.run(command, cwd=repo_dir, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = _table(result.stdout)
  assert sorted(rows) == [f"bart.py:tiny {k}" for k in ("pipeline", "pretrax", "torch")]
  pretrax, torch = rows["bart.py:tiny pretrax"], rows["bart.py:tiny torch"]
  # S + T = 32 + 31 positions a row; tokens/s counts both (the task's tokens_per_step).
  assert pretrax["batch"] == torch["batch"] == "4x32+31"
  for row in (pretrax, torch):
    for column in ("params", "ms med", "tokens/s", "MFU"):
      assert _number(row[column]) > 0, (row["row"], column)
  ratio = _number(pretrax["tokens/s"]) / _number(torch["tokens/s"])
  assert _number(pretrax["x"]) == pytest.approx(ratio, rel=0.05, abs=0.02)
  assert "encoder_decoder_flops_per_token" in result.stdout
