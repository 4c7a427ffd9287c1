"""Test set-up and the fixtures every test file shares.

8 fake CPU devices so sharded meshes can be exercised on one machine, and the process set-up of
the `pretrax` command (cli/startup.py). Tests import only `pretrax.*`; what they share comes from
the fixtures here (pytest finds them by name), never from importing another test file.

Markers: `slow` for tests of more than about 15 s on 2 cores (`pytest -m "not slow"` is the quick
check); `long` for end-to-end runs of more than about 20 s whose promise a faster test in the CI
suite also checks for another task, family or signal (`-m "not long"` is the CI suite; the full
suite runs them all).
"""

import json
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from pretrax.cli import startup

# Tests compile far more than they run: XLA's CPU backend at optimization level 0 compiles
# faster, runs slower and computes the same up to float32 rounding; the suite takes ~20% less
# time. A user's XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
startup.prepare()  # as the pretrax command does, before JAX's backend starts
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: more than about 15 s on 2 cores; deselect with "
                                     "-m 'not slow' for a quick check")
  config.addinivalue_line("markers", "long: an end-to-end run of more than about 20 s whose "
                                     "promise a faster CI test also checks; -m 'not long' is the "
                                     "CI suite")
  # One compilation cache for the session (the pytest process and its xdist workers, which
  # inherit the environment), never the user's: tests that compile the same programs share them.
  if "PRETRAX_COMPILE_CACHE" not in os.environ:
    config.compile_cache_made = tempfile.mkdtemp(prefix="pretrax-test-xla-")
    os.environ["PRETRAX_COMPILE_CACHE"] = config.compile_cache_made


def pytest_unconfigure(config):
  made = getattr(config, "compile_cache_made", None)
  if made:
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_dir() -> str:
  """The repository checkout (benchmarks/ and configs/ as files)."""
  return REPO


@pytest.fixture(scope="session")
def shakespeare_path() -> str:
  """tinyshakespeare from the shared/ folder checked out beside the repository."""
  if not os.path.isfile(SHAKESPEARE):
    pytest.skip(f"{SHAKESPEARE} not found: check the repository out beside shared/ (CI does)")
  return SHAKESPEARE


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path) -> str:
  with open(shakespeare_path, encoding="utf-8") as f:
    return f.read()


def _read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def build_once(tmp_path_factory):
  """build_once(name, build) -> a directory that `build(directory)` filled, once per session.

  Under pytest-xdist every worker computes module-scoped fixtures again; a trained run that tests
  only read is made here by the first worker that asks, under a file lock, and reused by the
  others. Returns the directory (a pathlib.Path)."""
  import filelock
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's base directory, shared by the workers

  def get(name, build):
    directory = root / f"shared-{name}"
    with filelock.FileLock(f"{directory}.lock"):
      if not (directory / ".built").exists():
        shutil.rmtree(directory, ignore_errors=True)  # a build that failed half-way
        directory.mkdir()
        build(directory)
        (directory / ".built").touch()
    return directory

  return get


@pytest.fixture(scope="session")
def read_metrics():
  """read_metrics(workdir) -> the records of WORKDIR/metrics.jsonl."""
  return _read_metrics


@pytest.fixture(scope="session")
def tiny_gpt_config(shakespeare_text):
  """tiny_gpt_config(root, **overrides): a seconds-long 1-layer GPT config on the first 60 KB of
  tinyshakespeare, written to and built under the folder `root`."""
  from pretrax.training import config as config_lib

  def make(root, **overrides):
    corpus = root / "shakespeare.txt"
    if not corpus.exists():
      corpus.write_text(shakespeare_text[:60_000])
    base = {"data.source": f"text:{corpus}", "data.data_dir": str(root / "tfds"),
            "model.num_layers": "1", "model.d_model": "32", "model.num_heads": "2",
            "model.max_seq_len": "32", "data.seq_len": "32", "train.batch_size": "8",
            "train.steps": "8", "train.log_every": "2", "train.eval_every": "4",
            "train.eval_steps": "2", "checkpoint.every": "4", "optimizer.warmup_steps": "2"}
    return config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"), base | overrides)

  return make


