"""lr_find: the ramp, the smoothing, the early stop and every suggestion rule
against NumPy references written from the documented rules; a quadratic whose
divergence point is known; purity, one trace, every input form, the sweep,
bad inputs and the plot."""

from __future__ import annotations

import dataclasses
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxsched as ox

BETA = 0.98


# ------------------------------------------------------------------ problems


def _regression(n=64, d=3, noise=0.3, seed=0):
    """Least squares: data, loss and the SGD divergence point 2 / lambda_max."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)[:d]
         + noise * rng.normal(size=n).astype(np.float32))
    hessian = 2.0 * x.astype(np.float64).T @ x / n  # of mean((x w - y)^2)
    return (jnp.asarray(x), jnp.asarray(y)), 2.0 / np.linalg.eigvalsh(hessian).max()


def loss_fn(w, batch):
    x, y = batch
    return jnp.mean((x @ w - y) ** 2)


BATCH, SGD_LIMIT = _regression()
W0 = jnp.zeros(3)


def _minibatches(count, size=16, seed=1):
    """``count`` different mini-batches of the regression data."""
    rng = np.random.default_rng(seed)
    x, y = (np.asarray(a) for a in BATCH)
    idx = [rng.choice(len(y), size, replace=False) for _ in range(count)]
    return [(jnp.asarray(x[i]), jnp.asarray(y[i])) for i in idx]


# ---------------------------------------------------------- NumPy references


def ref_smooth(losses, beta=BETA):
    avg, out = 0.0, []
    for i, loss in enumerate(np.asarray(losses, np.float64)):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return np.array(out)


def ref_stop_index(smoothed, threshold=4.0):
    """First step whose smoothed loss is not finite or rose above threshold x its best."""
    best = np.inf
    for i, s in enumerate(smoothed):
        if not np.isfinite(s):
            return i
        best = min(best, s)
        if s - best > (threshold - 1) * abs(best):
            return i
    return None


def ref_region(lrs, smoothed, num_run, skip_start, skip_end):
    lrs, s = list(lrs[skip_start:num_run - skip_end]), list(smoothed[skip_start:num_run - skip_end])
    for i, v in enumerate(s):
        if not np.isfinite(v):
            return lrs[:i], s[:i]
    return lrs, s


def ref_valley(lrs, losses):
    """fastai's valley, literally: O(n^2) longest decreasing subsequence."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return lrs[max(max_start + int(sections) + int(sections / 2), 0)]


def ref_steep(lrs, losses):
    """Steepest descent per log lr: central differences inside, one-sided at the ends."""
    x, y = np.log(np.asarray(lrs)), np.asarray(losses, np.float64)
    slope = np.empty(len(y))
    slope[0] = (y[1] - y[0]) / (x[1] - x[0])
    slope[-1] = (y[-1] - y[-2]) / (x[-1] - x[-2])
    for i in range(1, len(y) - 1):
        h0, h1 = x[i] - x[i - 1], x[i + 1] - x[i]
        slope[i] = (h0**2 * y[i + 1] + (h1**2 - h0**2) * y[i] - h1**2 * y[i - 1]) / (
            h0 * h1 * (h0 + h1))
    return lrs[int(np.argmin(slope))]


def ref_minimum(lrs, losses):
    return lrs[int(np.argmin(losses))] / 10


# --------------------------------------------------------------------- ramp


def test_ramp_is_exponential_and_each_step_uses_its_rate():
    # loss = sum(w) has gradient 1: SGD moves each entry by -lr_i at step i,
    # so the loss falls by d * lr_i from step i to i + 1 (no stop: it falls forever).
    result = ox.lr_find(lambda w, b: jnp.sum(w), jnp.zeros(2), optax.sgd,
                        lambda step: None, start_lr=1e-2, end_lr=1.0, num_steps=20)
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-2, 1.0, 20), rtol=1e-12)
    assert result.lrs[0] == 1e-2 and result.lrs[-1] == pytest.approx(1.0, rel=1e-12)
    assert result.num_steps_run == 20 and not result.stopped_early
    np.testing.assert_allclose(-np.diff(result.losses) / 2, result.lrs[:-1], rtol=2e-5)


