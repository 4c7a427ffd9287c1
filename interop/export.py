"""Exporting a run (to Hugging Face, or as a params-only checkpoint) and importing HF models.

  pretrax export --workdir=RUN --format=hf --output=OUT [--step=N]
      OUT/config.json, OUT/model.safetensors: `GPT2LMHeadModel` / `BertForPreTraining` /
      `BartForConditionalGeneration` / `T5ForConditionalGeneration` / `MarianMTModel`
      (`from_pretrained(OUT)`), the tokenizer as `AutoTokenizer.from_pretrained(OUT)` loads it
      (tokenizer.json, tokenizer_config.json, special_tokens_map.json: the same ids as pretrax's,
      BOS added first for a GPT; data/hf_tokenizer.py), tokenizer.model for SentencePiece, and
      pretrax_tokenizer.json / pretrax_config.json, which `pretrax import` reads back.
  pretrax export --workdir=RUN --format=params --output=OUT [--step=N]
      a run directory without optimizer or data state: OUT/config.json, OUT/tokenizer.*,
      OUT/checkpoints/STEP/state = {"params"}; `pretrax eval/score/sample --workdir=OUT` read it.
  pretrax import --format=hf --input=HF_DIR --workdir=RUN [--tokenizer=byte|PATH.model|PATH.json]
      a local GPT-2 / BERT / BART / T5 / Marian folder -> a run directory with checkpoint 0
      (params + a fresh optimizer state) that `pretrax train` continues. The run keeps the
      folder's own tokenizer (tokenizer.json, or files `transformers` turns into one, such as
      GPT-2's vocab.json + merges.txt) unless --tokenizer names another.

The parameter mapping itself lives in `interop/hf.py`.
"""

import dataclasses
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.modeling import models
from pretrax.inference import loading
from pretrax.data.errors import InputError
from pretrax.data import hf_tokenizer, tokenizers
from pretrax.modeling.config import ModelConfig
from pretrax.interop import hf, hf_seq2seq
from pretrax.training import checkpointing, config as config_lib, optimizer as optimizer_lib
from pretrax.training import step as step_lib
from pretrax.training.config import Config

HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_TORCH_WEIGHTS = "pytorch_model.bin"
PRETRAX_TOKENIZER = "pretrax_tokenizer.json"  # the tokenizer's description and special ids
PRETRAX_CONFIG = "pretrax_config.json"        # the source run's full config, for a faithful import


def directory_bytes(path: str) -> int:
  """Total size of the files under `path`."""
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def _check_new_output(output: str) -> None:
  if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
    raise InputError(f"--output={output} already exists and is not an empty directory; choose a "
                     "new path (nothing is overwritten)")


def _load_config(workdir: str) -> Config:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} is not a pretrax run directory: no config.json "
                            "(train one with `pretrax train --workdir=...`)")
  return config_lib.load_json(path)


def require_hf_extra(command: str) -> None:
  """An InputError naming the install command when the `hf` extra (safetensors) is missing, before
  anything is read or written."""
  try:
    import safetensors.numpy  # noqa: F401
  except ImportError:
    raise InputError(f"pretrax {command} --format=hf needs the optional `hf` extra "
                     "(safetensors): pip install -e \".[hf]\" in the pretrax checkout, or "
                     "pip install safetensors") from None


# --------------------------------------------------------------------------------------------
# Export.


