"""The training-loop examples run at tiny sizes: the loss falls, the guard
skips the corrupted step and the telemetry log has the expected fields."""

from __future__ import annotations

import doctest
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

# optax.adamw needs standard dtype promotion (see conftest.py).
pytestmark = pytest.mark.usefixtures("standard_promotion")


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["train_linen", "train_nnx"])
def test_training_loop_example(name, capsys):
    example = _load(name)
    out = example.main(steps=40, batch_size=32, width=16, depth=2, peak_lr=1e-2,
                       log_every=10, plateau_window=4, corrupt_step=7)
    losses = out["losses"]
    assert len(losses) == 40
    # The corrupted batch gives a NaN loss; the guard skips that step, so the
    # run goes on and every other loss is finite.
    assert math.isnan(losses[7])
    assert all(math.isfinite(v) for i, v in enumerate(losses) if i != 7)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])

    logs = out["logs"]
    assert [log["step"] for log in logs] == [0, 10, 20, 30, 39]
    last = logs[-1]
    short = {k.rsplit("/", 1)[-1]: v for k, v in last.items()}
    assert set(example.LOG_FIELDS) <= set(short)
    assert short["skipped_steps"] == 1
    assert last["inner_state/0/hyperparams/learning_rate"] > 0
    assert "inner_state/2/plateau_scale" in last
    assert any(k.startswith("inner_state/1/") for k in last)  # scale_by_group

    printed = capsys.readouterr().out
    assert "layers" in printed and "skipped_steps" in printed


@pytest.mark.parametrize("name", ["train_linen", "train_nnx"])
def test_docstring_examples_run(name):
    result = doctest.testmod(_load(name))
    assert result.attempted and not result.failed


def test_quickstart_guard_survives_where_plain_adam_dies(tmp_path, capsys):
    quickstart = _load("quickstart")
    out_png = tmp_path / "quickstart.png"
    # The example is user code written with NumPy broadcasting; the library
    # calls inside it still run under the strict dtype promotion of conftest.
    with jax.numpy_rank_promotion("allow"):
        results = quickstart.main(["--steps", "150", "--out", str(out_png)])
    clean, faults, high = results.values()
    # Healthy and clean: the guard changes nothing.
    assert clean["optaxsched"]["skipped"][-1] == 0
    assert np.all(clean["optaxsched"]["scale"] == 1.0)
    np.testing.assert_allclose(clean["optaxsched"]["loss"], clean["plain adam"]["loss"],
                               rtol=1e-4)
    # Faults: plain Adam is destroyed, the guard skips the two faulty steps
    # and ends within 2% of the clean run.
    assert not faults["plain adam"]["params_finite"]
    assert faults["optaxsched"]["params_finite"]
    assert faults["optaxsched"]["skipped"][-1] == 2
    assert faults["optaxsched"]["held_out"] < 1.02 * clean["optaxsched"]["held_out"]
    # Too high a learning rate: the guarded run survives and learns.
    assert high["optaxsched"]["params_finite"]
    assert high["optaxsched"]["held_out"] < 0.8 * high["optaxsched"]["loss"][0]
    assert out_png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "[optaxsched] step" in printed
