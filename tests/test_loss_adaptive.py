"""reduce_on_plateau, scale_by_loss and bold_driver against NumPy references
written from PyTorch's ReduceLROnPlateau rules and the bold-driver rule, and
against golden lr sequences recorded from torch itself
(``golden/generate_plateau_golden.py``)."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxsched as ox

F32 = np.float32
T = 48  # steps per sequence (the golden file's length)
B = 36  # sequences per batched call: one compile per (mode, threshold_mode)
GOLDEN = json.loads((Path(__file__).parent / "golden" / "plateau_golden.json").read_text())
MODES = [("min", "rel"), ("min", "abs"), ("max", "rel"), ("max", "abs")]
HP_NAMES = ("factor", "patience", "threshold", "cooldown", "min_scale", "eps",
            "accumulation_steps")


# ---------------------------------------------------------------------------
# NumPy references (float32, like the library)


def ref_plateau(values, *, factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                mode="min", cooldown=0, min_scale=0.0, eps=1e-8, accumulation_steps=1):
    """torch ReduceLROnPlateau, rel mode sign-aware, non-finite never better.

    Returns the scale applied to each update (after that update's value)."""
    scale, bad, cd = F32(1.0), 0, 0
    best = F32(np.inf if mode == "min" else -np.inf)
    thr = F32(threshold)
    window, out = [], []
    for v in values:
        window.append(F32(v))
        if len(window) == accumulation_steps:
            total = F32(0.0)
            for w in window:
                total = F32(total + (w if np.isfinite(w) else F32(0.0)))
            a = F32(total / F32(len(window)))
            ok = all(np.isfinite(w) for w in window) and np.isfinite(a)
            window = []
            if threshold_mode == "rel":
                margin = F32(abs(best) * thr) if np.isfinite(best) else F32(0.0)
            else:
                margin = thr
            if mode == "min":
                better = ok and a < F32(best - margin)
            else:
                better = ok and a > F32(best + margin)
            if better:
                best, bad = a, 0
            else:
                bad += 1
            if cd > 0:
                cd, bad = cd - 1, 0
            if bad > patience:
                new = max(F32(scale * F32(factor)), F32(min_scale))
                if F32(scale - new) > F32(eps):
                    scale = new
                cd, bad = cooldown, 0
        out.append(scale)
    return np.asarray(out, F32)


def ref_bold(values, *, increase=1.05, decrease=0.5, tolerance=1.0, min_scale=1e-3,
             max_scale=1.0):
    scale, prev, out = F32(max_scale), F32(np.inf), []
    for v in values:
        v = F32(v)
        limit = F32(prev + F32(F32(tolerance) - F32(1.0)) * abs(prev)) if np.isfinite(prev) \
            else F32(np.inf)
        fine = bool(np.isfinite(v) and v <= limit)
        scale = F32(scale * F32(increase if fine else decrease))
        scale = F32(min(max(scale, F32(min_scale)), F32(max_scale)))
        if np.isfinite(v):
            prev = v
        out.append(scale)
    return np.asarray(out, F32)


# ---------------------------------------------------------------------------
# Batched runners: the factory is built inside jit with traced hyperparameters
# (the checks skip tracers), so every configuration shares one compilation.


def _scan_scales(tx, values):
    def body(s, v):
        u, s = tx.update(jnp.ones((), jnp.float32), s, None, value=v)
        return s, u

    return jax.lax.scan(body, tx.init(None), values)[1]


@functools.partial(jax.jit, static_argnames=("mode", "threshold_mode"))
def plateau_scales(values, hp, *, mode, threshold_mode):
    def one(vals, hp):
        tx = ox.reduce_on_plateau(mode=mode, threshold_mode=threshold_mode, **hp)
        return _scan_scales(tx, vals)

    return jax.vmap(one)(values, hp)


@jax.jit
def bold_scales(values, hp):
    return jax.vmap(lambda vals, hp: _scan_scales(ox.bold_driver(**hp), vals))(values, hp)


def _batch(configs):
    """Stacks per-case hyperparameters into (B,) arrays, padding by repetition."""
    configs = (configs * (B // len(configs) + 1))[:B]
    hp = {k: np.asarray([c[k] for c in configs],
                        np.int32 if k in ("patience", "cooldown", "accumulation_steps")
                        else np.float32)
          for k in configs[0] if k != "values"}
    values = np.asarray([c["values"] for c in configs], np.float32)
    return jnp.asarray(values), {k: jnp.asarray(v) for k, v in hp.items()}


def _golden_values(name):
    return [math.nan if x is None else x for x in GOLDEN["sequences"][name]]


def _golden_scales(case):
    out, scale, changes = [], 1.0, dict((t, s) for t, s in case["changes"])
    for t in range(GOLDEN["length"]):
        scale = changes.get(t, scale)
        out.append(scale)
    return np.asarray(out)


# ---------------------------------------------------------------------------
# reduce_on_plateau


@pytest.mark.parametrize("mode,threshold_mode", MODES)
def test_plateau_matches_torch_golden(mode, threshold_mode):
    cases = [c for c in GOLDEN["cases"]
             if c["mode"] == mode and c["threshold_mode"] == threshold_mode]
    assert len(cases) >= 30
    configs = [{**{k: c[k] for k in HP_NAMES}, "values": _golden_values(c["sequence"])}
               for c in cases]
    values, hp = _batch(configs)
    got = np.asarray(plateau_scales(values, hp, mode=mode, threshold_mode=threshold_mode))
    for i, c in enumerate(cases):
        want = _golden_scales(c)
        label = f"{c['sequence']} {({k: c[k] for k in HP_NAMES})}"
        np.testing.assert_allclose(got[i], want, rtol=2e-6, atol=0, err_msg=label)
        ref = ref_plateau(configs[i]["values"], mode=mode, threshold_mode=threshold_mode,
                          **{k: c[k] for k in HP_NAMES})
        np.testing.assert_allclose(ref, want, rtol=2e-6, atol=0, err_msg="reference " + label)


def _random_plateau_configs(rng, n):
    t = np.arange(T)
    configs = []
    for i in range(n):
        kind = i % 4
        base = rng.choice([-1.0, 1.0]) * (0.5 + np.exp(-t / rng.uniform(5, 40)))
        v = base + rng.uniform(0, 0.1) * rng.standard_normal(T)
        if kind == 1:
            v = np.round(v, 1)  # many exact ties
        if kind == 2:
            v[rng.integers(0, T, 5)] = rng.choice([np.nan, np.inf, -np.inf], 5)
        if kind == 3:
            v = -v  # opposite trend
        configs.append(dict(
            values=v.astype(np.float32).tolist(),
            factor=float(rng.choice([0.0, 0.1, 0.5, 0.9])),
            patience=int(rng.integers(0, 5)),
            threshold=float(rng.choice([0.0, 1e-3, 0.05, 0.2])),
            cooldown=int(rng.integers(0, 4)),
            min_scale=float(rng.choice([0.0, 1e-3, 0.2])),
            eps=float(rng.choice([0.0, 1e-8, 0.05])),
            accumulation_steps=int(rng.choice([1, 1, 2, 5])),
        ))
    return configs


@pytest.mark.parametrize("mode,threshold_mode", MODES)
def test_plateau_random_configs_match_reference(mode, threshold_mode):
    """Negative, tied, NaN and ±inf values in every mode, against the reference."""
    rng = np.random.default_rng(MODES.index((mode, threshold_mode)))
    configs = _random_plateau_configs(rng, B)
    values, hp = _batch(configs)
    got = np.asarray(plateau_scales(values, hp, mode=mode, threshold_mode=threshold_mode))
    for i, c in enumerate(configs):
        kw = {k: c[k] for k in HP_NAMES}
        want = ref_plateau(c["values"], mode=mode, threshold_mode=threshold_mode, **kw)
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=0, err_msg=str(kw))


def _run(tx, values, params=None, grad=1.0):
    """Eager loop; returns the scalar updates and the final state."""
    params = jnp.zeros((), jnp.float32) if params is None else params
    state, outs = tx.init(params), []
    for v in values:
        u, state = tx.update(jnp.full((), grad, jnp.float32), state, params, value=v)
        outs.append(float(u))
    return outs, state


def test_plateau_alignment_and_first_reduction():
    # patience=1: the third flat value is the 2nd bad one; its own update is reduced.
    outs, state = _run(ox.reduce_on_plateau(factor=0.5, patience=1), [3.0, 3.0, 3.0, 3.0, 3.0])
    assert outs == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert int(state.plateau_reductions) == 2


def test_plateau_flat_period_is_patience_plus_one_plus_cooldown():
    tx = ox.reduce_on_plateau(factor=0.5, patience=2, cooldown=3)
    outs, _ = _run(tx, [1.0] * 20)
    drops = [t for t in range(1, 20) if outs[t] < outs[t - 1]]
    # first at the (patience+1)-th bad value (t=3), then every patience+1+cooldown.
    assert drops == [3, 9, 15]


def test_plateau_sign_aware_rel_threshold():
    # torch: -0.95 < -1·(1−0.1) = -0.9 counts as better although it is worse.
    tx = ox.reduce_on_plateau(factor=0.5, patience=0, threshold=0.1)
    outs, state = _run(tx, [-1.0, -0.95])
    assert outs == [1.0, 0.5]
    assert float(state.plateau_best) == -1.0
    outs, state = _run(tx, [-1.0, -1.05, -1.2])  # -1.05 is within 10%, -1.2 is not
    assert outs == [1.0, 0.5, 0.5]
    assert float(state.plateau_best) == np.float32(-1.2)
    # max mode mirrors it: a slightly larger negative value is not enough.
    outs, _ = _run(ox.reduce_on_plateau(factor=0.5, patience=0, threshold=0.1, mode="max"),
                   [-1.0, -0.95, -0.8])
    assert outs == [1.0, 0.5, 0.5]


def test_plateau_nan_is_bad_and_never_stored():
    tx = ox.reduce_on_plateau(factor=0.5, patience=1)
    outs, state = _run(tx, [2.0, float("nan"), float("nan"), 1.0, float("-inf")])
    assert outs == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert float(state.plateau_best) == 1.0
    assert int(state.plateau_bad_steps) == 1
    for leaf in state:
        assert not np.isnan(np.asarray(leaf, np.float32))


def test_plateau_clamped_reduction_still_resets_cooldown_and_bad_count():
    tx = ox.reduce_on_plateau(factor=0.5, patience=0, cooldown=2, min_scale=1.0)
    outs, state = _run(tx, [1.0, 1.0])
    assert outs == [1.0, 1.0]
    assert int(state.plateau_cooldown) == 2 and int(state.plateau_bad_steps) == 0
    assert int(state.plateau_reductions) == 0


def test_plateau_eps_floor():
    outs, state = _run(ox.reduce_on_plateau(factor=0.1, patience=0, eps=1e-8), [1.0] * 14)
    np.testing.assert_allclose(outs[-1], 1e-8, rtol=1e-5)
    assert int(state.plateau_reductions) == 8
    outs, _ = _run(ox.reduce_on_plateau(factor=0.5, patience=0, eps=0.3), [1.0] * 5)
    assert outs == [1.0, 0.5, 0.5, 0.5, 0.5]  # 0.5 − 0.25 is not > 0.3


def test_plateau_accumulation_decides_once_per_window():
    tx = ox.reduce_on_plateau(factor=0.5, patience=0, accumulation_steps=3)
    # window means: 2.0 (better), 2.0 (tie: bad -> reduce at its last update), 1.0 (better)
    outs, state = _run(tx, [1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.5, 1.5, 1.0])
    assert outs == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    assert float(state.plateau_best) == 1.0
    assert int(state.plateau_window_count) == 0
    # A NaN inside a window makes the whole window bad without poisoning the sum.
    outs, state = _run(tx, [1.0, 1.0, 1.0, 0.1, float("nan"), 0.1])
    assert outs == [1.0] * 5 + [0.5]
    assert float(state.plateau_window_sum) == 0.0


def test_plateau_after_warmup_in_chain():
    warm = optax.linear_schedule(0.0, 1.0, 4)
    tx = optax.chain(optax.scale_by_schedule(warm),
                     ox.reduce_on_plateau(factor=0.5, patience=0), optax.scale(-0.1))
    values = [5.0, 4.0, 3.0, 2.0, 2.0, 2.0, 1.0]
    outs, _ = _run(tx, values)
    plateau = ref_plateau(values, factor=0.5, patience=0)
    want = [-0.1 * float(warm(t)) * float(plateau[t]) for t in range(len(values))]
    np.testing.assert_allclose(outs, want, rtol=1e-6)


def test_plateau_hyperparameters_can_change_mid_run():
    tx = optax.inject_hyperparams(ox.reduce_on_plateau, static_args=("mode", "threshold_mode"))(
        factor=0.5, patience=0)
    params = jnp.zeros((), jnp.float32)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for v in [1.0, 1.0]:
        _, state = update(jnp.ones(()), state, params, value=jnp.float32(v))
    state.hyperparams["factor"] = jnp.asarray(0.1, jnp.float32)
    u, state = update(jnp.ones(()), state, params, value=jnp.float32(1.0))
    np.testing.assert_allclose(float(u), 0.05, rtol=1e-6)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(factor=1.0), ValueError, "reduce_on_plateau(factor=1.0): factor must be < 1"),
    (dict(factor=-0.1), ValueError, "factor must be >= 0"),
    (dict(patience=-1), ValueError, "reduce_on_plateau(patience=-1): patience must be >= 0"),
    (dict(patience=2.5), TypeError, "patience must be an integer"),
    (dict(cooldown=-1), ValueError, "cooldown must be >= 0"),
    (dict(threshold=-1e-3), ValueError, "threshold must be >= 0"),
    (dict(threshold=float("nan")), ValueError, "threshold must be finite"),
    (dict(threshold_mode="relative"), ValueError, "threshold_mode must be one of"),
    (dict(mode="auto"), ValueError, "mode must be one of"),
    (dict(min_scale=-1.0), ValueError, "min_scale must be >= 0"),
    (dict(min_scale=2.0), ValueError, "min_scale must be <= 1"),
    (dict(eps=-1.0), ValueError, "eps must be >= 0"),
    (dict(accumulation_steps=0), ValueError, "accumulation_steps must be >= 1"),
])
def test_plateau_validation(kwargs, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        ox.reduce_on_plateau(**kwargs)


# ---------------------------------------------------------------------------
# scale_by_loss


def test_scale_by_loss_multiplies_and_traces_fn():
    calls = []

    def fn(v):
        calls.append(type(v))
        return jnp.sqrt(v)

    tx = ox.scale_by_loss(fn)
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones((2, 2), jnp.float32)}
    update = jax.jit(tx.update)
    state = tx.init(params)
    for v in [4.0, 9.0]:
        u, state = update(params, state, params, value=jnp.float32(v))
        assert u["a"].dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(u["b"]), np.sqrt(v))
    assert len(calls) == 1 and issubclass(calls[0], jax.core.Tracer)
    assert float(state.loss_multiplier) == 3.0
    assert int(state.loss_multiplier_rejected) == 0


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_scale_by_loss_rejects_bad_multiplier_with_exact_zeros(value):
    tx = ox.scale_by_loss(lambda v: v)  # negative, NaN and inf multipliers
    grads = {"w": jnp.asarray([1.0, jnp.nan, jnp.inf], jnp.float32)}
    u, state = jax.jit(tx.update)(grads, tx.init(grads), None, value=jnp.float32(value))
    np.testing.assert_array_equal(np.asarray(u["w"]), np.zeros(3, np.float32))
    assert float(state.loss_multiplier) == 0.0
    assert int(state.loss_multiplier_rejected) == 1


