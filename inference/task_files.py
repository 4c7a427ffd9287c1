"""Few-shot task files: the subset of lm-evaluation-harness's task YAML that a local task needs,
read the way lm-evaluation-harness 0.4 reads it, so a prompt built here is byte for byte the one
the harness builds.

  task: copa_local
  dataset_path: json
  dataset_kwargs: {data_files: {train: train.jsonl, test: test.jsonl}}
  test_split: test
  fewshot_split: train
  output_type: multiple_choice         # | loglikelihood | loglikelihood_rolling | generate_until
  doc_to_text: "{{premise}} because"   # a Jinja template, or the name of a field
  doc_to_choice: "{{[choice1, choice2]}}"
  doc_to_target: label                 # an index into the choices, or the text
  target_delimiter: " "                # between a question and its answer (default " ")
  fewshot_delimiter: "\\n\\n"          # after each worked example (default "\\n\\n")

Data: `dataset_path: json` with `dataset_kwargs.data_files` (one path or a list: split "train";
a mapping: split -> path(s)); JSON Lines or one JSON array; paths relative to the current
directory, as the harness reads them. Documents are evaluated from `test_split`, else
`validation_split`. Worked examples come from `fewshot_split` (else `training_split`, else
`validation_split`, else the test split), drawn with `random.Random(seed).sample` in document
order from one generator, as the harness draws them; when they come from the evaluated split the
document itself is excluded. Python code in task files (`!function`, `process_docs`, filters) is
not supported: such a file is refused, naming the key.

A prompt: description + for each worked example: text + target_delimiter + answer +
fewshot_delimiter; then the document's text. A request scores target_delimiter + choice
(multiple_choice), the target (loglikelihood), or the whole target (loglikelihood_rolling), or
generates until a string of `generation_kwargs.until` (generate_until).
"""

import ast
import dataclasses
import hashlib
import json
import os
import random
import re
from typing import Any

import jinja2
import yaml

from pretrax.data.errors import InputError

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
DEFAULT_METRICS = {  # as the harness's DEFAULT_METRIC_REGISTRY
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "generate_until": ["exact_match"],
}
EXACT_MATCH_OPTIONS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")
DEFAULT_SEED = 1234        # the harness's fewshot_random_seed
DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generate_until
# Keys that do not change what is computed.
_IGNORED_KEYS = ("tag", "group", "task_alias", "metadata", "should_decontaminate",
                 "doc_to_decontamination_query", "dataset_name", "output_type_version")
_UNSUPPORTED_KEYS = {  # key -> why
    "process_docs": "it runs Python code on the documents",
    "process_results": "it runs Python code on the results",
    "filter_list": "filters post-process generations with Python code",
    "custom_dataset": "it runs Python code",
    "use_prompt": "promptsource templates are not supported",
    "include": "write the task in one file",
    "class": "it names a Python class",
    "gen_prefix": "chat-style prefixes are not supported",
    "doc_to_image": "images are not text", "doc_to_audio": "audio is not text",
}
_KEYS = ("task", "dataset_path", "dataset_kwargs", "training_split", "validation_split",
         "test_split", "fewshot_split", "output_type", "doc_to_text", "doc_to_target",
         "doc_to_choice", "target_delimiter", "fewshot_delimiter", "description", "num_fewshot",
         "generation_kwargs", "metric_list", "fewshot_config", "repeats")

_jinja = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                            keep_trailing_newline=True)
_jinja.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s,
                                                                         count=count)


class _Loader(yaml.SafeLoader):
  """Safe YAML that names a `!function` tag instead of failing on it."""


def _refuse_tag(loader, suffix, node):
  raise InputError(f"line {node.start_mark.line + 1}: the tag !{suffix} runs Python code, which "
                   "pretrax task files do not support; write the field as a Jinja template")


_Loader.add_multi_constructor("!", _refuse_tag)


@dataclasses.dataclass
class Request:
  """One model call of a document: score `continuation` after `context` (loglikelihood; context
  "" for rolling), or generate after `context` until a string of `until`."""
  context: str
  continuation: str = ""
  until: tuple[str, ...] = ()


