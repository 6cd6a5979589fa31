"""Tests for ``explosion_guard``: skipping, spikes, recovery, divergence and
fault injection on a real (small) training problem."""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxsched as ox


def _tree(x):
    return {"a": jnp.asarray(x, jnp.float32), "b": {"c": jnp.ones((2, 2), jnp.float32)}}


def _leaves_equal(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


pytestmark = pytest.mark.usefixtures("standard_promotion")


@pytest.fixture(scope="module")
def guarded():
    opt = ox.explosion_guard(optax.adam(1e-2), max_consecutive_skips=3)
    return opt, jax.jit(opt.update)


def _warm_state(opt, update, params, steps=8):
    state = opt.init(params)
    rng = np.random.default_rng(0)
    for i in range(steps):
        g = jax.tree_util.tree_map(
            lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
        )
        _, state = update(g, state, params, value=jnp.float32(1.0 - 0.01 * i))
    return state


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_skips_and_freezes_inner_state(guarded, bad):
    opt, update = guarded
    params = _tree([1.0, 2.0, 3.0])
    state = _warm_state(opt, update, params)
    grads = _tree([0.5, bad, 0.1])
    updates, new = update(grads, state, params, value=jnp.float32(0.9))
    chex.assert_trees_all_equal(updates, jax.tree_util.tree_map(jnp.zeros_like, params))
    assert _leaves_equal(new.inner_state, state.inner_state)
    assert int(new.guard_skipped_steps) == int(state.guard_skipped_steps) + 1
    assert int(new.guard_nonfinite_steps) == int(state.guard_nonfinite_steps) + 1
    assert int(new.guard_consecutive_skips) == 1
    assert int(new.guard_steps) == int(state.guard_steps) + 1
    # A non-finite step never moves the running statistics.
    assert float(new.guard_norm_log_mean) == float(state.guard_norm_log_mean)
    assert float(new.guard_loss_log_mean) == float(state.guard_loss_log_mean)
    # An isolated fault is no evidence of a too-high learning rate.
    scales = new.guard_recovery.recovery_scale, state.guard_recovery.recovery_scale
    assert float(scales[0]) == float(scales[1]) == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_loss_skips(guarded, bad):
    opt, update = guarded
    params = _tree([1.0, 2.0, 3.0])
    state = _warm_state(opt, update, params)
    updates, new = update(_tree([0.1, 0.2, 0.3]), state, params, value=jnp.float32(bad))
    assert all(not np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(updates))
    assert _leaves_equal(new.inner_state, state.inner_state)
    assert int(new.guard_nonfinite_steps) == 1
    assert float(new.guard_last_loss) == float(state.guard_last_loss)


def test_healthy_step_is_the_inner_optimizers_own():
    """Multiplier exactly 1 from the first step: the updates and the inner
    state are the inner optimizer's (to float32 rounding: the inner update
    runs through the freezing interpreter, which may order operations
    differently)."""
    inner = optax.adam(1e-2)
    opt = ox.explosion_guard(inner)
    params = _tree([1.0, 2.0, 3.0])
    g = _tree([0.1, -0.2, 0.3])
    u_ref, s_ref = inner.update(g, inner.init(params), params)
    u, s = opt.update(g, opt.init(params), params, value=jnp.float32(1.0))
    assert float(s.guard_recovery.recovery_scale) == 1.0
    chex.assert_trees_all_close(u, u_ref, rtol=1e-6, atol=0)
    chex.assert_trees_all_close(s.inner_state, s_ref, rtol=1e-6, atol=0)
    assert int(s.guard_accepted_steps) == 1 and int(s.guard_skipped_steps) == 0


def _spike_run(on_spike, factor=1e4, loss_spike=False):
    opt = ox.explosion_guard(optax.sgd(1.0), on_spike=on_spike)
    params = {"w": jnp.zeros(16, jnp.float32)}
    update = jax.jit(opt.update)
    state = opt.init(params)
    rng = np.random.default_rng(1)
    for i in range(30):
        g = {"w": jnp.asarray(rng.normal(size=16), jnp.float32)}
        _, state = update(g, state, params, value=jnp.float32(2.0 + 0.01 * rng.normal()))
    g = {"w": jnp.asarray(factor * rng.normal(size=16), jnp.float32)}
    loss = jnp.float32(50.0 if loss_spike else 2.0)
    u, new = update(g, state, params, value=loss)
    return state, new, g, u


def test_gradient_spike_is_skipped():
    state, new, _, u = _spike_run("skip")
    assert int(new.guard_spike_steps) == 1 and int(new.guard_skipped_steps) == 1
    assert not np.any(np.asarray(u["w"]))
    assert _leaves_equal(new.inner_state, state.inner_state)
    # A spike feeds nothing into the statistics, and changes no multiplier.
    assert float(new.guard_norm_log_mean) == float(state.guard_norm_log_mean)
    assert int(new.guard_norm_spike_steps) == 1 and int(new.guard_loss_spike_steps) == 0
    assert float(new.guard_recovery.recovery_scale) == 1.0


def test_gradient_spike_is_clipped_to_threshold():
    state, new, g, u = _spike_run("clip")
    assert int(new.guard_clipped_steps) == 1 and int(new.guard_skipped_steps) == 0
    n = int(state.guard_norm_stats_count)
    var = (n * max(float(state.guard_norm_log_var), 0.05**2) + 10 * 0.5**2) / (n + 10)
    thr = np.exp(float(state.guard_norm_log_mean) + 6.0 * np.sqrt(var))
    got = float(jnp.linalg.norm(u["w"]))
    # sgd(1.0) returns -g: the applied norm is the threshold (multiplier 1).
    assert float(new.guard_recovery.recovery_scale) == 1.0
    assert got == pytest.approx(thr, rel=1e-4)
    assert got < 0.01 * float(jnp.linalg.norm(g["w"]))


def test_spike_mode_none_counts_only():
    _, new, g, u = _spike_run("none")
    assert int(new.guard_spike_steps) == 1 and int(new.guard_skipped_steps) == 0
    assert np.all(np.isfinite(np.asarray(u["w"])))
    assert float(jnp.linalg.norm(u["w"])) > 0.0


def test_loss_spike_detected_and_skipped():
    state, new, _, u = _spike_run("skip", factor=1.0, loss_spike=True)
    assert int(new.guard_spike_steps) == 1 and int(new.guard_skipped_steps) == 1
    assert int(new.guard_loss_spike_steps) == 1 and int(new.guard_norm_spike_steps) == 0
    assert not np.any(np.asarray(u["w"]))


def _loss_run(losses):
    """The guard's loss counters after a run of ``losses`` with steady gradients."""
    opt = ox.explosion_guard(optax.sgd(1.0))
    params = {"w": jnp.zeros(4, jnp.float32)}

    def step(state, loss):
        _, state = opt.update({"w": jnp.ones(4, jnp.float32)}, state, params, value=loss)
        return state, None

    run = jax.jit(lambda xs: jax.lax.scan(step, opt.init(params), xs)[0])
    return run(jnp.asarray(losses, jnp.float32))


def test_loss_spike_test_reads_log_loss():
    """Skewed minibatch losses (0.001-0.2, and 3-4 when one example of a
    small batch is wrong) are ordinary data; a narrow loss that jumps x1.5 is
    a spike; a loss <= 0 is neither tested nor fed to the statistics."""
    rng = np.random.default_rng(0)
    skewed = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 400))
    skewed[rng.choice(400, 12, replace=False)] = rng.uniform(3.0, 4.0, 12)
    narrow = 2.5 + 0.02 * rng.standard_normal(400)
    narrow[300] = 3.75
    signed = narrow - 3.0  # mostly negative
    s_skewed, s_narrow, s_signed = (_loss_run(x) for x in (skewed, narrow, signed))
    assert int(s_skewed.guard_loss_spike_steps) == 0
    assert int(s_narrow.guard_loss_spike_steps) == 1 and int(s_narrow.guard_skipped_steps) == 1
    n_positive = int(np.sum(signed > 0))
    assert int(s_signed.guard_loss_stats_count) <= n_positive
    assert int(s_signed.guard_accepted_steps) + int(s_signed.guard_skipped_steps) == 400