@pytest.fixture(scope="module")
def minibatch_run():
    """A range test on shuffled mini-batches (noisy loss), default rule "steep"."""
    return ox.lr_find(loss_fn, W0, optax.sgd, _minibatches(8), start_lr=1e-3, end_lr=1e2,
                      num_steps=60, rule="steep")


def test_smoothing_and_early_stop_match_numpy(minibatch_run):
    result = minibatch_run
    n = result.num_steps_run
    np.testing.assert_allclose(result.smoothed[:n], ref_smooth(result.losses[:n]), rtol=2e-6)
    assert result.stopped_early and ref_stop_index(result.smoothed[:n]) == n - 1
    assert np.isnan(result.losses[n:]).all() and np.isnan(result.smoothed[n:]).all()
    assert result.num_gradient_evaluations == n


def test_quadratic_stops_just_past_the_divergence_point_and_suggests_below_it():
    # Full-batch SGD on least squares diverges above 2 / lambda_max; the
    # smoothed loss needs a few steps to climb 4x its minimum.
    result = ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], start_lr=1e-3, end_lr=1e2,
                        num_steps=100)
    stop_lr = result.lrs[result.num_steps_run - 1]
    assert result.stopped_early and SGD_LIMIT < stop_lr < 10 * SGD_LIMIT
    for rule, lr in result.suggestions.items():
        assert lr is not None and 1e-3 < lr < SGD_LIMIT, rule
    assert result.suggestion == result.suggestions["minimum"] and result.rule == "minimum"
    assert result.message == "" and not result.diverged_at_start


def test_negative_losses_stop_by_the_sign_aware_threshold():
    shifted = ox.lr_find(lambda w, b: loss_fn(w, b) - 10.0, W0, optax.sgd, [BATCH],
                         start_lr=1e-3, end_lr=1e2, num_steps=100)
    n = shifted.num_steps_run
    assert shifted.stopped_early and shifted.lrs[n - 1] > SGD_LIMIT
    assert ref_stop_index(shifted.smoothed[:n]) == n - 1


def test_no_threshold_runs_the_ramp_until_a_non_finite_loss():
    result = ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], start_lr=1e-3, end_lr=1e3,
                        num_steps=100, diverge_threshold=None)
    n = result.num_steps_run
    assert result.lrs[n - 1] > 10 * SGD_LIMIT
    assert not np.isfinite(result.smoothed[n - 1]) or n == 100
    assert result.suggestion is not None and result.suggestion < SGD_LIMIT


# -------------------------------------------------------------------- rules


def _result(lrs, smoothed, num_run, skip_start=0, skip_end=0):
    """A hand-made range result, to run the rules on chosen curves."""
    nan = np.full(len(lrs), np.nan)
    return ox.LRFindResult(
        method="range", lrs=lrs, losses=nan, smoothed=smoothed, num_steps_run=num_run,
        suggestion=None, rule="minimum", suggestions={}, stopped_early=False,
        diverged_at_start=False, message="", curves=None, beta=BETA,
        skip_start=skip_start, skip_end=skip_end)


@pytest.mark.parametrize("seed", range(6))
def test_rules_match_references_on_noisy_curves(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 120))
    lrs = np.geomspace(1e-6, 10.0, n)
    t = np.linspace(-1.0, 1.0, n)
    curve = 2.0 - np.tanh(3 * (t + 0.3)) + 4 * np.maximum(t - 0.5, 0) ** 2
    curve = curve + rng.normal(scale=0.05 * seed, size=n)
    if seed % 2:
        curve[int(0.8 * n):] = np.nan  # the tail that did not run
    num_run, skip_start, skip_end = n - int(seed), int(rng.integers(0, 10)), int(seed % 3)
    result = _result(lrs, curve, num_run, skip_start, skip_end)
    region = ref_region(lrs, curve, num_run, skip_start, skip_end)
    refs = {"valley": ref_valley, "steep": ref_steep, "minimum": ref_minimum}
    for rule, ref in refs.items():
        assert result.suggest(rule) == pytest.approx(ref(*region), rel=1e-12), rule


