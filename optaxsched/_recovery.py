r"""The recovery rule of ``explosion_guard``: when the update multiplier falls
and how it regrows.

Design rule: **do no harm**. A healthy run must see a multiplier of exactly 1,
so the rule acts only on evidence that does not occur in healthy training,
and it forgets a wrong decision within about 50 steps.

The multiplier :math:`s \in [s_{\min}, 1]` applied to the inner updates
starts at 1 and changes only by

.. math::

   s \leftarrow \max(s_{\min}, b\,s) \ \text{on a cut}, \qquad
   s \leftarrow \min(1, \gamma\,s) \ \text{on an accepted step where neither test fires}

(``backoff_factor`` :math:`b`, ``growth_factor`` :math:`\gamma`: with the
defaults a cut is undone in 50 healthy steps). Cuts are at least 10 steps
apart, so one bad stretch costs a few halvings, not a collapse to
:math:`s_{\min}`. Two tests cut, and each is counted in the state:

*Burst of events* (``recovery_burst_cuts``). An event is a non-finite step,
a spike or a restart of the spike statistics (``optaxsched._spikes``). An
isolated event is a corrupted batch, no evidence that the step size is
wrong: it is skipped and nothing else changes. Events that come in bursts
are: with the event load :math:`p \leftarrow 0.9\,p + [\text{event}]`, an
event that brings :math:`p` to 2 or more (three events within about ten
steps) cuts.

*Loss divergence* (``recovery_trend_cuts``; needs ``value=``). At too high a
learning rate a run does not blow up in one step: it overshoots and the loss
climbs for many steps, which no spike test sees. The test reads
:math:`x = \log \ell` of the accepted steps whose loss is positive (a loss
:math:`\le 0` is not fed): minibatch losses are skewed, and on the loss itself
the rare batch with a misclassified example (3 against 0.001) looks like a
climb. Then

.. math::

   f_t &= \widehat{\mathrm{EMA}}_{0.9}(x), \quad
   m_t = \widehat{\mathrm{EMA}}_{0.99}(x), \quad d_t = f_t - m_t \\
   z_t &= \frac{d_t - \mu_{t-1}}{\max(\sigma_{t-1},\ 10^{-3})} > 4

where :math:`\hat{\ }` is Adam-style bias correction, :math:`\mu, \sigma^2`
are 100-step EMAs of :math:`d` and of its squared deviation, and the
denominator is also never below :math:`0.081\,\hat\jmath_t`, with
:math:`\hat\jmath_t^2` the bias-corrected 100-step EMA of the squared second
difference :math:`x_t - 2x_{t-1} + x_{t-2}` of the accepted log losses:
for white loss noise of variance :math:`v` the gap has variance
:math:`0.0393\,v` and the second difference :math:`6v`, while a steady slope
adds nothing to it. Each second difference enters winsorised at
:math:`\pm 4\hat\jmath`, so a loss that gets noisier is learned within about
20 steps while the burst of a divergence does not blind the test. While the
loss falls or sits on a plateau, :math:`d` follows its running mean; when
the loss turns up, the 10-step average pulls away from the 100-step one and
:math:`z` jumps. The test fires only while the gap still widens,
:math:`d_t > d_{t-1}`: a loss that jumped and then sits at its new level is
not a climb, although the slow EMA needs many steps to catch up with it.
It fires on the second accepted step in a row that meets both conditions
(one outlying batch widens the gap once; a climb keeps widening it), which
costs a real climb one step and cuts the false alarms on heavy-tailed
(Student-t, 3 degrees of freedom) log-loss noise from 7.5 to 0.3 per
10,000 steps.
The gap statistics are fed winsorised values
(:math:`\mu \pm 4\sigma` for the mean, :math:`\pm 2\sigma` for the
deviation), so a divergence does not teach the test that divergence is
normal. The test starts at the fourth accepted loss. The floor
:math:`10^{-3}` of the spread is a 0.1% change of the loss.

What was tried before and removed, because it fired on healthy runs: a
one-step gradient-norm amplification test (a jump of x1.5 or 4 standard
deviations of its own jitter fired 2.5-25 times per 400 healthy minibatch
steps), a slow-start probe of the multiplier from 1/16 (+18% final loss on
a short regression), a halving on every isolated event (three NaN batches
cost +10.9% final loss), a ceiling that healed ten times more slowly than
it was cut (every false cut permanent in a short run), and a hypergradient
factor from cos(g_t, -u_{t-1}) (on minibatch gradients that cosine is
mostly noise), and this trend test on the loss itself instead of its log
(replayed on the healthy runs of the stability suite: 2.1 false cuts per
3,000-step run of an MLP on digits whose late minibatch losses are skewed;
on the log, none in 150 healthy runs of the six problems).
``benchmarks/results/stability_suite.md`` has the measurements of the
present rule.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxsched import _numerics as nx

__all__ = ["RecoveryState", "recovery_init", "recovery_step"]

_LOAD_DECAY = 0.9  # event load: about ten steps of memory
_BURST = 2.0  # event load at which an event cuts (three events close together)
_REFRACTORY = 10  # least steps between two cuts
_FAST = 0.9  # loss EMA of about 10 steps
_SLOW = 0.99  # loss EMA and gap statistics of about 100 steps
_DIVERGENCE_Z = 4.0
_VAR_CLIP = 2.0  # winsorising of the deviations fed to the gap variance
_SD_FLOOR = 1e-3  # floor of the gap's standard deviation (log loss: a 0.1% change)
# Spread of the gap between the two loss EMAs under white noise, per RMS
# second difference of the loss: sqrt(0.0393 / 6) (see the module docstring).
_GAP_PER_JITTER = math.sqrt(0.0393 / 6.0)
_MIN_LOSSES = 3  # accepted losses before the trend test starts


class RecoveryState(NamedTuple):
    """State of the recovery rule (field names are unique in the library).

    Attributes:
      recovery_scale: the multiplier applied to the inner updates.
      recovery_event_load: decayed count of recent events, :math:`p`.
      recovery_since_cut: steps since the last cut (int32, saturating).
      recovery_burst_cuts: cuts made by the burst-of-events test.
      recovery_trend_cuts: cuts made by the loss-divergence test.
      recovery_rising: whether the last accepted loss met the test's
        condition (it fires on the second in a row).
      recovery_losses: accepted losses seen (int32, saturating).
      recovery_last_loss, recovery_last_change: the last accepted loss and
        its change from the one before.
      recovery_loss_jitter: 100-step EMA of the squared second difference of
        the accepted losses (not bias-corrected).
      recovery_loss_fast, recovery_loss_slow: the 10- and 100-step loss EMAs
        (not bias-corrected).
      recovery_gap_mean, recovery_gap_var: 100-step EMAs of the gap between
        the two bias-corrected loss EMAs and of its squared deviation.
    """

    recovery_scale: jax.Array
    recovery_event_load: jax.Array
    recovery_since_cut: jax.Array
    recovery_burst_cuts: jax.Array
    recovery_trend_cuts: jax.Array
    recovery_rising: jax.Array
    recovery_losses: jax.Array
    recovery_last_loss: jax.Array
    recovery_last_change: jax.Array
    recovery_loss_jitter: jax.Array
    recovery_loss_fast: jax.Array
    recovery_loss_slow: jax.Array
    recovery_gap_mean: jax.Array
    recovery_gap_var: jax.Array


def recovery_init(params: Any = None) -> RecoveryState:
    """Multiplier 1, no history. One array per field, so states can be donated."""
    del params

    s = nx.scalar
    return RecoveryState(
        recovery_scale=s(1.0), recovery_event_load=s(0.0),
        recovery_since_cut=s(_REFRACTORY), recovery_burst_cuts=s(0), recovery_trend_cuts=s(0),
        recovery_rising=s(False),
        recovery_losses=s(0), recovery_last_loss=s(0.0), recovery_last_change=s(0.0),
        recovery_loss_jitter=s(0.0), recovery_loss_fast=s(0.0), recovery_loss_slow=s(0.0),
        recovery_gap_mean=s(0.0), recovery_gap_var=s(0.0),
    )


def _loss_divergence(s: RecoveryState, loss: jax.Array, ok: jax.Array):
    """The trend test on ``loss`` (the log loss): (divergence flag, updated
    loss-statistics fields)."""
    prev = s.recovery_losses
    n = nx.increment_where(prev, ok)
    fast = nx.ema_where(s.recovery_loss_fast, loss, _FAST, ok)
    slow = nx.ema_where(s.recovery_loss_slow, loss, _SLOW, ok)
    m = nx.bias_correction(slow, _SLOW, n)
    gap = nx.bias_correction(fast, _FAST, n) - m

    # z-score of the gap against its statistics before this step.
    mu = nx.bias_correction(s.recovery_gap_mean, _SLOW, prev)
    var = nx.bias_correction(s.recovery_gap_var, _SLOW, prev)
    sd = jnp.maximum(jnp.sqrt(var), _SD_FLOOR)
    # Before the gap statistics have a history, the white-noise prediction of
    # the gap's spread from the loss's own jitter sets the bar (module docstring).
    last = s.recovery_last_loss
    change = jnp.where(prev > 0, loss - last, 0.0)
    curvature = change - s.recovery_last_change  # second difference: blind to a steady slope
    jitter = nx.bias_correction(s.recovery_loss_jitter, _SLOW, prev - 2)
    sd = jnp.maximum(sd, _GAP_PER_JITTER * jnp.sqrt(jitter))
    # Each second difference enters winsorised at 4 of the jitter's standard
    # deviations so far (the first one as it is): noise that grows is learned
    # within about 20 steps, while the burst of an overshoot cannot blind the test.
    bar = _DIVERGENCE_Z * jnp.sqrt(jitter)
    curvature = jnp.where(prev > 2, jnp.clip(curvature, -bar, bar), curvature)
    loss_jitter = nx.ema_where(s.recovery_loss_jitter, curvature * curvature, _SLOW,
                               ok & (prev > 1))
    z = jnp.where(prev > 0, (gap - mu) / jnp.maximum(sd, nx.TINY), 0.0)
    # Only a gap that is still widening: after a jump the loss may sit at its
    # new level while the slow EMA catches up, and that is not a climb.
    last_gap = nx.bias_correction(s.recovery_loss_fast, _FAST, prev) - nx.bias_correction(
        s.recovery_loss_slow, _SLOW, prev)
    # `~(x <= y)` so that a NaN statistic counts as divergence.
    widening = ~(gap <= last_gap)
    rising = ok & (prev >= _MIN_LOSSES) & ~(z <= _DIVERGENCE_Z) & widening
    # Two accepted steps in a row: one outlying batch widens the gap once.
    diverging = rising & s.recovery_rising

    # Winsorised statistics: a diverging step cannot teach that divergence is normal.
    x = jnp.where(prev > 0, jnp.clip(gap, mu - _DIVERGENCE_Z * sd, mu + _DIVERGENCE_Z * sd), gap)
    gap_mean = nx.ema_where(s.recovery_gap_mean, x, _SLOW, ok)
    dev = x - nx.bias_correction(gap_mean, _SLOW, n)
    dev = jnp.where(prev > 0, jnp.clip(dev, -_VAR_CLIP * sd, _VAR_CLIP * sd), dev)
    gap_var = nx.ema_where(s.recovery_gap_var, jnp.square(dev), _SLOW, ok)
    fields = dict(
        recovery_last_loss=jnp.where(ok, loss, last),
        recovery_last_change=jnp.where(ok, change, s.recovery_last_change),
        recovery_loss_jitter=loss_jitter,
        recovery_rising=jnp.where(ok, rising, s.recovery_rising),
        recovery_losses=n, recovery_loss_fast=fast, recovery_loss_slow=slow,
        recovery_gap_mean=gap_mean, recovery_gap_var=gap_var,
    )
    return diverging, fields


def recovery_step(
    state: RecoveryState,
    *,
    log_loss: jax.Array,
    loss_ok: jax.Array,
    accepted: jax.Array,
    event: jax.Array,
    has_loss: bool,
    backoff_factor: Any,
    growth_factor: Any,
    min_scale: Any,
) -> tuple[jax.Array, RecoveryState]:
    """Returns the multiplier for this step's update and the next state.

    ``accepted`` marks a finite step that is not a spike (a restart is
    accepted); ``event`` marks a non-finite step, a spike or a restart.
    ``log_loss`` feeds the trend test on accepted steps where ``loss_ok``
    (the loss is positive). ``has_loss`` is static: without ``value=`` the
    trend test is off.
    """
    s = state
    b = jnp.asarray(backoff_factor, jnp.float32)
    g = jnp.asarray(growth_factor, jnp.float32)
    lo = jnp.asarray(min_scale, jnp.float32)

    load = _LOAD_DECAY * s.recovery_event_load + event.astype(jnp.float32)
    burst = event & (load >= _BURST)
    if has_loss:
        trend, loss_fields = _loss_divergence(
            s, jnp.asarray(log_loss, jnp.float32), accepted & loss_ok)
    else:
        trend, loss_fields = jnp.zeros((), jnp.bool_), {}
    since = optax.safe_increment(s.recovery_since_cut)
    may_cut = since >= _REFRACTORY
    burst_cut = may_cut & burst
    trend_cut = may_cut & trend & ~burst
    cut = burst_cut | trend_cut
    # No regrowth while a test fires, even when the refractory gap holds a cut back.
    healthy = accepted & ~trend & ~burst

    scale = jnp.where(
        cut, jnp.maximum(s.recovery_scale * b, lo),
        jnp.where(healthy, jnp.minimum(s.recovery_scale * g, 1.0), s.recovery_scale),
    )
    new = s._replace(
        recovery_scale=scale,
        recovery_event_load=load,
        recovery_since_cut=jnp.where(cut, 0, since).astype(jnp.int32),
        recovery_burst_cuts=nx.increment_where(s.recovery_burst_cuts, burst_cut),
        recovery_trend_cuts=nx.increment_where(s.recovery_trend_cuts, trend_cut),
        **loss_fields,
    )
    return scale, new
