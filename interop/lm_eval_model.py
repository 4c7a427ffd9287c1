"""pretrax as an lm-evaluation-harness model (`pip install "pretrax[lm_eval]"`).

  pretrax-lm-eval run --model pretrax --model_args workdir=RUN --tasks hellaswag
  pretrax-lm-eval run --model pretrax --model_args workdir=RUN,step=2000,add_bos=False \\
      --include_path configs/tasks --tasks pydoc_next_sentence --num_fewshot 3

`pretrax-lm-eval` is the harness's own command line (`lm_eval`) with the model "pretrax"
registered: lm-evaluation-harness 0.4 finds models only in its own package, so a plain `lm_eval
--model pretrax` cannot see it. From Python, importing this module registers it:

  import lm_eval, pretrax.interop.lm_eval_model
  lm_eval.simple_evaluate(model="pretrax", model_args="workdir=RUN", tasks=[...])

The model scores requests with pretrax's own evaluator (inference/fewshot.py): the same packed
batches, tokens and BOS rule as `pretrax eval --task`, so the harness's metrics over it equal
pretrax's. Model arguments: workdir (required), step (default: latest checkpoint), add_bos
(default True).
"""

import lm_eval.models  # noqa: F401  (the harness's own models, registered before ours)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from pretrax.data.errors import InputError
from pretrax.inference import fewshot, loading, task_files


def _flag(value) -> bool:
  if isinstance(value, bool):
    return value
  if str(value).lower() in ("true", "1", "yes"):
    return True
  if str(value).lower() in ("false", "0", "no"):
    return False
  raise InputError(f"add_bos={value!r}: use True or False")


@register_model("pretrax")
class PretraxLM(LM):
  """A pretrax run behind the harness's three request types."""

  def __init__(self, workdir: str, step=None, add_bos=True, **unused):
    super().__init__()
    self.run = loading.load_run(workdir, None if step in (None, "") else int(step))
    self.scorer = fewshot.Scorer(self.run, add_bos=_flag(add_bos))

  @property
  def tokenizer_name(self) -> str:  # the harness keys its request cache on it
    return f"pretrax-{self.run.tokenizer.kind}-{self.run.tokenizer.vocab_size}"

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    lls, greedy = self.scorer.loglikelihood([tuple(r.args[:2]) for r in requests])
    return [(float(ll), bool(g)) for ll, g in zip(lls, greedy)]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    return [float(ll) for ll in self.scorer.loglikelihood_rolling([r.args[0] for r in requests])]

  def generate_until(self, requests, disable_tqdm: bool = False):
    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
      kwargs = dict(request.args[1])
      until = kwargs.pop("until", None) or []
      until = (until,) if isinstance(until, str) else tuple(until)
      max_gen_toks = int(kwargs.pop("max_gen_toks", task_files.DEFAULT_MAX_GEN_TOKS))
      if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0)) != 0.0:
        raise InputError("the pretrax model generates greedily: do_sample false, temperature 0")
      groups.setdefault((until, max_gen_toks), []).append(i)
    for (until, max_gen_toks), members in groups.items():
      texts = self.scorer.generate([requests[i].args[0] for i in members], until, max_gen_toks)
      for i, text in zip(members, texts):
        out[i] = text
    return out


def main() -> None:
  """`pretrax-lm-eval`: the harness's command line with "pretrax" registered."""
  from lm_eval.__main__ import cli_evaluate
  cli_evaluate()


__all__ = ["PretraxLM", "main"]