def test_valley_on_a_plain_valley_and_on_a_curve_that_never_falls():
    lrs = np.geomspace(1e-4, 1.0, 9)
    result = _result(lrs, np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 5]), 9)
    # Longest decreasing run: points 0..7 (length 8), start = 7 - 8 = -1.
    assert result.suggest("valley") == lrs[-1 + 2 + 1]
    rising = _result(lrs, np.arange(9.0), 9)
    assert rising.suggest("valley") is None and rising.suggest("minimum") is None


def test_lr_find_suggestions_are_its_rules_on_its_own_curve(minibatch_run):
    result = minibatch_run
    assert result.skip_start == 6 and result.skip_end == 1
    region = ref_region(result.lrs, result.smoothed, result.num_steps_run, 6, 1)
    assert result.suggestions == {"valley": ref_valley(*region), "steep": ref_steep(*region),
                                  "minimum": ref_minimum(*region)}
    assert result.rule == "steep" and result.suggestion == result.suggestions["steep"]
    assert result.suggest("steep", skip_start=0) == ref_steep(
        *ref_region(result.lrs, result.smoothed, result.num_steps_run, 0, 1))


# ------------------------------------------------------------ pure, one trace


def test_params_are_neither_modified_nor_donated_and_loss_is_traced_once():
    params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.zeros(())}
    before = jax.tree_util.tree_map(np.array, params)

    @chex.assert_max_traces(n=1)
    def counted(p, batch):
        x, y = batch
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    result = ox.lr_find(counted, params, tx, _minibatches(4), start_lr=1e-4, end_lr=10.0,
                        num_steps=40)
    assert result.num_steps_run > 10
    for leaf, old in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before)):
        assert not leaf.is_deleted()
        np.testing.assert_array_equal(np.asarray(leaf), old)


# -------------------------------------------------------------------- inputs


def test_batch_function_iterator_list_and_array_inputs_agree():
    batches = _minibatches(5)
    kw = dict(start_lr=1e-3, end_lr=1e2, num_steps=30)
    from_list = ox.lr_find(loss_fn, W0, optax.sgd, batches, **kw)  # cycled: 5 < 30
    xs, ys = (jnp.stack(a) for a in zip(*batches))
    from_fn = ox.lr_find(loss_fn, W0, optax.sgd, lambda s: (xs[s % 5], ys[s % 5]), **kw)
    from_iter = ox.lr_find(loss_fn, W0, optax.sgd, iter(batches * 10), **kw)  # 30 taken
    stacked = jnp.concatenate([xs[None]] * 6)[:, :, :, 0]  # (6, 5, 16) one-feature batches
    from_array = ox.lr_find(lambda w, x: jnp.mean((x[0] * w[0] - 1.0) ** 2), W0, optax.sgd,
                            stacked, **kw)
    for other in (from_fn, from_iter):
        np.testing.assert_array_equal(other.losses, from_list.losses)
    assert from_array.num_steps_run > 1 and np.isfinite(from_array.losses[0])


def test_inject_hyperparams_optimizer_matches_the_factory():
    kw = dict(start_lr=1e-4, end_lr=10.0, num_steps=40)
    factory = ox.lr_find(loss_fn, W0, lambda lr: optax.sgd(lr, momentum=0.9),
                         _minibatches(4), **kw)
    injected = ox.lr_find(loss_fn, W0, optax.inject_hyperparams(optax.sgd)(
        learning_rate=123.0, momentum=0.9), _minibatches(4), **kw)
    np.testing.assert_allclose(injected.losses, factory.losses, rtol=1e-6)
    chained = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    assert ox.lr_find(loss_fn, W0, chained, [BATCH], **kw).suggestion is not None


