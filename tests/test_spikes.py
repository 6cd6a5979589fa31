"""Spike detection of ``explosion_guard`` (``optaxsched._spikes``), against a
NumPy loop written from the module docstring's equations, and for its
promises: caught from the second step, a lasting change of level restarts
the statistics after three spikes, healthy noise is almost never flagged."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxsched import _spikes as S

Z, DECAY, FLOOR, PRIOR = 6.0, 0.98, 0.05, 0.5


@jax.jit
def _scan(xs):
    def body(stats, x):
        valid = jnp.isfinite(x)
        test = S.spike_test(x, *stats, valid, z=Z, std_floor=FLOOR, prior_std=PRIOR)
        stats = S.update_stats(stats, x, test, valid, DECAY)
        return stats, (test.spike, test.restart, test.threshold, stats[0])

    init = (jnp.float32(0.0), jnp.float32(0.0), jnp.int32(0), jnp.int32(0))
    return jax.lax.scan(body, init, xs)


def _reference(xs):
    mean = var = 0.0
    n = run = 0
    out = []
    for x in xs:
        if not np.isfinite(x):
            out.append((False, False, np.nan, mean))
            continue
        var_eff = (n * max(var, FLOOR**2) + 10 * PRIOR**2) / (n + 10)
        thr = mean + Z * math.sqrt(var_eff)
        flagged = n >= 1 and x > thr
        restart = flagged and run + 1 >= 3
        spike = flagged and not restart
        if restart:
            mean, var, n, run = x, 0.0, 1, 0
        elif spike:
            run += 1
        else:
            w = max(1 - DECAY, 1 / (n + 1))
            d = x - mean
            mean, var, n, run = mean + w * d, (1 - w) * (var + w * d * d), n + 1, 0
        out.append((spike, restart, thr, mean))
    return out


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    xs = 0.2 * rng.standard_normal(300) + np.linspace(1.0, -1.0, 300)
    xs[1] += 4.0  # a spike on the second step
    xs[40] = np.nan
    xs[[100, 150, 151]] += 6.0  # an isolated spike, then two in a row
    xs[200:] += 5.0  # a lasting change of level
    xs = xs.astype(np.float32)
    _, (spike, restart, thr, mean) = _scan(jnp.asarray(xs))
    ref = _reference(xs.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(spike), [r[0] for r in ref])
    np.testing.assert_array_equal(np.asarray(restart), [r[1] for r in ref])
    ok = np.isfinite(xs)
    np.testing.assert_allclose(np.asarray(thr)[ok], np.array([r[2] for r in ref])[ok],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mean), [r[3] for r in ref], rtol=1e-5, atol=1e-5)
    assert np.flatnonzero(np.asarray(spike)).tolist() == [1, 100, 150, 151, 200, 201]
    assert np.flatnonzero(np.asarray(restart)).tolist() == [202]


def test_first_values_are_the_plain_running_mean_and_variance():
    xs = np.array([1.0, 2.0, 4.0, 0.5], np.float32)
    mean, var, count = jnp.float32(0), jnp.float32(0), jnp.int32(0)
    for i, x in enumerate(xs):
        mean, var, count = S.running_stats(mean, var, count, jnp.float32(x), True, DECAY)
        assert float(mean) == pytest.approx(xs[: i + 1].mean(), rel=1e-6)
        assert float(var) == pytest.approx(xs[: i + 1].var(), rel=1e-5, abs=1e-7)
    assert int(count) == 4


def test_rejected_steps_change_nothing():
    mean, var, count = S.running_stats(
        jnp.float32(1.0), jnp.float32(0.5), jnp.int32(7), jnp.float32(9.0), False, DECAY
    )
    assert (float(mean), float(var), int(count)) == (1.0, 0.5, 7)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_healthy_log_normal_noise_is_almost_never_a_spike(sigma):
    """20k steps of Gaussian log-norm noise (a gradient norm varying by a
    factor e^sigma from batch to batch): under 1 false spike in 10k steps."""
    xs = sigma * np.random.default_rng(1).standard_normal(20_000)
    _, (spike, restart, _, _) = _scan(jnp.asarray(xs, jnp.float32))
    assert int(np.sum(np.asarray(spike))) <= 2
    assert int(np.sum(np.asarray(restart))) == 0


def test_a_steady_early_rise_is_not_a_spike_but_x20_on_step_two_is():
    rise = np.log(1.3) * np.arange(20)  # x1.3 per step for 20 steps
    _, (spike, _, _, _) = _scan(jnp.asarray(rise, jnp.float32))
    assert not np.any(np.asarray(spike))
    jump = np.array([0.0, math.log(20.0)], np.float32)
    _, (spike, _, _, _) = _scan(jnp.asarray(jump))
    assert np.asarray(spike).tolist() == [False, True]
