"""Gradient-norm-adaptive transforms against NumPy loops written from each
paper's equations, over norm sequences with spikes, plateaus, zeros, NaN and
Inf; plus half-precision trees, sharded reductions and argument checks.

Gradients are built as g_t = {leaf i: n[t, i] * d_i} with fixed unit-norm
directions d_i, so a transform's effect is read off the per-leaf norms of its
output. Each configuration compiles one ``lax.scan`` over all steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxsched as ox
from optaxsched._numerics import INT32_MAX

T = 64
RNG = np.random.default_rng(1234)
SHAPES = {"a": (5, 4), "b": (7,), "c": {"d": (3, 3)}}
# unit directions per leaf, no zero entries (so Inf * d is Inf everywhere)
DIRS = jax.tree_util.tree_map(
    lambda s: (lambda x: x / np.linalg.norm(x))(RNG.uniform(0.5, 1.5, s) * RNG.choice([-1, 1], s)),
    SHAPES, is_leaf=lambda s: isinstance(s, tuple))
DIR_LEAVES, DIR_DEF = jax.tree_util.tree_flatten(DIRS)
# fixed share of the global norm carried by each leaf for global-norm sequences
MIX = np.array([0.6, 0.48, 0.64])


def _seq_spiky():
    n = np.exp(0.1 * RNG.standard_normal(T))
    n[30] *= 50.0
    n[45] *= 1000.0
    n[46] *= 20.0
    n[[5, 40]] = 0.0
    n[10] = np.nan
    n[20] = np.inf
    return n


def _seq_plateau():
    n = np.full(T, 2.0)
    n[40:] += 0.01 * np.arange(T - 40)
    n[50] = 40.0
    n[55] = np.nan
    return n


def _seq_zeros_first():
    n = 1.0 + 0.2 * RNG.random(T)
    n[:8] = 0.0
    n[12] = -np.inf
    n[33] = 25.0
    return n


def _seq_growing():
    n = 1.05 ** np.arange(T) * (1.0 + 0.05 * RNG.standard_normal(T))
    n[3] = np.nan
    return n


SEQS = {f.__name__[5:]: f() for f in (_seq_spiky, _seq_plateau, _seq_zeros_first, _seq_growing)}
SEQ_IDS = list(SEQS)


def _global(n):
    """Per-leaf norms (T, 3) for a global-norm sequence n (NaN/Inf propagate)."""
    return np.asarray(n)[:, None] * MIX[None, :]


_RUNNERS: dict = {}


def _run(tx, norms, key=None):
    """Runs ``tx`` over per-leaf norms (T, 3); returns (per-leaf output norms, states)."""
    key = key or id(tx)
    if key not in _RUNNERS:

        @jax.jit
        def run(norms):
            def body(state, n):
                g = DIR_DEF.unflatten([n[i] * jnp.asarray(d, jnp.float32)
                                       for i, d in enumerate(DIR_LEAVES)])
                u, state = tx.update(g, state, g)
                out = jnp.stack([jnp.sqrt(jnp.sum(jnp.square(x)))
                                 for x in jax.tree_util.tree_leaves(u)])
                return state, (out, state)

            return jax.lax.scan(body, tx.init(DIRS), norms)[1]

        _RUNNERS[key] = (tx, run)
    out, states = _RUNNERS[key][1](jnp.asarray(norms, jnp.float32))
    return np.asarray(out, np.float64), jax.tree_util.tree_map(np.asarray, states)


def _close(got, want, rtol=1e-4, atol=1e-6, what=""):
    """assert_allclose in float64, leaf by leaf for trees."""
    def one(a, b):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=rtol, atol=atol, err_msg=what)
    jax.tree_util.tree_map(one, got, want)


def _out_global(out):
    return np.sqrt(np.sum(out**2, axis=1))


def _no_nan(states):
    for leaf in jax.tree_util.tree_leaves(states):
        if np.issubdtype(leaf.dtype, np.floating):
            assert not np.any(np.isnan(leaf))


# --------------------------------------------------------------------------- #
# NumPy references (float64), one step per loop iteration. Non-finite steps:
# zero output, statistics untouched.

def ref_global_clip(norms, c):
    return np.array([0.0 if not np.isfinite(n) else min(n, c) for n in norms])


def ref_normalize(norms, p, eps):
    return np.array([n / (n**p + eps) if np.isfinite(n) else 0.0 for n in norms])


def ref_rms(norms, beta, eps):
    v, t, out = 0.0, 0, []
    for n in norms:
        if not np.isfinite(n):
            out.append(0.0)
            continue
        v, t = beta * v + (1 - beta) * n * n, t + 1
        out.append(n / (np.sqrt(v / (1 - beta**t)) + eps))
    return np.array(out)


def ref_zclip(norms, z_thr, alpha, warmup, max_norm):
    """ZClip as published: buffer the warm-up norms, then z-score with EMA stats."""
    buf, mu, var, out, stats = [], None, None, [], []
    cap = np.inf if max_norm is None else max_norm
    for n in norms:
        if not np.isfinite(n):
            out.append(0.0)
        elif mu is None:
            buf.append(n)
            if len(buf) == warmup:
                mu, var = np.mean(buf), np.var(buf)
            out.append(min(n, cap))
        else:
            std = np.sqrt(var)
            z = (n - mu) / (std + 1e-6)
            x = mu + z_thr * std / (z / z_thr) if z > z_thr else n
            out.append(min(n, x, cap))
            mu = alpha * mu + (1 - alpha) * x
            var = alpha * var + (1 - alpha) * (x - mu) ** 2
        stats.append((np.nan, np.nan) if mu is None else (mu, var))
    return np.array(out), np.array(stats)


def ref_autoclip(norms, p, history):
    hist, out, thr = [], [], []
    for n in norms:
        if not np.isfinite(n):
            out.append(0.0)
            thr.append(np.nan)
            continue
        hist.append(n)
        eta = np.percentile(hist[-history:], p)
        out.append(min(n, eta))
        thr.append(eta)
    return np.array(out), np.array(thr)


def ref_adagc(norms, lam_rel, beta, warmup, lam_abs):
    """AdaGC over per-tensor norms (T, k); gamma = 0 means no nonzero norm seen."""
    k = norms.shape[1]
    gamma, count, out, gammas = np.zeros(k), 0, [], []
    for n in norms:
        total = np.sqrt(np.sum(n**2))
        if not np.isfinite(total):
            out.append(np.zeros(k))
        elif count < warmup:
            c = n * (min(1.0, lam_abs / total) if total > 0 else 1.0)
            for i in range(k):
                if gamma[i] == 0 or (c[i] > 0 and c[i] < gamma[i]):
                    gamma[i] = c[i]
            out.append(c)
            count += 1
        else:
            c = n.copy()
            for i in range(k):
                if gamma[i] > 0:
                    if n[i] > lam_rel * gamma[i]:
                        c[i] = lam_rel * gamma[i]
                    gamma[i] = beta * gamma[i] + (1 - beta) * c[i]
                else:
                    gamma[i] = n[i]
            out.append(c)
            count += 1
        gammas.append(gamma.copy())
    return np.array(out), np.array(gammas)


# --------------------------------------------------------------------------- #
GLOBAL_CLIP = ox.clip_by_global_norm(1.5)


@pytest.mark.parametrize("name", SEQ_IDS)
def test_clip_by_global_norm_matches_reference(name):
    n = SEQS[name]
    out, st = _run(GLOBAL_CLIP, _global(n))
    _close(_out_global(out), ref_global_clip(n, 1.5))
    finite = np.isfinite(n)
    # direction is kept: each leaf keeps its share of the norm
    _close(out[finite], _out_global(out)[finite, None] * MIX, atol=1e-5)
    _close(st.gclip_grad_norm[finite], n[finite])
    assert np.all(st.gclip_grad_norm[~finite] == np.inf)
    np.testing.assert_array_equal(st.gclip_clipped, finite & (np.nan_to_num(n) > 1.5))
    np.testing.assert_array_equal(st.gclip_nonfinite, ~finite)
    np.testing.assert_array_equal(st.gclip_clip_count, np.cumsum(finite & (np.nan_to_num(n) > 1.5)))
    np.testing.assert_array_equal(st.gclip_nonfinite_count, np.cumsum(~finite))
    _no_nan(st)


NORMALIZE = ox.scale_by_grad_norm(power=0.7, eps=1e-3)
RMS = ox.scale_by_grad_norm_rms(decay=0.9, eps=1e-6)


@pytest.mark.parametrize("name", SEQ_IDS)
def test_scale_by_grad_norm_matches_reference(name):
    n = SEQS[name]
    out, st = _run(NORMALIZE, _global(n))
    _close(_out_global(out), ref_normalize(n, 0.7, 1e-3))
    np.testing.assert_array_equal(st.normalize_nonfinite_count, np.cumsum(~np.isfinite(n)))
    out, st = _run(RMS, _global(n))
    _close(_out_global(out), ref_rms(n, 0.9, 1e-6))
    np.testing.assert_array_equal(st.rms_count, np.cumsum(np.isfinite(n)))
    _no_nan(st)


ZCLIPS = {
    "default": dict(),
    "short": dict(z_threshold=2.0, decay=0.9, warmup_steps=5, max_norm=3.0),
    "one_step_warmup": dict(warmup_steps=1, decay=0.5),
}
ZCLIP_TX = {k: ox.clip_by_zscore(**v) for k, v in ZCLIPS.items()}


@pytest.mark.parametrize("cfg", list(ZCLIPS))
@pytest.mark.parametrize("name", SEQ_IDS)
def test_clip_by_zscore_matches_reference(cfg, name):
    kw = {"z_threshold": 2.5, "decay": 0.97, "warmup_steps": 25, "max_norm": None}
    kw.update(ZCLIPS[cfg])
    n = SEQS[name]
    out, st = _run(ZCLIP_TX[cfg], _global(n))
    want, stats = ref_zclip(n, kw["z_threshold"], kw["decay"], kw["warmup_steps"],
                            kw["max_norm"])
    _close(_out_global(out), want, rtol=2e-4)
    ready = ~np.isnan(stats[:, 0])
    _close(st.zclip_mean[ready], stats[ready, 0], rtol=2e-4)
    _close(st.zclip_var[ready], stats[ready, 1], rtol=2e-3, atol=1e-6)
    finite = np.isfinite(n)
    np.testing.assert_array_equal(st.zclip_count, np.cumsum(finite))
    # clipped exactly when the output norm is below the input norm
    shrunk = finite & (want < np.nan_to_num(n, posinf=0.0) * (1 - 1e-4))
    np.testing.assert_array_equal(st.zclip_clipped, shrunk)
    assert np.all(st.zclip_zscore[~finite] == np.inf)
    _no_nan(st)


def test_clip_by_zscore_clips_spikes_hard_and_continuously():
    n = SEQS["spiky"]
    out, st = _run(ZCLIP_TX["default"], _global(n))
    g = _out_global(out)
    # the x1000 spike is clipped close to the running mean, not to the 2.5-sigma band
    assert g[45] < st.zclip_mean[44] + 2.5 * np.sqrt(st.zclip_var[44])
    assert st.zclip_clipped[45] and st.zclip_clipped[30]
    # the threshold where clipping starts is mu + z_thr (sigma + 1e-6)
    mu, sd = st.zclip_mean[28], np.sqrt(st.zclip_var[28])
    _close(st.zclip_threshold[29], mu + 2.5 * (sd + 1e-6), rtol=1e-5)


AUTOCLIPS = {"default": dict(), "short": dict(percentile=50.0, history=16),
             "max": dict(percentile=100.0, history=5), "min": dict(percentile=0.0, history=7)}
AUTOCLIP_TX = {k: ox.clip_by_percentile(**v) for k, v in AUTOCLIPS.items()}


@pytest.mark.parametrize("cfg", list(AUTOCLIPS))
@pytest.mark.parametrize("name", SEQ_IDS)
def test_clip_by_percentile_matches_reference(cfg, name):
    kw = {"percentile": 10.0, "history": 1000}
    kw.update(AUTOCLIPS[cfg])
    n = SEQS[name]
    out, st = _run(AUTOCLIP_TX[cfg], _global(n))
    want, thr = ref_autoclip(n, kw["percentile"], kw["history"])
    _close(_out_global(out), want)
    finite = np.isfinite(n)
    _close(st.autoclip_threshold[finite], thr[finite])
    np.testing.assert_array_equal(st.autoclip_count, np.cumsum(finite))
    np.testing.assert_array_equal(st.autoclip_position, np.cumsum(finite) % kw["history"])
    assert not np.any(np.isinf(st.autoclip_history))  # non-finite norms never enter
    if kw["percentile"] == 100.0:
        assert not np.any(st.autoclip_clipped)
    _no_nan(st)


def _adagc_norms():
    """Per-tensor sequences: spikes in one tensor, zeros, a zero tensor during
    warm-up, NaN and Inf."""
    n = np.exp(0.1 * RNG.standard_normal((T, 3))) * np.array([1.0, 0.3, 2.0])
    n[15, 1] *= 30.0
    n[16, :] *= 10.0
    n[:4, 2] = 0.0  # a tensor without gradient in early warm-up
    n[2, 0] = 0.0
    n[25, 1] = np.nan
    n[30, 2] = np.inf
    n[40:, 0] = 0.7  # plateau
    return n


ADAGC_NORMS = _adagc_norms()
ADAGCS = {
    "per_tensor": dict(warmup_steps=10, warmup_max_norm=2.0),
    "defaults": dict(),
    "no_warmup": dict(warmup_steps=0, ratio=1.2, decay=0.9),
}
ADAGC_TX = {k: ox.clip_by_ema_ratio(**v) for k, v in ADAGCS.items()}


@pytest.mark.parametrize("cfg", list(ADAGCS))
def test_clip_by_ema_ratio_per_tensor_matches_reference(cfg):
    kw = {"ratio": 1.05, "decay": 0.98, "warmup_steps": 100, "warmup_max_norm": 1.0}
    kw.update(ADAGCS[cfg])
    out, st = _run(ADAGC_TX[cfg], ADAGC_NORMS)
    want, gammas = ref_adagc(ADAGC_NORMS, kw["ratio"], kw["decay"], kw["warmup_steps"],
                             kw["warmup_max_norm"])
    _close(out, want)
    got_gamma = np.stack(jax.tree_util.tree_leaves(st.adagc_gamma), axis=1)
    _close(got_gamma, gammas)
    finite = np.all(np.isfinite(ADAGC_NORMS), axis=1)
    np.testing.assert_array_equal(st.adagc_count, np.cumsum(finite))
    shrunk = (want < np.nan_to_num(ADAGC_NORMS, posinf=0.0) * (1 - 1e-4)) & finite[:, None]
    np.testing.assert_array_equal(st.adagc_clipped_tensors, shrunk.sum(axis=1))
    _no_nan(st)


def test_clip_by_ema_ratio_zero_tensor_in_warmup_is_not_frozen():
    kw = ADAGCS["per_tensor"]
    out, st = _run(ADAGC_TX["per_tensor"], ADAGC_NORMS)
    # tensor 2 had zero gradients for the first steps: it still learns afterwards
    assert np.all(out[5:, 2][np.isfinite(ADAGC_NORMS[5:]).all(axis=1)] > 0)
    assert st.adagc_gamma["c"]["d"][-1] > 0
    assert np.all(st.adagc_threshold["a"][: kw["warmup_steps"]] == kw["warmup_max_norm"])


GLOBAL_ADAGC = ox.clip_by_ema_ratio(per_tensor=False, warmup_steps=8, warmup_max_norm=1.2)


@pytest.mark.parametrize("name", SEQ_IDS)
def test_clip_by_ema_ratio_global_matches_reference(name):
    n = SEQS[name]
    out, st = _run(GLOBAL_ADAGC, _global(n))
    want, gammas = ref_adagc(n[:, None], 1.05, 0.98, 8, 1.2)
    _close(_out_global(out), want[:, 0])
    _close(st.adagc_gamma, gammas[:, 0])
    finite = np.isfinite(n)
    _close(out[finite], _out_global(out)[finite, None] * MIX, atol=1e-5)
    _no_nan(st)


# --------------------------------------------------------------------------- #
def _two_step_big(dtype):
    """A half-precision tree whose float32 norm is 1e5, after a step of norm 1."""
    rng = np.random.default_rng(7)
    big = rng.standard_normal(250_000)
    small = rng.standard_normal(1000)
    scale = 1e5 / np.sqrt(np.sum(big**2) + np.sum(small**2))
    tree = {"big": jnp.asarray(big * scale, dtype), "small": jnp.asarray(small * scale, dtype)}
    return jax.tree_util.tree_map(lambda x: x * jnp.asarray(1e-5, dtype), tree), tree


def _norm64(tree):
    return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                             for x in jax.tree_util.tree_leaves(tree))))


BIG_CASES = {
    "clip_by_global_norm": (ox.clip_by_global_norm(1.0), 1.0),
    "scale_by_grad_norm": (ox.scale_by_grad_norm(), 1.0),
    "scale_by_grad_norm_rms": (ox.scale_by_grad_norm_rms(), None),
    "clip_by_zscore": (ox.clip_by_zscore(warmup_steps=1), None),
    "clip_by_percentile": (ox.clip_by_percentile(percentile=0.0), None),
    "clip_by_ema_ratio": (ox.clip_by_ema_ratio(warmup_steps=1), 1.05),
}


@jax.jit
def _all_two_steps(first, second):
    outs, states = {}, {}
    for name, (tx, _) in BIG_CASES.items():
        _, state = tx.update(first, tx.init(second))
        outs[name], states[name] = tx.update(second, state)
    return outs, states


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_half_precision_tree_with_norm_1e5_is_clipped(dtype):
    first, second = _two_step_big(dtype)
    n0, n1 = _norm64(first), _norm64(second)
    assert abs(n1 / 1e5 - 1) < 1e-2
    outs, states = _all_two_steps(first, second)
    rms = n1 / np.sqrt((0.99 * 0.01 * n0**2 + 0.01 * n1**2) / (1 - 0.99**2))
    for name, (_, want) in BIG_CASES.items():
        u = outs[name]
        assert jax.tree_util.tree_map(lambda x: x.dtype, u) == {"big": dtype, "small": dtype}
        # None: clipped to the first step's norm (the history/statistics so far)
        want = want or {"scale_by_grad_norm_rms": rms}.get(name, n0)
        got = _norm64(u)
        assert np.isfinite(got) and abs(got / want - 1) < 1e-2, (name, got, want)
    # the pre-clip norm is exact in float32
    _close(states["clip_by_global_norm"].gclip_grad_norm, n1, rtol=1e-5)
    _close(states["clip_by_zscore"].zclip_grad_norm, n1, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_half_precision_norm_1e5_is_clipped_along_the_gradient(dtype):
    """Clipping keeps the direction entry by entry, to half-precision rounding."""
    _, g = _two_step_big(dtype)
    n = _norm64(g)
    u, s = jax.jit(ox.clip_by_global_norm(1.0).update)(g, ox.clip_by_global_norm(1.0).init(g))
    assert bool(s.gclip_clipped) and not bool(s.gclip_nonfinite)
    for name in ("big", "small"):
        assert u[name].dtype == dtype
        want = np.asarray(g[name], np.float64) / n
        # one rounding to the leaf dtype (2**-8 relative for bf16, 2**-11 for f16;
        # fp16 subnormals below 6e-5 are spaced 6e-8 apart)
        np.testing.assert_allclose(np.asarray(u[name], np.float64), want, rtol=2.0**-7,
                                   atol=1e-7, err_msg=name)


# Issue contract: 1e3 in every one of 1M half-precision entries; the squares sum
# to 1e12 (fp16's largest finite number is 65504). Each case: the transform, its
# state field for the pre-clip norm, and the output norm after one step from init.
MILLION_CASES = {
    "clip_by_global_norm": (ox.clip_by_global_norm(1.0), "gclip_grad_norm", 1.0),
    "scale_by_grad_norm": (ox.scale_by_grad_norm(), "normalize_grad_norm", 1.0),
    "scale_by_grad_norm_rms": (ox.scale_by_grad_norm_rms(), "rms_grad_norm", 1.0),
    "clip_by_zscore": (ox.clip_by_zscore(warmup_steps=1, max_norm=1.0), "zclip_grad_norm", 1.0),
    "clip_by_percentile": (ox.clip_by_percentile(), "autoclip_grad_norm", 1e6),
    "clip_by_ema_ratio": (ox.clip_by_ema_ratio(), "adagc_grad_norm", 1.0),
}


@jax.jit
def _million_one_step(g):
    return {name: tx.update(g, tx.init(g)) for name, (tx, _, _) in MILLION_CASES.items()}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_half_precision_1e3_over_a_million_entries_does_not_overflow(dtype):
    g = {"g": jnp.full((1_000_000,), 1e3, dtype)}
    results = _million_one_step(g)
    for name, (_, field, out_norm) in MILLION_CASES.items():
        u, state = results[name]
        assert u["g"].dtype == dtype, name
        _close(getattr(state, field), 1e6, rtol=1e-5, what=name)
        # every entry is 1e3 * out_norm / 1e6, rounded once to the leaf dtype
        got = np.asarray(u["g"], np.float64)
        np.testing.assert_allclose(got, 1e-3 * out_norm, rtol=2.0**-7, err_msg=name)


def test_finite_entries_whose_square_overflows_are_skipped():
    tx = ox.clip_by_global_norm(1.0)
    g = {"a": jnp.full((4,), 1e20, jnp.float32)}
    u, s = tx.update(g, tx.init(g))
    assert float(jnp.sum(jnp.abs(u["a"]))) == 0.0 and bool(s.gclip_nonfinite)


# --------------------------------------------------------------------------- #
ALL_TX = {
    "clip_by_global_norm": lambda **k: ox.clip_by_global_norm(2.0, **k),
    "scale_by_grad_norm": lambda **k: ox.scale_by_grad_norm(**k),
    "scale_by_grad_norm_rms": lambda **k: ox.scale_by_grad_norm_rms(**k),
    "clip_by_zscore": lambda **k: ox.clip_by_zscore(warmup_steps=1, **k),
    "clip_by_percentile": lambda **k: ox.clip_by_percentile(percentile=30.0, history=4, **k),
    "clip_by_ema_ratio": lambda **k: ox.clip_by_ema_ratio(warmup_steps=1, warmup_max_norm=3.0,
                                                          **k),
}


@pytest.mark.parametrize("name", list(ALL_TX))
def test_axis_name_matches_unsharded(name):
    rng = np.random.default_rng(3)
    steps = [{"w": jnp.asarray(s * rng.standard_normal((8, 3)), jnp.float32),
              "b": jnp.asarray(s * rng.standard_normal((8,)), jnp.float32)}
             for s in (1.0, 5.0)]
    plain, sharded = ALL_TX[name](), ALL_TX[name](axis_name="i")
    split = lambda t: jax.tree_util.tree_map(lambda x: x.reshape(4, 2, *x.shape[1:]), t)  # noqa
    merge = lambda t: jax.tree_util.tree_map(lambda x: x.reshape(8, *x.shape[2:]), t)  # noqa
    update = jax.jit(jax.vmap(sharded.update, in_axes=(0, None), out_axes=(0, None),
                              axis_name="i"))
    plain_update = plain.update  # eager: its primitives are compiled once for all cases
    s_plain, s_sharded = plain.init(steps[0]), sharded.init(steps[0])
    for g in steps:
        u_plain, s_plain = plain_update(g, s_plain)
        u_sharded, s_sharded = update(split(g), s_sharded)
        _close(merge(u_sharded), u_plain, rtol=1e-5)
        _close(s_sharded, s_plain, rtol=1e-5)


@pytest.mark.parametrize("name", list(ALL_TX))
def test_empty_and_non_float_trees(name):
    tx = ALL_TX[name]()
    u, _ = tx.update({}, tx.init({}))
    assert u == {}
    g = {"f": jnp.array([30.0, 40.0], jnp.float32), "i": jnp.arange(3, dtype=jnp.int32)}
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u["i"]), [0, 1, 2])
    assert u["f"].dtype == jnp.float32 and np.all(np.isfinite(np.asarray(u["f"])))


def test_counters_saturate():
    tx = ox.clip_by_global_norm(1.0)
    g = {"a": jnp.array([3.0, jnp.nan])}
    state = tx.init(g)._replace(gclip_nonfinite_count=jnp.int32(INT32_MAX))
    _, state = tx.update(g, state)
    assert int(state.gclip_nonfinite_count) == INT32_MAX
    tx = ox.clip_by_zscore(warmup_steps=1)
    state = tx.init(g)._replace(zclip_count=jnp.int32(INT32_MAX), zclip_mean=jnp.float32(1.0))
    _, state = tx.update({"a": jnp.array([3.0, 4.0])}, state)
    assert int(state.zclip_count) == INT32_MAX and bool(state.zclip_clipped)


def test_state_fields_are_unique_and_reachable_in_a_chain():
    states = [ox.ClipByGlobalNormState, ox.ScaleByGradNormState,
              ox.ScaleByGradNormRmsState, ox.ClipByZscoreState,
              ox.ClipByPercentileState, ox.ClipByEmaRatioState]
    fields = [f for s in states for f in s._fields]
    assert len(fields) == len(set(fields))
    tx = optax.chain(ox.clip_by_zscore(), ox.clip_by_global_norm(1.0), optax.sgd(0.1))
    g = {"w": jnp.ones(3)}
    _, state = tx.update(g, tx.init(g), g)
    assert float(optax.tree.get(state, "gclip_grad_norm")) == pytest.approx(np.sqrt(3))
    assert float(optax.tree.get(state, "zclip_mean")) == pytest.approx(np.sqrt(3))


def test_inject_hyperparams_needs_static_history():
    tx = optax.inject_hyperparams(ox.clip_by_percentile)(percentile=10.0)
    g = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match="static_args=\\('history',\\)"):
        jax.jit(tx.update)(g, tx.init(g))
    ok = optax.inject_hyperparams(ox.clip_by_percentile, static_args=("history",))(
        percentile=10.0, history=8)
    jax.jit(ok.update)(g, ok.init(g))


BAD_ARGS = [
    (ox.clip_by_global_norm, dict(max_norm=-1.0), ValueError,
     "clip_by_global_norm(max_norm=-1.0): max_norm must be > 0"),
    (ox.clip_by_global_norm, dict(max_norm=0.0), ValueError, "max_norm must be > 0"),
    (ox.clip_by_global_norm, dict(max_norm=float("nan")), ValueError, "finite"),
    (ox.clip_by_global_norm, dict(max_norm="1"), TypeError, "max_norm must be a number"),
    (ox.scale_by_grad_norm, dict(power=-1.0), ValueError, "power must be >= 0"),
    (ox.scale_by_grad_norm, dict(eps=-1e-8), ValueError, "eps must be >= 0"),
    (ox.scale_by_grad_norm_rms, dict(decay=1.0), ValueError,
     "scale_by_grad_norm_rms(decay=1.0): decay must be < 1"),
    (ox.scale_by_grad_norm_rms, dict(decay=-0.1), ValueError, "decay must be >= 0"),
    (ox.scale_by_grad_norm_rms, dict(eps=float("inf")), ValueError, "eps must be finite"),
    (ox.clip_by_zscore, dict(z_threshold=-1.0), ValueError,
     "clip_by_zscore(z_threshold=-1.0): z_threshold must be > 0"),
    (ox.clip_by_zscore, dict(decay=1.5), ValueError, "decay must be < 1"),
    (ox.clip_by_zscore, dict(warmup_steps=0), ValueError, "warmup_steps must be >= 1"),
    (ox.clip_by_zscore, dict(warmup_steps=2.5), TypeError, "warmup_steps must be an integer"),
    (ox.clip_by_zscore, dict(max_norm=-2.0), ValueError, "max_norm must be > 0"),
    (ox.clip_by_percentile, dict(percentile=101.0), ValueError, "percentile must be <= 100"),
    (ox.clip_by_percentile, dict(percentile=-1.0), ValueError, "percentile must be >= 0"),
    (ox.clip_by_percentile, dict(history=0), ValueError, "history must be >= 1"),
    (ox.clip_by_percentile, dict(history=10.0), TypeError, "history must be an integer"),
    (ox.clip_by_ema_ratio, dict(ratio=0.0), ValueError, "ratio must be > 0"),
    (ox.clip_by_ema_ratio, dict(decay=1.0), ValueError, "decay must be < 1"),
    (ox.clip_by_ema_ratio, dict(warmup_steps=-1), ValueError, "warmup_steps must be >= 0"),
    (ox.clip_by_ema_ratio, dict(warmup_max_norm=-1.0), ValueError,
     "warmup_max_norm must be > 0"),
    (ox.clip_by_ema_ratio, dict(per_tensor="yes"), TypeError, "per_tensor must be True or False"),
]


@pytest.mark.parametrize("factory,kwargs,exc,msg", BAD_ARGS,
                         ids=[f"{f.__name__}-{next(iter(k))}-{i}"
                              for i, (f, k, _, _) in enumerate(BAD_ARGS)])
def test_bad_arguments_raise_at_construction(factory, kwargs, exc, msg):
    with pytest.raises(exc) as info:
        factory(**kwargs)
    assert msg in str(info.value)
    assert str(info.value).startswith(f"{factory.__name__}(")