def test_scale_by_loss_fn_must_be_callable_and_return_a_scalar():
    with pytest.raises(TypeError, match=r"scale_by_loss\(fn=3\): fn must be callable"):
        ox.scale_by_loss(3)
    tx = ox.scale_by_loss(lambda v: jnp.ones(2) * v)
    with pytest.raises(ValueError, match="fn must return a scalar"):
        tx.update(jnp.ones(2), tx.init(None), None, value=1.0)


# ---------------------------------------------------------------------------
# bold_driver


def test_bold_driver_matches_reference():
    rng = np.random.default_rng(7)
    configs = []
    for i in range(B):
        v = np.cumsum(rng.standard_normal(T) * 0.1) + rng.choice([-3.0, 3.0])
        if i % 3 == 0:
            v[rng.integers(0, T, 4)] = rng.choice([np.nan, np.inf, -np.inf], 4)
        if i % 5 == 0:
            v[10:20] = v[9]  # ties count as "did not rise"
        configs.append(dict(
            values=v.astype(np.float32).tolist(),
            increase=float(rng.choice([1.0, 1.05, 1.2])),
            decrease=float(rng.choice([0.5, 0.7, 1.0])),
            tolerance=float(rng.choice([1.0, 1.04, 0.98])),
            min_scale=float(rng.choice([1e-3, 0.1])),
            max_scale=float(rng.choice([1.0, 2.0])),
        ))
    values, hp = _batch(configs)
    got = np.asarray(bold_scales(values, hp))
    for i, c in enumerate(configs):
        kw = {k: v for k, v in c.items() if k != "values"}
        np.testing.assert_allclose(got[i], ref_bold(c["values"], **kw), rtol=1e-6, err_msg=str(kw))


