"""Tests for ``optaxsched.schedules``.

Three sources of truth: float64 reference functions written here from the
published formulas, golden sequences recorded from PyTorch, Keras and timm
(``golden/schedules_golden.json``, written by ``golden/generate_golden.py``;
the tests need none of those libraries), and properties every schedule must
have (float32, jit/vmap/scan, Python ints, finite and non-negative far past
the end). All configurations are evaluated together, so a whole batch of
schedules costs one compilation.
"""

from __future__ import annotations

import bisect
import json
import math
import pathlib
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optaxsched import schedules as S

F32_MAX = float(np.finfo(np.float32).max)
I32_MAX = 2**31 - 1
RTOL = 1e-5

# ------------------------------------------------------ float64 references --


def r_constant(t, value):
    return value


def r_step_decay(t, init_value, step_size, gamma=0.1):
    return init_value * gamma ** (t // step_size)


def r_multistep_decay(t, init_value, milestones, gamma=0.1):
    return init_value * gamma ** sum(m <= t for m in milestones)


def r_piecewise_constant(t, boundaries, values):
    return values[sum(b < t for b in boundaries)]


def _power(base, p):
    try:
        return base**p
    except OverflowError:
        return math.inf


def r_exponential_decay(t, init_value, decay_rate, decay_steps=1, staircase=False, end_value=None):
    p = t // decay_steps if staircase else t / decay_steps
    v = init_value * _power(decay_rate, p)
    if end_value is not None and decay_rate < 1:
        v = max(v, end_value)
    if end_value is not None and decay_rate > 1:
        v = min(v, end_value)
    return v


def r_inverse_time_decay(t, init_value, decay_rate, decay_steps=1, staircase=False):
    p = t // decay_steps if staircase else t / decay_steps
    return init_value / (1 + decay_rate * p)


def r_power_decay(t, init_value, power=0.5, timescale=1.0):
    return init_value * (1 + t / timescale) ** -power


def r_inverse_sqrt(t, peak_value, warmup_steps):
    w = warmup_steps
    return peak_value * min(t / w, math.sqrt(w / max(t, w)))


def r_linear(t, init_value, end_value, transition_steps):
    return init_value + (end_value - init_value) * min(t, transition_steps) / transition_steps


def r_polynomial_decay(t, init_value, decay_steps, end_value=0.0, power=1.0, cycle=False):
    if cycle:  # Keras: decay_steps * ceil(t / decay_steps), 1 at t = 0
        p = t / (decay_steps * max(1, -(-t // decay_steps)))
    else:
        p = min(t, decay_steps) / decay_steps
    return (init_value - end_value) * (1 - p) ** power + end_value


def r_cosine_decay(t, init_value, decay_steps, end_value=0.0, periodic=False):
    x = t if periodic else min(t, decay_steps)
    return end_value + (init_value - end_value) * (1 + math.cos(math.pi * x / decay_steps)) / 2


def r_cosine_restarts(t, init_value, first_period, period_mult=1.0, end_value=0.0,
                      amplitude_mult=1.0):
    if period_mult == 1.0:
        i, start, period = t // first_period, (t // first_period) * first_period, first_period
    else:  # exact rational restart positions
        i, start, period = 0, Fraction(0), Fraction(first_period)
        m = Fraction(repr(period_mult))  # the decimal the user wrote: 1.05 is 21/20
        while start + period <= t:
            start, period, i = start + period, period * m, i + 1
    f = float((t - start) / period)
    amplitude = amplitude_mult**i * (init_value - end_value)
    return end_value + amplitude * (1 + math.cos(math.pi * f)) / 2


def r_cyclic(t, base_value, max_value, step_size_up, step_size_down=None, mode="triangular",
             gamma=1.0):
    # torch CyclicLR, literally.
    down = step_size_up if step_size_down is None else step_size_down
    total = step_size_up + down
    ratio = step_size_up / total
    cycle = math.floor(1 + t / total)
    x = 1.0 + t / total - cycle
    s = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    g = 0.5 ** (cycle - 1) if mode == "triangular2" else gamma**t if mode == "exp_range" else 1.0
    return base_value + (max_value - base_value) * s * g


def r_one_cycle(t, max_value, total_steps, pct_start=0.3, anneal="cos", div_factor=25.0,
                final_div_factor=1e4, three_phase=False):
    # torch OneCycleLR, literally, held at its final value from total_steps - 1 on.
    T = total_steps
    init = max_value / div_factor
    low = init / final_div_factor
    if t >= T - 1:
        return low
    if three_phase:
        phases = [(float(pct_start * T) - 1, init, max_value),
                  (float(2 * pct_start * T) - 2, max_value, init), (T - 1.0, init, low)]
    else:
        phases = [(float(pct_start * T) - 1, init, max_value), (T - 1.0, max_value, low)]
    start = 0.0
    for k, (end, a, b) in enumerate(phases):
        if t <= end or k == len(phases) - 1:
            p = (t - start) / (end - start)
            if anneal == "cos":
                return b + (a - b) / 2 * (math.cos(math.pi * p) + 1)
            return (b - a) * p + a
        start = end


def r_wsd(t, peak_value, total_steps, warmup_steps=0, decay_steps=None, init_value=0.0,
          end_value=0.0, decay_shape="1-sqrt"):
    # timm WSDLRScheduler (constant stable phase), t_initial = total_steps - warmup_steps.
    W, T = warmup_steps, total_steps
    D = math.floor(0.1 * T + 0.5) if decay_steps is None else decay_steps
    if t < W:
        return init_value + t * (peak_value - init_value) / W
    if D == 0:
        return peak_value if t < T else end_value
    t_decay = (t - W) - ((T - W) - D)
    if t_decay <= 0:
        return peak_value
    f = min(t_decay / D, 1.0)
    g = {"linear": 1 - f, "cosine": 0.5 * (1 + math.cos(math.pi * f)),
         "1-sqrt": 1 - math.sqrt(f)}[decay_shape]
    return end_value + (peak_value - end_value) * g


def r_warmup(t, schedule, warmup_steps, init_value=0.0, prefix=True):
    if t < warmup_steps:
        return init_value + t * (schedule(0) - init_value) / warmup_steps
    return schedule(t - warmup_steps if prefix else t)


def r_join(t, schedules, boundaries):
    k = bisect.bisect_right(boundaries, t)
    return schedules[k](t - (boundaries[k - 1] if k else 0))


def r_per_epoch(t, schedule, steps_per_epoch):
    return schedule(t // steps_per_epoch)


def r_multiply(t, *schedules):
    return math.prod(s(t) for s in schedules)


def build(spec):
    """(our schedule, float64 reference) from ``{"fn": name, "kwargs": {...}}``."""
    fn, kwargs = spec["fn"], dict(spec["kwargs"])
    ref_kwargs = dict(kwargs)
    if fn == "join":
        pairs = [build(s) for s in kwargs["schedules"]]
        kwargs["schedules"] = [p[0] for p in pairs]
        ref_kwargs["schedules"] = [p[1] for p in pairs]
    if fn in ("warmup", "per_epoch"):
        kwargs["schedule"], ref_kwargs["schedule"] = build(kwargs["schedule"])
    if fn == "multiply":
        pairs = [build(s) for s in kwargs.pop("schedules")]
        ref_fn = globals()["r_multiply"]
        return S.multiply(*[p[0] for p in pairs]), lambda t: ref_fn(t, *[p[1] for p in pairs])
    ref_fn = globals()["r_" + fn]
    return getattr(S, fn)(**kwargs), lambda t: min(ref_fn(t, **ref_kwargs), F32_MAX)


def sp(fn, **kwargs):
    return {"fn": fn, "kwargs": kwargs}


# ------------------------------------------------------ configurations --

CASES = {
    "constant": sp("constant", value=0.1),
    "constant_zero": sp("constant", value=0.0),
    "step": sp("step_decay", init_value=0.1, step_size=3, gamma=0.5),
    "step_default_gamma": sp("step_decay", init_value=1.0, step_size=7),
    "step_gamma0": sp("step_decay", init_value=1.0, step_size=5, gamma=0.0),
    "multistep": sp("multistep_decay", init_value=1.0, milestones=[12, 3, 7, 7], gamma=0.5),
    "multistep_empty": sp("multistep_decay", init_value=0.5, milestones=[]),
    "multistep_at0": sp("multistep_decay", init_value=1.0, milestones=[0, 40]),
    "piecewise": sp("piecewise_constant", boundaries=[5, 10, 20], values=[1.0, 0.5, 0.1, 0.01]),
    "piecewise_none": sp("piecewise_constant", boundaries=[], values=[0.3]),
    "piecewise_equal": sp("piecewise_constant", boundaries=[5, 5, 9], values=[1.0, 2.0, 3.0, 4.0]),
    "exp": sp("exponential_decay", init_value=0.1, decay_rate=0.9),
    "exp_steps": sp("exponential_decay", init_value=0.1, decay_rate=0.5, decay_steps=7),
    "exp_stair": sp("exponential_decay", init_value=0.1, decay_rate=0.5, decay_steps=7,
                    staircase=True),
    "exp_floor": sp("exponential_decay", init_value=1.0, decay_rate=0.8, decay_steps=3,
                    end_value=0.05),
    "exp_grow_cap": sp("exponential_decay", init_value=0.01, decay_rate=1.1, end_value=2.0),
    "exp_grow": sp("exponential_decay", init_value=1.0, decay_rate=1.5),
    "invtime": sp("inverse_time_decay", init_value=0.1, decay_rate=0.5, decay_steps=5),
    "invtime_stair": sp("inverse_time_decay", init_value=0.1, decay_rate=0.5, decay_steps=5,
                        staircase=True),
    "invtime_rate0": sp("inverse_time_decay", init_value=0.1, decay_rate=0.0),
    "power": sp("power_decay", init_value=0.1, power=0.7, timescale=20.0),
    "power_default": sp("power_decay", init_value=1.0),
    "power0": sp("power_decay", init_value=1.0, power=0.0),
    "rsqrt": sp("inverse_sqrt", peak_value=0.5, warmup_steps=50),
    "rsqrt_w1": sp("inverse_sqrt", peak_value=1.0, warmup_steps=1),
    "linear_up": sp("linear", init_value=0.05, end_value=0.2, transition_steps=8),
    "linear_down": sp("linear", init_value=0.1, end_value=0.01, transition_steps=10),
    "linear_1": sp("linear", init_value=1.0, end_value=0.0, transition_steps=1),
    "poly": sp("polynomial_decay", init_value=0.1, decay_steps=10, end_value=0.001, power=0.5),
    "poly_default": sp("polynomial_decay", init_value=1.0, decay_steps=7),
    "poly_cycle": sp("polynomial_decay", init_value=0.1, decay_steps=10, end_value=0.001,
                     power=2.0, cycle=True),
    "poly_cycle_1": sp("polynomial_decay", init_value=1.0, decay_steps=1, cycle=True),
    "cos": sp("cosine_decay", init_value=0.1, decay_steps=20, end_value=0.01),
    "cos_periodic": sp("cosine_decay", init_value=0.1, decay_steps=10, end_value=0.01,
                       periodic=True),
    "cos_1": sp("cosine_decay", init_value=1.0, decay_steps=1),
    "cos_up": sp("cosine_decay", init_value=1.0, decay_steps=10, end_value=2.0),
    "sgdr_x2": sp("cosine_restarts", init_value=0.1, first_period=5, period_mult=2.0,
                  end_value=0.001),
    "sgdr_x1": sp("cosine_restarts", init_value=0.1, first_period=7),
    "sgdr_x1_amp": sp("cosine_restarts", init_value=0.1, first_period=10, amplitude_mult=0.5),
    "sgdr_x1.5": sp("cosine_restarts", init_value=0.1, first_period=8, period_mult=1.5,
                    end_value=0.005, amplitude_mult=0.8),
    "sgdr_x1.05": sp("cosine_restarts", init_value=1.0, first_period=3, period_mult=1.05,
                     amplitude_mult=0.9),
    "sgdr_x3": sp("cosine_restarts", init_value=1.0, first_period=1, period_mult=3.0),
    "cyclic": sp("cyclic", base_value=0.01, max_value=0.1, step_size_up=4, step_size_down=6),
    "cyclic_tri2": sp("cyclic", base_value=0.01, max_value=0.1, step_size_up=3,
                      mode="triangular2"),
    "cyclic_exp": sp("cyclic", base_value=0.01, max_value=0.1, step_size_up=5, step_size_down=3,
                     mode="exp_range", gamma=0.95),
    "cyclic_down": sp("cyclic", base_value=0.1, max_value=0.01, step_size_up=2),
    "onecycle": sp("one_cycle", max_value=1.0, total_steps=50),
    "onecycle_lin": sp("one_cycle", max_value=0.5, total_steps=37, pct_start=0.25,
                       anneal="linear", div_factor=10.0, final_div_factor=100.0),
    "onecycle_3": sp("one_cycle", max_value=1.0, total_steps=37, pct_start=0.25, three_phase=True),
    "onecycle_3lin": sp("one_cycle", max_value=1.0, total_steps=100, anneal="linear",
                        three_phase=True),
    "onecycle_short": sp("one_cycle", max_value=1.0, total_steps=10, pct_start=0.15),
    "wsd": sp("wsd", peak_value=0.1, total_steps=100, warmup_steps=10, decay_steps=20,
              end_value=0.001),
    "wsd_linear": sp("wsd", peak_value=0.1, total_steps=100, warmup_steps=10, decay_steps=30,
                     decay_shape="linear"),
    "wsd_cos": sp("wsd", peak_value=0.1, total_steps=100, decay_steps=25, end_value=0.001,
                  decay_shape="cosine"),
    "wsd_default": sp("wsd", peak_value=1.0, total_steps=55),
    "wsd_nodecay": sp("wsd", peak_value=1.0, total_steps=20, warmup_steps=5, decay_steps=0),
    "wsd_nostable": sp("wsd", peak_value=1.0, total_steps=10, warmup_steps=4, decay_steps=6,
                       init_value=0.1),
    "warmup_cos": sp("warmup", schedule=sp("cosine_decay", init_value=0.1, decay_steps=50,
                                           end_value=0.002), warmup_steps=8, init_value=0.001),
    "warmup_0": sp("warmup", schedule=sp("step_decay", init_value=1.0, step_size=3),
                   warmup_steps=0),
    "warmup_const": sp("warmup", schedule=sp("constant", value=2.0), warmup_steps=5),
    "warmup_over_cos": sp("warmup", schedule=sp("cosine_decay", init_value=0.1, decay_steps=50,
                                                end_value=0.002), warmup_steps=8,
                          init_value=0.001, prefix=False),
    "warmup_over_step": sp("warmup", schedule=sp("step_decay", init_value=1.0, step_size=4,
                                                 gamma=0.5), warmup_steps=6, prefix=False),
    "join": sp("join", schedules=[
        sp("linear", init_value=0.01, end_value=0.1, transition_steps=5),
        sp("exponential_decay", init_value=0.1, decay_rate=0.9),
        sp("step_decay", init_value=0.1, step_size=3, gamma=0.5)], boundaries=[5, 12]),
    "join_equal": sp("join", schedules=[sp("constant", value=1.0), sp("constant", value=2.0),
                                        sp("linear", init_value=0.0, end_value=1.0,
                                           transition_steps=4)], boundaries=[3, 3]),
    "join_at0": sp("join", schedules=[sp("constant", value=1.0),
                                      sp("cosine_decay", init_value=1.0, decay_steps=10)],
                   boundaries=[0]),
    "multiply": sp("multiply", schedules=[sp("constant", value=2.0),
                                          sp("linear", init_value=1.0, end_value=0.0,
                                             transition_steps=10)]),
    "per_epoch_cos": sp("per_epoch", schedule=sp("cosine_decay", init_value=0.1,
                                                 decay_steps=20), steps_per_epoch=7),
    "per_epoch_1": sp("per_epoch", schedule=sp("step_decay", init_value=1.0, step_size=3),
                      steps_per_epoch=1),
    "multiply_mod": sp("multiply", schedules=[
        sp("cosine_decay", init_value=1.0, decay_steps=100),
        sp("cyclic", base_value=0.5, max_value=1.0, step_size_up=5)]),
}
FNS = {name: build(spec) for name, spec in CASES.items()}
FAR = [999, 1000, 1001, 10**4, 10**6, 10**9, I32_MAX - 1, I32_MAX]
GRID = np.array(sorted(set(range(0, 130)) | {149, 150, 151, 199, 200, 201} | set(FAR)),
                np.int32)
IDS = sorted(CASES)


def reference(name, steps):
    ref = FNS[name][1]
    return np.array([ref(int(t)) for t in steps], np.float64)


def assert_close(got, want, scale):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=1e-7 * scale)


# One configuration per public function for the per-schedule property test.
FIRST = sorted({spec["fn"]: name for name, spec in reversed(CASES.items())}.values())


@pytest.fixture(scope="module")
def batched():
    """Every configuration over GRID under jit(vmap(...)), i.e. on traced
    scalars: a single compilation for all of them."""
    fns = {n: FNS[n][0] for n in IDS}
    return jax.jit(jax.vmap(lambda t: {n: f(t) for n, f in fns.items()}))(jnp.asarray(GRID))


# ------------------------------------------------------------------ tests --


def test_every_public_schedule_has_a_case():
    assert {spec["fn"] for spec in CASES.values()} == set(S.__all__)
    assert {CASES[n]["fn"] for n in FIRST} == set(S.__all__)


@pytest.mark.parametrize("name", IDS)
def test_matches_reference(name, batched):
    """Traced steps under jit(vmap) match the float64 reference, including
    boundaries, boundary +- 1, ends and far past the end (up to 2**31 - 1)."""
    got, want = batched[name], reference(name, GRID)
    assert got.dtype == jnp.float32 and got.shape == GRID.shape
    assert np.all(np.isfinite(got)), name
    assert np.all(np.asarray(got) >= 0), name  # every configuration is non-negative
    scale = max(1.0, float(np.max(np.abs(want[want < F32_MAX]), initial=0.0)))
    assert_close(got, want, scale)


@pytest.mark.parametrize("name", FIRST)
def test_python_ints_arrays_and_huge_steps(name, batched):
    """Eager calls on an int array and on Python ints agree with the traced
    values; steps beyond int32 saturate instead of wrapping around."""
    f = FNS[name][0]
    eager = f(GRID)
    assert eager.dtype == jnp.float32 and eager.shape == GRID.shape
    np.testing.assert_allclose(np.asarray(eager), np.asarray(batched[name]), rtol=1e-6, atol=1e-12)
    for t in (0, 7, 10**9):
        v = f(t)
        assert v.dtype == jnp.float32 and v.shape == ()
        assert_close(v, reference(name, [t]), 1.0)
    top = float(f(I32_MAX))
    assert math.isfinite(top)
    assert float(f(10**12)) == top
    assert float(f(np.int64(2**40))) == top


def test_step_conversions():
    f = S.step_decay(1.0, 2, 0.5)
    assert float(f(-3)) == 1.0
    assert float(f(3.9)) == 0.5  # floats are floored
    assert float(f(jnp.float32(-2.0))) == 1.0
    np.testing.assert_array_equal(f(jnp.asarray([[0, 2], [4, 6]], jnp.uint32)),
                                  [[1.0, 0.5], [0.25, 0.125]])
    np.testing.assert_array_equal(f(np.asarray([[1, 2**40]], np.int64)), [[1.0, float(f(I32_MAX))]])
    np.testing.assert_array_equal(f(jnp.asarray([-5, 2], jnp.int32)), [1.0, 0.5])


def test_scan_and_optax():
    """A schedule drives optax inside a jitted lax.scan training loop."""
    lr = S.warmup(S.cosine_decay(0.1, decay_steps=20), warmup_steps=5)
    opt = optax.sgd(lr)

    def body(carry, t):
        params, state = carry
        updates, state = opt.update({"w": jnp.ones(())}, state, params)
        return (optax.apply_updates(params, updates), state), lr(t)

    params = {"w": jnp.zeros(())}
    (params, _), lrs = jax.jit(
        lambda p: jax.lax.scan(body, (p, opt.init(p)), jnp.arange(30, dtype=jnp.int32)))(params)
    want = np.array([r_warmup(t, lambda s: r_cosine_decay(s, 0.1, 20), 5) for t in range(30)])
    np.testing.assert_allclose(np.asarray(lrs), want, rtol=RTOL, atol=1e-8)
    np.testing.assert_allclose(float(params["w"]), -want.sum(), rtol=1e-5)


def test_traced_values():
    """Value hyperparameters may be traced (e.g. swept with vmap)."""
    f = jax.jit(jax.vmap(lambda lr: S.cosine_decay(lr, 10, end_value=lr / 10)(5)))
    got = f(jnp.asarray([0.1, 1.0], jnp.float32))
    np.testing.assert_allclose(np.asarray(got), [0.055, 0.55], rtol=RTOL)
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda m: S.cosine_restarts(1.0, 5, period_mult=m)(3))(2.0)


# ------------------------------------------------------ named edge cases --


def test_exact_floors_under_jit():
    """Under jit x/c becomes x*(1/c); boundaries must still fall on the exact step."""
    steps = jnp.arange(0, 5000, dtype=jnp.int32)
    fns = [S.step_decay(1.0, 3, 0.5), S.cyclic(0.0, 1.0, 3, 7, mode="triangular2"),
           S.polynomial_decay(1.0, 3, cycle=True), S.cosine_restarts(1.0, 3, 3.0),
           S.piecewise_constant([3 * k for k in range(1, 40)], [float(k) for k in range(40)])]
    out = jax.jit(jax.vmap(lambda t: [f(t) for f in fns]))(steps)
    t = np.arange(5000)
    normal = t // 3 < 120  # XLA on CPU flushes subnormals to zero
    np.testing.assert_array_equal(
        np.asarray(out[0])[normal], (0.5 ** (t[normal] // 3)).astype(np.float32)
    )
    assert np.all(np.asarray(out[1])[t % 10 == 0] == 0.0)
    assert np.all(np.asarray(out[2])[(t % 3 == 0) & (t > 0)] == 0.0)
    restarts = [3 * (3**k - 1) // 2 for k in range(8)]
    assert np.all(np.asarray(out[3])[restarts] == 1.0)
    np.testing.assert_array_equal(np.asarray(out[4])[:118], np.maximum(0, (t[:118] - 1) // 3))


def test_cosine_periodic_vs_clamped():
    keras_like, torch_like = S.cosine_decay(1.0, 10, 0.1), S.cosine_decay(1.0, 10, 0.1, True)
    assert float(keras_like(15)) == pytest.approx(0.1)
    assert float(torch_like(15)) == pytest.approx(0.55)
    assert float(torch_like(20)) == pytest.approx(1.0)


def test_restarts_exact_where_float_log_is_not():
    """Keras's float32 log puts some exact restarts in the previous period
    (P=10, m=2: step 327670 gives its end value, see the golden data); the
    integer search never does."""
    g = S.cosine_restarts(1.0, 10, 2.0, end_value=0.1)
    assert [float(g(t)) for t in (327669, 327670)] == pytest.approx([0.1, 1.0], abs=1e-6)
    f = S.cosine_restarts(1.0, 8, 1.5, end_value=0.1, amplitude_mult=0.5)
    assert float(f(19)) < 0.11 and float(f(20)) == pytest.approx(0.325, rel=1e-6)
    assert float(jax.jit(f)(20)) == pytest.approx(0.325, rel=1e-6)
    # Restarts of a fractional multiplier: exactly at every integer S_k, for 30 periods.
    for m in (1.5, 1.25, 2.5):
        starts, s, p = [], Fraction(0), Fraction(4)
        for _ in range(30):
            starts.append(s)
            s, p = s + p, p * Fraction(m)
        g = S.cosine_restarts(1.0, 4, m)
        ints = np.array([int(x) for x in starts if x.denominator == 1 and x < I32_MAX], np.int32)
        np.testing.assert_array_equal(np.asarray(g(ints)), 1.0)
        assert np.all(np.asarray(g(ints[1:] - 1)) < 0.5)


def test_multistep_any_order_and_duplicates():
    f = S.multistep_decay(1.0, [30, 10, 30], gamma=0.5)
    assert [float(f(t)) for t in (9, 10, 29, 30)] == [1.0, 0.5, 0.5, 0.125]


def test_piecewise_left_value_at_boundary():
    f = S.piecewise_constant([10], [1.0, 2.0])
    assert [float(f(t)) for t in (10, 11)] == [1.0, 2.0]


def test_one_cycle_phase_ends_and_hold():
    f = S.one_cycle(1.0, total_steps=100, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    assert float(f(0)) == pytest.approx(0.04)
    assert float(f(29)) == pytest.approx(1.0)  # pct*T - 1
    assert float(f(99)) == pytest.approx(4e-6)
    assert float(f(100)) == float(f(10**9)) == float(f(99))
    g = S.one_cycle(1.0, 100, pct_start=0.3, three_phase=True)
    assert float(g(29)) == pytest.approx(1.0) and float(g(58)) == pytest.approx(0.04)  # 2pT - 2


def test_wsd_default_decay_and_end():
    f = S.wsd(1.0, total_steps=25, decay_shape="linear")  # 10% of 25 rounds half up to 3
    assert [float(f(t)) for t in (21, 22, 23, 25, 10**6)] == pytest.approx(
        [1.0, 1.0, 2 / 3, 0.0, 0.0])


def test_exponential_end_value_bounds():
    assert float(S.exponential_decay(1.0, 0.5, end_value=0.3)(10)) == pytest.approx(0.3)
    assert float(S.exponential_decay(1.0, 2.0, end_value=3.0)(10)) == pytest.approx(3.0)
    assert float(S.exponential_decay(1.0, 2.0)(10**9)) == F32_MAX  # saturates, never inf


def test_warmup_over_the_schedule_matches_timm():
    """prefix=False is timm's warmup_prefix=False (CosineLRScheduler with
    cycle_limit=1, StepLRScheduler): for t < warmup_t a ramp from
    warmup_lr_init towards the base lr, then the schedule at t itself, not
    delayed. NumPy float64 transcription of timm's ``_get_lr``."""
    base, lr_min, T, W, init = 0.1, 0.002, 40, 7, 0.001
    t = np.arange(60)
    ramp = init + t * (base - init) / W
    cos = np.where(t < T, lr_min + 0.5 * (base - lr_min) * (1 + np.cos(np.pi * t / T)), lr_min)
    want = [np.where(t < W, ramp, cos), np.where(t < W, ramp, base * 0.5 ** (t // 9))]
    fns = [S.warmup(S.cosine_decay(base, T, lr_min), warmup_steps=W, init_value=init,
                    prefix=False),
           S.warmup(S.step_decay(base, 9, 0.5), warmup_steps=W, init_value=init, prefix=False),
           S.warmup(S.cosine_decay(base, T, lr_min), warmup_steps=W, init_value=init)]
    got = jax.jit(lambda s: [f(s) for f in fns])(jnp.asarray(t, jnp.int32))  # one compile
    for g, w in zip(got[:2], want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=RTOL, atol=1e-8)
    # The same warm-up as a prefix delays the cosine by W steps instead.
    np.testing.assert_allclose(np.asarray(got[2])[W:], cos[:-W], rtol=RTOL, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(got[2])[:W], np.asarray(got[0])[:W])


def test_user_schedules_compose():
    base = optax.linear_schedule(1.0, 0.0, 10)
    f = S.join([S.warmup(base, 5, 0.5), lambda t: 0.25], boundaries=[20])
    want = [r_join(t, [lambda s: r_warmup(s, lambda u: max(0.0, 1 - u / 10) if u < 10 else 0.0,
                                          5, 0.5), lambda s: 0.25], [20]) for t in range(40)]
    np.testing.assert_allclose(np.asarray(f(np.arange(40))), want, rtol=RTOL, atol=1e-7)


# ------------------------------------------------------------ golden data --

GOLDEN_PATH = pathlib.Path(__file__).parent / "golden" / "schedules_golden.json"
GOLDEN = json.loads(GOLDEN_PATH.read_text())
PAD = 512  # one padded length so eager evaluation reuses compiled kernels


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["peer"].split(" ", 2)[2][:60])
def test_golden(case):
    f, ref = build(case["spec"])
    steps = np.zeros(PAD, np.int32)
    steps[: len(case["steps"])] = case["steps"]
    got = np.asarray(f(steps), np.float64)[: len(case["steps"])]
    want = np.asarray(case["values"])
    # Steps where the peer itself is off (Keras's float32 restart index), if any:
    # there we must hit the exact restart value instead.
    quirks = np.isin(case["steps"], case.get("quirk_steps", []))
    if quirks.any():
        exact = np.array([ref(t) for t in np.asarray(case["steps"])[quirks]])
        np.testing.assert_allclose(got[quirks], exact, rtol=RTOL)
    # Keras computes in float32: absolute error at the level of its largest value.
    np.testing.assert_allclose(got[~quirks], want[~quirks], rtol=RTOL,
                               atol=1e-6 * np.max(np.abs(want)))


def test_golden_file_is_small_and_covers_peers():
    peers = " ".join(c["peer"] for c in GOLDEN["cases"])
    for name in ("StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "PolynomialLR",
                 "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR",
                 "SequentialLR", "PiecewiseConstantDecay", "ExponentialDecay", "InverseTimeDecay",
                 "PolynomialDecay", "CosineDecay(", "CosineDecayRestarts", "WSDLRScheduler",
                 "warmup_prefix"):
        assert name in peers, name
    assert GOLDEN_PATH.stat().st_size < 200_000


# ----------------------------------------------------------- bad arguments --

_cos = S.constant(1.0)
BAD = [
    ("constant", dict(value="0.1"), TypeError, "value"),
    ("constant", dict(value=float("nan")), ValueError, "value"),
    ("constant", dict(value=-0.1), ValueError, "constant(value=-0.1): value must be >= 0"),
    ("constant", dict(value=np.float32(-0.1)), ValueError, "value must be >= 0"),
    ("step_decay", dict(init_value=0.1, step_size=0), ValueError, "step_size"),
    ("step_decay", dict(init_value=0.1, step_size=2.5), TypeError, "step_size"),
    ("step_decay", dict(init_value=0.1, step_size=3, gamma=-0.1), ValueError, "gamma"),
    ("step_decay", dict(init_value="0.1", step_size=3), TypeError, "init_value"),
    ("step_decay", dict(init_value=-0.1, step_size=3), ValueError, "init_value"),
    ("multistep_decay", dict(init_value=1.0, milestones=[3, -1]), ValueError, "milestones[1]"),
    ("multistep_decay", dict(init_value=1.0, milestones=5), TypeError, "milestones"),
    ("multistep_decay", dict(init_value=1.0, milestones=[3], gamma="x"), TypeError, "gamma"),
    ("multistep_decay", dict(init_value=-1.0, milestones=[3]), ValueError, "init_value"),
    ("piecewise_constant", dict(boundaries=[10, 5], values=[1.0, 2.0, 3.0]), ValueError,
     "boundaries"),
    ("piecewise_constant", dict(boundaries=[10], values=[1.0]), ValueError, "values"),
    ("piecewise_constant", dict(boundaries=[-1], values=[1.0, 2.0]), ValueError, "boundaries[0]"),
    ("piecewise_constant", dict(boundaries=[1], values=["a", 2.0]), TypeError, "values[0]"),
    ("piecewise_constant", dict(boundaries=[1], values=[1.0, -0.5]), ValueError,
     "values[1]=-0.5): values[1] must be >= 0"),
    ("piecewise_constant", dict(boundaries=[1], values=[1.0, float("nan")]), ValueError,
     "values[1]"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=0.0), ValueError, "decay_rate"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=0.5, decay_steps=0), ValueError,
     "decay_steps"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=0.5, staircase="yes"), TypeError,
     "staircase"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=0.5, end_value="0"), TypeError,
     "end_value"),
    ("exponential_decay", dict(init_value=-1.0, decay_rate=0.5), ValueError, "init_value"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=0.5, end_value=-0.1), ValueError,
     "end_value"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=0.5, end_value=2.0), ValueError,
     "end_value must be <= init_value"),
    ("exponential_decay", dict(init_value=1.0, decay_rate=2.0, end_value=0.5), ValueError,
     "end_value must be >= init_value"),
    ("inverse_time_decay", dict(init_value=1.0, decay_rate=-1.0), ValueError, "decay_rate"),
    ("inverse_time_decay", dict(init_value=1.0, decay_rate=1.0, decay_steps=-5), ValueError,
     "decay_steps"),
    ("inverse_time_decay", dict(init_value=-1.0, decay_rate=1.0), ValueError, "init_value"),
    ("power_decay", dict(init_value=1.0, power=-1.0), ValueError, "power"),
    ("power_decay", dict(init_value=1.0, timescale=0.0), ValueError, "timescale"),
    ("power_decay", dict(init_value=1.0, timescale="1"), TypeError, "timescale"),
    ("power_decay", dict(init_value=-1.0), ValueError, "init_value"),
    ("inverse_sqrt", dict(peak_value=1.0, warmup_steps=0), ValueError, "warmup_steps"),
    ("inverse_sqrt", dict(peak_value=None, warmup_steps=10), TypeError, "peak_value"),
    ("inverse_sqrt", dict(peak_value=-1.0, warmup_steps=10), ValueError, "peak_value"),
    ("linear", dict(init_value=1.0, end_value=0.0, transition_steps=0), ValueError,
     "transition_steps"),
    ("linear", dict(init_value=1.0, end_value="0", transition_steps=5), TypeError, "end_value"),
    ("linear", dict(init_value=-1.0, end_value=0.0, transition_steps=5), ValueError,
     "init_value"),
    ("linear", dict(init_value=1.0, end_value=-1.0, transition_steps=5), ValueError,
     "end_value"),
    ("polynomial_decay", dict(init_value=1.0, decay_steps=0), ValueError, "decay_steps"),
    ("polynomial_decay", dict(init_value=1.0, decay_steps=5, power=-1.0), ValueError, "power"),
    ("polynomial_decay", dict(init_value=1.0, decay_steps=5, cycle=1), TypeError, "cycle"),
    ("polynomial_decay", dict(init_value=-1.0, decay_steps=5), ValueError, "init_value"),
    ("polynomial_decay", dict(init_value=1.0, decay_steps=5, end_value=-1e-4), ValueError,
     "end_value"),
    ("cosine_decay", dict(init_value=1.0, decay_steps=0), ValueError, "decay_steps"),
    ("cosine_decay", dict(init_value=1.0, decay_steps=10, periodic="no"), TypeError, "periodic"),
    ("cosine_decay", dict(init_value=-1e-3, decay_steps=100), ValueError,
     "cosine_decay(init_value=-0.001): init_value must be >= 0"),
    ("cosine_decay", dict(init_value=1.0, decay_steps=10, end_value=-0.1), ValueError,
     "end_value"),
    ("cosine_decay", dict(init_value=float("inf"), decay_steps=10), ValueError, "init_value"),
    ("cosine_restarts", dict(init_value=1.0, first_period=0), ValueError, "first_period"),
    ("cosine_restarts", dict(init_value=1.0, first_period=3.0), TypeError, "first_period"),
    ("cosine_restarts", dict(init_value=1.0, first_period=5, period_mult=0.5), ValueError,
     "period_mult"),
    ("cosine_restarts", dict(init_value=1.0, first_period=5, period_mult=1 + 1e-9), ValueError,
     "period_mult"),
    ("cosine_restarts", dict(init_value=1.0, first_period=5, amplitude_mult=-1.0), ValueError,
     "amplitude_mult"),
    ("cosine_restarts", dict(init_value=-1.0, first_period=5), ValueError, "init_value"),
    ("cosine_restarts", dict(init_value=1.0, first_period=5, end_value=-0.1), ValueError,
     "end_value"),
    ("cosine_restarts", dict(init_value=0.1, first_period=5, end_value=1.0, amplitude_mult=1.5),
     ValueError, "amplitude_mult"),
    ("cyclic", dict(base_value=0.0, max_value=1.0, step_size_up=0), ValueError, "step_size_up"),
    ("cyclic", dict(base_value=0.0, max_value=1.0, step_size_up=2, step_size_down=0), ValueError,
     "step_size_down"),
    ("cyclic", dict(base_value=0.0, max_value=1.0, step_size_up=2, mode="tri"), ValueError, "mode"),
    ("cyclic", dict(base_value=0.0, max_value=1.0, step_size_up=2, mode=1), TypeError, "mode"),
    ("cyclic", dict(base_value=0.0, max_value=1.0, step_size_up=2, gamma=0.0), ValueError,
     "gamma"),
    ("cyclic", dict(base_value=-0.1, max_value=1.0, step_size_up=2), ValueError, "base_value"),
    ("cyclic", dict(base_value=0.1, max_value=-1.0, step_size_up=2), ValueError, "max_value"),
    ("cyclic", dict(base_value=1.0, max_value=0.1, step_size_up=2, mode="exp_range", gamma=1.01),
     ValueError, "gamma"),
    ("one_cycle", dict(max_value=1.0, total_steps=100, pct_start=0.0), ValueError, "pct_start"),
    ("one_cycle", dict(max_value=1.0, total_steps=100, pct_start=1.0), ValueError, "pct_start"),
    ("one_cycle", dict(max_value=1.0, total_steps=100, pct_start="0.3"), TypeError, "pct_start"),
    ("one_cycle", dict(max_value=1.0, total_steps=50, pct_start=0.01), ValueError, "pct_start"),
    ("one_cycle", dict(max_value=1.0, total_steps=10, pct_start=0.6, three_phase=True),
     ValueError, "pct_start"),
    ("one_cycle", dict(max_value=1.0, total_steps=100, anneal="cosine"), ValueError, "anneal"),
    ("one_cycle", dict(max_value=1.0, total_steps=1), ValueError, "total_steps"),
    ("one_cycle", dict(max_value=1.0, total_steps=100, div_factor=0.0), ValueError, "div_factor"),
    ("one_cycle", dict(max_value=-1.0, total_steps=100), ValueError, "max_value"),
    ("wsd", dict(peak_value=1.0, total_steps=100, warmup_steps=10, decay_steps=95), ValueError,
     "decay_steps"),
    ("wsd", dict(peak_value=1.0, total_steps=100, decay_shape="exp"), ValueError, "decay_shape"),
    ("wsd", dict(peak_value=1.0, total_steps=0), ValueError, "total_steps"),
    ("wsd", dict(peak_value=1.0, total_steps=10, warmup_steps=-1), ValueError, "warmup_steps"),
    ("wsd", dict(peak_value="1", total_steps=10), TypeError, "peak_value"),
    ("wsd", dict(peak_value=-1.0, total_steps=10), ValueError, "peak_value"),
    ("wsd", dict(peak_value=1.0, total_steps=10, warmup_steps=2, init_value=-1.0), ValueError,
     "init_value"),
    ("wsd", dict(peak_value=1.0, total_steps=10, end_value=-1e-4), ValueError, "end_value"),
    ("wsd", dict(peak_value=1.0, total_steps=10, end_value=float("inf")), ValueError,
     "end_value"),
    # The case: the warm-up alone is longer than the run.
    ("wsd", dict(peak_value=1.0, total_steps=1000, warmup_steps=1500), ValueError,
     "wsd(warmup_steps=1500): warmup_steps must be <= total_steps = 1000"),
    ("wsd", dict(peak_value=1.0, total_steps=1000, warmup_steps=1500, decay_steps=10),
     ValueError, "wsd(warmup_steps=1500): warmup_steps must be <= total_steps"),
    ("wsd", dict(peak_value=1.0, total_steps=1000, warmup_steps=950), ValueError,
     "warmup_steps + decay_steps = 950 + 100 must be <= total_steps = 1000; decay_steps=None "
     "means 10% of total_steps"),
    ("wsd", dict(peak_value=1.0, total_steps=100, decay_steps=101), ValueError,
     "wsd(decay_steps=101): decay_steps must be <= total_steps = 100"),
    ("warmup", dict(schedule=0.1, warmup_steps=5), TypeError, "schedule"),
    ("warmup", dict(schedule=_cos, warmup_steps=-1), ValueError, "warmup_steps"),
    ("per_epoch", dict(schedule=_cos, steps_per_epoch=0), ValueError, "steps_per_epoch"),
    ("per_epoch", dict(schedule=0.1, steps_per_epoch=5), TypeError, "schedule"),
    ("warmup", dict(schedule=_cos, warmup_steps=5, init_value="0"), TypeError, "init_value"),
    ("warmup", dict(schedule=_cos, warmup_steps=5, init_value=-0.1), ValueError, "init_value"),
    ("warmup", dict(schedule=_cos, warmup_steps=5, prefix="no"), TypeError, "prefix"),
    ("warmup", dict(schedule=_cos, warmup_steps=5, prefix=None), TypeError, "prefix"),
    ("join", dict(schedules=[_cos, _cos], boundaries=[]), ValueError, "boundaries"),
    ("join", dict(schedules=[_cos, 0.5], boundaries=[3]), TypeError, "schedules[1]"),
    ("join", dict(schedules=[_cos, _cos, _cos], boundaries=[5, 3]), ValueError, "boundaries"),
    ("join", dict(schedules=[], boundaries=[]), ValueError, "schedules"),
    ("join", dict(schedules=_cos, boundaries=[]), TypeError, "schedules"),
]


@pytest.mark.parametrize("fn,kwargs,exc,arg", BAD, ids=[f"{b[0]}-{b[3]}-{i}"
                                                       for i, b in enumerate(BAD)])
def test_bad_arguments(fn, kwargs, exc, arg):
    with pytest.raises(exc, match=re.escape(arg)) as info:
        getattr(S, fn)(**kwargs)
    msg = str(info.value)
    assert msg.startswith(fn + "("), msg


RATES = {"value", "init_value", "peak_value", "end_value", "max_value", "base_value", "values"}


def _negative_rate(kwargs):
    return any(k in RATES and np.any(np.asarray(v, np.float64) < 0) for k, v in kwargs.items()
               if not isinstance(v, str))


def test_negative_rates_are_refused_with_the_way_to_ascend():
    """Every schedule with a learning-rate argument has a negative-rate case in
    BAD, and each message says how to do gradient ascent on purpose."""
    cases = [(fn, kw) for fn, kw, exc, _ in BAD if exc is ValueError and _negative_rate(kw)]
    assert {fn for fn, _ in cases} == set(S.__all__) - {"join", "multiply", "per_epoch"}
    for fn, kw in cases:
        with pytest.raises(ValueError, match=r"must be >= 0: a negative learning rate.*"
                                             r"optax\.scale\(-1\.0\)"):
            getattr(S, fn)(**kw)


def test_legitimate_values_still_accepted():
    """What the peers accept stays accepted: zero rates, rising cosines and
    polynomials, a downward cycle, growth with a cap, a restart floor above
    the start without growing amplitude, and traced values (not checkable)."""
    S.constant(0.0)
    S.cosine_decay(0.1, 10, end_value=1.0)
    S.polynomial_decay(0.0, 10, end_value=1.0)
    S.cyclic(1.0, 0.1, 2, mode="exp_range", gamma=0.9)
    S.exponential_decay(0.1, 2.0, end_value=1.0)
    S.exponential_decay(1.0, 1.0, end_value=2.0)  # decay_rate 1: the bound never acts
    S.cosine_restarts(0.1, 5, end_value=1.0, amplitude_mult=1.0)
    S.wsd(1.0, total_steps=10, warmup_steps=9, decay_steps=1)
    f = jax.jit(lambda lr: S.cosine_decay(lr, 10)(0))
    assert float(f(-1.0)) == -1.0  # a traced rate is used as it comes


def test_bad_arguments_multiply():
    with pytest.raises(TypeError, match=r"^multiply\(\)"):
        S.multiply()
    with pytest.raises(TypeError, match=r"multiply\(schedules\[1\]=2\.0\)"):
        S.multiply(_cos, 2.0)


def test_every_schedule_has_a_bad_argument_test():
    assert {b[0] for b in BAD} | {"multiply"} == set(S.__all__)