def test_spike_caught_on_the_second_step_of_a_run():
    opt = ox.explosion_guard(optax.sgd(1.0))
    params = {"w": jnp.zeros(4, jnp.float32)}
    state = opt.init(params)
    _, state = opt.update({"w": jnp.ones(4, jnp.float32)}, state, params, value=jnp.float32(2.0))
    u, state = opt.update({"w": jnp.full(4, 1e4, jnp.float32)}, state, params,
                          value=jnp.float32(2.0))
    assert int(state.guard_norm_spike_steps) == 1 and not np.any(np.asarray(u["w"]))


def test_lasting_change_of_level_restarts_after_three_spikes_and_cuts_once():
    """A gradient norm that jumps x100 and stays: two steps skipped, the
    third restarts the statistics and is applied; three events in a row are
    a burst, which halves the multiplier, and it regrows afterwards."""
    opt = ox.explosion_guard(optax.sgd(1.0))
    params = {"w": jnp.zeros(4, jnp.float32)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    rng = np.random.default_rng(0)
    skipped, scales = [], []
    for i in range(40):
        level = 100.0 if i >= 20 else 1.0
        g = {"w": jnp.asarray(level * (1 + 0.05 * rng.standard_normal(4)), jnp.float32)}
        u, state = update(g, state, params)
        skipped.append(not np.any(np.asarray(u["w"])))
        scales.append(float(state.guard_recovery.recovery_scale))
    assert np.flatnonzero(skipped).tolist() == [20, 21]
    assert int(state.guard_restart_steps) == 1 and int(state.guard_spike_steps) == 2
    assert int(state.guard_recovery.recovery_burst_cuts) == 1
    assert scales[22] == 0.5 and scales[-1] > scales[23] > 0.5


def test_steady_growth_in_the_first_steps_is_not_a_spike():
    opt = ox.explosion_guard(optax.sgd(1.0))
    params = {"w": jnp.zeros(4, jnp.float32)}
    state = opt.init(params)
    for i in range(5):
        g = {"w": jnp.full(4, 2.0**i, jnp.float32)}
        _, state = opt.update(g, state, params)
    assert int(state.guard_spike_steps) == 0 and int(state.guard_accepted_steps) == 5


def test_diverged_after_max_consecutive_skips_and_stays_zero(guarded):
    opt, update = guarded
    params = _tree([1.0, 2.0, 3.0])
    state = _warm_state(opt, update, params)
    nan = _tree([np.nan, 0.0, 0.0])
    for _ in range(4):
        _, state = update(nan, state, params, value=jnp.float32(1.0))
    assert bool(state.guard_diverged)
    frozen = state.inner_state
    u, state = update(_tree([0.1, 0.2, 0.3]), state, params, value=jnp.float32(1.0))
    assert bool(state.guard_diverged)
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(u))
    assert _leaves_equal(state.inner_state, frozen)