def test_bold_driver_rules():
    tx = ox.bold_driver(increase=2.0, decrease=0.25, tolerance=1.0, min_scale=0.01, max_scale=4.0)
    outs, state = _run(tx, [1.0, 0.9, 0.9, 1.0, float("nan"), 0.95, -1.0, -0.5])
    # starts at max_scale; fall/tie grow (clipped), rise and NaN shrink; NaN not stored
    assert outs == [4.0, 4.0, 4.0, 1.0, 0.25, 0.5, 1.0, 0.25]
    assert float(state.bold_prev_loss) == -0.5
    assert int(state.bold_rises) == 3
    outs, _ = _run(ox.bold_driver(decrease=0.5, min_scale=0.3), [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(outs, np.float32([1.0, 0.5, 0.3, 0.3]))


def test_bold_driver_tolerance_is_sign_aware():
    tx = ox.bold_driver(increase=1.0, decrease=0.5, tolerance=1.1)
    # 1.05 ≤ 1.1·1.0 does not count as a rise; -0.95 ≤ -1 + 0.1 neither; -0.8 does.
    outs, _ = _run(tx, [1.0, 1.05, -1.0, -0.95, -0.8])
    assert outs == [1.0, 1.0, 1.0, 1.0, 0.5]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(increase=0.9), "increase must be >= 1"),
    (dict(decrease=0.0), "decrease must be > 0"),
    (dict(decrease=1.5), "decrease must be <= 1"),
    (dict(tolerance=0.0), "tolerance must be > 0"),
    (dict(min_scale=0.0), "min_scale must be > 0"),
    (dict(min_scale=0.5, max_scale=0.1), "max_scale must be >= min_scale"),
])
def test_bold_driver_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ox.bold_driver(**kwargs)