def test_optimizer_gets_value_and_has_aux_is_supported():
    # scale_by_loss reads value=; a pair (loss, aux) is accepted with has_aux.
    def factory(lr):
        return optax.chain(optax.sgd(lr), ox.scale_by_loss(lambda v: jnp.ones_like(v)))

    def with_aux(w, batch):
        return loss_fn(w, batch), {"unused": jnp.ones(2)}

    plain = ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], num_steps=30, start_lr=1e-3)
    aux = ox.lr_find(with_aux, W0, factory, [BATCH], num_steps=30, start_lr=1e-3,
                     has_aux=True)
    np.testing.assert_array_equal(aux.losses, plain.losses)


# --------------------------------------------------------------------- sweep


def test_sweep_matches_separate_constant_rate_runs():
    batches = _minibatches(3)
    result = ox.lr_find(loss_fn, W0, optax.sgd, batches, method="sweep", start_lr=1e-3,
                        end_lr=10.0, num_lrs=5, num_steps=12)
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-3, 10.0, 5), rtol=1e-12)
    assert result.curves.shape == (5, 12) and result.num_steps_run == 12
    assert result.num_gradient_evaluations == 60
    for lr, curve in zip(result.lrs, result.curves):
        w, tx = W0, optax.sgd(float(np.float32(lr)))
        state, ref = tx.init(w), []
        for step in range(12):
            loss, grad = jax.value_and_grad(loss_fn)(w, batches[step % 3])
            updates, state = tx.update(grad, state, w)
            w = optax.apply_updates(w, updates)
            ref.append(float(loss))
        np.testing.assert_allclose(curve, ref, rtol=1e-5)
    final = np.array([ref_smooth(c)[-1] for c in result.curves])
    np.testing.assert_allclose(result.smoothed, final, rtol=1e-5)
    np.testing.assert_array_equal(result.losses, result.curves[:, -1])
    ok = np.isfinite(final)
    assert final[-1] > 1e3 * final.min()  # the highest rate diverges
    assert result.suggestion == result.lrs[ok][np.argmin(final[ok])] == result.suggest("best")
    assert result.suggestion < SGD_LIMIT and result.rule == "best"


def test_sweep_default_grid_is_two_per_decade():
    result = ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], method="sweep", start_lr=1e-3,
                        end_lr=1.0, num_steps=3)
    np.testing.assert_allclose(result.lrs, np.geomspace(1e-3, 1.0, 7), rtol=1e-12)


# --------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_steps=9), ValueError, r"lr_find\(num_steps=9\): num_steps must be >= 10"),
    (dict(num_steps=0, method="sweep"), ValueError, r"num_steps must be >= 1"),
    (dict(start_lr=1.0, end_lr=1.0), ValueError, r"start_lr=1.0, end_lr=1.0.*< end_lr"),
    (dict(start_lr=0.0), ValueError, r"lr_find\(start_lr=0.0\): start_lr must be > 0"),
    (dict(start_lr=-1e-3), ValueError, r"start_lr must be > 0"),
    (dict(end_lr=float("inf")), ValueError, r"end_lr must be finite"),
    (dict(beta=1.0), ValueError, r"lr_find\(beta=1.0\): beta must be < 1"),
    (dict(diverge_threshold=1.0), ValueError, r"diverge_threshold must be > 1"),
    (dict(method="linear"), ValueError, r"method must be one of"),
    (dict(num_lrs=5), ValueError, r"num_lrs=5.*method='sweep'"),
    (dict(method="sweep", num_lrs=1), ValueError, r"num_lrs must be >= 2"),
    (dict(rule="best"), ValueError, r"rule must be one of \('valley', 'steep', 'minimum'\)"),
    (dict(has_aux=1), TypeError, r"has_aux must be True or False"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], **kwargs)


