"""pretrax: pretraining transformer language models in JAX/Flax, from a laptop CPU to pods."""

import setuptools

SUBPACKAGES = ("modeling", "training", "data", "configs")

setuptools.setup(
    name="pretrax",
    version="0.1.0",
    description="Pretrain BERT-style encoders and GPT-style decoders with JAX, Flax NNX and Grain.",
    python_requires=">=3.11",
    # The repository root is the `pretrax` package: `pretrax.modeling`, `pretrax.data`, ...
    package_dir={"pretrax": "."},
    packages=["pretrax"] + [f"pretrax.{name}" for name in SUBPACKAGES],
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
        "ml-collections>=1.0",
        "numpy",
        "tqdm",
    ],
    extras_require={
        # Export/import and parity tests. Install torch first: pip install torch==2.13.0
        "hf": ["transformers>=4.40", "safetensors", "torch"],
        "test": ["pytest>=8", "pytest-xdist", "transformers>=4.40", "safetensors", "torch"],
    },
    entry_points={"console_scripts": ["pretrax = pretrax.training.cli:main"]},
)
