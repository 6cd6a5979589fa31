"""Exact integer step arithmetic shared by every schedule, and the argument
checks specific to schedules.

The exactness guarantee: every boundary of a schedule -- a decay point, a
milestone, a restart, a phase end, the end of a warm-up -- falls on exactly
the step its formula says, for every step up to 2**31 - 1, in eager calls and
under ``jit``/``vmap``/``scan`` alike. Between boundaries the value is a
float32 mix of two end values with non-negative weights.

How it is achieved:

* A step goes through :func:`to_steps` once: Python ints, integer arrays and
  tracers become int32 (negatives read as 0, larger values saturate at
  2**31 - 1); floats are floored once, in float32. From there on a step is an
  int32 and nothing else.
* Floors, remainders, ceilings and phase tests (``t // n``, ``t % n``,
  ``t >= b``, ``searchsorted`` over int32 tables) are integer operations.
  Under ``jit`` XLA rewrites a float ``x / c`` into ``x * (1/c)``, which can be
  one ulp off and move ``floor(x / c)`` by a whole step, so no boundary is ever
  decided by a float division.
* Real-valued positions (the restarts of a fractional ``period_mult``, the
  phase ends of ``one_cycle``) are computed once on the host in float64 and
  stored as an int32 floor plus a float32 fraction (:func:`split`); comparing
  a step with them stays an integer comparison.
* Fractions are formed from exact integer differences as ``(T - t) / T`` and
  ``t / T`` and clipped to [0, 1] by :func:`ratio` (the reciprocal rewrite can
  overshoot); values mix two end values with these weights (:func:`lerp_steps`,
  which also returns each end value exactly at its end, and :func:`sin2` for
  the cosine shapes, free of the cancellation in ``(1 + cos(pi p)) / 2``), so
  non-negative end values never give a negative value by rounding.
* :func:`output` casts to float32 and saturates at the largest float32, so
  every value is finite; :func:`mul` keeps ``0 * inf`` at 0 for the same
  reason.

The argument checks here (:func:`check_count`, :func:`check_rate`,
:func:`check_sorted`) guard the limits this arithmetic relies on: step counts
are concrete integers <= 2**31 - 1, rates are finite and >= 0 (see the
``optaxsched.schedules`` docstring), boundaries are sorted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxsched import _numerics as nx
from optaxsched._numerics import INT32_MAX
from optaxsched._validation import check_int, check_number, check_static, is_traced

__all__ = [
    "Schedule", "STATIC_HINT", "I32_MAX", "F32_MAX", "F32", "to_steps", "compiled", "f32",
    "output", "ratio",
    "mul", "sin2", "lerp_steps", "split", "check_count", "check_rate", "check_sorted",
]

# What to do about a traced step count, flag or phase fraction: schedules are
# built once, outside jit, and only their values may be traced.
STATIC_HINT = ("build the schedule outside jit (only value arguments such as rates "
               "and gammas may be traced)")

# What every factory returns: ``step -> float32 array``.
Schedule = Callable[[Any], jax.Array]

I32_MAX = int(INT32_MAX)
F32_MAX = float(np.finfo(np.float32).max)
_HALF_PI = 0.5 * math.pi
F32 = jnp.float32


# ------------------------------------------------------------------- steps --


def to_steps(step: Any) -> jax.Array:
    """Any step (int, float, array, tracer) as int32 <= 2**31 - 1 (``compiled``
    clamps negatives)."""
    if isinstance(step, numbers.Integral):
        return jnp.asarray(min(max(int(step), 0), I32_MAX), jnp.int32)
    if isinstance(step, (np.ndarray, np.generic)) and np.issubdtype(step.dtype, np.integer):
        return jnp.asarray(np.clip(step, 0, I32_MAX).astype(np.int32))
    step = jnp.asarray(step)
    if step.dtype == jnp.int32:
        return step
    if jnp.issubdtype(step.dtype, jnp.integer):
        info = jnp.iinfo(step.dtype)
        if info.max > I32_MAX:
            step = jnp.minimum(step, jnp.asarray(I32_MAX, step.dtype))
        if info.min < 0:
            step = jnp.maximum(step, jnp.zeros((), step.dtype))
        return step.astype(jnp.int32)
    x = jnp.floor(step.astype(F32))
    x = jnp.where(x >= 0, x, 0.0)  # also maps NaN to 0
    return jnp.minimum(x, 2147483520.0).astype(jnp.int32)  # largest f32 < 2**31


def compiled(core: Callable[[jax.Array], jax.Array]) -> Schedule:
    """``core(t)`` (t: int32 >= 0) as a ``step -> float32`` schedule.

    The core is jitted so that eager calls (logging ``lr(step)``) run one
    compiled kernel instead of dozens of small ops; inside a caller's ``jit``
    it is simply inlined.
    """
    jitted = jax.jit(lambda t: core(jnp.maximum(t, 0)))
    return lambda step: jitted(to_steps(step))


def split(x: float) -> tuple[int, float]:
    """A real step position as (floor, fraction in [0, 1))."""
    fl = math.floor(x)
    return fl, x - fl


# ------------------------------------------------------------------ values --


# A hyperparameter value (number, array or tracer) as float32.
f32 = nx.hyper_f32


def output(x: Any, t: jax.Array) -> jax.Array:
    """A schedule's value as float32 of the step's shape, saturated to be finite."""
    x = jnp.clip(jnp.asarray(x).astype(F32), -F32_MAX, F32_MAX)
    return jnp.broadcast_to(x, t.shape)


def ratio(num: jax.Array, den: Any) -> jax.Array:
    """``num / den`` clipped to [0, 1] (the reciprocal rewrite can overshoot)."""
    return jnp.clip(jnp.asarray(num).astype(F32) / den, 0.0, 1.0)


def mul(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x * y`` with ``0 * inf = 0``, so an overflowed factor saturates in ``output``."""
    return jnp.where((x == 0) | (y == 0), 0.0, x * y)


