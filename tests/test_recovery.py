"""The recovery rule of ``explosion_guard`` (``optaxsched._recovery``).

Checked against a NumPy loop written from the equations in the module
docstring, and for its promises: the probe ramps the ceiling from 1/16 to 1
and ends at the first overshoot; a jump of the gradient norm or a divergence
of the loss cuts the ceiling, while noise (white, autocorrelated, drifting)
almost never does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optaxsched import _recovery as R

B, G, LO = 0.5, 2.0 ** (1 / 50), 1e-3


def _run(losses, events, log_norms=None, probe_steps=0):
    steps = len(losses)
    if log_norms is None:
        log_norms = np.zeros(steps)
    return _scan(
        jnp.asarray(losses, jnp.float32), jnp.asarray(events), jnp.asarray(log_norms, jnp.float32),
        probe_steps,
    )


@jax.jit
def _scan(losses, events, log_norms, probe_steps):
    def body(state, xs):
        loss, event, log_norm = xs
        scale, state = R.recovery_step(
            state, loss=loss, loss_finite=jnp.isfinite(loss), has_loss=True, event=event,
            log_norm=log_norm, grad_finite=jnp.isfinite(log_norm),
            backoff_factor=B, growth_factor=G, min_scale=LO, probe_steps=probe_steps,
        )
        return state, (scale, state.recovery_ceiling)

    init = R.recovery_init(probe_steps=probe_steps)
    return jax.lax.scan(body, init, (losses, events, log_norms))


def _bc(avg, decay, count):
    return avg / (1 - decay**count) if count > 0 else avg


def _reference(losses, events, log_norms=None, probe_steps=0):
    """NumPy transcription of the module docstring's equations."""
    if log_norms is None:
        log_norms = np.zeros(len(losses))
    fast = slow = gmean = gvar = jit_l = jit_g = 0.0
    n = norm_steps = cuts = 0
    last_x = last_loss = last_change = 0.0
    e = 1.0
    c = 1 / 16 if probe_steps else 1.0
    scales, ceilings = [], []
    for loss, event, x in zip(losses, events, log_norms):
        e = max(LO, B * e) if event else min(1.0, G * e)
        ok = np.isfinite(loss) and np.isfinite(x) and not event
        if ok:
            # Gradient amplification against the jitter of the log norm.
            changes = norm_steps - 1
            tau = max(math.log(1.5), 4 * math.sqrt(_bc(jit_g, 0.98, changes)))
            amplified = changes >= 2 and x - last_x > tau
            if norm_steps > 0:
                jit_g = 0.98 * jit_g + 0.02 * min((x - last_x) ** 2, math.log(1.5) ** 2)
            norm_steps += 1
            last_x = x
            # Loss divergence.
            prev = n
            n += 1
            fast = 0.9 * fast + 0.1 * loss
            slow = 0.99 * slow + 0.01 * loss
            m = slow / (1 - 0.99**n)
            gap = fast / (1 - 0.9**n) - m
            mu = _bc(gmean, 0.99, prev)
            var = _bc(gvar, 0.99, prev)
            change = loss - last_loss if prev else 0.0
            sd = max(math.sqrt(var), 1e-3 * abs(m),
                     math.sqrt(0.0393 / 6) * math.sqrt(_bc(jit_l, 0.99, prev - 2)))
            z = (gap - mu) / sd if prev else 0.0
            diverging = prev >= 3 and not z <= 4.0
            if prev > 1:
                curv = change - last_change
                if prev > 2:
                    bar = 4 * math.sqrt(_bc(jit_l, 0.99, prev - 2))
                    curv = min(max(curv, -bar), bar)
                jit_l = 0.99 * jit_l + 0.01 * curv**2
            last_loss, last_change = loss, change
            x_gap = min(max(gap, mu - 4 * sd), mu + 4 * sd) if prev else gap
            gmean = 0.99 * gmean + 0.01 * x_gap
            dev = x_gap - gmean / (1 - 0.99**n)
            if prev:
                dev = min(max(dev, -2 * sd), 2 * sd)
            gvar = 0.99 * gvar + 0.01 * dev * dev
            if amplified or diverging:
                c = max(LO, B * c)
                cuts += 1
            elif probe_steps and cuts == 0:
                c = min(1.0, c * 16 ** (1 / probe_steps))
            else:
                c = min(1.0, c * G**0.1)
        scales.append(min(e, c))
        ceilings.append(c)
    return np.array(scales), np.array(ceilings)


def _divergent_losses(rng, steps=400, turn=150, rate=0.03):
    """Falls like a training loss, then climbs by ``rate`` per step from ``turn`` on."""
    t = np.arange(steps)
    base = 2.0 + 2.0 * np.exp(-t / 40.0)
    climb = np.where(t >= turn, rate * (t - turn), 0.0)
    return base + climb + 0.03 * rng.standard_normal(steps)


@pytest.mark.parametrize("probe_steps", [0, 20])
def test_matches_numpy_reference_with_events_and_nans(probe_steps):
    rng = np.random.default_rng(0)
    losses = _divergent_losses(rng)
    losses[[20, 90]] = [np.nan, np.inf]
    log_norms = 0.05 * rng.standard_normal(len(losses))
    log_norms[[2, 12, 60, 61, 300]] += [0.9, 0.6, 0.3, 0.9, 0.5]  # x2.5 (too early), x1.8, ...
    log_norms[100:200] += 0.3 * rng.standard_normal(100)  # a noisy stretch raises the bar
    log_norms[45] = np.inf
    events = np.zeros(len(losses), bool)
    events[[20, 90, 200, 201]] = True
    args = (losses.astype(np.float32).astype(np.float64), events,
            log_norms.astype(np.float32).astype(np.float64), probe_steps)
    (scale, ceiling) = _run(*args)[1]
    ref_scale, ref_ceiling = _reference(*args)
    np.testing.assert_allclose(np.asarray(ceiling), ref_ceiling, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(scale), ref_scale, rtol=2e-4)
    assert ref_ceiling.min() < 0.5  # the climb was detected
    assert ref_ceiling[9] == pytest.approx(0.25 if probe_steps else 1.0)  # 10 steps of probe


