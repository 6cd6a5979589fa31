r"""The recovery rule of ``explosion_guard``: how the update scale falls and regrows.

The scale applied to the inner updates is the smaller of two factors,

.. math::  s_t = \min(e_t, c_t).

**Event scale** :math:`e` answers isolated events (a non-finite step or a
spike): multiplicative decrease, multiplicative regrowth toward 1,

.. math::

   e \leftarrow \max(s_{\min}, b\,e) \ \text{on an event}, \qquad
   e \leftarrow \min(1, \gamma\,e) \ \text{on a healthy step}.

**Ceiling** :math:`c` answers *divergence*: the loss (``value=``) turning
upward against its own trend, the slow failure of a learning rate that is too
high, which no spike test sees. From the accepted losses (finite, not spikes):

.. math::

   f_t &= \widehat{\mathrm{EMA}}_{0.9}(\ell), \quad
   m_t = \widehat{\mathrm{EMA}}_{0.99}(\ell), \quad d_t = f_t - m_t \\
   z_t &= \frac{d_t - \mu_{t-1}}{\max(\sigma_{t-1},\ 10^{-3}\,|m_t|)}

where :math:`\hat{\ }` is Adam-style bias correction, and :math:`\mu, \sigma^2`
are 100-step EMAs of :math:`d` and of its squared deviation. While the loss
falls or sits on a plateau, :math:`d` follows its running mean (a steady
slope gives a steady gap); when the loss turns up, the 10-step average pulls
away from the 100-step one and :math:`z` jumps. Because :math:`\sigma` is
learned from the run itself, the test is calibrated for any noise level and
for autocorrelated losses, where a noise estimate from single steps would
fire again and again.

On :math:`z_t > 4` the ceiling is cut, :math:`c \leftarrow \max(s_{\min}, b\,c)`,
on every step the divergence lasts (a longer climb, a deeper cut). The gap
statistics are fed winsorised values (:math:`\mu \pm 4\sigma` for the mean,
:math:`\pm 2\sigma` for the deviation), so a divergence does not teach the
test that divergence is normal. On other accepted steps the ceiling heals,
:math:`c \leftarrow \min(1, \gamma^{1/10} c)`: ten times slower than the event
scale (with the defaults, a factor 2 per 500 steps), because a step size that
made the loss climb should not be retried soon, while a rare false alarm in a
long run still wears off. The test starts at the fourth accepted loss and is
off without ``value=``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optaxsched import _numerics as nx

__all__ = ["RecoveryState", "recovery_init", "recovery_step"]

_FAST = 0.9  # loss EMA of about 10 steps
_SLOW = 0.99  # loss EMA and gap statistics of about 100 steps
_DIVERGENCE_Z = 4.0
_VAR_CLIP = 2.0  # winsorising of the deviations fed to the gap variance
_REL_FLOOR = 1e-3  # floor of the gap's standard deviation, relative to the loss
_MIN_LOSSES = 3  # accepted losses before the test starts
_HEAL = 0.1  # ceiling regrowth per healthy step: growth_factor ** _HEAL
_TINY = 1e-30


class RecoveryState(NamedTuple):
    """State of the recovery rule (field names are unique in the library).

    Attributes:
      recovery_scale: the multiplier applied to the inner updates,
        ``min(recovery_event_scale, recovery_ceiling)``.
      recovery_event_scale: the factor that answers non-finite steps and spikes.
      recovery_ceiling: the factor that answers divergence of the loss.
      recovery_losses: accepted losses seen (int32, saturating).
      recovery_loss_fast, recovery_loss_slow: the 10- and 100-step loss EMAs
        (not bias-corrected).
      recovery_gap_mean, recovery_gap_var: 100-step EMAs of the gap between
        the two bias-corrected loss EMAs and of its squared deviation.
      recovery_divergences: steps on which the ceiling was cut.
    """

    recovery_scale: jax.Array
    recovery_event_scale: jax.Array
    recovery_ceiling: jax.Array
    recovery_losses: jax.Array
    recovery_loss_fast: jax.Array
    recovery_loss_slow: jax.Array
    recovery_gap_mean: jax.Array
    recovery_gap_var: jax.Array
    recovery_divergences: jax.Array


def recovery_init(params: Any = None) -> RecoveryState:
    """Full scale, no history (one array per field, so states can be donated)."""
    del params

    def f32(x: float) -> jax.Array:
        return jnp.full((), x, jnp.float32)

    def i32() -> jax.Array:
        return jnp.zeros((), jnp.int32)

    return RecoveryState(
        recovery_scale=f32(1.0), recovery_event_scale=f32(1.0), recovery_ceiling=f32(1.0),
        recovery_losses=i32(), recovery_loss_fast=f32(0.0), recovery_loss_slow=f32(0.0),
        recovery_gap_mean=f32(0.0), recovery_gap_var=f32(0.0),
        recovery_divergences=i32(),
    )


def recovery_step(
    state: RecoveryState,
    *,
    loss: jax.Array,
    loss_finite: jax.Array,
    has_loss: bool,
    event: jax.Array,
    backoff_factor: Any,
    growth_factor: Any,
    min_scale: Any,
) -> tuple[jax.Array, RecoveryState]:
    """Returns the multiplier for this step's update and the next state.

    ``event`` marks a non-finite or spiking step (its loss feeds nothing);
    ``has_loss`` is static: without ``value=`` only the event scale moves.
    """
    s = state
    b = jnp.asarray(backoff_factor, jnp.float32)
    g = jnp.asarray(growth_factor, jnp.float32)
    lo = jnp.asarray(min_scale, jnp.float32)
    event_scale = jnp.where(
        event, jnp.maximum(s.recovery_event_scale * b, lo),
        jnp.minimum(s.recovery_event_scale * g, 1.0),
    )
    if not has_loss:
        scale = jnp.minimum(event_scale, s.recovery_ceiling)
        return scale, s._replace(recovery_scale=scale, recovery_event_scale=event_scale)

    loss = jnp.asarray(loss, jnp.float32)
    ok = loss_finite & ~event
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
    z = jnp.where(prev > 0, (gap - mu) / jnp.maximum(sd, _TINY), 0.0)
    # `~(z <= Z)` so that a NaN statistic counts as divergence.
    cut = ok & (prev >= _MIN_LOSSES) & ~(z <= _DIVERGENCE_Z)

    # Winsorised statistics: a diverging step cannot teach that divergence is normal.
    x = jnp.where(prev > 0, jnp.clip(gap, mu - _DIVERGENCE_Z * sd, mu + _DIVERGENCE_Z * sd), gap)
    gap_mean = jnp.where(ok, nx.ema(s.recovery_gap_mean, x, _SLOW), s.recovery_gap_mean)
    dev = x - nx.bias_correction(gap_mean, _SLOW, n)
    dev = jnp.where(prev > 0, jnp.clip(dev, -_VAR_CLIP * sd, _VAR_CLIP * sd), dev)
    gap_var = jnp.where(ok, nx.ema(s.recovery_gap_var, jnp.square(dev), _SLOW),
                        s.recovery_gap_var)

    healed = jnp.minimum(s.recovery_ceiling * g**_HEAL, 1.0)
    ceiling = jnp.where(
        cut, jnp.maximum(s.recovery_ceiling * b, lo), jnp.where(ok, healed, s.recovery_ceiling)
    )
    scale = jnp.minimum(event_scale, ceiling)
    new = RecoveryState(
        recovery_scale=scale,
        recovery_event_scale=event_scale,
        recovery_ceiling=ceiling,
        recovery_losses=n,
        recovery_loss_fast=fast,
        recovery_loss_slow=slow,
        recovery_gap_mean=gap_mean,
        recovery_gap_var=gap_var,
        recovery_divergences=nx.increment_where(s.recovery_divergences, cut),
    )
    return scale, new