def test_vanishing_steps_counted():
    opt = ox.explosion_guard(optax.sgd(1.0), vanishing_threshold=1e-3)
    params = {"w": jnp.zeros(4, jnp.float32)}
    state = opt.init(params)
    for v in (1.0, 1e-5, 0.0, 1.0):
        _, state = opt.update({"w": jnp.full(4, v, jnp.float32)}, state, params)
    assert int(state.guard_vanishing_steps) == 2


def test_counters_saturate_instead_of_wrapping():
    opt = ox.explosion_guard(optax.sgd(1.0))
    params = {"w": jnp.zeros(2, jnp.float32)}
    state = opt.init(params)
    big = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
    state = state._replace(guard_steps=big, guard_accepted_steps=big)
    _, state = opt.update({"w": jnp.ones(2, jnp.float32)}, state, params)
    assert int(state.guard_steps) == np.iinfo(np.int32).max
    assert int(state.guard_accepted_steps) == np.iinfo(np.int32).max


class _RecordState(NamedTuple):
    seen_value: jax.Array


def _record_value():
    def init(params):
        del params
        return _RecordState(jnp.zeros((), jnp.float32))

    def update(updates, state, params=None, *, value, **extra):
        del params, extra
        return updates, _RecordState(jnp.asarray(value, jnp.float32))

    return optax.GradientTransformationExtraArgs(init, update)


