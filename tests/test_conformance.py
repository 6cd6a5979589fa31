"""Properties every public transform must have (see ``conformance_cases.py``).

eager == jit; no recompile on the second call; float32 and bfloat16 keep their
dtypes; NaN/Inf gradients and losses never put NaN into the state; a state
saved and restored continues identically; half-precision updates are the
float32 ones rounded once (one scaling path, statistics in float32); works
inside ``optax.chain`` and
``optax.inject_hyperparams``; ignores unknown extra arguments; works under
``lax.scan``. The sharded check lives in ``test_conformance_sharded.py``.
"""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conformance_cases import (
    BAD_LOSSES,
    CASES,
    LOSSES,
    Case,
    bad_grad_sequence,
    grad_sequence,
    make_tree,
)

IDS = [c.name for c in CASES]
NSTEPS = 4


def _extra(case: Case, i: int, losses=LOSSES) -> dict:
    return {"value": jnp.asarray(losses[i], jnp.float32)} if case.needs_value else {}


def _run(tx, grads_seq, params, case: Case, losses=LOSSES, update=None, **more):
    update = update or tx.update
    state = tx.init(params)
    outs = []
    for i, g in enumerate(grads_seq):
        u, state = update(g, state, params, **_extra(case, i, losses), **more)
        outs.append(u)
    return outs, state


def _assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
        )


def _float_leaves(tree):
    return [
        x for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]


