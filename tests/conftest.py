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


import pytest  # noqa: E402


@pytest.fixture
def standard_promotion():
    """Standard dtype promotion for tests that run optax's own optimizers.

    ``optax.adam`` computes ``decay ** count`` with a Python float and an int32
    array, which strict promotion rejects; the library's own code stays
    under strict promotion everywhere else.
    """
    with jax.numpy_dtype_promotion("standard"):
        yield
