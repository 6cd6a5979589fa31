"""Tests for ``_freeze.update_with_frozen_state``, the guard's skip machinery.

For each inner optimizer, under ``jax.jit`` and over a few steps, the frozen
update is checked against the plain one -- ``inner.update``, then
``jnp.where(skip, old_state, new_state)`` leaf by leaf -- for exactly what it
promises: with ``skip`` the new state is bitwise the old one; without, the
updates and the new state are bitwise the plain ones. (With ``skip`` the
updates are unspecified: the guard zeroes them.)

The bitwise comparison compiles with LLVM's optimisation level 0. Otherwise
XLA:CPU contracts a multiply and an add into one FMA depending on the order
LLVM gives their operands, which the inserted selects change, so the same
values can round differently in the last place (see the module's docstring).
At level 0 LLVM selects instructions one by one (FastISel) and forms no FMA,
so every operation rounds on its own and the comparison sees the values the
graph computes. (Disabling XLA's fusion pass does the same, at 2-3x the
compile time.) ``test_default_compile_*`` checks the default compile within
rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optaxsched import _freeze
from optaxsched._freeze import update_with_frozen_state

pytestmark = pytest.mark.usefixtures("standard_promotion")

# No FMA contraction (see the docstring). The suite runs on the CPU
# (conftest.py); elsewhere the bitwise checks become checks within rounding.
NO_FMA = {"xla_backend_optimization_level": 0}
BITWISE = jax.default_backend() == "cpu"
NSTEPS = 4


def make_params(bf16: bool) -> dict:
    p = {
        "w": jnp.linspace(-0.5, 0.7, 12, dtype=jnp.float32).reshape(3, 4),
        "s": jnp.float32(0.3),
    }
    if bf16:
        p["h"] = jnp.linspace(-0.3, 0.6, 6, dtype=jnp.float32).reshape(2, 3).astype(jnp.bfloat16)
    return p


@jax.jit
def _grads(params: dict, i: jax.Array) -> dict:
    return {
        k: (jnp.sin(v.astype(jnp.float32) * (i + 1.7) + i) * 0.1).astype(v.dtype)
        for k, v in params.items()
    }


def make_grads(params: dict, i: int, nan: bool = False) -> dict:
    # Jitted: eager, each operation would compile for each new shape.
    g = _grads(params, jnp.float32(i))
    if nan:
        g["w"] = g["w"].at[1, 2].set(jnp.nan)
    return g


_apply_updates = jax.jit(optax.apply_updates)


# --- Inner transformations with a given construct inside their update. ---


class _State(NamedTuple):
    count: jax.Array
    m: Any


def _custom(step) -> optax.GradientTransformation:
    """``step(g, m, count) -> (update, new_m)`` leaf by leaf, and a count."""

    def init(params):
        return _State(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        pairs = jax.tree.map(lambda g, m: step(g, m, state.count), updates, state.m)
        is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
        new_updates = jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair)
        new_m = jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair)
        return new_updates, _State(state.count + 1, new_m)

    return optax.GradientTransformation(init, update)


@jax.custom_jvp
def _soft(x):
    return jnp.tanh(x) * 2


@_soft.defjvp
def _soft_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _soft(x), t * (1 - jnp.tanh(x) ** 2) * 2


@jax.custom_vjp
def _affine(x):
    return x * 1.5 + 0.25


_affine.defvjp(lambda x: (_affine(x), None), lambda _, g: (g * 1.5,))


def _momentum(g, m):
    return (0.9 * m + g).astype(m.dtype)


def _custom_jvp_step(g, m, count):
    m = _momentum(_soft(g), m)
    return -0.1 * m, m


def _custom_vjp_step(g, m, count):
    m = _momentum(_affine(g), m)
    return m * g, m


@jax.jit
def _jitted_momentum(g, m):
    m = _momentum(g, m)
    return m * 2, m  # the state is made inside the nested jit


def _nested_jit_step(g, m, count):
    scaled, m = _jitted_momentum(g, m)
    return -scaled * m, m


def _nested_jit_passthrough_step(g, m, count):
    # The callee returns one of its inputs: its output is not made inside it.
    m2, m = jax.jit(lambda g, m: (_momentum(g, m), m))(g, m)
    return m2 * 0.5, m2


def _sharded_jit_step(g, m, count):
    # Out shardings: not inlined, the state is selected after the call.
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    scaled, m = jax.jit(_jitted_momentum, out_shardings=(dev, dev))(g, m)
    return -scaled, m


def _cond_step(g, m, count):
    m = jax.lax.cond(count % 2 == 0, lambda: _momentum(g, m), lambda: (0.5 * m - g).astype(m.dtype))
    return m * g, m


def _fori_step(g, m, count):
    m = jax.lax.fori_loop(0, 3, lambda i, m: _momentum(g * i.astype(g.dtype), m), m)
    return m * 0.1 + g, m


def _while_step(g, m, count):
    def body(c):
        return c[0] + 1, _momentum(g, c[1])

    m = jax.lax.while_loop(lambda c: c[0] < 1 + count % 3, body, (0, m))[1]
    return -m, m


def _scan_step(g, m, count):
    def body(c, x):
        return _momentum(g * x, c), c

    m, ms = jax.lax.scan(body, m, jnp.arange(1, 4).astype(m.dtype))
    return -ms[0] - m, m


def _passthrough_step(g, m, count):
    return -g, g  # the new state is an input, not made by an equation


def _literal_state() -> optax.GradientTransformation:
    # A state output that is a literal in the jaxpr, beside one that is made.
    def update(updates, state, params=None):
        return updates, (jnp.float32(2.0), state[1] + 1)

    return optax.GradientTransformation(lambda p: (jnp.float32(0.5), jnp.int32(0)), update)


def _shared_state() -> optax.GradientTransformation:
    # One array returned as two state leaves and as the updates.
    def update(updates, state, params=None):
        m = jax.tree.map(lambda g, m: 0.5 * m + g, updates, state[0])
        return m, (m, m)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (zeros, zeros)

    return optax.GradientTransformation(init, update)


class Case(NamedTuple):
    make: Any
    bf16: bool = True  # add a bfloat16 leaf to the params
    value: bool = False  # pass value= (a loss)
    nan_step: int = -1  # a NaN gradient at this step


CASES = {
    "adam": Case(lambda: optax.adam(1e-2)),
    "lion": Case(lambda: optax.lion(1e-2)),
    "adafactor": Case(lambda: optax.adafactor(1e-2, min_dim_size_to_factor=2)),
    "schedule_free_adamw": Case(lambda: optax.contrib.schedule_free_adamw(1e-2)),
    "schedule_free_sgd": Case(
        lambda: optax.contrib.schedule_free(optax.sgd(1e-2), 1e-2), bf16=False
    ),
    "multisteps_adam": Case(lambda: optax.MultiSteps(optax.adam(1e-2), 3)),
    "sgd_then_plateau": Case(
        lambda: optax.chain(
            optax.sgd(1e-2, momentum=0.9), optax.contrib.reduce_on_plateau(patience=1)
        ),
        value=True,
    ),
    "apply_if_finite_adam": Case(lambda: optax.apply_if_finite(optax.adam(1e-2), 3), nan_step=1),
    "inject_adamw_schedule": Case(
        lambda: optax.inject_hyperparams(optax.adamw)(
            learning_rate=optax.linear_schedule(1e-2, 1e-3, 3), weight_decay=1e-3
        )
    ),
    "chain_clip_inject_sgd": Case(
        lambda: optax.chain(
            optax.clip_by_global_norm(0.05),
            optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2, momentum=0.9),
            optax.add_decayed_weights(1e-3),
        )
    ),
    "custom_jvp": Case(lambda: _custom(_custom_jvp_step)),
    "custom_vjp": Case(lambda: _custom(_custom_vjp_step)),
    "nested_jit": Case(lambda: _custom(_nested_jit_step)),
    "nested_jit_passthrough": Case(lambda: _custom(_nested_jit_passthrough_step)),
    "sharded_nested_jit": Case(lambda: _custom(_sharded_jit_step)),
    "cond": Case(lambda: _custom(_cond_step)),
    "fori_loop": Case(lambda: _custom(_fori_step)),
    "while_loop": Case(lambda: _custom(_while_step)),
    "scan": Case(lambda: _custom(_scan_step)),
    "state_is_input": Case(lambda: _custom(_passthrough_step)),
    "state_is_literal": Case(_literal_state, bf16=False),
    "state_leaves_shared": Case(_shared_state),
}


# --- The comparison. ---


def _frozen_and_plain(inner, grads, state, params, skip, extra):
    frozen = update_with_frozen_state(inner.update, skip, grads, state, params, extra)
    updates, new_state = inner.update(grads, state, params, **extra)
    plain = jax.tree.map(lambda o, n: jnp.where(skip, o, n), state, new_state)
    return frozen, (updates, plain)


def _bits(x) -> tuple:
    x = np.asarray(x)
    return x.dtype, x.shape, x.tobytes()


def assert_bitwise(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert _bits(a) == _bits(e), (a, e)


def assert_types(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert (a.dtype, a.shape) == (e.dtype, e.shape)


def run_steps(case: Case, compiler_options=None, check=None) -> None:
    """Run ``NSTEPS`` steps of the frozen and the plain update, in one
    compiled function with ``skip`` an argument, and ``check`` each result
    (``assert_frozen`` by default). The plain state carries the run."""
    inner = optax.with_extra_args_support(case.make())
    params = make_params(case.bf16)
    state = inner.init(params)

    def extra(i):
        return {"value": jnp.float32(1.0 + 0.5 * i)} if case.value else {}

    compiled: dict = {}  # a second compile only if a state leaf changes dtype
    for i in range(NSTEPS):
        grads = make_grads(params, i, nan=i == case.nan_step)
        args = (grads, state, params, jnp.bool_(False), extra(i))
        key = str(jax.tree.map(lambda x: (x.dtype, x.shape), args))
        if key not in compiled:
            jitted = jax.jit(_frozen_and_plain, static_argnums=0)
            compiled[key] = jitted.lower(inner, *args).compile(compiler_options)
        for skip in (True, False):
            frozen, plain = compiled[key](grads, state, params, jnp.bool_(skip), extra(i))
            (check or (assert_frozen if BITWISE else _assert_frozen_close))(
                frozen, plain, state, skip
            )
        updates, state = plain
        params = _apply_updates(params, updates)


def _as_types_of(old_state, new_state):
    # A leaf the inner optimizer changes dtype of (inject_hyperparams(adamw)
    # turns a bfloat16 moment into float32) keeps its value, promoted as
    # jnp.where promotes it, so both branches of the step have one type.
    return jax.tree.map(lambda o, n: jnp.asarray(o).astype(n.dtype), old_state, new_state)


def assert_frozen(frozen, plain, old_state, skip: bool) -> None:
    """What ``update_with_frozen_state`` promises, bit for bit."""
    (updates, state), (plain_updates, plain_state) = frozen, plain
    assert_bitwise(state, plain_state)
    if skip:
        assert_bitwise(state, _as_types_of(old_state, state))
        assert_types(updates, plain_updates)  # values unspecified: zeroed by the guard
    else:
        assert_bitwise(updates, plain_updates)


@pytest.mark.parametrize("name", list(CASES))
def test_frozen_update_is_bitwise_the_plain_one(name):
    run_steps(CASES[name], NO_FMA)


# --- Freezing where the state is made is what the guard relies on for speed. ---


def _count_calls(monkeypatch, name: str) -> list:
    calls: list = []
    original = getattr(_freeze, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(_freeze, name, spy)
    return calls


def _trace(inner, params, extra=None):
    """Trace (not run) the frozen update of ``inner``."""
    state = inner.init(params)
    grads = make_grads(params, 0)
    jax.jit(update_with_frozen_state, static_argnums=0).trace(
        inner.update, jnp.bool_(True), grads, state, params, extra or {}
    )


@pytest.mark.parametrize("name", ["adam", "adafactor", "nested_jit", "custom_vjp", "cond"])
def test_state_is_frozen_where_it_is_made(monkeypatch, name):
    plain_selects = _count_calls(monkeypatch, "_plain_select")
    inlined = _count_calls(monkeypatch, "_eval_inlined")
    _trace(CASES[name].make(), make_params(bf16=True))
    assert plain_selects == []
    if name == "nested_jit":
        assert inlined  # the state is made inside a nested jit


def test_jit_with_shardings_is_selected_after_the_call(monkeypatch):
    inlined = _count_calls(monkeypatch, "_eval_inlined")
    plain_selects = _count_calls(monkeypatch, "_plain_select")
    _trace(CASES["sharded_nested_jit"].make(), make_params(bf16=False))
    assert inlined == [] and plain_selects == []


def test_inputs_and_literals_take_the_plain_select(monkeypatch):
    plain_selects = _count_calls(monkeypatch, "_plain_select")
    _trace(_literal_state(), make_params(bf16=False))
    assert len(plain_selects) == 1  # the literal; the count is made by an add


# --- The fallback: the plain select, for what is not recognised. ---


@pytest.mark.parametrize("name", ["adam", "nested_jit"])
def test_fallback_for_every_leaf_is_bitwise_the_same(monkeypatch, name):
    # No state output frozen where it is made, no jit inlined: every leaf
    # takes the plain select after the update.
    monkeypatch.setattr(_freeze, "_state_hooks", lambda *a, **k: ({}, set()))
    monkeypatch.setattr(_freeze, "_inlinable", lambda eqn: False)
    plain_selects = _count_calls(monkeypatch, "_plain_select")
    run_steps(CASES[name], NO_FMA)
    assert plain_selects


def _branching() -> optax.GradientTransformation:
    """An update with Python control flow on the state's value: it has no
    jaxpr for abstract inputs."""

    def update(updates, state, params=None):
        if int(state.count) % 2 == 0:
            m = jax.tree.map(lambda g, m: 0.5 * m + g, updates, state.m)
        else:
            m = jax.tree.map(lambda m: m * 0.25, state.m)
        return jax.tree.map(lambda m: -m, m), _State(state.count + 1, m)

    return optax.GradientTransformation(
        lambda p: _State(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, p)), update
    )


def test_eager_call_runs_the_update_as_it_is(monkeypatch):
    traced: list = []
    monkeypatch.setattr(jax, "make_jaxpr", lambda *a, **k: traced.append(a))
    inner, params = _branching(), {"w": jnp.ones((2, 3), jnp.float32)}
    state = inner.init(params)
    for i in range(3):
        grads = make_grads(params, i)
        for skip in (True, False):
            frozen, plain = _frozen_and_plain(inner, grads, state, params, jnp.bool_(skip), {})
            assert_frozen(frozen, plain, state, skip)
        state = plain[1]
    assert traced == []  # op by op there is nothing to freeze in place


def test_untraceable_update_under_grad_takes_the_fallback():
    # Differentiating through the optimizer with a concrete state: the update
    # branches on the count, which only the plain call can do.
    inner, params = _branching(), {"w": jnp.ones((2, 3), jnp.float32)}
    state = inner.init(params)
    grads = make_grads(params, 0)

    def loss(grads, frozen: bool):
        if frozen:
            updates, _ = update_with_frozen_state(
                inner.update, jnp.bool_(False), grads, state, params, {}
            )
        else:
            updates, _ = inner.update(grads, state, params)
        return sum(jnp.sum(u**2) for u in jax.tree.leaves(updates))

    assert_bitwise(jax.grad(loss)(grads, True), jax.grad(loss)(grads, False))


def _dtype_changing() -> optax.GradientTransformation:
    def update(updates, state, params=None):
        m = jax.tree.map(lambda g, m: (0.5 * m + g).astype(jnp.bfloat16), updates, state)
        return updates, m

    return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p), update)


def test_state_that_changes_dtype_gets_the_plain_where():
    # lax.select cannot take float32 and bfloat16; jnp.where promotes, as the
    # plain update followed by jnp.where would.
    inner, params = _dtype_changing(), make_params(bf16=False)
    state = inner.init(params)
    grads = make_grads(params, 0)
    compiled = jax.jit(_frozen_and_plain, static_argnums=0).lower(
        inner, grads, state, params, jnp.bool_(False), {}
    ).compile(NO_FMA)
    for skip in (True, False):
        frozen, plain = compiled(grads, state, params, jnp.bool_(skip), {})
        assert_frozen(frozen, plain, state, skip)


@pytest.mark.parametrize("traced", [True, False])
def test_state_that_changes_structure_is_an_error(traced):
    inner = optax.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, (s, s)))
    params = make_params(bf16=False)
    call = lambda skip: update_with_frozen_state(inner.update, skip, params, (), params, {})  # noqa: E731
    with pytest.raises(TypeError, match="differs from the one it was given"):
        (jax.jit(call) if traced else call)(jnp.bool_(True))


# --- The default compile (FMA contraction allowed). ---


def _assert_frozen_close(frozen, plain, old_state, skip: bool) -> None:
    """Skipped: the old state, bit for bit (a select). Taken: the plain values
    within FMA rounding."""
    (updates, state), (plain_updates, plain_state) = frozen, plain
    if skip:
        assert_bitwise(state, _as_types_of(old_state, state))
        assert_bitwise(state, plain_state)
        return
    pairs = zip(jax.tree.leaves((updates, state)), jax.tree.leaves((plain_updates, plain_state)))
    for a, e in pairs:
        assert (a.dtype, a.shape) == (e.dtype, e.shape)
        eps = float(jnp.finfo(a.dtype).eps) if jnp.issubdtype(a.dtype, jnp.floating) else 0.0
        a64, e64 = np.asarray(a, np.float64), np.asarray(e, np.float64)
        np.testing.assert_allclose(a64, e64, rtol=4 * eps, atol=4 * eps * np.max(np.abs(e64)))


@pytest.mark.parametrize("name", ["adam", "custom_jvp"])  # both differ in the last place
def test_default_compile_within_rounding(name):
    run_steps(CASES[name], check=_assert_frozen_close)
