"""Experiment trackers (training/tracking.py): TensorBoard event files read back with
TensorBoard's own reader hold metrics.jsonl (in float32), across a crash and a resume; the
hyper-parameters; Weights & Biases offline."""

import glob
import importlib.util
import json
import os
import struct
import sys

import numpy as np
import pytest

from pretrax.training import config as config_lib, run_dir, tracking
from pretrax.training.config import ConfigError

HAS_WANDB = importlib.util.find_spec("wandb") is not None


class SimulatedCrash(RuntimeError):
  pass


@pytest.fixture(scope="module")
def crashed_and_resumed(build_once, tiny_gpt_config):
  """A tiny run that crashes at step 6 after logging it (its last checkpoint is step 4), then is
  resumed to step 8; with W&B offline when wandb is installed. Returns the workdir."""
  from pretrax.training import trainer

  def build(root):
    workdir = str(root / "run")
    overrides = {"checkpoint.async_save": "false"}  # checkpoint 4 is complete at the crash
    if HAS_WANDB:
      overrides["train.wandb_project"] = "pretrax-test"
    config = tiny_gpt_config(root, **overrides)
    write = tracking.Trackers.write

    def write_then_crash(self, record):
      write(self, record)
      if record["step"] == 6:
        raise SimulatedCrash("after logging step 6, before its checkpoint")

    with pytest.MonkeyPatch.context() as mp:
      for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        mp.setenv(name, str(root / name.lower()))
      mp.setenv("WANDB_MODE", "offline")  # no network
      mp.setenv("WANDB_SILENT", "true")
      mp.setenv("WANDB_CONSOLE", "off")
      mp.setattr(tracking.Trackers, "write", write_then_crash)
      with pytest.raises(SimulatedCrash):
        trainer.train(config, workdir)
      mp.setattr(tracking.Trackers, "write", write)
      assert run_dir.checkpoint_steps(workdir) == [4]
      trainer.train(config, workdir)  # resumes from step 4: steps 5 and 6 are trained again

  return str(build_once("tracking-crashed-and-resumed", build) / "run")


def _event_accumulator(workdir):
  from tensorboard.backend.event_processing import plugin_event_accumulator
  accumulator = plugin_event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"), size_guidance={"tensors": 0})
  accumulator.Reload()
  return accumulator


@pytest.mark.slow  # the fixture trains the tiny model twice
def test_tensorboard_scalars_are_metrics_jsonl_after_a_crash_and_resume(crashed_and_resumed,
                                                                           read_metrics):
  from tensorboard.util import tensor_util
  records = read_metrics(crashed_and_resumed)
  assert [r["step"] for r in records] == [2, 4, 6, 8]
  want = {}
  for record in records:
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        want.setdefault(tracking.tag(key), []).append((record["step"], float(np.float32(value))))
  assert {"train/loss", "train/lr", "train/tokens", "eval/loss", "eval/bits_per_byte"} <= set(want)

  accumulator = _event_accumulator(crashed_and_resumed)
  got = {}
  for tag in accumulator.Tags()["tensors"]:
    if tag.startswith(("train/", "eval/")):
      assert accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars", tag
      got[tag] = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                  for e in accumulator.Tensors(tag)]
  # Exactly, as float32: the first run's step 6 was purged, the re-trained one is there once.
  assert got == want


@pytest.mark.slow  # the fixture trains the tiny model twice
def test_tensorboard_holds_the_hyper_parameters(crashed_and_resumed):
  from tensorboard.plugins.hparams import metadata
  content = _event_accumulator(crashed_and_resumed).PluginTagToContent(metadata.PLUGIN_NAME)
  start = metadata.parse_session_start_info_plugin_data(
      content[metadata.SESSION_START_INFO_TAG])
  hparams = start.hparams
  assert hparams["model.num_layers"].number_value == 1
  assert hparams["train.steps"].number_value == 8
  assert hparams["checkpoint.async_save"].bool_value is False
  assert hparams["data.source"].string_value.startswith("text:")
  assert json.loads(hparams["mesh.axis_rules"].string_value) == json.loads(
      json.dumps(config_lib.DEFAULT_AXIS_RULES))
  experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
  assert [m.name.tag for m in experiment.metric_infos] == list(tracking.HPARAM_METRICS)


def _wandb_history(run_file: str) -> list[dict]:
  """The history rows of an offline W&B run file (a LevelDB-style log of Record protos)."""
  from wandb.proto import wandb_internal_pb2
  with open(run_file, "rb") as f:
    data = f.read()
  block, pos, pieces, rows = 32768, 7, b"", []  # 7: the ":W&B" file header
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a record header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    pieces += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # a full record, or the last piece of one
      record = wandb_internal_pb2.Record.FromString(pieces)
      pieces = b""
      if record.WhichOneof("record_type") == "history":
        rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                     for item in record.history.item})
  return rows


@pytest.mark.slow  # the fixture trains the tiny model twice
@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install -e '.[wandb]')")
def test_wandb_offline_run_continues_on_resume_and_logs_the_metrics(crashed_and_resumed,
                                                                    read_metrics):
  with open(os.path.join(crashed_and_resumed, "wandb_id")) as f:
    run_id = f.read().strip()
  # One offline run directory per invocation, both under the workdir's one W&B run id.
  runs = sorted(glob.glob(os.path.join(crashed_and_resumed, "wandb", "offline-run-*")))
  assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs), runs
  rows = _wandb_history(os.path.join(runs[-1], f"run-{run_id}.wandb"))
  last = read_metrics(crashed_and_resumed)[-1]
  assert rows[-1]["_step"] == last["step"] == 8
  assert rows[-1]["train/loss"] == last["loss"]
  assert rows[-1]["eval/loss"] == last["eval_loss"]


def test_missing_wandb_is_a_config_error_and_tensorboard_can_be_off(tmp_path, tiny_gpt_config,
                                                                    monkeypatch):
  config = tiny_gpt_config(tmp_path, **{"train.wandb_project": "p",
                                        "train.tensorboard": "false"})
  monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
  with pytest.raises(ConfigError, match=r"config\.train\.wandb_project.*\.\[wandb\]"):
    tracking.Trackers(config, str(tmp_path), 0)
  config.train.wandb_project = ""
  trackers = tracking.Trackers(config, str(tmp_path), 0)
  trackers.write({"step": 1, "loss": 1.0})
  trackers.close()
  assert not os.path.exists(tmp_path / "tensorboard")


def test_trackers_may_change_on_resume_and_restart_sets_their_files_aside(tmp_path,
                                                                           tiny_gpt_config):
  saved = tiny_gpt_config(tmp_path)
  changed = tiny_gpt_config(tmp_path, **{"train.tensorboard": "false",
                                         "train.wandb_project": "p"})
  assert len(run_dir.check_resume_config(saved, changed, str(tmp_path))) == 2
  for name in ("tensorboard", "wandb"):
    (tmp_path / name).mkdir()
  (tmp_path / "wandb_id").write_text("abc\n")
  moved = run_dir.set_aside_previous_run(str(tmp_path))
  assert sorted(os.listdir(moved)) == ["tensorboard", "wandb", "wandb_id"]
