r"""The recovery rule of ``explosion_guard``: how the update scale falls and regrows.

The scale applied to the inner updates is the smaller of two factors,

.. math::  s_t = \min(e_t, c_t).

**Event scale** :math:`e` answers isolated events (a non-finite step or a
spike): multiplicative decrease, multiplicative regrowth toward 1,

.. math::

   e \leftarrow \max(s_{\min}, b\,e) \ \text{on an event}, \qquad
   e \leftarrow \min(1, \gamma\,e) \ \text{on a healthy step}.

**Ceiling** :math:`c` answers a step size that is too large, the failure no
spike test sees: at too high a learning rate a run does not blow up in one
step, it overshoots, gets damaged within a few steps and then sits at a high
loss. The ceiling is run like TCP's congestion window (Jacobson 1988):

* *Probe.* It starts at :math:`c_0 = 1/16` and grows geometrically on every
  accepted step, :math:`c \leftarrow \min(1, 16^{1/P} c)`, reaching 1 after
  ``probe_steps`` :math:`= P` steps, until the first overshoot. A step size
  is trusted only after the smaller ones before it worked -- an automatic
  learning-rate range test (Smith 2017) folded into the first steps. With
  :math:`P = 0` there is no probe and :math:`c_0 = 1`.
* *Back off.* On an overshoot :math:`c \leftarrow \max(s_{\min}, b\,c)`, and
  the probe is over.
* *Heal.* Otherwise, after the probe, :math:`c \leftarrow \min(1,
  \gamma^{1/10} c)`: ten times slower than the event scale (with the
  defaults a factor 2 per 500 steps), because a step size that overshot
  should not be retried soon, while a rare false alarm still wears off.

An accepted step (finite, not a spike) is an **overshoot** when either test
fires:

*Gradient amplification.* With :math:`x_t = \log\|g_t\|`, :math:`x_{t'}` the
last accepted one and :math:`\delta_t = x_t - x_{t'}`,

.. math::

   \delta_t > \max\big(\log 1.5,\ 4\,\hat\sigma_t\big), \qquad
   \hat\sigma_t^2 = \widehat{\mathrm{EMA}}_{0.98}\big(\min(\delta^2, \log^2 1.5)\big).

On a quadratic with curvature :math:`\lambda`, a step of size :math:`\eta`
multiplies the gradient along that direction by :math:`|1-\eta\lambda|`, which
exceeds 1 exactly when the step is beyond the edge of stability
(:math:`\eta\lambda > 2`); a gradient norm that grows by half in a single
step is that amplification. :math:`\hat\sigma` is the root mean square of
the step-to-step changes (about 50 steps, bias-corrected), so a noisy
gradient norm -- small batches, a loss that varies from batch to batch --
needs a jump of four of its own standard deviations. Each change enters it
clipped at :math:`\log 1.5`, so overshoots cannot raise the bar by more than
that (at most :math:`4\log 1.5`, a factor 5). The test starts at the third
accepted step; early in a run, while the probe keeps the steps small,
:math:`\hat\sigma` learns the calm jitter.

*Loss divergence* (needs ``value=``). From the accepted losses:

.. math::

   f_t &= \widehat{\mathrm{EMA}}_{0.9}(\ell), \quad
   m_t = \widehat{\mathrm{EMA}}_{0.99}(\ell), \quad d_t = f_t - m_t \\
   z_t &= \frac{d_t - \mu_{t-1}}{\max(\sigma_{t-1},\ 10^{-3}\,|m_t|)} > 4

where :math:`\hat{\ }` is Adam-style bias correction, :math:`\mu, \sigma^2`
are 100-step EMAs of :math:`d` and of its squared deviation, and the
denominator is also never below :math:`0.081\,\hat\jmath_t`, with
:math:`\hat\jmath_t^2` the bias-corrected 100-step EMA of the squared second
difference :math:`\ell_t - 2\ell_{t-1} + \ell_{t-2}` of the accepted losses:
for white loss noise of variance :math:`v` the gap has variance
:math:`0.0393\,v` and the second difference :math:`6v`, while a steady slope
adds nothing to it. Each second difference enters winsorised at
:math:`\pm 4\hat\jmath`, so a loss that gets noisier is learned within about
20 steps while the burst of an overshoot does not blind the test. Until the
gap statistics have a history, the loss's own jitter thus sets the bar: a
noisy loss is not taken for a climb on its fourth step, and a smoothly
falling one is watched closely.

While the loss falls or sits on a plateau, :math:`d` follows its running mean (a steady
slope gives a steady gap); when the loss turns up, the 10-step average pulls
away from the 100-step one and :math:`z` jumps. Because :math:`\sigma` is
learned from the run itself, the test is calibrated for any noise level and
for autocorrelated losses. The gap statistics are fed winsorised values
(:math:`\mu \pm 4\sigma` for the mean, :math:`\pm 2\sigma` for the deviation),
so a divergence does not teach the test that divergence is normal. The test
starts at the fourth accepted loss and cuts on every step the divergence
lasts (a longer climb, a deeper cut).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optaxsched import _numerics as nx

__all__ = ["RecoveryState", "recovery_init", "recovery_step"]

_PROBE_START = 1.0 / 16.0  # the ceiling's value at step 0 when probing
_AMPLIFICATION = math.log(1.5)  # least one-step gradient-norm growth that is an overshoot
_AMPLIFICATION_Z = 4.0  # in standard deviations of the step-to-step change
_JITTER_DECAY = 0.98  # EMA of the squared step-to-step change: about 50 steps
_MIN_CHANGES = 2  # step-to-step changes seen before the amplification test starts
_FAST = 0.9  # loss EMA of about 10 steps
_SLOW = 0.99  # loss EMA and gap statistics of about 100 steps
_DIVERGENCE_Z = 4.0
_VAR_CLIP = 2.0  # winsorising of the deviations fed to the gap variance
_REL_FLOOR = 1e-3  # floor of the gap's standard deviation, relative to the loss
# Spread of the gap between the two loss EMAs under white noise, per RMS
# second difference of the loss: sqrt(0.0393 / 6) (see the module docstring).
_GAP_PER_JITTER = math.sqrt(0.0393 / 6.0)
_MIN_LOSSES = 3  # accepted losses before the trend test starts
_HEAL = 0.1  # ceiling regrowth per healthy step: growth_factor ** _HEAL
_TINY = 1e-30


class RecoveryState(NamedTuple):
    """State of the recovery rule (field names are unique in the library).

    Attributes:
      recovery_scale: the multiplier applied to the inner updates,
        ``min(recovery_event_scale, recovery_ceiling)``.
      recovery_event_scale: the factor that answers non-finite steps and spikes.
      recovery_ceiling: the factor that answers overshooting step sizes.
      recovery_norm_steps: accepted steps seen by the rule (int32, saturating).
      recovery_last_log_norm: log gradient norm of the last accepted step.
      recovery_jitter: EMA of the squared step-to-step change of the log
        gradient norm, each clipped at log 1.5 (not bias-corrected).
      recovery_losses: accepted losses seen (int32, saturating).
      recovery_last_loss, recovery_last_change: the last accepted loss and
        its change from the one before.
      recovery_loss_jitter: 100-step EMA of the squared second difference of
        the accepted losses (not bias-corrected).
      recovery_loss_fast, recovery_loss_slow: the 10- and 100-step loss EMAs
        (not bias-corrected).
      recovery_gap_mean, recovery_gap_var: 100-step EMAs of the gap between
        the two bias-corrected loss EMAs and of its squared deviation.
      recovery_divergences: steps on which the ceiling was cut; the probe
        runs while this is 0.
    """

    recovery_scale: jax.Array
    recovery_event_scale: jax.Array
    recovery_ceiling: jax.Array
    recovery_norm_steps: jax.Array
    recovery_last_log_norm: jax.Array
    recovery_jitter: jax.Array
    recovery_losses: jax.Array
    recovery_last_loss: jax.Array
    recovery_last_change: jax.Array
    recovery_loss_jitter: jax.Array
    recovery_loss_fast: jax.Array
    recovery_loss_slow: jax.Array
    recovery_gap_mean: jax.Array
    recovery_gap_var: jax.Array
    recovery_divergences: jax.Array


def _probe_start(probe_steps: Any) -> jax.Array:
    # jnp.where, not a Python if: probe_steps may be traced (inject_hyperparams).
    return jnp.where(jnp.asarray(probe_steps) > 0, _PROBE_START, 1.0).astype(jnp.float32)


def recovery_init(params: Any = None, *, probe_steps: Any = 0) -> RecoveryState:
    """No history; the ceiling starts at ``_PROBE_START`` when probing, else 1.
    One array per field, so states can be donated."""
    del params
    c0 = _probe_start(probe_steps)

    def f32(x: Any) -> jax.Array:
        return jnp.array(x, dtype=jnp.float32, copy=True)

    def i32() -> jax.Array:
        return jnp.zeros((), jnp.int32)

    return RecoveryState(
        recovery_scale=f32(c0), recovery_event_scale=f32(1.0), recovery_ceiling=f32(c0),
        recovery_norm_steps=i32(), recovery_last_log_norm=f32(0.0), recovery_jitter=f32(0.0),
        recovery_losses=i32(), recovery_last_loss=f32(0.0), recovery_last_change=f32(0.0),
        recovery_loss_jitter=f32(0.0),
        recovery_loss_fast=f32(0.0), recovery_loss_slow=f32(0.0),
        recovery_gap_mean=f32(0.0), recovery_gap_var=f32(0.0),
        recovery_divergences=i32(),
    )


def _loss_divergence(s: RecoveryState, loss: jax.Array, ok: jax.Array):
    """The trend test: (divergence flag, updated loss-statistics fields)."""
    prev = s.recovery_losses
    n = nx.increment_where(prev, ok)
    fast = jnp.where(ok, nx.ema(s.recovery_loss_fast, loss, _FAST), s.recovery_loss_fast)
    slow = jnp.where(ok, nx.ema(s.recovery_loss_slow, loss, _SLOW), s.recovery_loss_slow)
    m = nx.bias_correction(slow, _SLOW, n)
    gap = nx.bias_correction(fast, _FAST, n) - m

    # z-score of the gap against its statistics before this step.
    mu = nx.bias_correction(s.recovery_gap_mean, _SLOW, prev)
    var = nx.bias_correction(s.recovery_gap_var, _SLOW, prev)
    sd = jnp.maximum(jnp.sqrt(var), _REL_FLOOR * jnp.abs(m))
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
    loss_jitter = jnp.where(
        ok & (prev > 1), nx.ema(s.recovery_loss_jitter, curvature * curvature, _SLOW),
        s.recovery_loss_jitter,
    )
    z = jnp.where(prev > 0, (gap - mu) / jnp.maximum(sd, _TINY), 0.0)
    # `~(z <= Z)` so that a NaN statistic counts as divergence.
    diverging = ok & (prev >= _MIN_LOSSES) & ~(z <= _DIVERGENCE_Z)

    # Winsorised statistics: a diverging step cannot teach that divergence is normal.
    x = jnp.where(prev > 0, jnp.clip(gap, mu - _DIVERGENCE_Z * sd, mu + _DIVERGENCE_Z * sd), gap)
    gap_mean = jnp.where(ok, nx.ema(s.recovery_gap_mean, x, _SLOW), s.recovery_gap_mean)
    dev = x - nx.bias_correction(gap_mean, _SLOW, n)
    dev = jnp.where(prev > 0, jnp.clip(dev, -_VAR_CLIP * sd, _VAR_CLIP * sd), dev)
    gap_var = jnp.where(ok, nx.ema(s.recovery_gap_var, jnp.square(dev), _SLOW),
                        s.recovery_gap_var)
    fields = dict(
        recovery_last_loss=jnp.where(ok, loss, last),
        recovery_last_change=jnp.where(ok, change, s.recovery_last_change),
        recovery_loss_jitter=loss_jitter,
        recovery_losses=n, recovery_loss_fast=fast, recovery_loss_slow=slow,
        recovery_gap_mean=gap_mean, recovery_gap_var=gap_var,
    )
    return diverging, fields


def recovery_step(
    state: RecoveryState,
    *,
    loss: jax.Array,
    loss_finite: jax.Array,
    has_loss: bool,
    event: jax.Array,
    log_norm: jax.Array,
    grad_finite: jax.Array,
    backoff_factor: Any,
    growth_factor: Any,
    min_scale: Any,
    probe_steps: Any,
) -> tuple[jax.Array, RecoveryState]:
    """Returns the multiplier for this step's update and the next state.

    ``event`` marks a non-finite or spiking step (it feeds nothing);
    ``log_norm`` is this step's log gradient norm; ``has_loss`` is static:
    without ``value=`` the loss test is off.
    """
    s = state
    b = jnp.asarray(backoff_factor, jnp.float32)
    g = jnp.asarray(growth_factor, jnp.float32)
    lo = jnp.asarray(min_scale, jnp.float32)
    event_scale = jnp.where(
        event, jnp.maximum(s.recovery_event_scale * b, lo),
        jnp.minimum(s.recovery_event_scale * g, 1.0),
    )

    ok = grad_finite & loss_finite & ~event
    log_norm = jnp.asarray(log_norm, jnp.float32)
    has_prev = s.recovery_norm_steps > 0
    jump = log_norm - s.recovery_last_log_norm
    changes = s.recovery_norm_steps - 1  # step-to-step changes in recovery_jitter
    jitter = jnp.sqrt(nx.bias_correction(s.recovery_jitter, _JITTER_DECAY, changes))
    threshold = jnp.maximum(_AMPLIFICATION, _AMPLIFICATION_Z * jitter)
    # `~(jump <= ...)` so that a NaN counts as an overshoot.
    amplified = ok & (changes >= _MIN_CHANGES) & ~(jump <= threshold)
    jitter_var = jnp.where(
        ok & has_prev,
        nx.ema(s.recovery_jitter, jnp.minimum(jump * jump, _AMPLIFICATION**2), _JITTER_DECAY),
        s.recovery_jitter,
    )
    if has_loss:
        diverging, loss_fields = _loss_divergence(s, jnp.asarray(loss, jnp.float32), ok)
    else:
        diverging, loss_fields = jnp.zeros((), jnp.bool_), {}
    cut = amplified | diverging

    p = jnp.asarray(probe_steps, jnp.float32)
    probing = (p > 0) & (s.recovery_divergences == 0)
    grow = jnp.where(probing, (1.0 / _PROBE_START) ** (1.0 / jnp.maximum(p, 1.0)), g**_HEAL)
    ceiling = jnp.where(
        cut, jnp.maximum(s.recovery_ceiling * b, lo),
        jnp.where(ok, jnp.minimum(s.recovery_ceiling * grow, 1.0), s.recovery_ceiling),
    )
    scale = jnp.minimum(event_scale, ceiling)
    new = s._replace(
        recovery_scale=scale,
        recovery_event_scale=event_scale,
        recovery_ceiling=ceiling,
        recovery_norm_steps=nx.increment_where(s.recovery_norm_steps, ok),
        recovery_last_log_norm=jnp.where(ok, log_norm, s.recovery_last_log_norm),
        recovery_jitter=jitter_var,
        recovery_divergences=nx.increment_where(s.recovery_divergences, cut),
        **loss_fields,
    )
    return scale, new