# ---------------------------------------------------------------------------
# value= plumbing, shared by all three


FACTORIES = {
    "reduce_on_plateau": lambda: ox.reduce_on_plateau(factor=0.5, patience=0),
    "scale_by_loss": lambda: ox.scale_by_loss(lambda v: 1.0 / v),
    "bold_driver": lambda: ox.bold_driver(decrease=0.5),
}
VALUES = [1.0, 2.0, 4.0]
EXPECTED = {"reduce_on_plateau": [1.0, 0.5, 0.25], "scale_by_loss": [1.0, 0.5, 0.25],
            "bold_driver": [1.0, 0.5, 0.25]}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_missing_value_names_the_transform(name):
    tx = FACTORIES[name]()
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match=rf"{name} needs the current loss.*value=loss"):
        tx.update(params, tx.init(params), params)
    chained = optax.chain(optax.identity(), tx)
    with pytest.raises(TypeError, match=rf"{name} needs the current loss"):
        jax.jit(chained.update)(params, chained.init(params), params)
    with pytest.raises(ValueError, match=rf"{name}: value must be a scalar"):
        tx.update(params, tx.init(params), params, value=jnp.ones(4))


def _wrap(kind, name):
    if kind == "chain":
        return optax.chain(optax.clip_by_global_norm(100.0), FACTORIES[name](), optax.scale(1.0))
    if kind == "partition":
        return optax.partition(
            {"scaled": FACTORIES[name](), "frozen": optax.set_to_zero()},
            {"w": "scaled", "b": "frozen"})
    static, kwargs = {
        "reduce_on_plateau": ((), dict(factor=0.5, patience=0)),
        "scale_by_loss": (("fn",), dict(fn=lambda v: 1.0 / v)),
        "bold_driver": ((), dict(decrease=0.5)),
    }[name]
    return optax.inject_hyperparams(getattr(ox, name), static_args=static)(**kwargs)


