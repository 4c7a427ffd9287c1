"""The model class of each `config.model.family`."""

from flax import nnx

from pretrax.modeling.bert import BERT
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.gpt import GPT

FAMILIES = {"gpt": GPT, "bert": BERT}


def build(config: ModelConfig, rngs: nnx.Rngs) -> GPT | BERT:
  return FAMILIES[config.family](config, rngs=rngs)
