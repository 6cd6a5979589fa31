"""The recovery rule of ``explosion_guard`` (``optaxsched._recovery``).

Checked against a NumPy loop written from the equations in the module
docstring, and for its two promises: a divergence of the loss cuts the
ceiling, while noise (white, autocorrelated, drifting) almost never does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxsched import _recovery as R

B, G, LO = 0.5, 2.0 ** (1 / 50), 1e-3


@jax.jit
def _run(losses, events):
    def body(state, xs):
        loss, event = xs
        scale, state = R.recovery_step(
            state, loss=loss, loss_finite=jnp.isfinite(loss), has_loss=True, event=event,
            backoff_factor=B, growth_factor=G, min_scale=LO,
        )
        return state, (scale, state.recovery_ceiling)

    return jax.lax.scan(body, R.recovery_init(), (losses, events))


def _reference(losses, events):
    """NumPy transcription of the module docstring's equations."""
    fast = slow = gmean = gvar = 0.0
    n = 0
    e = c = 1.0
    scales, ceilings = [], []
    for loss, event in zip(losses, events):
        e = max(LO, B * e) if event else min(1.0, G * e)
        ok = np.isfinite(loss) and not event
        if ok:
            prev = n
            n += 1
            fast = 0.9 * fast + 0.1 * loss
            slow = 0.99 * slow + 0.01 * loss
            m = slow / (1 - 0.99**n)
            gap = fast / (1 - 0.9**n) - m
            mu = gmean / (1 - 0.99**prev) if prev else gmean
            var = gvar / (1 - 0.99**prev) if prev else gvar
            sd = max(math.sqrt(var), 1e-3 * abs(m))
            z = (gap - mu) / sd if prev else 0.0
            cut = prev >= 3 and not z <= 4.0
            x = min(max(gap, mu - 4 * sd), mu + 4 * sd) if prev else gap
            gmean = 0.99 * gmean + 0.01 * x
            dev = x - gmean / (1 - 0.99**n)
            if prev:
                dev = min(max(dev, -2 * sd), 2 * sd)
            gvar = 0.99 * gvar + 0.01 * dev * dev
            c = max(LO, B * c) if cut else min(1.0, c * G**0.1)
        scales.append(min(e, c))
        ceilings.append(c)
    return np.array(scales), np.array(ceilings)


def _divergent_losses(rng, steps=400, turn=150, rate=0.03):
    """Falls like a training loss, then climbs by ``rate`` per step from ``turn`` on."""
    t = np.arange(steps)
    base = 2.0 + 2.0 * np.exp(-t / 40.0)
    climb = np.where(t >= turn, rate * (t - turn), 0.0)
    return base + climb + 0.03 * rng.standard_normal(steps)


def test_matches_numpy_reference_with_events_and_nans():
    rng = np.random.default_rng(0)
    losses = _divergent_losses(rng)
    losses[[20, 90]] = [np.nan, np.inf]
    events = np.zeros(len(losses), bool)
    events[[20, 90, 200, 201]] = True
    (scale, ceiling) = _run(jnp.asarray(losses, jnp.float32), jnp.asarray(events))[1]
    ref_scale, ref_ceiling = _reference(losses.astype(np.float32).astype(np.float64), events)
    np.testing.assert_allclose(np.asarray(ceiling), ref_ceiling, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(scale), ref_scale, rtol=2e-4)
    assert ref_ceiling.min() < 0.5  # the climb was detected


@pytest.mark.parametrize("rate, stop, within", [(0.03, 300, 40), (0.3, 160, 6)])
def test_divergence_cuts_the_ceiling_and_it_heals_slowly(rate, stop, within):
    """A steady climb of 1.5% of the loss per step is found within 40 steps;
    a jump of 15% per step for ten steps (as at a too-high learning rate),
    within 6."""
    rng = np.random.default_rng(1)
    losses = _divergent_losses(rng, steps=300, turn=150, rate=rate)
    losses[stop:] -= rate * np.arange(300 - stop)  # the climb stops, the loss stays high
    state, (scale, ceiling) = _run(jnp.asarray(losses, jnp.float32), jnp.zeros(300, bool))
    ceiling = np.asarray(ceiling)
    assert ceiling[:150].min() == 1.0  # no cut while the loss falls
    first = int(np.argmax(ceiling < 1.0))
    assert 150 < first <= 150 + within
    assert int(state.recovery_divergences) >= 1
    # Healing is ten times slower than the event scale's regrowth.
    up = ceiling[1:] / ceiling[:-1]
    assert np.all(up[up > 1.0] <= G**0.1 + 1e-6)


def _ar1(rng, steps, phi):
    x = np.zeros(steps)
    eps = rng.standard_normal(steps) * math.sqrt(1 - phi * phi)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + eps[t]
    return x


@pytest.mark.parametrize("kind", ["white", "white_decreasing", "ar1_0.9", "drift"])
def test_noise_almost_never_cuts(kind):
    """20k steps of noise around a flat or slowly falling level: a handful of
    false alarms at most, and the ceiling ends where it started."""
    rng = np.random.default_rng(2)
    steps = 20_000
    t = np.arange(steps)
    level = 2.0 + (1.0 / np.sqrt(1.0 + t / 100.0) if kind == "white_decreasing" else 0.0)
    if kind == "ar1_0.9":
        noise = 0.07 * _ar1(rng, steps, 0.9)
    elif kind == "drift":
        noise = 0.07 * rng.standard_normal(steps) + 0.02 * _ar1(rng, steps, 0.99)
    else:
        noise = 0.07 * rng.standard_normal(steps)
    state, (scale, _) = _run(jnp.asarray(level + noise, jnp.float32), jnp.zeros(steps, bool))
    assert int(state.recovery_divergences) <= 30
    assert float(np.asarray(scale)[-2000:].mean()) > 0.9


def test_without_value_only_the_event_scale_moves():
    state = R.recovery_init()
    for event in (True, True, False):
        scale, state = R.recovery_step(
            state, loss=jnp.float32(0.0), loss_finite=jnp.bool_(True), has_loss=False,
            event=jnp.bool_(event), backoff_factor=B, growth_factor=G, min_scale=LO,
        )
    assert float(scale) == pytest.approx(0.25 * G)
    assert float(state.recovery_ceiling) == 1.0
    assert int(state.recovery_losses) == 0


def test_init_fields_are_distinct_arrays():
    leaves = jax.tree_util.tree_leaves(R.recovery_init())
    assert len({id(x) for x in leaves}) == len(leaves)