@dataclasses.dataclass
class TaskFile:
  path: str
  name: str
  output_type: str
  docs: list[dict]             # the evaluated split
  fewshot_docs: list[dict]
  exclude_doc: bool            # worked examples come from the evaluated split
  doc_to_text: Any
  doc_to_target: Any
  doc_to_choice: Any
  target_delimiter: str
  fewshot_delimiter: str
  description: str
  num_fewshot: int | None      # the file's default
  metrics: dict[str, dict]     # metric -> its options
  max_gen_toks: int
  until: tuple[str, ...]
  first_n: bool                # fewshot_config.sampler: first_n
  sha256: str

  # -- documents -> text, as the harness's ConfigurableTask --------------------------------------

  def _render(self, template, doc, what):
    try:
      return _jinja.from_string(template).render(**doc)
    except jinja2.TemplateError as e:
      raise InputError(f"{self.path}: {what} {template!r} on a document with fields "
                       f"{sorted(doc)}: {e}") from None

  def text(self, doc) -> str:
    value = self.doc_to_text
    if isinstance(value, str):
      value = doc[value] if value in doc else self._render(value, doc, "doc_to_text")
      if isinstance(value, str) and value.isdigit() and self.doc_to_choice is not None:
        value = int(value)
    if not isinstance(value, str):
      raise InputError(f"{self.path}: doc_to_text gave {value!r}, not text (tasks whose text is "
                       "a choice index, as winogrande's, are not supported)")
    return value

  def target(self, doc):
    value = self.doc_to_target
    if isinstance(value, str):
      if value in doc:
        return doc[value]
      value = self._render(value, doc, "doc_to_target")
      if value.isdigit() and self.doc_to_choice is not None:
        return ast.literal_eval(value)
      if len(value) >= 2 and value[0] == "[" and value[-1] == "]":
        try:
          return ast.literal_eval(value)
        except (SyntaxError, ValueError):
          return value
    return value

  def choices(self, doc) -> list[str]:
    value = self.doc_to_choice
    if isinstance(value, str):
      if value in doc:
        value = doc[value]
      else:
        rendered = self._render(value, doc, "doc_to_choice")
        try:
          value = ast.literal_eval(rendered)
        except (SyntaxError, ValueError):
          raise InputError(f"{self.path}: doc_to_choice rendered {rendered!r}, not a list "
                           "literal") from None
    elif isinstance(value, dict):
      value = list(value.values())
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
      raise InputError(f"{self.path}: doc_to_choice gave {value!r}, not a list of strings")
    return value

  def gold(self, doc) -> list[int]:
    """The indices of the correct choices of a multiple-choice document."""
    choices, target = self.choices(doc), self.target(doc)
    golds = target if isinstance(target, list) else [target]
    out = []
    for g in golds:
      if isinstance(g, str):
        if g not in choices:
          raise InputError(f"{self.path}: target {g!r} is not one of the choices {choices}")
        g = choices.index(g)
      if not isinstance(g, int) or not 0 <= g < len(choices):
        raise InputError(f"{self.path}: target {g!r} is not an index into the {len(choices)} "
                         "choices")
      out.append(g)
    return out

  def answer(self, doc) -> str:
    """A worked example's answer text."""
    target = self.target(doc)
    if self.doc_to_choice is not None and isinstance(target, int):
      return self.choices(doc)[target]
    if isinstance(target, list):
      return str(target[0])
    return str(target)

  # -- prompts ------------------------------------------------------------------------------

  def examples(self, doc, k: int, rnd: random.Random) -> list[dict]:
    """The k worked examples for `doc` (the harness's ContextSampler / FirstNSampler)."""
    if k == 0:
      return []
    pool = self.fewshot_docs
    if self.first_n:
      pool = [d for d in pool if d != doc] if self.exclude_doc else pool
      if k > len(pool):
        raise InputError(f"{self.path}: {k} worked examples asked for, {len(pool)} available")
      return pool[:k]
    need = k + self.exclude_doc
    if need > len(pool):
      raise InputError(f"{self.path}: {k} worked examples asked for but the few-shot split has "
                       f"{len(pool)} documents{' (one is the document itself)' if self.exclude_doc else ''}")
    if not self.exclude_doc:
      return rnd.sample(pool, k)
    drawn = [d for d in rnd.sample(pool, need) if d != doc][:k]
    if len(drawn) < k:  # the document appears more than once in the pool
      drawn = rnd.sample([d for d in pool if d != doc], k)
    return drawn

  def context(self, doc, k: int, rnd: random.Random) -> str:
    description = self.description
    if description:
      description = doc[description] if description in doc else self._render(
          description, doc, "description")
    parts = [description]
    for example in self.examples(doc, k, rnd):
      parts += [self.text(example), self.target_delimiter, self.answer(example),
                self.fewshot_delimiter]
    parts.append(self.text(doc))
    return "".join(parts)

  def requests(self, doc, k: int, rnd: random.Random) -> list[Request]:
    if self.output_type == "loglikelihood_rolling":
      return [Request("", str(self.target(doc)))]
    context = self.context(doc, k, rnd)
    if self.output_type == "multiple_choice":
      return [Request(context, self.target_delimiter + c) for c in self.choices(doc)]
    if self.output_type == "loglikelihood":
      return [Request(context, str(self.target(doc)))]
    return [Request(context, until=self.until)]


