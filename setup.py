"""pretrax: pretraining transformer language models in JAX/Flax, from a laptop CPU to pods."""

import setuptools

# The installed package is exactly these folders of the repository, as pretrax.<folder>, whether
# installed editable or not; tests/, benchmarks/ and setup.py are not part of it.
SUBPACKAGES = ("modeling", "data", "training", "inference", "interop", "experiments", "cli",
               "configs")
PACKAGES = [f"pretrax.{name}" for name in SUBPACKAGES] + ["pretrax.training.tasks",
                                                         "pretrax.configs.sweeps"]

setuptools.setup(
    name="pretrax",
    version="0.1.0",
    description="Pretrain BERT-style encoders and GPT-style decoders with JAX, Flax NNX and Grain.",
    python_requires=">=3.11",
    # `pretrax` is a namespace of the subpackages: no file of the repository root is in it.
    package_dir={package: package.removeprefix("pretrax.").replace(".", "/")
                 for package in PACKAGES},
    packages=PACKAGES,
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "importlib_resources",   # used by tensorflow-datasets, which does not declare it
        "sentencepiece>=0.2",
        "tokenizers>=0.20",      # Hugging Face tokenizer.json files (data/hf_tokenizer.py)
        "filelock",              # JAX's compilation cache locks its directory with it
        "numpy",
        "tqdm",
        "sacrebleu>=2",          # BLEU and chrF of generations (pretrax generate, seq2seq eval)
        "rouge-score",
        "jinja2",                # few-shot task files (lm-evaluation-harness YAML + Jinja)
        "pyyaml",
        "tensorboardX>=2.6",     # every run's TensorBoard event files (training/tracking.py)
        "matplotlib>=3.8",       # pretrax compare's plots (experiments/plots.py)
    ],
    extras_require={
        # Export/import and parity tests. Install torch first: pip install torch==2.13.0
        "hf": ["transformers>=4.40", "safetensors", "torch"],
        # Corpora as .zst and Parquet files (data/local_text.py).
        "data": ["zstandard", "pyarrow"],
        # pretrax as an lm-evaluation-harness model (pretrax-lm-eval --model pretrax ...).
        "lm_eval": ["lm-eval>=0.4.13"],
        # Weights & Biases logging (config.train.wandb_project).
        "wandb": ["wandb>=0.19"],
        "test": ["pytest>=8", "pytest-xdist", "transformers>=4.40", "safetensors", "torch",
                 "zstandard", "pyarrow", "lm-eval>=0.4.13", "accelerate",
                 "tensorboard", "wandb>=0.19"],
    },
    entry_points={"console_scripts": [
        "pretrax = pretrax.cli.main:main",
        "pretrax-lm-eval = pretrax.interop.lm_eval_model:main",
    ]},
)