def test_probe_ramps_to_one_and_ends_at_the_first_overshoot():
    steps = 60
    losses = 3.0 - 0.01 * np.arange(steps)
    flat = np.zeros(steps)
    _, (_, ceiling) = _run(losses, np.zeros(steps, bool), flat, probe_steps=20)
    ceiling = np.asarray(ceiling)
    np.testing.assert_allclose(ceiling[:19], 16 ** (np.arange(1, 20) / 20) / 16, rtol=1e-5)
    np.testing.assert_allclose(ceiling[19:], 1.0, rtol=1e-5)
    assert np.all(ceiling[20:] == 1.0)
    jump = flat.copy()
    jump[12:] += 0.5  # x1.65 at step 12: the probe stops and halves
    _, (_, ceiling) = _run(losses, np.zeros(steps, bool), jump, probe_steps=20)
    ceiling = np.asarray(ceiling)
    assert ceiling[12] == pytest.approx(0.5 * ceiling[11])
    up = ceiling[13:] / ceiling[12:-1]
    np.testing.assert_allclose(up, G**0.1, rtol=1e-5)  # healing, not probing


@pytest.mark.parametrize("growth, cuts", [(1.45, 0), (1.55, 1)])
def test_gradient_norm_growing_by_half_in_one_step_cuts(growth, cuts):
    steps = 40
    log_norms = np.zeros(steps)
    log_norms[20:] = math.log(growth)
    state, _ = _run(np.full(steps, 2.0), np.zeros(steps, bool), log_norms)
    assert int(state.recovery_divergences) == cuts


def test_a_noisy_gradient_norm_raises_the_bar():
    """Log norms wandering by 0.2 per step (x1.2, a small batch): the step
    changes often exceed x1.5, yet 2000 steps give at most 2 cuts."""
    steps = 2000
    log_norms = 0.2 * np.random.default_rng(3).standard_normal(steps)
    assert np.sum(np.diff(log_norms) > math.log(1.5)) > 50
    state, _ = _run(np.full(steps, 2.0), np.zeros(steps, bool), log_norms)
    assert int(state.recovery_divergences) <= 2


def test_noisy_loss_early_is_not_a_climb_but_a_smooth_one_turning_up_is():
    rng = np.random.default_rng(4)
    steps = 40
    noisy = 1.5 * (1 + 0.3 * rng.standard_normal(steps))  # loss from batch to batch
    state, _ = _run(noisy, np.zeros(steps, bool))
    assert int(state.recovery_divergences) == 0
    t = np.arange(steps)
    smooth = 4.2 - 0.1 * np.minimum(t, 5) + 0.15 * np.maximum(t - 5, 0)  # falls, then climbs
    state, (_, ceiling) = _run(smooth, np.zeros(steps, bool))
    assert int(np.argmax(np.asarray(ceiling) < 1.0)) <= 10  # 4 steps into the climb


@pytest.mark.parametrize("rate, stop, within", [(0.03, 300, 40), (0.3, 160, 6)])
def test_divergence_cuts_the_ceiling_and_it_heals_slowly(rate, stop, within):
    """A steady climb of 1.5% of the loss per step is found within 40 steps;
    a jump of 15% per step for ten steps (as at a too-high learning rate),
    within 6."""
    rng = np.random.default_rng(1)
    losses = _divergent_losses(rng, steps=300, turn=150, rate=rate)
    losses[stop:] -= rate * np.arange(300 - stop)  # the climb stops, the loss stays high
    state, (scale, ceiling) = _run(losses, np.zeros(300, bool))
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
    state, (scale, _) = _run(level + noise, np.zeros(steps, bool))
    assert int(state.recovery_divergences) <= 30
    assert float(np.asarray(scale)[-2000:].mean()) > 0.9


def test_without_value_the_loss_test_is_off():
    state = R.recovery_init()
    for event in (True, True, False):
        scale, state = R.recovery_step(
            state, loss=jnp.float32(0.0), loss_finite=jnp.bool_(True), has_loss=False,
            event=jnp.bool_(event), log_norm=jnp.float32(0.0), grad_finite=jnp.bool_(True),
            backoff_factor=B, growth_factor=G, min_scale=LO,
            probe_steps=0,
        )
    assert float(scale) == pytest.approx(0.25 * G)
    assert float(state.recovery_ceiling) == 1.0
    assert int(state.recovery_losses) == 0
    # The gradient test still works without a loss.
    for log_norm in [0.0] * 8 + [1.0]:
        scale, state = R.recovery_step(
            state, loss=jnp.float32(0.0), loss_finite=jnp.bool_(True), has_loss=False,
            event=jnp.bool_(False), log_norm=jnp.float32(log_norm), grad_finite=jnp.bool_(True),
            backoff_factor=B, growth_factor=G, min_scale=LO, probe_steps=0,
        )
    assert float(state.recovery_ceiling) == 0.5


def test_init_fields_are_distinct_arrays():
    leaves = jax.tree_util.tree_leaves(R.recovery_init())
    assert len({id(x) for x in leaves}) == len(leaves)
