"""Tests for the shared numerics in ``optaxsched._numerics``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxsched as ox
from optaxsched import _numerics as nx

HALF = [jnp.bfloat16, jnp.float16]
HALF_IDS = ["bf16", "f16"]


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_half_precision_sum_of_squares_does_not_overflow(dtype):
    x = jnp.full((1_000_000,), 1e3, dtype)
    if dtype == jnp.float16:  # the trap being avoided: squaring in fp16 overflows
        assert not np.isfinite(float(jnp.sum(x * x)))
    sq = nx.global_sq_norm({"g": x})
    assert sq.dtype == jnp.float32
    np.testing.assert_allclose(float(sq), 1e12, rtol=1e-5)
    norm, finite = nx.global_norm_and_finite([x, x])
    np.testing.assert_allclose(float(norm), np.sqrt(2e12), rtol=1e-5)
    assert bool(finite)


def test_non_float_leaves_are_ignored():
    tree = {
        "f": jnp.array([3.0, 4.0]),
        "i": jnp.arange(5, dtype=jnp.int32),
        "m": jnp.array([True, True]),
        "none": None,
    }
    assert float(nx.global_sq_norm(tree)) == 25.0
    per_leaf = nx.leaf_sq_norms(tree)
    assert float(per_leaf["f"]) == 25.0
    assert float(per_leaf["i"]) == 0.0 and float(per_leaf["m"]) == 0.0
    assert per_leaf["i"].dtype == jnp.float32
    assert nx.is_float_leaf(tree["f"]) and not nx.is_float_leaf(tree["i"])
    assert not nx.is_float_leaf(3.0)  # Python scalars are not array leaves


@pytest.mark.parametrize("tree", [{}, [], None, {"a": {}}], ids=["dict", "list", "none", "nested"])
def test_empty_tree_has_zero_norm(tree):
    sq = nx.global_sq_norm(tree)
    assert sq.dtype == jnp.float32 and float(sq) == 0.0
    norm, finite = nx.global_norm_and_finite(tree)
    assert float(norm) == 0.0 and bool(finite)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [jnp.float32, *HALF], ids=["f32", *HALF_IDS])
def test_nan_and_inf_are_not_finite(bad, dtype):
    tree = {"a": jnp.ones((3,), dtype), "b": jnp.ones((2, 2), dtype).at[1, 0].set(bad)}
    norm, finite = jax.jit(nx.global_norm_and_finite)(tree)
    assert not bool(finite)
    assert float(norm) == np.inf  # NaN reads as an explosion, never as small


def test_float32_overflow_of_the_sum_counts_as_non_finite():
    norm, finite = nx.global_norm_and_finite({"a": jnp.full((4,), 1e20, jnp.float32)})
    assert not bool(finite) and float(norm) == np.inf


def test_complex_leaves_use_the_modulus():
    z = jnp.array([3.0 + 4.0j, 1.0j], jnp.complex64)
    assert float(nx.global_sq_norm({"z": z})) == pytest.approx(26.0)


def test_safe_sqrt():
    out = nx.safe_sqrt(jnp.array([4.0, np.nan, np.inf, -1.0], jnp.float32))
    np.testing.assert_array_equal(np.asarray(out), [2.0, np.inf, np.inf, 0.0])


def _shards(n=4):
    rng = np.random.default_rng(0)
    full = {"w": rng.standard_normal((8, 3)).astype(np.float32),
            "b": rng.standard_normal((8,)).astype(np.float32)}
    stacked = jax.tree_util.tree_map(lambda x: jnp.asarray(x.reshape(n, -1, *x.shape[1:])), full)
    return full, stacked


def test_axis_name_psums_partial_sums():
    full, stacked = _shards()
    want = sum(float(np.sum(np.square(x, dtype=np.float64))) for x in full.values())
    got = jax.vmap(lambda t: nx.global_sq_norm(t, "i"), axis_name="i")(stacked)
    np.testing.assert_allclose(np.asarray(got), np.full(4, want), rtol=1e-6)
    per_leaf = jax.vmap(lambda t: nx.leaf_sq_norms(t, "i"), axis_name="i")(stacked)
    np.testing.assert_allclose(np.asarray(per_leaf["b"]), np.full(4, np.sum(full["b"] ** 2)),
                               rtol=1e-6)
    assert nx.psum_if(jnp.float32(2.0), None) == 2.0


def test_axis_name_finiteness_is_global():
    _, stacked = _shards()
    stacked["w"] = stacked["w"].at[2, 0, 0].set(jnp.nan)  # only shard 2 sees the NaN
    _, finite = jax.vmap(lambda t: nx.global_norm_and_finite(t, "i"), axis_name="i")(stacked)
    assert not np.any(np.asarray(finite))


def test_saturating_counters():
    top = jnp.int32(nx.INT32_MAX)
    inc = jax.jit(nx.increment_where)
    assert int(inc(top, True)) == nx.INT32_MAX
    assert int(inc(top - 1, True)) == nx.INT32_MAX
    assert int(inc(jnp.int32(0), True)) == 1 and int(inc(jnp.int32(5), False)) == 5
    assert inc(top, True).dtype == jnp.int32
    reset = jax.jit(nx.increment_or_reset)
    assert int(reset(top, True)) == nx.INT32_MAX
    assert int(reset(jnp.int32(7), True)) == 8
    assert int(reset(jnp.int32(7), False)) == 0


def test_scalar_dtypes_and_fresh_buffers():
    assert nx.scalar(0).dtype == jnp.int32 and nx.scalar(0.0).dtype == jnp.float32
    assert nx.scalar(False).dtype == jnp.bool_ and nx.scalar(1, jnp.float32).dtype == jnp.float32
    assert nx.scalar(0.0).shape == ()
    # Every call is its own buffer, also from an array (an injected
    # hyperparameter), so a state built from them can be donated.
    src = jnp.float32(2.0)
    a, b = nx.scalar(src, jnp.float32), nx.scalar(0.0)
    assert a.unsafe_buffer_pointer() != src.unsafe_buffer_pointer()
    donated = jax.jit(lambda s: (s[0] + 1, s[1] + 1), donate_argnums=0)((a, b))
    assert float(donated[0]) == 3.0 and float(src) == 2.0


def test_ema_where_keeps_the_average_on_rejected_steps():
    avg = jnp.float32(1.0)
    assert float(nx.ema_where(avg, jnp.float32(3.0), 0.5, jnp.bool_(True))) == 2.0
    assert float(nx.ema_where(avg, jnp.float32(jnp.nan), 0.5, jnp.bool_(False))) == 1.0


def test_ema_and_bias_correction_match_adam():
    decay, values = 0.9, [2.0, 0.5, 3.0, 1.0]
    avg, count = jnp.zeros((), jnp.float32), jnp.int32(0)
    np.testing.assert_allclose(float(nx.bias_correction(avg, decay, count)), 0.0)
    ref = 0.0
    for t, v in enumerate(values, start=1):
        avg = nx.ema(avg, jnp.float32(v), decay)
        count = optax.safe_increment(count)
        ref = decay * ref + (1 - decay) * v
        np.testing.assert_allclose(float(avg), ref, rtol=1e-6)
        np.testing.assert_allclose(float(nx.bias_correction(avg, decay, count)),
                                   ref / (1 - decay**t), rtol=1e-6)
    # the first corrected value is the first observation; a saturated count is harmless
    first = nx.ema(jnp.zeros((), jnp.float32), jnp.float32(5.0), decay)
    assert float(nx.bias_correction(first, decay, jnp.int32(1))) == pytest.approx(5.0)
    assert float(nx.bias_correction(avg, decay, jnp.int32(nx.INT32_MAX))) == pytest.approx(
        float(avg))
    # traced decay (inject_hyperparams) works too
    traced = jax.jit(nx.bias_correction)(avg, jnp.float32(decay), count)
    np.testing.assert_allclose(float(traced), ref / (1 - decay**4), rtol=1e-6)


def test_scale_tree_keeps_dtypes():
    tree = {"h": jnp.ones((2,), jnp.bfloat16), "f": jnp.ones((2,), jnp.float32),
            "i": jnp.arange(2, dtype=jnp.int32)}
    out = nx.scale_tree(tree, jnp.float32(0.5))
    assert out["h"].dtype == jnp.bfloat16 and float(out["h"][0]) == 0.5
    assert out["i"] is tree["i"]


def test_scale_leaf_multiplies_half_precision_in_float32():
    x = jnp.asarray(np.linspace(1.0, 60000.0, 101), jnp.float16)
    scale = jnp.float32(1.2345e-5)  # subnormal in fp16
    got = np.asarray(nx.scale_leaf(x, scale), np.float64)
    want = np.asarray(np.asarray(x, np.float64) * float(scale), np.float16).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    # a factor beyond fp16's range must not overflow on small entries
    tiny = jnp.full((3,), 1e-4, jnp.float16)
    big = nx.scale_leaf(tiny, jnp.float32(1e8))
    assert big.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(big, np.float32)))
    z = jnp.array([1.0 + 2.0j], jnp.complex64)
    assert complex(nx.scale_leaf(z, jnp.float32(2.0))[0]) == 2.0 + 4.0j
    ints = jnp.arange(3)
    assert nx.scale_leaf(ints, jnp.float32(2.0)) is ints


def test_scale_or_zero_never_propagates_nan():
    tree = {"a": jnp.array([1.0, np.nan], jnp.float32), "b": jnp.ones((2,), jnp.bfloat16),
            "i": jnp.arange(2, dtype=jnp.int32)}
    dropped = jax.jit(nx.scale_tree_or_zero)(tree, jnp.float32(0.0), jnp.bool_(False))
    np.testing.assert_array_equal(np.asarray(dropped["a"]), [0.0, 0.0])
    assert dropped["b"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dropped["i"]), [0, 1])
    kept = nx.scale_tree_or_zero(tree, jnp.float32(2.0), jnp.bool_(True))
    assert float(kept["b"][0]) == 2.0
    scales = {"a": jnp.float32(3.0), "b": jnp.float32(0.5), "i": jnp.float32(9.0)}
    per_leaf = nx.scale_leaves_or_zero(tree, scales, jnp.bool_(True))
    assert float(per_leaf["a"][0]) == 3.0 and float(per_leaf["b"][0]) == 0.5
    np.testing.assert_array_equal(np.asarray(per_leaf["i"]), [0, 1])


def test_masked_percentile_matches_numpy():
    rng = np.random.default_rng(5)
    values = rng.standard_normal(12).astype(np.float32) ** 2
    values[3] = values[4]  # ties
    f = jax.jit(nx.masked_percentile)
    for n in (1, 2, 5, 12):
        for p in (0.0, 10.0, 33.3, 50.0, 99.0, 100.0):
            got = float(f(jnp.asarray(values), jnp.int32(n), jnp.float32(p / 100)))
            np.testing.assert_allclose(got, np.percentile(values[:n], p), rtol=1e-5,
                                       err_msg=f"n={n} p={p}")
    assert float(f(jnp.asarray(values), jnp.int32(0), jnp.float32(0.5))) == np.inf


def _scalar_logic(x, n, flag):
    """A little of everything the guard's decision does: log, sqrt, selects,
    saturating counters, a flag read by many outputs."""
    lx = jnp.log(jnp.maximum(x, 1e-30))
    hot = flag & ~(lx <= 1.0)
    counters = [nx.increment_where(n + i, hot) for i in range(20)]
    return {
        "log": lx,
        "root": jnp.sqrt(jnp.abs(x)),
        "hot": hot,
        "counters": counters,
        "const": jnp.float32(-2.5),
        "neg_zero": -0.0 * x,
    }


@pytest.mark.parametrize(
    "x", [2.0, 0.5, 0.0, -3.0, np.inf, -np.inf, np.nan, 3e38], ids=str
)
@pytest.mark.parametrize("flag", [True, False])
def test_fuse_scalars_returns_exactly_what_fn_computes(x, flag):
    args = (jnp.float32(x), jnp.int32(nx.INT32_MAX - 3), jnp.bool_(flag))
    want = _scalar_logic(*args)
    got = jax.jit(lambda *a: nx.fuse_scalars(_scalar_logic, *a))(*args)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.shape == () and g.dtype == w.dtype
        # -0.0 comes back as +0.0 (documented); everything else bit for bit.
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    if np.isfinite(x):
        assert float(got["neg_zero"]) == 0.0


def test_fuse_scalars_rejects_non_scalars():
    with pytest.raises(ValueError, match="inputs must be scalars"):
        nx.fuse_scalars(lambda v: v, jnp.ones(3))
    with pytest.raises(ValueError, match="fn must return scalars"):
        nx.fuse_scalars(lambda v: jnp.zeros(3), jnp.float32(1.0))
    assert nx.fuse_scalars(lambda v: (), jnp.float32(1.0)) == ()


def _stepped_metric_plateau():
    plateau = ox.MetricPlateau(factor=0.3, patience=0)
    return optax.GradientTransformationExtraArgs(
        lambda p: plateau.step(plateau.step(plateau.init(p), 1.0), 1.0), plateau.update)


# Scales that are not powers of two, so a product taken in half precision
# differs from the float32 product rounded once (the conformance registry's
# settings mostly give 1, 0.5 or 2 for these).
_INEXACT_SCALES = {
    "reduce_on_plateau": lambda: ox.reduce_on_plateau(factor=0.3, patience=0),
    "bold_driver": lambda: ox.bold_driver(decrease=0.3),
    "metric_plateau": _stepped_metric_plateau,
    "scale_by_group": lambda: ox.scale_by_group({"w": 0.3}, default=1.7),
    "explosion_guard_clip": lambda: ox.explosion_guard(
        optax.identity(), on_spike="clip", watch_loss=False, z_threshold=1.0),
}


@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", sorted(_INEXACT_SCALES))
def test_scaling_transforms_round_half_precision_once(name, half):
    tx = _INEXACT_SCALES[name]()
    rng = np.random.default_rng(3)
    grads = [{"w": jnp.asarray(rng.standard_normal(7) * s, half), "b": jnp.ones(3, half)}
             for s in (1.0, 1.0, 1.0, 1.0, 1.0, 60.0)]
    losses = [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]  # a rise, then a plateau

    def run(cast):
        state = tx.init(cast(grads[0]))
        outs = []
        for g, v in zip(grads, losses):
            u, state = tx.update(cast(g), state, None, value=jnp.float32(v))
            outs.append(u)
        return outs

    out_half = run(lambda t: t)
    out_f32 = run(lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t))
    rounded = [jax.tree.map(lambda x: x.astype(half), u) for u in out_f32]
    chex.assert_trees_all_equal(out_half, rounded)
    # The check has teeth: some update was scaled by a factor other than 1.
    assert any(not np.array_equal(np.asarray(u["w"], np.float32), np.asarray(g["w"], np.float32))
               for u, g in zip(out_f32, grads))
