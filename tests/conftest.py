"""Test setup: 8 fake CPU devices so sharded meshes can be exercised on one machine, and the
process set-up of the `pretrax` command (training/startup.py)."""

import os

import jax

from pretrax.training import startup

startup.prepare()  # as the pretrax command does, before JAX's backend starts
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")