@pytest.fixture(scope="module")
def params():
    return make_tree(0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eager_equals_jit_and_no_retrace(case, params):
    chex.clear_trace_counter()
    tx = case.make()
    grads = grad_sequence(NSTEPS)
    eager, eager_state = _run(tx, grads, params, case)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def update(g, s, p, **kw):
        return tx.update(g, s, p, **kw)

    jitted, jit_state = _run(tx, grads, params, case, update=update)
    _assert_trees_close(eager, jitted, rtol=1e-5, atol=1e-6)
    _assert_trees_close(eager_state, jit_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dtypes_are_kept(case, dtype):
    tx = case.make()
    params = make_tree(0, dtype)
    state0 = tx.init(params)
    update = jax.jit(tx.update)
    state = state0
    for i, g in enumerate(grad_sequence(2, dtype)):
        u, state = update(g, state, params, **_extra(case, i))
        chex.assert_trees_all_equal_dtypes(u, g)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)


def _scaling_only(case: Case):
    # A wrapped optimizer computes in the leaf dtype by design (optax's
    # policy); with optax.identity inside, the guard itself is checked.
    if "inner" in case.kwargs:
        return case.factory(**{**case.kwargs, "inner": optax.identity()})
    return case.make()


@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_half_precision_is_float32_rounded_once(case, half):
    # Same gradient values in half precision and in float32: the statistics
    # (float32 either way) agree, so each half-precision update must be the
    # float32 update rounded once, bit for bit, never a product taken in
    # half precision.
    tx = _scaling_only(case)
    grads = [jax.tree.map(lambda x: x.astype(half), g) for g in grad_sequence(3)]
    params = make_tree(0, half)
    out_half, _ = _run(tx, grads, params, case)
    wide = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)  # noqa: E731
    out_f32, _ = _run(tx, [wide(g) for g in grads], wide(params), case)
    for u_half, u_f32 in zip(out_half, out_f32):
        chex.assert_trees_all_equal(u_half, jax.tree.map(lambda x: x.astype(half), u_f32))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_nan_and_inf_never_reach_the_state(case, params):
    tx = case.make()
    update = jax.jit(tx.update)
    state = tx.init(params)
    for i, g in enumerate(bad_grad_sequence()):
        _, state = update(g, state, params, **_extra(case, i, BAD_LOSSES))
        for leaf in _float_leaves(state):
            assert not np.any(np.isnan(np.asarray(leaf, np.float32))), (
                f"{case.name}: NaN in state after step {i}"
            )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_restore_continues_identically(case, params):
    tx = case.make()
    update = jax.jit(tx.update)
    grads = grad_sequence(NSTEPS)
    _, state = _run(tx, grads[:2], params, case, update=update)
    blob = flax.serialization.to_bytes(state)
    restored = flax.serialization.from_bytes(tx.init(params), blob)
    chex.assert_trees_all_equal(restored, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(restored, state)
    a, b = state, restored
    for i, g in enumerate(grads[2:], start=2):
        ua, a = update(g, a, params, **_extra(case, i))
        ub, b = update(g, b, params, **_extra(case, i))
        chex.assert_trees_all_equal(ua, ub)
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inside_chain(case, params):
    tx = case.make()
    chained = optax.chain(optax.identity(), tx, optax.scale(-1.0))
    grads = grad_sequence(NSTEPS)
    plain, _ = _run(tx, grads, params, case, update=jax.jit(tx.update))
    chain_out, _ = _run(chained, grads, params, case, update=jax.jit(chained.update))
    _assert_trees_close(jax.tree_util.tree_map(jnp.negative, plain), chain_out)


@pytest.mark.parametrize("case", [c for c in CASES if c.inject], ids=lambda c: c.name)
def test_inside_inject_hyperparams(case, params):
    tx = case.make()
    injected = case.make_injected()
    grads = grad_sequence(NSTEPS)
    plain, _ = _run(tx, grads, params, case, update=jax.jit(tx.update))
    inj, inj_state = _run(injected, grads, params, case, update=jax.jit(injected.update))
    _assert_trees_close(plain, inj, rtol=1e-5, atol=1e-6)
    for name in case.inject:
        assert name in inj_state.hyperparams


@pytest.mark.parametrize("case", [c for c in CASES if c.inject], ids=lambda c: c.name)
def test_inject_hyperparams_with_bfloat16_params(case):
    # inject_hyperparams hands numeric hyperparameters over in the params'
    # dtype; a bfloat16 scalar must pass the argument checks like a float.
    params = make_tree(0, jnp.bfloat16)
    injected = case.make_injected()
    outs, _ = _run(injected, grad_sequence(2, jnp.bfloat16), params, case)
    chex.assert_trees_all_equal_dtypes(outs[-1], params)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ignores_unknown_extra_args(case, params):
    tx = case.make()
    update = jax.jit(tx.update)
    grads = grad_sequence(2)
    plain, s1 = _run(tx, grads, params, case, update=update)
    extra, s2 = _run(
        tx, grads, params, case, update=update,
        some_unknown_arg=jnp.ones(()), another=jnp.zeros((3,)),
    )
    chex.assert_trees_all_equal(plain, extra)
    chex.assert_trees_all_equal(s1, s2)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_under_lax_scan(case, params):
    tx = case.make()
    grads = grad_sequence(NSTEPS)
    loop, loop_state = _run(tx, grads, params, case, update=jax.jit(tx.update))
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *grads)
    losses = jnp.asarray(LOSSES[:NSTEPS], jnp.float32)

    @jax.jit
    def scanned(state):
        def body(s, xs):
            g, v = xs
            kw = {"value": v} if case.needs_value else {}
            u, s = tx.update(g, s, params, **kw)
            return s, u
        return jax.lax.scan(body, state, (stacked, losses))

    scan_state, scan_out = scanned(tx.init(params))
    unstacked = [jax.tree_util.tree_map(lambda x, i=i: x[i], scan_out) for i in range(NSTEPS)]
    _assert_trees_close(loop, unstacked, rtol=1e-5, atol=1e-6)
    _assert_trees_close(loop_state, scan_state, rtol=1e-5, atol=1e-6)


def test_registry_is_not_empty_once_transforms_exist():
    import optaxsched

    public_transforms = [
        n for n in optaxsched.__all__
        if n not in {"schedules", "telemetry", "label_by_path", "layer_decay_rules",
                     "describe_groups", "tree_paths", "effective_learning_rate", "lr_find"}
        and callable(getattr(optaxsched, n))
        and n[0].islower()
    ]
    # Classes with init/update (MetricPlateau) are transforms too; their cases
    # wrap them, so they are found by the case name.
    public_transforms += [
        n for n in optaxsched.__all__
        if isinstance(getattr(optaxsched, n), type) and hasattr(getattr(optaxsched, n), "update")
    ]
    covered = {c.factory.__name__ for c in CASES} | {
        "".join(w.title() for w in c.name.split("_")) for c in CASES}
    missing = sorted(set(public_transforms) - covered)
    assert not missing, f"public transforms missing from conformance_cases.py: {missing}"


