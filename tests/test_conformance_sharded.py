"""Every conformance case on an 8-device CPU mesh gives the single-device result.

- FSDP-style ``NamedSharding`` of params, gradients and optimizer state
  (leading axis): JAX's own SPMD partitioning of the same program.
- ``jax.shard_map`` with ``axis_name``: each device holds 1/8 of every leaf
  and the transforms that take ``axis_name`` ``psum`` their global
  statistics (grad norm, per-tensor norms) over it.
- ``donate_argnums`` on params and state, on one device and sharded: no
  warning, donated arrays consumed, no recompilation on the second step.

JAX fixes the device count at start-up, so ``multidevice_checks.py`` runs
once in a subprocess with ``--xla_force_host_platform_device_count=8`` and
reports a list of failures per check; each test below reads its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def results() -> dict[str, list[str]]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(HERE / "multidevice_checks.py")], env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1].removeprefix("RESULT "))


def _check(results: dict[str, list[str]], name: str) -> None:
    assert name in results, f"{name} did not run: {results}"
    assert not results[name], "\n".join(results[name])


def test_named_sharding_matches_single_device(results):
    _check(results, "named_sharding")


def test_shard_map_axis_name_gives_global_statistics(results):
    _check(results, "shard_map")


@pytest.mark.parametrize("placement", ["one_device", "sharded"])
def test_donated_params_and_state_without_warnings(results, placement):
    _check(results, "donation_" + placement)
