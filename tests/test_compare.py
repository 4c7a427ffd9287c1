"""`pretrax compare` on run directories written by hand: summary.csv against values computed here
from the same metrics lines, seeds collated per configuration, plots as real PNGs, and errors that
name the file."""

import csv
import json
import os
import re

import numpy as np
import pytest
from matplotlib import image

from pretrax.data.errors import InputError
from pretrax.experiments import compare
from pretrax.training import config as config_lib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(directory, overrides: dict, records: list[dict] | None) -> str:
  """A run directory: config.json of gpt:tiny with `overrides`, metrics.jsonl of `records`
  (none: not started)."""
  os.makedirs(directory)
  config = config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"), overrides)
  config_lib.save_json(config, os.path.join(directory, "config.json"))
  if records is not None:
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  return str(directory)


def _records(steps, loss0: float, seed: int = 0, eval_every: int = 100) -> list[dict]:
  """Log records every 10 steps over `steps`, a startup record first, evals every `eval_every`."""
  out = []
  for i, step in enumerate(steps):
    record = {"step": step, "loss": loss0 - step / 100 + seed * 0.01, "tokens": step * 2048,
              "tokens_per_sec": 1000.0 + 10 * i + seed, "mfu": 0.01 + 0.001 * i,
              "elapsed_s": 2.0 * (i + 1), "lr": 1e-3, "grad_norm": 1.0}
    if i == 0:
      record |= {"startup_s": 5.0, "num_params": 824_576}
    if step % eval_every == 0:
      record |= {"eval_loss": loss0 - step / 90 + seed * 0.02, "eval_accuracy": step / 1000}
    out.append(record)
  return out


def _read_csv(path) -> list[dict]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_summary_csv_matches_values_computed_from_the_metrics(tmp_path):
  sweep = tmp_path / "sweep"
  # Run a: 300 steps in two invocations (killed after 150, resumed), a compile record with
  # tokens_per_sec 0, an eval loss that gets worse at the end (best != last).
  first = _records(range(10, 151, 10), 5.0)
  first[0] |= {"tokens_per_sec": 0.0, "mfu": 0.0}
  second = _records(range(160, 301, 10), 5.0)
  second[-1]["eval_loss"] = 9.0
  a = first + second
  _run(sweep / "a", {"model.norm_position": "pre"}, a)
  # Run b: partial, its second invocation's clock restarts without a startup_s record.
  b = _records(range(10, 101, 10), 6.0) + _records(range(110, 151, 10), 6.0)
  del b[10]["startup_s"]
  _run(sweep / "b", {"model.norm_position": "post"}, b)
  _run(sweep / "c", {"model.norm_position": "post", "optimizer.learning_rate": "0.01"}, None)

  result = compare.compare([str(sweep)])
  rows = {r["run"]: r for r in _read_csv(sweep / "summary.csv")}
  assert list(rows) == ["a", "b", "c"]

  def median_of(records, key):
    return np.median([r[key] for r in records if r["tokens_per_sec"] > 0])

  assert rows["a"]["status"] == "finished" and rows["a"]["steps"] == "300"
  assert float(rows["a"]["train_loss"]) == a[-1]["loss"]
  assert float(rows["a"]["best_eval_loss"]) == min(r["eval_loss"] for r in a if "eval_loss" in r)
  assert float(rows["a"]["best_eval_accuracy"]) == max(
      r["eval_accuracy"] for r in a if "eval_accuracy" in r)
  assert float(rows["a"]["tokens_per_sec"]) == median_of(a, "tokens_per_sec")
  assert float(rows["a"]["mfu"]) == median_of(a, "mfu")
  assert float(rows["a"]["wall_s"]) == first[-1]["elapsed_s"] + second[-1]["elapsed_s"]
  assert rows["a"]["num_params"] == "824576"

  assert rows["b"]["status"] == "step 150/300"
  assert float(rows["b"]["wall_s"]) == b[9]["elapsed_s"] + b[-1]["elapsed_s"]
  assert float(rows["b"]["train_loss"]) == b[-1]["loss"]
  assert rows["c"]["status"] == "not started"
  assert rows["c"]["train_loss"] == rows["c"]["wall_s"] == rows["c"]["num_params"] == ""

  # One run per configuration: the printed table is per run, and no per-configuration file.
  assert result.table.splitlines()[0].split()[0] == "run"
  assert "not started" in result.table and "step 150/300" in result.table
  assert not os.path.exists(sweep / "summary_by_config.csv")
  assert result.runs[0]["best_eval_loss"] == float(rows["a"]["best_eval_loss"])
  summary = result.summary()
  json.dumps(summary, allow_nan=False)
  assert summary["best"] == {"name": "a", "best_eval_loss": float(rows["a"]["best_eval_loss"])}
  assert summary["runs"] == 3 and summary["finished"] == 1


def test_differing_fields_are_columns_and_equal_fields_are_not(tmp_path):
  records = _records(range(10, 101, 10), 5.0)
  one = _run(tmp_path / "sweep1" / "x", {"model.norm_position": "pre", "train.seed": "1"},
             records)
  two = _run(tmp_path / "sweep2" / "x", {"model.norm_position": "post", "train.seed": "1",
                                         "model.num_layers": "4"}, records)
  result = compare.compare([one, two], output=str(tmp_path / "out"))
  assert result.fields == ["model.num_layers", "model.norm_position"]
  header = next(csv.reader(open(tmp_path / "out" / "summary.csv")))
  assert header[:3] == ["run", "model.num_layers", "model.norm_position"]
  assert "train.seed" not in header and "model.d_model" not in header
  # Several paths: run names are their paths below the runs' common parent.
  assert [r["run"] for r in result.runs] == ["sweep1/x", "sweep2/x"]
  assert [r["model.num_layers"] for r in result.runs] == [2, 4]


