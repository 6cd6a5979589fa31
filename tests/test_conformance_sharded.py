"""Every conformance case gives the single-device result with params, gradients
and optimizer state sharded over an 8-device CPU mesh (FSDP-style
``NamedSharding`` on the leading axis, JAX's own SPMD partitioning).

JAX fixes the device count at start-up, so the check runs in a subprocess
with ``--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from conformance_cases import CASES, LOSSES, grad_sequence, make_tree

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))
    row = NamedSharding(mesh, P("fsdp"))
    rep = NamedSharding(mesh, P())

    def shard(tree):
        return jax.tree_util.tree_map(
            lambda x: jax.device_put(x, row if getattr(x, "ndim", 0) >= 1
                                     and x.shape[0] % 8 == 0 else rep), tree)

    failures = []
    for case in CASES:
        tx = case.make()
        params = make_tree(0)
        grads = grad_sequence(4)
        update = jax.jit(tx.update)
        def run(params, grads, sharded):
            state = tx.init(params)
            if sharded:
                state = shard(state)
            outs = []
            for i, g in enumerate(grads):
                kw = {"value": jnp.float32(LOSSES[i])} if case.needs_value else {}
                u, state = update(g, state, params, **kw)
                outs.append(u)
            return outs, state
        ref, ref_state = run(params, grads, False)
        out, out_state = run(shard(params), [shard(g) for g in grads], True)
        try:
            for a, b in zip(jax.tree_util.tree_leaves((ref, ref_state)),
                            jax.tree_util.tree_leaves((out, out_state))):
                np.testing.assert_allclose(np.asarray(a, np.float64),
                                           np.asarray(b, np.float64),
                                           rtol=2e-5, atol=1e-6)
            first = jax.tree_util.tree_leaves(out)[0]
            assert len(first.sharding.device_set) == 8, first.sharding
        except AssertionError as e:
            failures.append(f"{case.name}: {e}")
    print(f"checked {len(CASES)} cases")
    if failures:
        raise SystemExit("\\n".join(failures))
    """
)


def test_all_cases_sharded_over_8_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    here = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked" in proc.stdout