def test_forwards_value_through_chain_partition_and_inject():
    params = {"w": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)}
    inner = optax.chain(
        optax.partition(
            {"w": _record_value(), "b": optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)},
            {"w": "w", "b": "b"},
        ),
    )
    opt = ox.explosion_guard(inner)
    state = opt.init(params)
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = jax.jit(opt.update)(g, state, params, value=jnp.float32(3.5))
    assert float(optax.tree.get(state, "seen_value")) == 3.5


def test_works_without_value():
    opt = ox.explosion_guard(optax.adam(1e-3))
    params = {"w": jnp.ones(3, jnp.float32)}
    u, state = opt.update({"w": jnp.ones(3, jnp.float32)}, opt.init(params), params)
    assert int(state.guard_accepted_steps) == 1 and float(state.guard_last_loss) == 0.0


def test_bf16_norm_does_not_overflow():
    opt = ox.explosion_guard(optax.sgd(1.0))
    g = {"w": jnp.full((1000, 1000), 1e3, jnp.bfloat16)}
    u, state = opt.update(g, opt.init(g), g)
    assert u["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(state.guard_grad_norm), 1e6, rtol=1e-2)
    assert int(state.guard_accepted_steps) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(z_threshold=-1.0), r"explosion_guard\(z_threshold=-1.0\): z_threshold must be > 0"),
        (dict(on_spike="drop"), "on_spike must be one of"),
        (dict(backoff_factor=0.0), "backoff_factor must be > 0"),
        (dict(backoff_factor=1.5), "backoff_factor must be <= 1"),
        (dict(growth_factor=0.9), "growth_factor must be >= 1"),
        (dict(min_scale=0.0), "min_scale must be > 0"),
        (dict(max_consecutive_skips=0), "max_consecutive_skips must be >= 1"),
        (dict(vanishing_threshold=-1.0), "vanishing_threshold must be >= 0"),
        (dict(decay=1.0), "decay must be < 1"),
        (dict(max_consecutive_skips=2.5), "max_consecutive_skips must be an integer"),
        (dict(probe_steps=20), "unexpected keyword argument 'probe_steps'"),
        (dict(z_threshold="6"), "z_threshold must be a number"),
        (dict(watch_loss=1), "watch_loss must be True or False"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ox.explosion_guard(optax.adam(1e-3), **kwargs)


def test_inner_must_be_a_transformation():
    with pytest.raises(TypeError, match="inner must be an optax GradientTransformation"):
        ox.explosion_guard(optax.adam)


# --- Fault injection on a small regression problem -------------------------

_STEPS = 300


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    w_true = rng.normal(size=(8, 1)).astype(np.float32)
    y = np.tanh(x @ w_true) + 0.05 * rng.normal(size=(256, 1)).astype(np.float32)
    params = {
        "w1": jnp.asarray(0.3 * rng.normal(size=(8, 16)), jnp.float32),
        "w2": jnp.asarray(0.3 * rng.normal(size=(16, 1)), jnp.float32),
    }
    return jnp.asarray(x), jnp.asarray(y), params


def _loss(params, x, y):
    h = jnp.tanh(x @ params["w1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


# fault codes: 0 none, 1 NaN gradient, 2 Inf gradient, 3 x1e4 gradient, 4 NaN loss
_FAULTS = {60: 1, 110: 2, 160: 3, 210: 4}


@functools.partial(jax.jit, static_argnums=(0,))
def _train(opt_name, faults):
    x, y, params = _problem()
    if opt_name == "adam":
        opt = optax.adam(1e-2)
    else:
        opt = ox.explosion_guard(optax.adam(1e-2))

    def step(carry, fault):
        params, state = carry
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        grads = jax.tree_util.tree_map(
            lambda g: jnp.where(fault == 1, jnp.nan, jnp.where(fault == 2, jnp.inf, g))
            * jnp.where(fault == 3, 1e4, 1.0).astype(g.dtype),
            grads,
        )
        loss_in = jnp.where(fault == 4, jnp.nan, loss)
        updates, state = opt.update(grads, state, params, value=loss_in)
        return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(step, (params, opt.init(params)), faults)
    return _loss(params, x, y), params, losses, state


def _fault_array():
    f = np.zeros(_STEPS, np.int32)
    for k, v in _FAULTS.items():
        f[k] = v
    return jnp.asarray(f)


@pytest.mark.slow
def test_fault_injection_guard_survives_where_adam_dies():
    clean = np.zeros(_STEPS, np.int32)
    clean_loss, *_ = _train("guard", jnp.asarray(clean))
    guard_loss, params, losses, state = _train("guard", _fault_array())
    adam_loss, adam_params, *_ = _train("adam", _fault_array())

    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree_util.tree_leaves(params))
    x, y, init_params = _problem()
    init_loss = float(_loss(init_params, x, y))
    # Within 5% of the clean run's improvement over the initial loss.
    assert float(guard_loss) <= float(clean_loss) + 0.05 * (init_loss - float(clean_loss))
    assert int(state.guard_nonfinite_steps) == 3
    assert int(state.guard_skipped_steps) >= 4  # the three non-finite steps and the x1e4 spike
    assert not bool(state.guard_diverged)
    # Plain Adam on the same faults ends with NaN parameters.
    assert not np.isfinite(float(adam_loss))


def test_vmap_over_runs_matches_each_run_alone():
    # Sweeps run the guard under vmap (benchmarks/stability.py does). Each run
    # must take its own decisions: here run 1 gets a NaN gradient and run 2 a
    # 1e4x spike at step 6, while run 0 stays healthy.
    opt = ox.explosion_guard(optax.adam(1e-2), max_consecutive_skips=2)
    runs, steps = 3, 8
    rng = np.random.default_rng(1)
    grads = (1.0 + 0.01 * rng.normal(size=(steps, runs, 3))).astype(np.float32)
    grads[6, 1, 0] = np.nan
    grads[6, 2] *= 1e4
    losses = (1.0 - 0.01 * np.arange(steps)[:, None] + 0.001 * np.arange(runs)).astype(
        np.float32
    )

    def run(g_seq, l_seq):
        params = {"w": jnp.ones(3, jnp.float32)}
        state = opt.init(params)

        def body(carry, gl):
            params, state = carry
            updates, state = opt.update({"w": gl[0]}, state, params, value=gl[1])
            return (optax.apply_updates(params, updates), state), None

        (params, state), _ = jax.lax.scan(body, (params, state), (g_seq, l_seq))
        return params, state

    batched = jax.jit(jax.vmap(run, in_axes=(1, 1)))(jnp.asarray(grads), jnp.asarray(losses))
    single = jax.jit(run)
    for r in range(runs):
        want = single(jnp.asarray(grads[:, r]), jnp.asarray(losses[:, r]))
        got = jax.tree_util.tree_map(lambda x, r=r: x[r], batched)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=0)
    _, state = batched
    np.testing.assert_array_equal(np.asarray(state.guard_nonfinite_steps), [0, 1, 0])
    np.testing.assert_array_equal(np.asarray(state.guard_spike_steps), [0, 0, 1])
    np.testing.assert_array_equal(np.asarray(state.guard_skipped_steps), [0, 1, 1])


def _entry_ops(tx, leaves=4, shape=(128, 256)):
    """(ops writing a full-size array, scalar kernels that do not read the
    gradients) in the optimized HLO of a donated ``update + apply_updates``.

    Leaves of 32k elements: XLA:CPU's generic reduction for tiny arrays
    writes the product it reduces to memory first, the library path used
    from a few thousand elements on fuses it.
    """
    params = {f"l{i}": jnp.full(shape, 0.1 * (i + 1), jnp.float32) for i in range(leaves)}
    grads = jax.tree_util.tree_map(lambda p: p * 0.5, params)

    def step(p, s, g, loss):
        u, s = tx.update(g, s, p, value=loss)
        return optax.apply_updates(p, u), s

    hlo = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, tx.init(params), grads, jnp.float32(1.0))
        .compile()
        .as_text()
    )
    entry = hlo[hlo.index("\nENTRY"):].splitlines()[1:]
    big = f"f32[{shape[0]},{shape[1]}]"
    full = scalar_kernels = 0
    for line in entry:
        _, _, rhs = line.partition(" = ")
        if not rhs or " parameter(" in rhs:
            continue
        if rhs.startswith(big):
            full += 1
        elif " fusion(" in rhs and "%g__" not in rhs and big not in rhs.split(" fusion(")[0]:
            scalar_kernels += 1
    return full, scalar_kernels


