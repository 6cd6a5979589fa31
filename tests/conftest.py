"""Test-wide JAX settings.

Strict dtype promotion and raising rank promotion catch silent upcasts
(a bf16 update turned float32 by a float32 scalar) and accidental
broadcasting in the library; every test runs under them.
"""

import os

# Tests run on the CPU; a GPU, if present, is not needed and not assumed.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