def test_seeds_collate_into_mean_and_sample_std_per_configuration(tmp_path):
  sweep = tmp_path / "sweep"
  for norm, loss0 in (("pre", 5.0), ("post", 5.5)):
    for seed in (0, 1, 2):
      records = _records(range(10, 201, 10), loss0 + 0.07 * seed ** 2, seed=seed)
      _run(sweep / f"{norm}-s{seed}", {"model.norm_position": norm, "train.seed": str(seed),
                                       "train.steps": "200"}, records)
  with open(sweep / "sweep.json", "w") as f:  # rows in the sweep's order, not by name
    json.dump({"runs": [{"name": f"{n}-s{s}", "overrides": {}}
                        for n in ("pre", "post") for s in (0, 1, 2)]}, f)
  result = compare.compare([str(sweep)])

  runs = _read_csv(sweep / "summary.csv")
  assert [r["run"] for r in runs] == ["pre-s0", "pre-s1", "pre-s2", "post-s0", "post-s1",
                                      "post-s2"]
  assert result.fields == ["model.norm_position", "train.seed"]
  configs = _read_csv(sweep / "summary_by_config.csv")
  assert [(c["model.norm_position"], c["n"]) for c in configs] == [("pre", "3"), ("post", "3")]
  for config in configs:
    mine = [r for r in runs if r["model.norm_position"] == config["model.norm_position"]]
    for column in ("train_loss", "best_eval_loss", "tokens_per_sec", "wall_s"):
      values = np.array([float(r[column]) for r in mine])
      assert float(config[f"{column}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
      assert float(config[f"{column}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
  # The printed table is per configuration: mean ± std and n, no seed column.
  header, _, *lines = result.table.splitlines()
  assert header.split()[:3] == ["model.norm_position", "n", "finished"]
  assert len(lines) == 2 and "±" in lines[0] and "3/3" in lines[0]
  assert result.summary()["configurations"] == 2


def test_plots_are_pngs_named_by_metric_and_field(tmp_path):
  sweep = tmp_path / "sweep"
  for i, (norm, lr) in enumerate((("pre", "0.001"), ("post", "0.001"), ("pre", "0.01"))):
    for seed in (0, 1):
      _run(sweep / f"r{i}s{seed}", {"model.norm_position": norm, "optimizer.learning_rate": lr,
                                    "train.seed": str(seed)},
           _records(range(10, 301, 10), 5.0 + i / 10, seed=seed))
  result = compare.compare([str(sweep)], output=str(tmp_path / "out"))
  plots = tmp_path / "out" / "plots"
  expected = [plots / f"eval_loss_{name}.png" for name in
              ("vs_step", "vs_tokens", "by_model.norm_position", "by_optimizer.learning_rate")]
  assert result.files == [str(tmp_path / "out" / "summary.csv"),
                          str(tmp_path / "out" / "summary_by_config.csv"), *map(str, expected)]
  for path in expected:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = image.imread(path).shape
    assert height > 100 and width > 100 and channels in (3, 4)
  assert not list(plots.glob("*train.seed*"))

  # --metric: a bare name means the eval metric; without evals the default is the train loss.
  assert compare.compare([str(sweep)], output=str(tmp_path / "acc"), metric="accuracy"
                         ).metric == "eval_accuracy"
  assert os.path.exists(tmp_path / "acc" / "plots" / "eval_accuracy_vs_step.png")
  plain = _run(tmp_path / "plain", {}, [{k: v for k, v in r.items() if not k.startswith("eval_")}
                                         for r in _records(range(10, 51, 10), 5.0)])
  assert compare.compare([plain]).metric == "loss"
  with pytest.raises(InputError, match="--metric=bleu: no run logged it"):
    compare.compare([plain], metric="bleu")


def test_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(InputError, match=re.escape(f"{missing}: no such directory")):
    compare.compare([missing])

  empty = tmp_path / "empty"
  (empty / "checkpoints").mkdir(parents=True)
  with pytest.raises(InputError, match=re.escape(f"{empty}: holds no run")):
    compare.compare([str(empty)])

  run = _run(tmp_path / "run", {}, _records(range(10, 31, 10), 5.0))
  metrics = os.path.join(run, "metrics.jsonl")
  with open(metrics, "a") as f:
    f.write('{"step": 40, "loss": \n{"step": 50}\n')
  with pytest.raises(InputError, match=re.escape(f"{metrics} line 4: not JSON")):
    compare.compare([run])

  # A last line without its newline is being written: skipped, not an error.
  with open(metrics, "w") as f:
    f.write(json.dumps({"step": 10, "loss": 4.0}) + "\n" + '{"step": 20, "lo')
  assert compare.compare([run]).runs[0]["steps"] == 10

  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text("{not json")
  with pytest.raises(InputError, match=re.escape(f"{broken / 'config.json'}: not JSON")):
    compare.compare([str(broken)])

  with pytest.raises(InputError, match="give --output=DIR"):
    compare.compare([run, str(broken)])
