"""The model class of each `config.model.family`, and the one place a model config is validated."""

from flax import nnx

from pretrax.modeling.bert import BERT
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.encoder_decoder import EncoderDecoder
from pretrax.modeling.gpt import GPT

FAMILIES = {"gpt": GPT, "bert": BERT, "encoder_decoder": EncoderDecoder}


def build(config: ModelConfig, rngs: nnx.Rngs) -> GPT | BERT | EncoderDecoder:
  """The model of `config.family`, after `config.validate()` (the layers do not validate)."""
  config.validate()
  return FAMILIES[config.family](config, rngs=rngs)


def build_model(config: ModelConfig, seed: int = 0) -> GPT | BERT | EncoderDecoder:
  """The model of `config` with parameters initialized from `seed`."""
  return build(config, nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig):
  """(graphdef, abstract nnx.State) without allocating parameters."""
  return nnx.split(nnx.eval_shape(lambda: build_model(config)))
