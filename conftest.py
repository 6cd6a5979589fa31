"""Test-wide JAX settings, for the tests and the package's doctests alike.

Strict dtype promotion and raising rank promotion catch silent upcasts
(a bf16 update turned float32 by a float32 scalar) and accidental
broadcasting in the library; every test and every docstring example runs
under them. This file sits at the repository root, outside the package, so
that ``--doctest-modules`` over ``optaxsched/`` sees the same settings as
``tests/`` without a conftest shipping in the wheel.
"""

import os
from pathlib import Path

# Tests run on the CPU; a GPU, if present, is not needed and not assumed.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402

_TESTS = Path(__file__).parent / "tests"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Under ``tests/`` only the ``test_*.py`` files are collected.

    ``--doctest-modules`` would otherwise import every module there: the
    golden-value generators import torch and keras, and
    ``multidevice_checks.py`` is a script for a process of its own.
    """
    if (collection_path.suffix == ".py" and _TESTS in collection_path.parents
            and not collection_path.name.startswith("test_")):
        return True
    return None


@pytest.fixture
def standard_promotion():
    """Standard dtype promotion for tests that run optax's own optimizers.

    ``optax.adam`` computes ``decay ** count`` with a Python float and an int32
    array, which strict promotion rejects; the library's own code stays
    under strict promotion everywhere else.
    """
    with jax.numpy_dtype_promotion("standard"):
        yield