def _split_files(path: str, data_files) -> dict[str, list[str]]:
  if isinstance(data_files, (str, list)):
    data_files = {"train": data_files}
  if not isinstance(data_files, dict) or not data_files:
    raise InputError(f"{path}: dataset_kwargs.data_files must be a path, a list of paths or a "
                     f"mapping split -> path(s), not {data_files!r}")
  out = {}
  for split, files in data_files.items():
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
      raise InputError(f"{path}: dataset_kwargs.data_files[{split!r}] must be a path or a list "
                       f"of paths, not {files!r}")
    out[str(split)] = files
  return out


def _read_json_docs(task_path: str, file: str) -> list[dict]:
  if not os.path.isfile(file):
    raise InputError(f"{task_path}: data file {file!r} does not exist (paths are relative to "
                     f"the current directory, {os.getcwd()})")
  with open(file, encoding="utf-8") as f:
    text = f.read()
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      docs = json.loads(text)
    except json.JSONDecodeError as e:
      raise InputError(f"{file}: not valid JSON: {e}") from None
  else:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          docs.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise InputError(f"{file}:{number}: not valid JSON: {e}") from None
  for number, doc in enumerate(docs, 1):
    if not isinstance(doc, dict):
      raise InputError(f"{file}: document {number} is a {type(doc).__name__}, not an object")
  return docs


def _fill_missing(docs: list[dict]) -> list[dict]:
  """Every document gets every field of the split (None where it lacks one), as a table does."""
  fields = {}
  for doc in docs:
    fields.update(dict.fromkeys(doc))
  return [{k: doc.get(k) for k in fields} for doc in docs]


def _metrics(path: str, output_type: str, metric_list) -> dict[str, dict]:
  known = DEFAULT_METRICS[output_type] + (["acc_bytes"] if output_type == "multiple_choice" else [])
  if metric_list is None:
    return {m: {} for m in DEFAULT_METRICS[output_type]}
  if not isinstance(metric_list, list):
    raise InputError(f"{path}: metric_list must be a list of {{metric: NAME}}")
  out = {}
  for entry in metric_list:
    name = entry.get("metric") if isinstance(entry, dict) else None
    if name not in known:
      raise InputError(f"{path}: metric_list entry {entry!r}: the metrics of {output_type} are "
                       f"{', '.join(known)}")
    options = {k: v for k, v in entry.items()
               if k not in ("metric", "aggregation", "higher_is_better")}
    bad = [k for k in options if name != "exact_match" or k not in EXACT_MATCH_OPTIONS]
    if bad:
      raise InputError(f"{path}: metric {name}: option {bad[0]!r} is not supported"
                       + (f" (exact_match takes {', '.join(EXACT_MATCH_OPTIONS)})"
                          if name == "exact_match" else ""))
    out[name] = options
  return out