def sin2(x: jax.Array) -> jax.Array:
    """``sin(pi/2 * x)**2``; ``(1 + cos(pi p))/2 == sin2(1 - p)``, cancellation-free."""
    s = jnp.sin(_HALF_PI * x)
    return s * s


def lerp_steps(a: Any, b: Any, n: jax.Array, total: int) -> jax.Array:
    """``a`` -> ``b`` linearly as int ``n`` goes 0 -> ``total``, exact at both ends."""
    v = a * ratio(total - n, total) + b * ratio(n, total)
    return jnp.where(n <= 0, a, jnp.where(n >= total, b, v))


# ------------------------------------------------------------------ checks --


def check_count(fn: str, name: str, value: Any, *, gt: int | None = None,
                ge: int | None = None, allow_none: bool = False) -> None:
    """A step count: a concrete integer <= 2**31 - 1 within the given bounds."""
    check_static(fn, name, value, sets="the schedule's step boundaries", hint=STATIC_HINT)
    check_int(fn, name, value, gt=gt, ge=ge, allow_none=allow_none)
    if value is not None and int(value) > I32_MAX:
        raise ValueError(f"{fn}({name}={value!r}): {name} must be <= 2**31 - 1")


def check_rate(fn: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    """A learning-rate value: a finite number >= 0 (see the ``optaxsched.schedules``
    docstring)."""
    check_number(fn, name, value, allow_none=allow_none)
    if value is not None and not is_traced(value) and float(value) < 0:
        raise ValueError(
            f"{fn}({name}={value!r}): {name} must be >= 0: a negative learning rate "
            f"climbs the loss; for gradient ascent on purpose keep it >= 0 and add "
            f"optax.scale(-1.0) after the optimizer")


def check_sorted(fn: str, name: str, seq: Sequence[int], given: Any) -> None:
    """``seq`` (the checked form of the argument ``given``) is non-decreasing."""
    for i in range(1, len(seq)):
        if seq[i] < seq[i - 1]:
            raise ValueError(
                f"{fn}({name}={given!r}): {name} must be non-decreasing, "
                f"{name}[{i}]={seq[i]} < {name}[{i - 1}]={seq[i - 1]}")