@pytest.fixture(scope="session")
def tiny_bert_config(tiny_gpt_config):
  """tiny_bert_config(root, **overrides): the same corpus and sizes for a 1-layer BERT."""
  from pretrax.training import config as config_lib

  def make(root, **overrides):
    gpt = tiny_gpt_config(root)
    base = {"data.source": gpt.data.source, "data.data_dir": gpt.data.data_dir,
            "model.num_layers": "1", "model.d_model": "32", "model.num_heads": "2",
            "model.max_seq_len": "64", "data.seq_len": "64", "data.max_predictions_per_seq": "10",
            "train.batch_size": "8", "train.steps": "8", "train.log_every": "2",
            "train.eval_every": "4", "train.eval_steps": "2", "checkpoint.every": "4",
            "optimizer.warmup_steps": "2", "optimizer.learning_rate": "3e-3"}
    return config_lib.apply_overrides(config_lib.load_preset("bert:tiny"), base | overrides)

  return make


@pytest.fixture(scope="session")
def tiny_seq2seq_config(tiny_gpt_config):
  """tiny_seq2seq_config(root, preset="t5:tiny", **overrides): the same corpus and sizes for a
  1+1-layer encoder-decoder of the preset's family and objective."""
  from pretrax.training import config as config_lib

  def make(root, preset="t5:tiny", **overrides):
    gpt = tiny_gpt_config(root)
    base = {"data.source": gpt.data.source, "data.data_dir": gpt.data.data_dir,
            "model.num_layers": "1", "model.d_model": "32", "model.num_heads": "2",
            "model.head_dim": "16", "model.d_ff": "64", "model.max_seq_len": "32",
            "data.seq_len": "32", "train.batch_size": "8", "train.steps": "8",
            "train.log_every": "2", "train.eval_every": "4", "train.eval_steps": "2",
            "checkpoint.every": "4", "optimizer.warmup_steps": "2",
            "optimizer.learning_rate": "3e-3"}
    return config_lib.apply_overrides(config_lib.load_preset(preset), base | overrides)

  return make


# Metrics that do not depend on timing: equal runs agree on them exactly.
DETERMINISTIC = ("step", "loss", "accuracy", "lr", "grad_norm", "eval_loss", "eval_accuracy",
                 "eval_bits_per_byte")


def _assert_equal_runs(a: str, b: str, keys=DETERMINISTIC) -> None:
  from pretrax.inference import loading
  ra, rb = loading.load_run(a), loading.load_run(b)
  assert ra.step == rb.step
  for x, y in zip(jax.tree.leaves(ra.params), jax.tree.leaves(rb.params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ma, mb = _read_metrics(a), _read_metrics(b)
  assert [m["step"] for m in ma] == [m["step"] for m in mb]
  for x, y in zip(ma, mb):
    assert {k: x.get(k) for k in keys} == {k: y.get(k) for k in keys}, (x, y)


@pytest.fixture(scope="session")
def assert_equal_runs():
  """assert_equal_runs(workdir_a, workdir_b): the same final parameters, bit for bit, and the
  same per-step metrics (all but timings)."""
  return _assert_equal_runs


def _assert_batches_equal(got, want) -> None:
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)


@pytest.fixture(scope="session")
def assert_batches_equal():
  """assert_batches_equal(got, want): two lists of batches (dicts of arrays) are identical."""
  return _assert_batches_equal


def _words(row, starts) -> list[list[int]]:
  """Token indices of each word, by a plain loop: a start (or the first non-special after a
  special) and the non-start non-special tokens after it. Ids 0-6 are pretrax's specials."""
  words, prev_special = [], True
  for i, (t, s) in enumerate(zip(row, starts)):
    special = int(t) < 7
    if not special:
      if s or prev_special:
        words.append([i])
      else:
        words[-1].append(i)
    prev_special = special
  return words


@pytest.fixture(scope="session")
def words_of():
  """words_of(row, word_starts) -> the token indices of each word (the reference grouping)."""
  return _words


@pytest.fixture(scope="session")
def random_model():
  """random_model(config, seed) -> (model, pure params): a model with every parameter drawn with
  numpy (faster than initializing on a slow CPU): norm scales 1 + 0.1·N(0, 1), biases and
  relative/logit-bias tables 0.3·N(0, 1), weights config.init_std·N(0, 1)."""
  import jax.numpy as jnp
  from flax import nnx
  from pretrax.modeling import models

  def make(config, seed: int):
    graphdef, state = models.abstract_model(config)
    rng = np.random.default_rng(seed)

    def draw(path, a):
      key, noise = str(path[-1].key), rng.standard_normal(a.shape).astype(np.float32)
      if key == "scale_d":
        return 1.0 + 0.1 * noise
      if key.startswith("b") or key in ("final_logits_bias_v", "table_rh"):
        return 0.3 * noise
      return config.init_std * noise

    params = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state), params

  return make