@pytest.mark.parametrize("kind", ["chain", "partition", "inject_hyperparams"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_value_reaches_the_transform_through_wrappers(name, kind):
    tx = _wrap(kind, name)
    params = {"w": jnp.zeros(2, jnp.float32), "b": jnp.zeros(1, jnp.float32)}
    grads = {"w": jnp.ones(2, jnp.float32), "b": jnp.ones(1, jnp.float32)}
    state = tx.init(params)
    for v, want in zip(VALUES, EXPECTED[name]):
        u, state = tx.update(grads, state, params, value=jnp.float32(v))
        np.testing.assert_allclose(np.asarray(u["w"]), [want, want], rtol=1e-6)
        if kind == "partition":
            np.testing.assert_array_equal(np.asarray(u["b"]), [0.0])



@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_value_reaches_the_transform_inside_explosion_guard(name):
    field = {"reduce_on_plateau": "plateau_scale", "bold_driver": "bold_scale",
             "scale_by_loss": "loss_multiplier"}[name]
    # watch_loss=False: the values climb on purpose, which the loss test would skip.
    tx = ox.explosion_guard(optax.chain(optax.sgd(1.0), FACTORIES[name]()), watch_loss=False)
    params = {"w": jnp.zeros(2, jnp.float32)}
    state = tx.init(params)
    for v in VALUES:
        _, state = tx.update({"w": jnp.ones(2, jnp.float32)}, state, params,
                             value=jnp.float32(v))
    assert float(optax.tree.get(state, field)) == EXPECTED[name][-1]
    with pytest.raises(TypeError, match=rf"{name} needs the current loss"):
        tx.update({"w": jnp.ones(2, jnp.float32)}, state, params)


# Wrong kinds of value=: each a TypeError naming the transform and `value`.
BAD_VALUES = {
    "str": "1.0", "bytes": b"1.0", "dict": {"loss": 1.0}, "list": [1.0], "tuple": (1.0,),
    "bool": True, "complex": 1 + 2j, "str_array": np.array("1.0"),
    "bool_array": jnp.asarray(True), "complex_array": jnp.complex64(1.0),
}


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_value_of_the_wrong_kind_is_named(name, kind):
    tx = FACTORIES[name]()
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match=rf"^{name}\(value=.*\): value must be the loss as a "
                                        r"real scalar: pass value=loss"):
        tx.update(params, tx.init(params), params, value=BAD_VALUES[kind])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_value_dtype_is_checked_when_traced_and_real_scalars_pass(name):
    tx = FACTORIES[name]()
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    with pytest.raises(TypeError, match=rf"^{name}\(value=<traced bool\[\]>\): value must be"):
        jax.jit(tx.update)(params, state, params, value=jnp.asarray(True))
    for ok in (1, 2.0, np.float64(4.0), jnp.bfloat16(8.0), jnp.int32(16)):
        _, state = tx.update(params, state, params, value=ok)