def test_bad_loss_optimizer_and_data_are_named():
    with pytest.raises(ValueError, match=r"must return a float scalar, got shape \(64,\)"):
        ox.lr_find(lambda w, b: (b[0] @ w - b[1]) ** 2, W0, optax.sgd, [BATCH])
    with pytest.raises(TypeError, match="returned a tuple.*has_aux=True"):
        ox.lr_find(lambda w, b: (loss_fn(w, b), 1.0), W0, optax.sgd, [BATCH])
    with pytest.raises(TypeError, match=r"has_aux=True\): loss_fn must return a pair"):
        ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], has_aux=True)
    with pytest.raises(TypeError, match="optimizer must be a factory"):
        ox.lr_find(loss_fn, W0, 0.1, [BATCH])
    with pytest.raises(TypeError, match="a factory must return an optax.GradientTransformation"):
        ox.lr_find(loss_fn, W0, lambda lr: lr, [BATCH])
    with pytest.raises(ValueError, match="holds 0 optax.inject_hyperparams learning_rate"):
        ox.lr_find(loss_fn, W0, optax.sgd(0.1), [BATCH])
    two = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                      optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    with pytest.raises(ValueError, match="holds 2 optax.inject_hyperparams"):
        ox.lr_find(loss_fn, W0, two, [BATCH])
    scheduled = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.constant_schedule(0.1))
    with pytest.raises(ValueError, match="learning_rate is a schedule"):
        ox.lr_find(loss_fn, W0, scheduled, [BATCH])
    with pytest.raises(TypeError, match=r"data=<dict>.*pass \[batch\]"):
        ox.lr_find(loss_fn, W0, optax.sgd, {"x": BATCH[0]})
    with pytest.raises(ValueError, match=r"batch 1 differs.*pass \[\(x, y\)\]"):
        ox.lr_find(loss_fn, W0, optax.sgd, BATCH)  # (x, y) read as two batches
    with pytest.raises(ValueError, match="data yielded no batch"):
        ox.lr_find(loss_fn, W0, optax.sgd, [])


def test_nan_at_the_first_step_gives_no_suggestion_and_says_so():
    nan_batch = (BATCH[0].at[0, 0].set(jnp.nan), BATCH[1])
    results = {method: ox.lr_find(loss_fn, W0, optax.sgd, [nan_batch], method=method,
                                  num_steps=20) for method in ("range", "sweep")}
    for result in results.values():
        assert result.diverged_at_start and result.suggestion is None
        assert all(v is None for v in result.suggestions.values())
        assert "first step is not finite" in result.message
    assert results["range"].num_steps_run == 1 and results["range"].stopped_early
    assert results["sweep"].num_steps_run == 20


def test_too_few_points_before_divergence_gives_no_suggestion():
    # The ramp starts beyond the divergence point: the stop comes within steps.
    result = ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], start_lr=5.0, end_lr=1e4,
                        num_steps=100)
    assert result.stopped_early and result.num_steps_run < 15
    assert result.suggestion is None and "too few points" in result.message
    assert not result.diverged_at_start


# ---------------------------------------------------------------------- plot


def test_plot_draws_the_curves_and_marks_the_suggestion(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = ox.lr_find(loss_fn, W0, optax.sgd, _minibatches(4), start_lr=1e-3,
                        end_lr=1e2, num_steps=40)
    ax = result.plot()
    xs = [tuple(np.atleast_1d(line.get_xdata())) for line in ax.get_lines()]
    assert (result.suggestion,) in xs  # the marker
    assert (result.suggestion, result.suggestion) in xs  # the vertical line
    assert ax.get_xscale() == "log"
    assert any("minimum" in t.get_text() for t in ax.get_legend().get_texts())
    ax.figure.savefig(tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").stat().st_size > 5_000
    fig, axes = plt.subplots(1, 2)
    assert result.plot(axes[0], rules=["steep", "valley"], raw=False) is axes[0]
    sweep = ox.lr_find(loss_fn, W0, optax.sgd, [BATCH], method="sweep", num_steps=3,
                       start_lr=1e-3, end_lr=1.0)
    assert sweep.plot(axes[1]) is axes[1]
    plt.close("all")


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    result = dataclasses.replace(_result(np.geomspace(1e-3, 1, 10), np.ones(10), 10))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"optaxsched\[examples\]"):
        result.plot()
