"""Config presets, command-line overrides and the errors they raise."""

import dataclasses
import importlib
import json
import os

import jax
import pytest
from flax import nnx

from pretrax.cli import main as cli
from pretrax.modeling import models
from pretrax.training import config as config_lib
from pretrax.training.config import ConfigError


def _variants():
  for name in config_lib.available_presets():
    for variant in importlib.import_module(f"pretrax.configs.{name}").VARIANTS:
      yield f"{name}:{variant}"


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(_variants()))
def test_every_preset_loads_validates_and_builds(spec):
  config = config_lib.load_preset(spec)
  config.model.vocab_size = config.model.vocab_size or 384
  config_lib.validate(config)
  abstract = nnx.eval_shape(lambda: models.build_model(config.model))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract))) > 0


def test_gpt2_124m_has_gpt2_small_parameter_count():
  config = config_lib.load_preset("gpt:gpt2_124m")
  config.model.vocab_size = 50_257  # GPT-2's own vocabulary: 124,439,808 parameters
  abstract = nnx.eval_shape(lambda: models.build_model(config.model))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract))) == 124_439_808


def test_overrides_are_typed():
  base = config_lib.load_preset("gpt:tiny")
  config = config_lib.apply_overrides(base, {
      "model.num_layers": "3", "optimizer.learning_rate": "1e-4", "data.shuffle": "false",
      "data.source": "text:/tmp/x.txt", "mesh.axis_rules": '[["batch", ["data"]], ["embed", null]]'})
  assert config.model.num_layers == 3 and base.model.num_layers == 2  # the preset is untouched
  assert config.optimizer.learning_rate == 1e-4
  assert config.data.shuffle is False
  assert config.data.source == "text:/tmp/x.txt"
  assert config.mesh.axis_rules == (("batch", ("data",)), ("embed", None))


@pytest.mark.parametrize("key,value,match", [
    ("model.num_layer", "2", "unknown config key 'model.num_layer'; did you mean model.num_layers"),
    ("modle.num_layers", "2", "unknown config key 'modle'; did you mean model"),
    ("train.steps", "ten", r"--config.train.steps='ten': expected an integer"),
    ("data.shuffle", "maybe", "expected a boolean"),
    ("optimizer.learning_rate", "fast", "expected a number"),
    ("model", "3", "is a section"),
    ("model.d_model.x", "3", "is a value, not a section"),
])
def test_bad_override_names_the_key(key, value, match):
  base = config_lib.load_preset("gpt:tiny")
  with pytest.raises(ConfigError, match=match):
    config_lib.apply_overrides(base, {key: value})


@pytest.mark.parametrize("overrides,match", [
    ({"data.seq_len": "4096"}, "longer than the position table config.model.max_seq_len"),
    ({"model.num_heads": "3"}, "not divisible by config.model.num_heads"),
    ({"train.grad_accum_steps": "5"}, "not divisible by config.train.grad_accum_steps"),
    ({"data.source": "s3://bucket"}, "config.data.source"),
    ({"mesh.data": "-1", "mesh.fsdp": "-1"}, "at most one of data, fsdp, tensor may be -1"),
    ({"optimizer.decay": "step"}, "config.optimizer.decay"),
])
def test_invalid_combinations_fail_validation(overrides, match):
  config = config_lib.apply_overrides(
      config_lib.load_preset("gpt:tiny"), overrides)
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(config)


def test_every_float_field_must_be_finite():
  config = config_lib.load_preset("gpt:tiny")
  fields = [(section.name, field.name) for section in dataclasses.fields(config)
            for field in dataclasses.fields(getattr(config, section.name))
            if isinstance(getattr(getattr(config, section.name), field.name), float)]
  assert len(fields) >= 15  # optimizer, train, data, model and finetune fields
  for section, name in fields:
    for bad in ("nan", "inf", "-inf"):
      config = config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"),
                                          {f"{section}.{name}": bad})
      with pytest.raises(ConfigError, match=rf"^config\.{section}\.{name}={bad} is not a finite"):
        config_lib.validate(config)


def test_json_round_trip(tmp_path):
  config = config_lib.load_preset("gpt:small")
  config_lib.save_json(config, str(tmp_path / "config.json"))
  assert config_lib.load_json(str(tmp_path / "config.json")) == config


def test_a_config_json_of_an_earlier_version_loads_without_removed_fields(tmp_path):
  config = config_lib.load_preset("bert:tiny")
  values = config_lib.to_dict(config)
  values["data"]["num_workers"] = 2  # written before BERT's pairs were built ahead
  (tmp_path / "config.json").write_text(json.dumps(values))
  assert config_lib.load_json(str(tmp_path / "config.json")) == config
  with pytest.raises(ConfigError, match="unknown config key 'data.num_workers'"):
    config_lib.apply_overrides(config, {"data.num_workers": "2"})  # never as an override


def test_unknown_variant_and_missing_file():
  with pytest.raises(ConfigError, match="no variant 'huge'"):
    config_lib.load_preset("gpt:huge")
  with pytest.raises(ConfigError, match="no such file"):
    config_lib.load_preset("configs/nope.py:tiny")
  with pytest.raises(ConfigError, match=r"(?s)no preset 'gtp'.*  gpt:tiny +~0.4M"):
    config_lib.load_preset("gtp:tiny")


def test_presets_resolve_by_name_from_any_directory_and_equal_their_files(tmp_path, repo_dir,
                                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ folder here
  assert config_lib.available_presets() == ["bart", "bert", "finetune", "gpt", "t5",
                                            "transformer"]
  by_name = config_lib.load_preset("bert:base")
  by_file = config_lib.load_preset(os.path.join(repo_dir, "configs", "bert.py") + ":base")
  assert by_name == by_file and by_name.model.num_layers == 12


def test_cli_rejects_a_typo_before_any_compute(tmp_path, capsys):
  workdir = tmp_path / "run"
  code = cli.main(["train", "--config=gpt:tiny", f"--workdir={workdir}",
                   "--config.model.num_layer=2"])
  assert code == 2
  assert "model.num_layer" in capsys.readouterr().err
  assert not workdir.exists()  # nothing was created