def test_compiled_step_adds_no_full_size_buffers_and_few_scalar_kernels():
    # The guard's cost floor is one extra read of the gradients (the norm).
    # Per leaf, plain Adam writes three arrays (mu, nu, params); the guarded
    # step must write exactly those three too: no materialised g², no copy of
    # a donated buffer, no separate select over the state. Its scalar logic
    # (statistics, counters, recovery rule: about 30 state fields) compiles
    # to one kernel (nx.fuse_scalars), not one or more per field; left to
    # XLA's own fusion it made 8 (11 scalar kernels in all, against Adam's 3).
    leaves = 4
    adam_full, adam_scalar = _entry_ops(optax.adam(1e-3), leaves)
    assert adam_full == 3 * leaves
    for on_spike in ("skip", "clip"):
        full, scalar_kernels = _entry_ops(
            ox.explosion_guard(optax.adam(1e-3), on_spike=on_spike), leaves
        )
        assert full == adam_full, (on_spike, full, adam_full)
        assert scalar_kernels <= adam_scalar + 2, (on_spike, scalar_kernels, adam_scalar)


# Wrong kinds of value= (None means "no loss" and stays accepted).
BAD_VALUES = {
    "str": "1.0", "bytes": b"1.0", "dict": {"loss": 1.0}, "list": [1.0], "tuple": (1.0,),
    "bool": True, "complex": 1 + 2j, "str_array": np.array("1.0"),
    "bool_array": jnp.asarray(True), "complex_array": jnp.complex64(1.0),
}


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_value_of_the_wrong_kind_is_named(kind):
    opt = ox.explosion_guard(optax.sgd(0.1))
    params = {"w": jnp.ones(3, jnp.float32)}
    with pytest.raises(TypeError, match=r"^explosion_guard\(value=.*\): value must be the loss "
                                        r"as a real scalar: pass value=loss"):
        opt.update(params, opt.init(params), params, value=BAD_VALUES[kind])


def test_value_dtype_is_checked_when_traced():
    opt = ox.explosion_guard(optax.sgd(0.1))
    params = {"w": jnp.ones(3, jnp.float32)}
    with pytest.raises(TypeError, match=r"^explosion_guard\(value=<traced complex64\[\]>\)"):
        jax.jit(opt.update)(params, opt.init(params), params, value=jnp.complex64(1.0))