def export_hf(workdir: str, output: str, step: int | None = None) -> dict:
  """Writes checkpoint `step` (default: latest) of the run in `workdir` as a HF model folder.

  Refuses (ValueError naming the config field) a model with no GPT-2 / BERT / BART / T5 /
  Marian equivalent (which one an encoder-decoder becomes: interop/hf_seq2seq.py). The
  embedding keeps the padded rows: the HF vocab_size is config.model.vocab_size.
  """
  require_hf_extra("export")
  hf.check_exportable(_load_config(workdir).model)  # fail before reading any parameter
  _check_new_output(output)
  run = loading.load_run(workdir, step)
  model = run.config.model
  tok = run.tokenizer
  roles = tok.special_token_ids()
  special = {"pad_token_id": roles["pad"] if roles["pad"] not in (None, -1) else None,
             "bos_token_id": roles["bos"], "eos_token_id": roles["eos"]}
  hf_config = hf.to_hf_config(model, special)
  state = hf.to_hf_state(model, jax.device_get(run.params))
  os.makedirs(output, exist_ok=True)

  import safetensors.numpy
  safetensors.numpy.save_file(state, os.path.join(output, HF_WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(output, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
    f.write("\n")
  hf_tokenizer.write_hf_tokenizer(tok, output, model.family, model.max_seq_len)
  tokenizer_file = None  # the file `pretrax import` reads the tokenizer from
  if tok.kind == "sentencepiece":
    tokenizer_file = tok.save(output)
  elif tok.kind == "huggingface":
    tokenizer_file = hf_tokenizer.TOKENIZER_JSON
  description = {**tok.describe(),
                 "file": os.path.basename(tokenizer_file) if tokenizer_file else None,
                 "model_vocab_size": model.vocab_size, "special_token_ids": roles}
  if tok.kind == "byte":
    description["byte_offset"] = tok.byte_offset
  with open(os.path.join(output, PRETRAX_TOKENIZER), "w") as f:
    json.dump(description, f, indent=2)
    f.write("\n")
  config_lib.save_json(run.config, os.path.join(output, PRETRAX_CONFIG))
  return {"format": "hf", "output": output, "step": run.step,
          "architecture": hf_config["architectures"][0], "vocab_size": model.vocab_size,
          "tokenizer": tok.kind, "bytes": directory_bytes(output)}


def export_params(workdir: str, output: str, step: int | None = None) -> dict:
  """Writes a params-only copy of checkpoint `step` (default: latest): a run directory.

  OUT/config.json and the tokenizer are the run's; OUT/checkpoints/STEP holds the item `state`
  with {"params"} only (no optimizer moments, no data-iterator state), which
  `checkpointing.load_run` (eval, score, sample) reads like a training checkpoint.
  """
  _check_new_output(output)
  run = loading.load_run(workdir, step)
  os.makedirs(output, exist_ok=True)
  config_lib.save_json(run.config, os.path.join(output, "config.json"))
  run.tokenizer.save(output)
  checkpointer = checkpointing.Checkpointer(
      output, dataclasses.replace(run.config.checkpoint, async_save=False))
  checkpointer.save(run.step, {"params": run.params})
  checkpointer.close()
  source = os.path.join(workdir, "checkpoints", str(run.step))
  return {"format": "params", "output": output, "step": run.step,
          "bytes": directory_bytes(output),
          "checkpoint_bytes": directory_bytes(os.path.join(output, "checkpoints")),
          "source_checkpoint_bytes": directory_bytes(source)}


# --------------------------------------------------------------------------------------------
# Import.


def read_hf_tensors(input_dir: str) -> dict[str, np.ndarray]:
  """All tensors of a HF folder (model.safetensors, sharded safetensors, or pytorch_model.bin)."""
  from safetensors import safe_open
  files = []
  if os.path.isfile(os.path.join(input_dir, HF_WEIGHTS)):
    files = [HF_WEIGHTS]
  elif os.path.isfile(os.path.join(input_dir, HF_WEIGHTS_INDEX)):
    with open(os.path.join(input_dir, HF_WEIGHTS_INDEX)) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(os.path.join(input_dir, HF_TORCH_WEIGHTS)):
    import torch
    state = torch.load(os.path.join(input_dir, HF_TORCH_WEIGHTS), map_location="cpu",
                       weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  else:
    raise FileNotFoundError(f"{input_dir} holds no weights: expected {HF_WEIGHTS}, "
                            f"{HF_WEIGHTS_INDEX} or {HF_TORCH_WEIGHTS}")
  tensors = {}
  for name in files:
    path = os.path.join(input_dir, name)
    try:
      with safe_open(path, framework="np") as f:
        tensors.update({k: f.get_tensor(k) for k in f.keys()})
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: read through torch
      with safe_open(path, framework="pt") as f:
        tensors.update({k: f.get_tensor(k).float().numpy() for k in f.keys()})
  return tensors


def _folder_tokenizer(input_dir: str) -> tokenizers.Tokenizer | None:
  """The pretrax tokenizer an `export_hf` folder carries, or None."""
  path = os.path.join(input_dir, PRETRAX_TOKENIZER)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    description = json.load(f)
  if description.get("kind") == "byte":
    return tokenizers.ByteTokenizer()
  if description.get("kind") == "huggingface":
    return hf_tokenizer.HuggingFaceTokenizer(
        os.path.join(input_dir, description.get("file") or hf_tokenizer.TOKENIZER_JSON))
  if description.get("kind") != "sentencepiece":
    raise InputError(f"{path}: unknown tokenizer kind {description.get('kind')!r}")
  model_path = os.path.join(input_dir, description.get("file") or tokenizers.MODEL_FILENAME)
  tok = tokenizers.SentencePieceTokenizer(model_path)
  if description.get("sha256") and tok.describe()["sha256"] != description["sha256"]:
    raise InputError(f"{model_path} is not the SentencePiece model {path} describes (sha256 "
                     "differs)")
  return tok


# Files from which `transformers` builds a model's tokenizer when tokenizer.json is missing.
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt", "vocab.txt", "spiece.model",
                        "sentencepiece.bpe.model", "tokenizer.model")


def _hf_folder_tokenizer(input_dir: str) -> tokenizers.Tokenizer | None:
  """The folder's own Hugging Face tokenizer: its tokenizer.json, else the one `transformers`
  builds from its other tokenizer files (GPT-2's vocab.json + merges.txt); None if it has none."""
  if os.path.isfile(os.path.join(input_dir, hf_tokenizer.TOKENIZER_JSON)):
    return hf_tokenizer.HuggingFaceTokenizer(input_dir)
  found = [f for f in SLOW_TOKENIZER_FILES if os.path.isfile(os.path.join(input_dir, f))]
  if not found:
    return None
  what = f"{input_dir} ({', '.join(found)})"
  try:
    import transformers
    converted = transformers.AutoTokenizer.from_pretrained(input_dir, local_files_only=True)
  except Exception as e:  # whatever the files' parser raises
    raise InputError(f"cannot read the tokenizer of {what} with transformers.AutoTokenizer: "
                     f"{type(e).__name__}: {e}. Pass --tokenizer=byte, --tokenizer=PATH.model "
                     "or --tokenizer=PATH/tokenizer.json") from None
  if getattr(converted, "backend_tokenizer", None) is None:
    raise InputError(f"the tokenizer of {what} has no tokenizer.json form (transformers gives a "
                     f"{type(converted).__name__}). Pass --tokenizer=byte, "
                     "--tokenizer=PATH.model or --tokenizer=PATH/tokenizer.json")
  with tempfile.TemporaryDirectory() as tmp:
    converted.save_pretrained(tmp)
    return hf_tokenizer.HuggingFaceTokenizer(tmp)


def _import_tokenizer(input_dir: str, spec: str | None,
                      vocab_size: int) -> tuple[tokenizers.Tokenizer, list[str]]:
  notes = []
  try:
    own = _folder_tokenizer(input_dir) or _hf_folder_tokenizer(input_dir)
  except InputError:
    if not spec:
      raise
    own = None  # --tokenizer replaces it anyway
  if spec:
    tok = tokenizers.load_tokenizer(spec)
    if own is None:
      notes.append(f"tokenizer {spec!r} is not the one these weights were trained with: the "
                   "pretrained embedding rows stand for other tokens, so the weights are only an "
                   "initialization for further training")
    elif own.describe() != tok.describe():
      notes.append(f"tokenizer {spec!r} replaces the {own.kind} tokenizer exported with the model")
  elif own is not None:
    tok = own
  else:
    raise InputError(
        f"{input_dir} holds no tokenizer: no {PRETRAX_TOKENIZER}, no "
        f"{hf_tokenizer.TOKENIZER_JSON} and none of {', '.join(SLOW_TOKENIZER_FILES)}. Pass "
        "--tokenizer=byte, --tokenizer=PATH.model (a SentencePiece model trained with `pretrax "
        "tokenizer train`) or --tokenizer=PATH/tokenizer.json; a tokenizer other than the "
        "model's own makes the pretrained embedding rows only an initialization")
  if tok.vocab_size > vocab_size:
    raise InputError(f"the {tok.kind} tokenizer has {tok.vocab_size} ids but the model's "
                     f"embedding (vocab_size in {input_dir}/config.json) has only {vocab_size} "
                     "rows; use a tokenizer with at most that many ids")
  return tok, notes


def _base_config(input_dir: str, family: str, model_type: str) -> tuple[Config, bool]:
  """The source run's config when the folder came from `export_hf`, else the preset of the
  family (gpt, bert) or of the HF model type (bart, t5; marian: transformer)."""
  path = os.path.join(input_dir, PRETRAX_CONFIG)
  if os.path.isfile(path):
    config = config_lib.load_json(path)
    if config.model.family == family:
      return config, True
  preset = hf_seq2seq.ARCHITECTURES[model_type][3] if family == "encoder_decoder" else family
  return config_lib.load_preset(preset), False


def _same_computation(a: ModelConfig, b: ModelConfig) -> bool:
  """True if `a` and `b` build the same model (d_ff / head_dim spelled out or left at 0)."""
  normalize = lambda m: dataclasses.replace(m, d_ff=m.mlp_dim, head_dim=m.attn_head_dim)
  return normalize(a) == normalize(b)


def import_hf(input_dir: str, workdir: str, tokenizer: str | None = None) -> dict:
  """Turns a local `transformers` GPT-2 / BERT / BART / T5 / Marian folder into a pretrax run
  directory.

  Writes WORKDIR/config.json (the model section mapped from the HF config, the rest from the
  family preset, or from the exporting run's config when the folder came from `export_hf`),
  the tokenizer, and WORKDIR/checkpoints/0 with the parameters and a fresh optimizer state (no
  data-iterator state). BERT heads the folder lacks (BertModel: MLM head and NSP;
  BertForMaskedLM: pooler and NSP) are initialized fresh and listed in the result.
  `tokenizer`: "byte", a SentencePiece .model path or a Hugging Face tokenizer.json (or its
  folder); default: the folder's own (pretrax's from `export_hf`, else its Hugging Face one).
  """
  require_hf_extra("import")
  config_path = os.path.join(input_dir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"--input={input_dir} is not a Hugging Face model folder: no "
                            "config.json (save one with model.save_pretrained(DIR))")
  with open(config_path) as f:
    hf_config = json.load(f)
  family, architecture = hf.family_of(hf_config, config_path)
  if os.path.exists(os.path.join(workdir, "config.json")) or os.path.exists(
      os.path.join(workdir, "checkpoints")):
    raise InputError(f"--workdir={workdir} already holds a run; import into a new directory")

  config, from_pretrax = _base_config(input_dir, family, hf_config.get("model_type"))
  # Read before mapping the config: only the weights tell a T5 with a head of its own from a
  # tied one (transformers 5 writes tie_word_embeddings=true for both).
  tensors = read_hf_tensors(input_dir)
  model = hf.from_hf_config(hf_config, config.model, config_path, tensors)
  if from_pretrax and _same_computation(model, config.model):
    model = config.model  # keeps the run's own spelling of d_ff / head_dim
  config.model = model
  tok, notes = _import_tokenizer(input_dir, tokenizer, model.vocab_size)
  if not from_pretrax or tokenizer:
    config.data.tokenizer = tokenizers.saved_spec(tok, workdir)
  config.data.seq_len = min(config.data.seq_len, model.max_seq_len)
  config_lib.validate(config)

  dtypes = sorted({str(v.dtype) for v in tensors.values() if v.dtype != np.float32})
  if dtypes:
    notes.append(f"tensors stored as {', '.join(dtypes)} were converted to float32")
  if model.vocab_size % 128:
    notes.append(f"vocab_size={model.vocab_size} is kept as is (not a multiple of 128): the "
                 "embedding cannot be sharded over a tensor axis that does not divide it")
  if family == "gpt" and hf_config.get("embd_pdrop", 0.1) != hf_config.get("resid_pdrop", 0.1):
    notes.append(f"embd_pdrop={hf_config.get('embd_pdrop')} and resid_pdrop="
                 f"{hf_config.get('resid_pdrop')} differ; pretrax has one dropout rate "
                 f"(config.model.dropout={model.dropout}, from resid_pdrop)")
  if family == "encoder_decoder":
    notes += hf_seq2seq.notes(hf_config)
  _, abstract_state = models.abstract_model(model)
  abstract_params = nnx.to_pure_dict(abstract_state)

  def fresh():
    return nnx.to_pure_dict(nnx.state(models.build_model(model, config.train.seed)))

  params, fresh_names = hf.from_hf_state(model, tensors, abstract_params, fresh,
                                         source=input_dir)
  if fresh_names:
    print(f"pretrax import: {architecture} has no {', '.join(fresh_names)}; initialized fresh "
          f"(seed config.train.seed={config.train.seed})", flush=True)

  os.makedirs(workdir, exist_ok=True)
  tok.save(workdir)
  config_lib.save_json(config, os.path.join(workdir, "config.json"))
  params = jax.tree.map(jnp.asarray, params)
  optimizer = optimizer_lib.make_optimizer(config.optimizer, config.train.steps)
  state = step_lib.initial_state(params, optimizer)  # exactly what a fresh `pretrax train` saves
  checkpointer = checkpointing.Checkpointer(
      workdir, dataclasses.replace(config.checkpoint, async_save=False))
  checkpointer.save(0, state)
  checkpointer.close()
  return {"format": "hf", "input": input_dir, "workdir": workdir, "family": family,
          "architecture": architecture, "step": 0, "tokenizer": tok.kind,
          "vocab_size": model.vocab_size,
          "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
          "fresh": fresh_names, "notes": notes}

