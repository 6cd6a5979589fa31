r"""Spike detection for ``explosion_guard``: running statistics and a one-sided
z-score test, one pair of functions used for both the log gradient norm and
the log loss.

**Running statistics.** Each statistic keeps a mean :math:`\mu`, a variance
:math:`\sigma^2` and a count :math:`n` of the values it was fed. A value
:math:`x` enters with weight :math:`w = \max(1-\beta, 1/(n+1))`:

.. math::

   d = x - \mu, \qquad \mu \leftarrow \mu + w d, \qquad
   \sigma^2 \leftarrow (1-w)(\sigma^2 + w d^2)

(the exponentially weighted variance of West 1979 / Finch 2009). Until
:math:`n \approx 1/(1-\beta)` this is the plain running mean and variance of
all values so far, so the first value sets :math:`\mu` exactly and the early
estimates are not biased toward the first one; afterwards it is an EMA with
decay :math:`\beta`.

**Spike test**, from the first step of a run. Early estimates of
:math:`\sigma` are unreliable, so the test uses a variance shrunk toward a
prior :math:`\sigma_0^2` worth :math:`n_0 = 10` values,

.. math::

   \tilde\sigma^2 = \frac{n \max(\sigma^2, \sigma_{\min}^2) + n_0 \sigma_0^2}{n + n_0},
   \qquad \tau = \mu + z^* \tilde\sigma, \qquad \text{spike} = n \ge 1 \land \lnot(x \le \tau)

(one-sided; a NaN compares as a spike). For the log gradient norm
:math:`\sigma_0 = 0.5` and :math:`\sigma_{\min} = 0.05`: with
:math:`z^* = 6` the second step of a run is a spike only when its gradient
norm is about 17 times the first, and the bar tightens as the run teaches
its own spread, never below a factor :math:`e^{0.3} = 1.35`. For the log
loss, :math:`\sigma_0 = 0.1` and :math:`\sigma_{\min} = 0.01` (the second
step is a spike above 1.8 times the first loss, and the bar never falls
below a factor 1.06). Both statistics are logs because both values are
positive and skewed: a minibatch loss that is 0.001 on most steps and 3 when
one example of a small batch is misclassified is ordinary data, which a test
on the loss itself flags as a ten-standard-deviation outlier. A spike
feeds nothing to the statistics, so one outlier cannot widen the band for
the next (a lasting change is taken up by the restart below).

**Regime change.** A statistic that spikes on :math:`R = 3` accepted steps
in a row has moved, not spiked: the third value restarts its statistics
(:math:`\mu = x, \sigma^2 = 0, n = 1`, so the prior's wide band applies
again) and is not treated as a spike. Skipping more would not help: a skipped
step leaves the parameters where they are, so the next batch's gradient is
drawn from the same place. The guard counts the restart as an event.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optaxsched import _numerics as nx

__all__ = ["SpikeTest", "running_stats", "spike_test", "update_stats", "PRIOR_WEIGHT",
           "RESTART_AFTER"]

PRIOR_WEIGHT = 10.0  # n0: how many values the prior variance is worth
RESTART_AFTER = 3  # R: spikes in a row that restart the statistics


class SpikeTest(NamedTuple):
    """What :func:`spike_test` decided for one statistic on one step."""

    spike: jax.Array  # an outlier (not a restart)
    restart: jax.Array  # the R-th spike in a row: the statistics restart from it
    threshold: jax.Array  # tau (the clip level of a gradient-norm spike)


def running_stats(mean: Any, var: Any, count: Any, x: Any, accept: Any, decay: Any):
    """One step of the running mean/variance (module docstring); rejected
    steps (``accept`` False) change nothing. Returns (mean, var, count)."""
    n = count.astype(jnp.float32)
    w = jnp.maximum(1.0 - jnp.asarray(decay, jnp.float32), 1.0 / (n + 1.0))
    d = x - mean
    new_mean = mean + w * d
    new_var = (1.0 - w) * (var + w * d * d)
    return (
        jnp.where(accept, new_mean, mean),
        jnp.where(accept, new_var, var),
        nx.increment_where(count, accept),
    )


def spike_test(
    x: Any, mean: Any, var: Any, count: Any, run: Any, valid: Any, *,
    z: Any, std_floor: Any, prior_std: Any,
) -> SpikeTest:
    """The one-sided test of ``x`` against its statistics (module docstring).

    ``valid`` marks a step whose value may be tested (finite); ``run`` is the
    number of spikes in a row so far. ``std_floor`` and ``prior_std`` are
    :math:`\\sigma_{\\min}` and :math:`\\sigma_0` in the units of ``x``.
    """
    n = count.astype(jnp.float32)
    floor2 = jnp.square(std_floor)
    var_eff = (n * jnp.maximum(var, floor2) + PRIOR_WEIGHT * jnp.square(prior_std)) / (
        n + PRIOR_WEIGHT
    )
    threshold = mean + z * jnp.sqrt(jnp.maximum(var_eff, 1e-24))
    # `not (x <= threshold)` so that a NaN statistic compares as a spike.
    out = valid & (count > 0) & ~(x <= threshold)
    restart = out & (run + 1 >= RESTART_AFTER)
    return SpikeTest(spike=out & ~restart, restart=restart, threshold=threshold)


def update_stats(
    stats: tuple[Any, Any, Any, Any], x: Any, test: SpikeTest, accept: Any, decay: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Feeds one step to (mean, var, count, run): an accepted value as it is,
    a restart as the first value of new statistics; a spike only extends the
    run; a step with ``accept`` False (non-finite) changes nothing."""
    mean, var, count, run = stats
    mean, var, count = running_stats(mean, var, count, x, accept & ~test.spike, decay)
    restart = accept & test.restart
    mean = jnp.where(restart, x, mean)
    var = jnp.where(restart, 0.0, var)
    count = jnp.where(restart, jnp.ones_like(count), count)
    run = jnp.where(accept, nx.increment_or_reset(run, test.spike), run)
    return mean, var, count, run.astype(jnp.int32)