def load_task(path: str) -> TaskFile:
  """Reads and checks a task file and its documents."""
  if not os.path.isfile(path):
    raise InputError(f"task file {path!r} does not exist")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    spec = yaml.load(raw.decode("utf-8"), Loader=_Loader)
  except InputError as e:
    raise InputError(f"{path}: {e}") from None
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: not a YAML file: {e}") from None
  if not isinstance(spec, dict):
    raise InputError(f"{path}: a task file is a YAML mapping")
  for key in spec:
    if key in _UNSUPPORTED_KEYS:
      raise InputError(f"{path}: {key!r} is not supported: {_UNSUPPORTED_KEYS[key]}")
    if key not in _KEYS and key not in _IGNORED_KEYS:
      raise InputError(f"{path}: unknown key {key!r}; a task file has {', '.join(_KEYS)}")
  if spec.get("dataset_path") != "json":
    raise InputError(f"{path}: dataset_path is {spec.get('dataset_path')!r}; pretrax reads local "
                     "JSON data: dataset_path: json with dataset_kwargs: {data_files: ...}")
  kwargs = spec.get("dataset_kwargs") or {}
  if not isinstance(kwargs, dict) or "data_files" not in kwargs or set(kwargs) - {"data_files"}:
    raise InputError(f"{path}: dataset_kwargs must hold data_files (and nothing else), not "
                     f"{kwargs!r}")
  output_type = spec.get("output_type")
  if output_type not in OUTPUT_TYPES:
    raise InputError(f"{path}: output_type is {output_type!r}; choose one of "
                     f"{', '.join(OUTPUT_TYPES)}")
  if spec.get("repeats", 1) != 1:
    raise InputError(f"{path}: repeats={spec['repeats']}: only 1 is supported")
  for field in ("doc_to_text", "doc_to_target"):
    if output_type != "loglikelihood_rolling" or field == "doc_to_target":
      if spec.get(field) is None:
        raise InputError(f"{path}: {field} is required for output_type {output_type}")
  if output_type == "multiple_choice" and spec.get("doc_to_choice") is None:
    raise InputError(f"{path}: doc_to_choice is required for output_type multiple_choice")

  splits = {split: [doc for f in files for doc in _read_json_docs(path, f)]
            for split, files in _split_files(path, kwargs["data_files"]).items()}
  splits = {split: _fill_missing(docs) for split, docs in splits.items()}

  def split(field):
    name = spec.get(field)
    if name is not None and name not in splits:
      raise InputError(f"{path}: {field} is {name!r} but data_files has the splits "
                       f"{', '.join(splits)}")
    return name

  test, validation = split("test_split"), split("validation_split")
  training, fewshot = split("training_split"), split("fewshot_split")
  fewshot_config = spec.get("fewshot_config") or {}
  if not isinstance(fewshot_config, dict) or set(fewshot_config) - {"sampler", "split"}:
    raise InputError(f"{path}: fewshot_config supports sampler (default | first_n) and split, "
                     f"not {fewshot_config!r}")
  fewshot = fewshot_config.get("split", fewshot)
  if fewshot is not None and fewshot not in splits:
    raise InputError(f"{path}: fewshot_config.split {fewshot!r} is not a split of data_files")
  sampler = fewshot_config.get("sampler", "default")
  if sampler not in ("default", "first_n"):
    raise InputError(f"{path}: fewshot_config.sampler is {sampler!r}; choose default or first_n")
  evaluated = test if test is not None else validation
  if evaluated is None:
    raise InputError(f"{path}: set test_split or validation_split (the documents to evaluate)")
  pool = next(s for s in (fewshot, training, validation, test) if s is not None)
  generation = spec.get("generation_kwargs") or {}
  if not isinstance(generation, dict):
    raise InputError(f"{path}: generation_kwargs must be a mapping")
  bad = set(generation) - {"until", "max_gen_toks", "do_sample", "temperature"}
  if bad or generation.get("do_sample") or generation.get("temperature", 0) not in (0, 0.0):
    raise InputError(f"{path}: generation_kwargs supports until and max_gen_toks with greedy "
                     f"decoding (do_sample: false, temperature: 0), not {generation!r}")
  fewshot_delimiter = spec.get("fewshot_delimiter", "\n\n")
  until = generation.get("until", [fewshot_delimiter])
  until = [until] if isinstance(until, str) else until
  num_fewshot = spec.get("num_fewshot")
  if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
    raise InputError(f"{path}: num_fewshot must be an int >= 0, not {num_fewshot!r}")
  docs = splits[evaluated]
  if not docs:
    raise InputError(f"{path}: split {evaluated!r} holds no documents")
  return TaskFile(
      path=path, name=str(spec.get("task") or os.path.splitext(os.path.basename(path))[0]),
      output_type=output_type, docs=docs, fewshot_docs=splits[pool],
      exclude_doc=fewshot == test, doc_to_text=spec.get("doc_to_text"),
      doc_to_target=spec.get("doc_to_target"), doc_to_choice=spec.get("doc_to_choice"),
      target_delimiter=spec.get("target_delimiter", " "), fewshot_delimiter=fewshot_delimiter,
      description=spec.get("description") or "", num_fewshot=num_fewshot,
      metrics=_metrics(path, output_type, spec.get("metric_list")),
      max_gen_toks=int(generation.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
      until=tuple(str(u) for u in until), first_n=sampler == "first_n",
      sha256=hashlib.sha256(raw).hexdigest())
