"""Pure learning-rate schedules that reproduce PyTorch, Keras and timm exactly.

Each factory checks its arguments and returns ``schedule(step) -> jax.Array``:
a pure function whose value at step ``t`` is the learning rate of update ``t``
(``t = 0, 1, ...``), i.e. torch's lr after ``t`` calls to ``scheduler.step()``
and Keras's ``schedule(t)``. Use it as ``optax.adam(learning_rate=schedule)``.

Steps: a Python int, an integer array of any shape (the result has its shape)
or a traced value under ``jit``/``vmap``/``scan``. Floats are floored, negative
steps read as 0 and steps saturate at 2**31 - 1. The result is float32, finite
for every step (overflow saturates at the largest float32) and never negative
by rounding when the schedule's values are non-negative.

Exactness: floors, ceilings and phase tests are done in int32, so under
``jit`` (where XLA turns ``x / c`` into ``x * (1/c)``) a restart or boundary
can never move by a step; fractions are formed as ``(T - t) / T``, clipped to
[0, 1], and results mix two end values with non-negative weights.

Hyperparameters that are values (learning rates, gammas, end values) may be
traced; step counts, boundaries, strings and ``period_mult``/``pct_start``
must be concrete Python values because they shape the computation.

Learning-rate values (``init_value``, ``peak_value``, ``end_value``,
``max_value``, ``base_value``, ``value``, the ``values`` of
``piecewise_constant``) must be finite and >= 0, and combinations whose
values would turn negative later on are refused too: a negative rate makes
``optax.sgd`` and friends climb the loss, which is never what a schedule
means. For gradient ascent on purpose, keep the schedule non-negative and
negate the updates, e.g. ``optax.chain(optax.sgd(lr), optax.scale(-1.0))``.
Traced values cannot be checked and are used as they come.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxsched._validation import (
    check_callable,
    check_choice,
    check_float_sequence,
    check_int,
    check_int_sequence,
    check_number,
    is_traced,
)

__all__ = [
    "constant", "step_decay", "multistep_decay", "piecewise_constant", "exponential_decay",
    "inverse_time_decay", "power_decay", "inverse_sqrt", "linear", "polynomial_decay",
    "cosine_decay", "cosine_restarts", "cyclic", "one_cycle", "wsd", "warmup", "join", "multiply",
    "per_epoch",
]

Schedule = Callable[[Any], jax.Array]

_I32_MAX = 2**31 - 1
_F32_MAX = float(np.finfo(np.float32).max)
_HALF_PI = 0.5 * math.pi
_MAX_PERIODS = 1 << 16  # restart-table size limit of cosine_restarts
_F32 = jnp.float32


# ----------------------------------------------------------------- helpers --


def _steps(step: Any) -> jax.Array:
    """Any step (int, float, array, tracer) as int32 <= 2**31 - 1 (``_compiled``
    clamps negatives)."""
    if isinstance(step, numbers.Integral):
        return jnp.asarray(min(max(int(step), 0), _I32_MAX), jnp.int32)
    if isinstance(step, (np.ndarray, np.generic)) and np.issubdtype(step.dtype, np.integer):
        return jnp.asarray(np.clip(step, 0, _I32_MAX).astype(np.int32))
    step = jnp.asarray(step)
    if step.dtype == jnp.int32:
        return step
    if jnp.issubdtype(step.dtype, jnp.integer):
        info = jnp.iinfo(step.dtype)
        if info.max > _I32_MAX:
            step = jnp.minimum(step, jnp.asarray(_I32_MAX, step.dtype))
        if info.min < 0:
            step = jnp.maximum(step, jnp.zeros((), step.dtype))
        return step.astype(jnp.int32)
    x = jnp.floor(step.astype(_F32))
    x = jnp.where(x >= 0, x, 0.0)  # also maps NaN to 0
    return jnp.minimum(x, 2147483520.0).astype(jnp.int32)  # largest f32 < 2**31


def _compiled(core: Callable[[jax.Array], jax.Array]) -> Schedule:
    """``core(t)`` (t: int32 >= 0) as a ``step -> float32`` schedule.

    The core is jitted so that eager calls (logging ``lr(step)``) run one
    compiled kernel instead of dozens of small ops; inside a caller's ``jit``
    it is simply inlined.
    """
    jitted = jax.jit(lambda t: core(jnp.maximum(t, 0)))
    return lambda step: jitted(_steps(step))


def _f(x: Any) -> jax.Array:
    return jnp.asarray(x, _F32)


def _out(x: Any, t: jax.Array) -> jax.Array:
    x = jnp.clip(jnp.asarray(x).astype(_F32), -_F32_MAX, _F32_MAX)
    return jnp.broadcast_to(x, t.shape)


def _ratio(num: jax.Array, den: Any) -> jax.Array:
    """``num / den`` clipped to [0, 1] (the reciprocal rewrite can overshoot)."""
    return jnp.clip(jnp.asarray(num).astype(_F32) / den, 0.0, 1.0)


def _mul(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x * y`` with ``0 * inf = 0``, so an overflowed factor saturates in ``_out``."""
    return jnp.where((x == 0) | (y == 0), 0.0, x * y)


def _sin2(x: jax.Array) -> jax.Array:
    """``sin(pi/2 * x)**2``; ``(1 + cos(pi p))/2 == _sin2(1 - p)``, cancellation-free."""
    s = jnp.sin(_HALF_PI * x)
    return s * s


def _lerp_steps(a: Any, b: Any, n: jax.Array, total: int) -> jax.Array:
    """``a`` -> ``b`` linearly as int ``n`` goes 0 -> ``total``, exact at both ends."""
    v = a * _ratio(total - n, total) + b * _ratio(n, total)
    return jnp.where(n <= 0, a, jnp.where(n >= total, b, v))


def _call(schedule: Callable, t: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(schedule(t)).astype(_F32), t.shape)


def _concrete(fn: str, name: str, value: Any) -> None:
    if is_traced(value):
        raise TypeError(f"{fn}({name}=<traced>): {name} must be a concrete Python value")


def _count(fn: str, name: str, value: Any, *, gt: int | None = None, ge: int | None = None,
           allow_none: bool = False) -> None:
    _concrete(fn, name, value)
    check_int(fn, name, value, gt=gt, ge=ge, allow_none=allow_none)
    if value is not None and int(value) > _I32_MAX:
        raise ValueError(f"{fn}({name}={value!r}): {name} must be <= 2**31 - 1")


def _check_rate(fn: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    """A learning-rate value: a finite number >= 0 (see the module docstring)."""
    check_number(fn, name, value, allow_none=allow_none)
    if value is not None and not is_traced(value) and float(value) < 0:
        raise ValueError(
            f"{fn}({name}={value!r}): {name} must be >= 0: a negative learning rate "
            f"climbs the loss; for gradient ascent on purpose keep it >= 0 and add "
            f"optax.scale(-1.0) after the optimizer")


def _check_bool(fn: str, name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}({name}={value!r}): {name} must be True or False")


def _check_sorted(fn: str, name: str, seq: Sequence[int], given: Any) -> None:
    for i in range(1, len(seq)):
        if seq[i] < seq[i - 1]:
            raise ValueError(
                f"{fn}({name}={given!r}): {name} must be non-decreasing, "
                f"{name}[{i}]={seq[i]} < {name}[{i - 1}]={seq[i - 1]}")


def _split(x: float) -> tuple[int, float]:
    """A real step position as (floor, fraction in [0, 1))."""
    fl = math.floor(x)
    return fl, x - fl


# --------------------------------------------------------------- schedules --


def constant(value: Any) -> Schedule:
    """A constant schedule.

    ``lr(t) = value``.

    Args:
      value: the value at every step, >= 0.

    Returns:
      ``schedule(step) -> float32 array`` of the step's shape.

    Example:
      >>> float(constant(0.1)(1000))
      0.10000000149011612

    References:
      Every optimizer's default.
    """
    _check_rate("constant", "value", value)
    v = _f(value)
    return _compiled(lambda t: _out(v, t))


def step_decay(init_value: Any, step_size: int, gamma: Any = 0.1) -> Schedule:
    """Multiplies by ``gamma`` every ``step_size`` steps (torch ``StepLR``).

    ``lr(t) = init_value * gamma ** floor(t / step_size)``, the floor in int32.

    Args:
      init_value: value for steps ``0 .. step_size - 1``, >= 0.
      step_size: steps between decays, an int > 0.
      gamma: decay factor, >= 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = step_decay(0.1, step_size=30)
      >>> [round(float(lr(t)), 6) for t in (0, 29, 30, 60)]
      [0.1, 0.1, 0.01, 0.001]

    References:
      PyTorch ``torch.optim.lr_scheduler.StepLR``.
    """
    fn = "step_decay"
    _check_rate(fn, "init_value", init_value)
    _count(fn, "step_size", step_size, gt=0)
    check_number(fn, "gamma", gamma, ge=0)
    init, g, size = _f(init_value), _f(gamma), int(step_size)

    def schedule(t):
        return _out(_mul(init, jnp.power(g, (t // size).astype(_F32))), t)

    return _compiled(schedule)


def multistep_decay(init_value: Any, milestones: Sequence[int], gamma: Any = 0.1) -> Schedule:
    """Multiplies by ``gamma`` at each milestone (torch ``MultiStepLR``).

    ``lr(t) = init_value * gamma ** #{m in milestones : m <= t}``. Milestones may
    come in any order; one listed twice decays twice; one at 0 applies at t=0.

    Args:
      init_value: value before the first milestone, >= 0.
      milestones: integer steps >= 0 (may be empty).
      gamma: decay factor, >= 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = multistep_decay(1.0, milestones=[30, 10, 30], gamma=0.5)
      >>> [float(lr(t)) for t in (9, 10, 30)]
      [1.0, 0.5, 0.125]

    References:
      PyTorch ``torch.optim.lr_scheduler.MultiStepLR``.
    """
    fn = "multistep_decay"
    _check_rate(fn, "init_value", init_value)
    ms = sorted(check_int_sequence(fn, "milestones", milestones, ge=0))
    check_number(fn, "gamma", gamma, ge=0)
    init, g = _f(init_value), _f(gamma)
    table = jnp.asarray(np.minimum(ms, _I32_MAX), jnp.int32)

    def schedule(t):
        if not ms:
            return _out(init, t)
        n = jnp.searchsorted(table, t, side="right").astype(_F32)
        return _out(_mul(init, jnp.power(g, n)), t)

    return _compiled(schedule)


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """Piecewise constant values (Keras ``PiecewiseConstantDecay``).

    ``lr(t) = values[#{b in boundaries : b < t}]``: a step equal to a boundary
    still takes the value on its left.

    Args:
      boundaries: non-decreasing integer steps >= 0.
      values: ``len(boundaries) + 1`` numbers, each >= 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = piecewise_constant([10, 20], [1.0, 0.5, 0.25])
      >>> [float(lr(t)) for t in (10, 11, 20, 21)]
      [1.0, 0.5, 0.5, 0.25]

    References:
      Keras ``keras.optimizers.schedules.PiecewiseConstantDecay``.
    """
    fn = "piecewise_constant"
    bs = check_int_sequence(fn, "boundaries", boundaries, ge=0)
    _check_sorted(fn, "boundaries", bs, boundaries)
    vs = check_float_sequence(fn, "values", values)
    for i, v in enumerate(vs):
        _check_rate(fn, f"values[{i}]", v)
    if len(vs) != len(bs) + 1:
        raise ValueError(
            f"{fn}(values={values!r}): needs len(boundaries) + 1 = {len(bs) + 1} values, "
            f"got {len(vs)}")
    table = jnp.asarray(np.minimum(bs, _I32_MAX), jnp.int32)
    vals = jnp.asarray(vs, _F32)

    def schedule(t):
        if not bs:
            return _out(vals[0], t)
        return _out(vals[jnp.searchsorted(table, t, side="left")], t)

    return _compiled(schedule)


def _decay_exponent(t: jax.Array, steps: int, staircase: bool) -> jax.Array:
    """``t / steps`` (floored with ``staircase``) as exact integer part + fraction."""
    q = (t // steps).astype(_F32)
    return q if staircase else q + (t % steps).astype(_F32) / steps


def exponential_decay(init_value: Any, decay_rate: Any, decay_steps: int = 1,
                      staircase: bool = False, end_value: Any = None) -> Schedule:
    """Exponential decay (torch ``ExponentialLR``, Keras ``ExponentialDecay``).

    ``lr(t) = init_value * decay_rate ** (t / decay_steps)`` (exponent floored
    with ``staircase``). ``end_value`` bounds it: from below when
    ``decay_rate < 1``, from above when ``decay_rate > 1``. ExponentialLR(gamma)
    is ``decay_rate=gamma, decay_steps=1``.

    Args:
      init_value: value at step 0, >= 0.
      decay_rate: factor per ``decay_steps`` steps, > 0.
      decay_steps: int > 0.
      staircase: floor ``t / decay_steps``.
      end_value: optional bound (see above), >= 0; not above ``init_value``
        when ``decay_rate < 1`` nor below it when ``decay_rate > 1`` (the
        schedule would be the constant ``end_value``).

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = exponential_decay(1.0, decay_rate=0.5, decay_steps=10)
      >>> [round(float(lr(t)), 6) for t in (0, 10, 15)]
      [1.0, 0.5, 0.353553]

    References:
      PyTorch ``ExponentialLR``; Keras ``ExponentialDecay``.
    """
    fn = "exponential_decay"
    _check_rate(fn, "init_value", init_value)
    check_number(fn, "decay_rate", decay_rate, gt=0)
    _count(fn, "decay_steps", decay_steps, gt=0)
    _check_bool(fn, "staircase", staircase)
    _check_rate(fn, "end_value", end_value, allow_none=True)
    if end_value is not None and not any(map(is_traced, (init_value, decay_rate, end_value))):
        # A floor above the start (or a cap below it) is the whole schedule.
        r, a0, e = float(decay_rate), float(init_value), float(end_value)
        if (r < 1 and e > a0) or (r > 1 and e < a0):
            side = "<=" if r < 1 else ">="
            raise ValueError(
                f"{fn}(end_value={end_value!r}): with decay_rate={decay_rate!r} end_value "
                f"must be {side} init_value={init_value!r}, else every step is end_value")
    init, rate, ds = _f(init_value), _f(decay_rate), int(decay_steps)
    end = None if end_value is None else _f(end_value)

    def schedule(t):
        v = _mul(init, jnp.power(rate, _decay_exponent(t, ds, bool(staircase))))
        if end is not None:
            v = jnp.where(
                rate < 1, jnp.maximum(v, end), jnp.where(rate > 1, jnp.minimum(v, end), v)
            )
        return _out(v, t)

    return _compiled(schedule)


def inverse_time_decay(init_value: Any, decay_rate: Any, decay_steps: int = 1,
                       staircase: bool = False) -> Schedule:
    """Inverse-time decay (Keras ``InverseTimeDecay``).

    ``lr(t) = init_value / (1 + decay_rate * t / decay_steps)`` (``t / decay_steps``
    floored with ``staircase``).

    Args:
      init_value: value at step 0, >= 0.
      decay_rate: >= 0.
      decay_steps: int > 0.
      staircase: floor ``t / decay_steps``.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = inverse_time_decay(1.0, decay_rate=0.5, decay_steps=10)
      >>> [float(lr(t)) for t in (0, 20)]
      [1.0, 0.5]

    References:
      Keras ``keras.optimizers.schedules.InverseTimeDecay``.
    """
    fn = "inverse_time_decay"
    _check_rate(fn, "init_value", init_value)
    check_number(fn, "decay_rate", decay_rate, ge=0)
    _count(fn, "decay_steps", decay_steps, gt=0)
    _check_bool(fn, "staircase", staircase)
    init, rate, ds = _f(init_value), _f(decay_rate), int(decay_steps)

    def schedule(t):
        return _out(init / (1.0 + rate * _decay_exponent(t, ds, bool(staircase))), t)

    return _compiled(schedule)


def power_decay(init_value: Any, power: Any = 0.5, timescale: Any = 1.0) -> Schedule:
    """Power-law decay (timm's ``power``/``rsqrt`` stable phase).

    ``lr(t) = init_value * (1 + t / timescale) ** -power``.

    Args:
      init_value: value at step 0, >= 0.
      power: exponent, >= 0 (0.5 is the reciprocal square root).
      timescale: steps over which the decay sets in, > 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = power_decay(1.0, power=0.5, timescale=100.0)
      >>> [float(lr(t)) for t in (0, 300)]
      [1.0, 0.5]

    References:
      Zhai et al., "Scaling Vision Transformers", 2022; timm ``WSDLRScheduler``.
    """
    fn = "power_decay"
    _check_rate(fn, "init_value", init_value)
    check_number(fn, "power", power, ge=0)
    check_number(fn, "timescale", timescale, gt=0)
    init, p, tau = _f(init_value), _f(power), _f(timescale)

    def schedule(t):
        x = jnp.where(t > 0, jnp.minimum(t.astype(_F32) / tau, 1e38), 0.0)
        return _out(init * jnp.exp(-p * jnp.log1p(x)), t)

    return _compiled(schedule)


def inverse_sqrt(peak_value: Any, warmup_steps: int) -> Schedule:
    """Linear warm-up, then inverse square root ("Attention is all you need").

    ``lr(t) = peak_value * min(t / w, sqrt(w / max(t, w)))``, ``w = warmup_steps``:
    0 at t=0, ``peak_value`` at t=w. Equals timm ``rsqrt`` with timescale w.

    Args:
      peak_value: value at ``t = warmup_steps``, >= 0.
      warmup_steps: int > 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = inverse_sqrt(1.0, warmup_steps=100)
      >>> [float(lr(t)) for t in (0, 50, 100, 400)]
      [0.0, 0.5, 1.0, 0.5]

    References:
      Vaswani et al., "Attention Is All You Need", 2017.
    """
    fn = "inverse_sqrt"
    _check_rate(fn, "peak_value", peak_value)
    _count(fn, "warmup_steps", warmup_steps, gt=0)
    peak, w = _f(peak_value), int(warmup_steps)

    def schedule(t):
        ramp = _ratio(t, w)
        decay = jnp.sqrt(jnp.float32(w) / jnp.maximum(t.astype(_F32), jnp.float32(w)))
        return _out(peak * jnp.where(t >= w, jnp.minimum(decay, 1.0), ramp), t)

    return _compiled(schedule)


def linear(init_value: Any, end_value: Any, transition_steps: int) -> Schedule:
    """Linear interpolation, then held (torch ``LinearLR``).

    ``lr(t) = init_value + (end_value - init_value) * min(t, T) / T``.
    torch's LinearLR(start_factor, end_factor, total_iters) is
    ``linear(base * start_factor, base * end_factor, total_iters)``.

    Args:
      init_value: value at step 0, >= 0.
      end_value: value from step ``transition_steps`` on, >= 0.
      transition_steps: T, an int > 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = linear(0.0, 1.0, transition_steps=4)
      >>> [float(lr(t)) for t in (0, 1, 4, 100)]
      [0.0, 0.25, 1.0, 1.0]

    References:
      PyTorch ``torch.optim.lr_scheduler.LinearLR``.
    """
    fn = "linear"
    _check_rate(fn, "init_value", init_value)
    _check_rate(fn, "end_value", end_value)
    _count(fn, "transition_steps", transition_steps, gt=0)
    a, b, total = _f(init_value), _f(end_value), int(transition_steps)

    def schedule(t):
        return _out(_lerp_steps(a, b, jnp.minimum(t, total), total), t)

    return _compiled(schedule)


def polynomial_decay(init_value: Any, decay_steps: int, end_value: Any = 0.0,
                     power: Any = 1.0, cycle: bool = False) -> Schedule:
    """Polynomial decay (Keras ``PolynomialDecay``, torch ``PolynomialLR``).

    ``lr(t) = (init - end) * (1 - t/D) ** power + end`` with ``t`` capped at D.
    With ``cycle``, D becomes ``D * ceil(t / D)`` (D at t=0), so the value hits
    ``end_value`` at each multiple of D and jumps back up after it.
    torch's PolynomialLR(total_iters, power) is ``polynomial_decay(base, total_iters,
    0.0, power)``.

    Args:
      init_value: value at step 0, >= 0.
      decay_steps: D, an int > 0.
      end_value: value reached at D, >= 0.
      power: exponent, >= 0.
      cycle: restart every D steps as Keras does.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = polynomial_decay(1.0, decay_steps=10, power=2.0)
      >>> [float(lr(t)) for t in (0, 5, 10, 50)]
      [1.0, 0.25, 0.0, 0.0]

    References:
      Keras ``PolynomialDecay``; PyTorch ``PolynomialLR``.
    """
    fn = "polynomial_decay"
    _check_rate(fn, "init_value", init_value)
    _count(fn, "decay_steps", decay_steps, gt=0)
    _check_rate(fn, "end_value", end_value)
    check_number(fn, "power", power, ge=0)
    _check_bool(fn, "cycle", cycle)
    a, b, p, ds = _f(init_value), _f(end_value), _f(power), int(decay_steps)

    def schedule(t):
        if cycle:
            r_mod = t % ds
            mult = jnp.maximum(t // ds + (r_mod != 0).astype(jnp.int32), 1)
            left = jnp.where(t == 0, ds, (ds - r_mod) % ds)  # D*ceil(t/D) - t, exact
            rem = _ratio(left, jnp.float32(ds) * mult.astype(_F32))
        else:
            rem = _ratio(ds - jnp.minimum(t, ds), ds)
        w = jnp.power(rem, p)
        return _out(a * w + b * (1.0 - w), t)

    return _compiled(schedule)


def cosine_decay(init_value: Any, decay_steps: int, end_value: Any = 0.0,
                 periodic: bool = False) -> Schedule:
    """Half-cosine decay (Keras ``CosineDecay``; torch ``CosineAnnealingLR``).

    ``lr(t) = end + (init - end) * (1 + cos(pi * t / T)) / 2``. By default t is
    capped at T and ``end_value`` is held (Keras, ``alpha = end/init``). With
    ``periodic=True`` it is not capped and rises again after T with period 2T,
    which is what torch's CosineAnnealingLR(T_max=T, eta_min=end) does.

    Args:
      init_value: value at step 0, >= 0.
      decay_steps: T, an int > 0.
      end_value: value at T, >= 0.
      periodic: follow the cosine past T (torch) instead of holding (Keras).

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = cosine_decay(1.0, decay_steps=10)
      >>> [round(float(lr(t)), 6) for t in (0, 5, 10, 15)]
      [1.0, 0.5, 0.0, 0.0]
      >>> round(float(cosine_decay(1.0, 10, periodic=True)(15)), 6)
      0.5

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
      Restarts", 2017; Keras ``CosineDecay``; PyTorch ``CosineAnnealingLR``.
    """
    fn = "cosine_decay"
    _check_rate(fn, "init_value", init_value)
    _count(fn, "decay_steps", decay_steps, gt=0)
    _check_rate(fn, "end_value", end_value)
    _check_bool(fn, "periodic", periodic)
    a, b, T = _f(init_value), _f(end_value), int(decay_steps)

    def schedule(t):
        if periodic:
            s = t % (2 * T) if 2 * T <= _I32_MAX else t
            n = jnp.where(s <= T, s, T - (s - T))  # mirror the rising half
        else:
            n = jnp.minimum(t, T)
        return _out(a * _sin2(_ratio(T - n, T)) + b * _sin2(_ratio(n, T)), t)

    return _compiled(schedule)


def _restart_table(fn: str, first: int, mult: float) -> dict[str, jax.Array]:
    """Restart positions S_k = first * (mult**k - 1) / (mult - 1) covering int32.

    S_k are accumulated in float64 (exact for integer ``mult``, and for dyadic
    ones such as 1.5 while they fit) and split into int32 floors plus float32
    fractions, so the period index is an exact integer search.
    """
    starts, s, period = [], 0.0, float(first)
    while s <= _I32_MAX:
        starts.append(s)
        if len(starts) > _MAX_PERIODS:
            raise ValueError(
                f"{fn}(period_mult={mult!r}): period_mult is so close to 1 that more than "
                f"{_MAX_PERIODS} restarts fit in 2**31 steps; use period_mult=1.0 or a larger one")
        s, period = s + period, period * mult
    starts.append(s)
    floors = [math.floor(x) for x in starts]
    gaps = [floors[k + 1] - floors[k] for k in range(len(starts) - 1)]
    return {
        "ceil": jnp.asarray([math.ceil(x) for x in starts[:-1]], jnp.int32),
        "floor": jnp.asarray(floors[:-1], jnp.int32),
        "frac": jnp.asarray([x - f for x, f in zip(starts, floors)], _F32),
        "gap": jnp.asarray([min(g, _I32_MAX) for g in gaps], jnp.int32),
        "gap_excess": jnp.asarray([g - min(g, _I32_MAX) for g in gaps], _F32),
    }


def cosine_restarts(init_value: Any, first_period: int, period_mult: float = 1.0,
                    end_value: Any = 0.0, amplitude_mult: Any = 1.0) -> Schedule:
    """Cosine annealing with warm restarts (torch ``CosineAnnealingWarmRestarts``,
    Keras ``CosineDecayRestarts``).

    Period i starts at ``S_i = P (m**i - 1) / (m - 1)`` (``S_i = i P`` for m = 1)
    and lasts ``P m**i``; within it, with ``f = (t - S_i) / (P m**i)``,
    ``lr(t) = end + amplitude_mult**i * (init - end) * (1 + cos(pi f)) / 2``.
    A restart value is exactly ``end + amplitude_mult**i * (init - end)``.

    The period index is exact: the restarts up to step 2**31 are tabulated once
    (in float64, exact for integer m) and found by an integer binary search.
    Keras computes the index with a float32 ``log``, which can put an exact
    restart into the previous period (P=10, m=2: step 327670 gives ``end``
    instead of ``init``); here that cannot happen. Fractional m gives
    real-valued restart positions, as in Keras. An m so close to 1 (below
    about 1 + 2e-4) that over 65536 periods fit in 2**31 steps is refused.

    Args:
      init_value: value at step 0, >= 0.
      first_period: P (torch T_0, Keras first_decay_steps), an int > 0.
      period_mult: m (T_mult, t_mul), a concrete number >= 1.
      end_value: floor of every period (torch eta_min, Keras ``alpha * init``),
        >= 0.
      amplitude_mult: scales ``init - end`` per period (Keras m_mul), >= 0;
        <= 1 when ``end_value > init_value`` (the restarts would turn negative).

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = cosine_restarts(1.0, first_period=10, period_mult=2.0)
      >>> [round(float(lr(t)), 6) for t in (0, 5, 10, 20, 30)]
      [1.0, 0.5, 1.0, 0.5, 1.0]

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
      Restarts", 2017.
    """
    fn = "cosine_restarts"
    _check_rate(fn, "init_value", init_value)
    _count(fn, "first_period", first_period, gt=0)
    _concrete(fn, "period_mult", period_mult)
    check_number(fn, "period_mult", period_mult, ge=1)
    _check_rate(fn, "end_value", end_value)
    check_number(fn, "amplitude_mult", amplitude_mult, ge=0)
    if (not any(map(is_traced, (init_value, end_value, amplitude_mult)))
            and float(end_value) > float(init_value) and float(amplitude_mult) > 1):
        raise ValueError(
            f"{fn}(amplitude_mult={amplitude_mult!r}): amplitude_mult must be <= 1 when "
            f"end_value={end_value!r} > init_value={init_value!r}: the restart value "
            f"end + amplitude_mult**i * (init - end) turns negative")
    a, b, amp, P = _f(init_value), _f(end_value), _f(amplitude_mult), int(first_period)
    table = None if float(period_mult) == 1.0 else _restart_table(fn, P, float(period_mult))

    def schedule(t):
        if table is None:
            i, d = t // P, t % P
            done, left = d.astype(_F32), (P - d).astype(_F32)
        else:
            i = jnp.searchsorted(table["ceil"], t, side="right") - 1
            d = t - table["floor"][i]  # >= 1 whenever the start is fractional
            done = d.astype(_F32) - table["frac"][i]
            left = ((table["gap"][i] - d).astype(_F32) + table["gap_excess"][i]
                    + table["frac"][i + 1])
        length = done + left
        peak = jnp.clip(b + _mul(a - b, jnp.power(amp, i.astype(_F32))), -_F32_MAX, _F32_MAX)
        return _out(peak * _sin2(_ratio(left, length)) + b * _sin2(_ratio(done, length)), t)

    return _compiled(schedule)


def cyclic(base_value: Any, max_value: Any, step_size_up: int, step_size_down: int | None = None,
           mode: str = "triangular", gamma: Any = 1.0) -> Schedule:
    """Cyclical learning rate (torch ``CyclicLR``).

    Rises linearly from ``base_value`` to ``max_value`` over ``step_size_up`` steps,
    falls back over ``step_size_down``, and repeats:
    ``lr(t) = base + (max - base) * s(t) * g(t)`` with s the triangle wave and
    g = 1 (``triangular``), ``2 ** -cycle`` (``triangular2``, cycle = 0, 1, ...)
    or ``gamma ** t`` (``exp_range``, per iteration as in torch).

    Args:
      base_value: value at the start of each cycle, >= 0.
      max_value: value at the peak of each cycle, >= 0 (below ``base_value``
        the cycle runs downwards, as in torch).
      step_size_up: int > 0.
      step_size_down: int > 0; None means ``step_size_up``.
      mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
      gamma: > 0, used by ``exp_range``; <= 1 when ``max_value < base_value``
        (the values would turn negative).

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = cyclic(0.0, 1.0, step_size_up=2, mode="triangular2")
      >>> [float(lr(t)) for t in range(7)]
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.25, 0.5]

    References:
      Smith, "Cyclical Learning Rates for Training Neural Networks", 2017.
    """
    fn = "cyclic"
    _check_rate(fn, "base_value", base_value)
    _check_rate(fn, "max_value", max_value)
    _count(fn, "step_size_up", step_size_up, gt=0)
    _count(fn, "step_size_down", step_size_down, gt=0, allow_none=True)
    check_choice(fn, "mode", mode, ("triangular", "triangular2", "exp_range"))
    check_number(fn, "gamma", gamma, gt=0)
    if (mode == "exp_range" and not any(map(is_traced, (base_value, max_value, gamma)))
            and float(gamma) > 1 and float(max_value) < float(base_value)):
        raise ValueError(
            f"{fn}(gamma={gamma!r}): with mode='exp_range' and max_value={max_value!r} < "
            f"base_value={base_value!r}, gamma must be <= 1: base + (max - base) * "
            f"s * gamma**t turns negative")
    up = int(step_size_up)
    down = up if step_size_down is None else int(step_size_down)
    total = up + down
    lo, hi, g = _f(base_value), _f(max_value), _f(gamma)

    def schedule(t):
        u, n = (t % total, t // total) if total <= _I32_MAX else (t, jnp.zeros_like(t))
        s = jnp.where(u <= up, _ratio(u, up), _ratio(total - u, down))
        if mode == "triangular2":
            s = s * jnp.power(jnp.float32(0.5), n.astype(_F32))
        elif mode == "exp_range":
            s = _mul(s, jnp.power(g, t.astype(_F32)))
        return _out(lo + _mul(hi - lo, s), t)

    return _compiled(schedule)


def one_cycle(max_value: Any, total_steps: int, pct_start: float = 0.3, anneal: str = "cos",
              div_factor: Any = 25.0, final_div_factor: Any = 1e4,
              three_phase: bool = False) -> Schedule:
    """The 1cycle policy (torch ``OneCycleLR``).

    With ``init = max_value / div_factor``, ``low = init / final_div_factor`` and
    T = total_steps, the phases end at the (real) steps ``e1 = pct_start*T - 1``
    and ``T - 1`` (init -> max -> low), or with ``three_phase`` at
    ``pct_start*T - 1``, ``2*pct_start*T - 2`` and ``T - 1`` (init -> max -> init
    -> low). Step t is in the first phase with ``t <= e_k``; within it,
    ``p = (t - e_{k-1}) / (e_k - e_{k-1})`` and the value anneals
    ``start + (end - start) * (1 - cos(pi p)) / 2`` (``cos``) or ``* p``
    (``linear``). From ``T - 1`` on it is held at ``low`` (torch extrapolates at
    T and raises after it).

    Args:
      max_value: peak value, >= 0.
      total_steps: T, an int >= 2.
      pct_start: fraction of T spent rising, in (0, 1); ``pct_start * T`` must
        exceed 1 and, with three_phase, the last phase must be non-empty.
      anneal: ``"cos"`` or ``"linear"``.
      div_factor: ``init = max_value / div_factor``, > 0.
      final_div_factor: ``low = init / final_div_factor``, > 0.
      three_phase: add the symmetric fall back to ``init`` before the final decay.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = one_cycle(1.0, total_steps=10, pct_start=0.5, anneal="linear", div_factor=10.0)
      >>> [round(float(lr(t)), 4) for t in (0, 4, 9, 50)]
      [0.1, 1.0, 0.0, 0.0]

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks
      Using Large Learning Rates", 2019; PyTorch ``OneCycleLR``.
    """
    fn = "one_cycle"
    _check_rate(fn, "max_value", max_value)
    _count(fn, "total_steps", total_steps, ge=2)
    _concrete(fn, "pct_start", pct_start)
    check_number(fn, "pct_start", pct_start, gt=0, lt=1)
    check_choice(fn, "anneal", anneal, ("cos", "linear"))
    check_number(fn, "div_factor", div_factor, gt=0)
    check_number(fn, "final_div_factor", final_div_factor, gt=0)
    _check_bool(fn, "three_phase", three_phase)
    T, pct = int(total_steps), float(pct_start)
    top = _f(max_value)
    init = top / _f(div_factor)
    low = init / _f(final_div_factor)
    # Phase ends exactly as torch computes them, in float64.
    if three_phase:
        ends = [float(pct * T) - 1, float(2 * pct * T) - 2, float(T) - 1]
        vals = [init, top, init, low]
    else:
        ends, vals = [float(pct * T) - 1, float(T) - 1], [init, top, low]
    starts = [0.0] + ends[:-1]
    for k, (s, e) in enumerate(zip(starts, ends)):
        if not e > s:
            raise ValueError(
                f"{fn}(pct_start={pct_start!r}): phase {k + 1} of total_steps={T} is empty "
                f"(it would end at step {e:g}); need pct_start*total_steps > 1"
                + (" and pct_start < (total_steps + 1) / (2*total_steps)" if three_phase else ""))
    s_split, e_split = [_split(s) for s in starts], [_split(e) for e in ends]
    s_floor = jnp.asarray([x for x, _ in s_split], jnp.int32)
    s_frac = jnp.asarray([x for _, x in s_split], _F32)
    e_floor = jnp.asarray([x for x, _ in e_split], jnp.int32)
    e_frac = jnp.asarray([x for _, x in e_split], _F32)
    v_start, v_end = jnp.stack(vals[:-1]), jnp.stack(vals[1:])

    def schedule(t):
        k = sum((t > x).astype(jnp.int32) for x, _ in e_split[:-1]) + jnp.zeros_like(t)
        done = (t - s_floor[k]).astype(_F32) - s_frac[k]
        left = jnp.maximum((e_floor[k] - t).astype(_F32) + e_frac[k], 0.0)  # held past T-1
        length = done + left
        w_start, w_end = _ratio(left, length), _ratio(done, length)
        if anneal == "cos":
            w_start, w_end = _sin2(w_start), _sin2(w_end)
        return _out(v_start[k] * w_start + v_end[k] * w_end, t)

    return _compiled(schedule)


def _check_wsd_phases(fn: str, T: int, W: int, D: int, decay_steps: Any) -> None:
    """Warm-up and decay must fit in T; the message blames the argument that
    overflows and says where D came from when it was defaulted."""
    if W > T:
        raise ValueError(
            f"{fn}(warmup_steps={W}): warmup_steps must be <= total_steps = {T} "
            f"(total_steps counts the warm-up too)")
    if D > T:
        raise ValueError(f"{fn}(decay_steps={D}): decay_steps must be <= total_steps = {T}")
    if W + D > T:
        if decay_steps is None:
            raise ValueError(
                f"{fn}(warmup_steps={W}, decay_steps=None): warmup_steps + decay_steps = "
                f"{W} + {D} must be <= total_steps = {T}; decay_steps=None means 10% of "
                f"total_steps, {D} here: pass warmup_steps <= {T - D} or decay_steps <= "
                f"{T - W}")
        raise ValueError(
            f"{fn}(warmup_steps={W}, decay_steps={D}): warmup_steps + decay_steps = "
            f"{W} + {D} must be <= total_steps = {T}")


def wsd(peak_value: Any, total_steps: int, warmup_steps: int = 0, decay_steps: int | None = None,
        init_value: Any = 0.0, end_value: Any = 0.0, decay_shape: str = "1-sqrt") -> Schedule:
    """Warmup-stable-decay (timm ``wsd`` with a constant stable phase, MiniCPM).

    Linear warm-up from ``init_value`` to ``peak_value`` over W steps, constant
    ``peak_value``, then over the last D steps of ``total_steps`` (T, warm-up
    included) ``lr = end + (peak - end) * g(f)`` with ``f = (t - (T - D)) / D`` and
    g = ``1 - f`` (``linear``), ``(1 + cos(pi f)) / 2`` (``cosine``) or
    ``1 - sqrt(f)`` (``1-sqrt``). ``end_value`` is reached at T and held.

    Args:
      peak_value: stable value, >= 0.
      total_steps: T, an int > 0, including the warm-up.
      warmup_steps: W, an int >= 0.
      decay_steps: D, an int >= 0; None means 10% of T rounded half up.
        ``W + D <= T``.
      init_value: value at step 0 when W > 0, >= 0.
      end_value: value from step T on, >= 0.
      decay_shape: ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = wsd(1.0, total_steps=100, warmup_steps=10, decay_steps=20, decay_shape="linear")
      >>> [float(lr(t)) for t in (0, 5, 10, 80, 90, 100)]
      [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]

    References:
      Hu et al., "MiniCPM", 2024; Hägele et al., "Scaling Laws and
      Compute-Optimal Training Beyond Fixed Training Durations", 2024.
    """
    fn = "wsd"
    _check_rate(fn, "peak_value", peak_value)
    _count(fn, "total_steps", total_steps, gt=0)
    _count(fn, "warmup_steps", warmup_steps, ge=0)
    _count(fn, "decay_steps", decay_steps, ge=0, allow_none=True)
    _check_rate(fn, "init_value", init_value)
    _check_rate(fn, "end_value", end_value)
    check_choice(fn, "decay_shape", decay_shape, ("linear", "cosine", "1-sqrt"))
    T, W = int(total_steps), int(warmup_steps)
    D = (T + 5) // 10 if decay_steps is None else int(decay_steps)
    _check_wsd_phases(fn, T, W, D, decay_steps)
    peak, a, b = _f(peak_value), _f(init_value), _f(end_value)

    def schedule(t):
        if D > 0:
            n = jnp.clip(t - (T - D), 0, D)
            f, r = _ratio(n, D), _ratio(D - n, D)
            if decay_shape == "linear":
                w_peak, w_end = r, f
            elif decay_shape == "cosine":
                w_peak, w_end = _sin2(r), _sin2(f)
            else:
                sf = jnp.sqrt(f)
                w_peak, w_end = r / (1.0 + sf), sf  # 1 - sqrt(f) without cancellation
            v = jnp.where(n <= 0, peak, jnp.where(n >= D, b, peak * w_peak + b * w_end))
        else:
            v = jnp.where(t >= T, b, peak)
        if W > 0:
            v = jnp.where(t < W, _lerp_steps(a, peak, jnp.minimum(t, W), W), v)
        return _out(v, t)

    return _compiled(schedule)


def warmup(schedule: Schedule, warmup_steps: int, init_value: Any = 0.0,
           prefix: bool = True) -> Schedule:
    """A linear warm-up before or over a schedule (timm's ``warmup_prefix``).

    With ``W = warmup_steps`` and ``init = init_value``, both forms ramp
    linearly towards the schedule's value at step 0:

        lr(t) = init + (schedule(0) - init) * t / W        for t < W,

    and after the ramp

        lr(t) = schedule(t - W)    (``prefix=True``: the warm-up comes first and
                                    delays the schedule by W steps), or
        lr(t) = schedule(t)        (``prefix=False``: the warm-up replaces the
                                    schedule's first W steps; it is not delayed).

    These are timm's ``warmup_prefix=True`` and ``warmup_prefix=False`` with
    ``warmup_t=W`` and ``warmup_lr_init=init``: timm's ramp targets the base
    lr, which is ``schedule(0)`` for its cosine, step, poly and WSD schedulers.
    With ``prefix=False`` the value jumps from the last ramp step to
    ``schedule(W)``, as in timm. (timm's tanh scheduler alone ramps towards
    its value at ``W`` when ``warmup_prefix=False``.)

    Args:
      schedule: any ``step -> value`` function.
      warmup_steps: W, an int >= 0 (0 returns the schedule's values unchanged).
      init_value: value at step 0, >= 0.
      prefix: True puts the warm-up before the schedule (timm
        ``warmup_prefix=True``), False lays it over the schedule's first W
        steps (timm's default, ``warmup_prefix=False``).

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = warmup(cosine_decay(1.0, decay_steps=100), warmup_steps=10)
      >>> [round(float(lr(t)), 6) for t in (0, 5, 10, 60, 200)]
      [0.0, 0.5, 1.0, 0.5, 0.0]
      >>> over = warmup(cosine_decay(1.0, decay_steps=100), warmup_steps=10, prefix=False)
      >>> [round(float(over(t)), 6) for t in (0, 5, 9, 10, 50)]
      [0.0, 0.5, 0.9, 0.975528, 0.5]

    References:
      Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
      2017; timm ``CosineLRScheduler(warmup_t, warmup_lr_init, warmup_prefix)``
      (``timm/scheduler/cosine_lr.py``).
    """
    fn = "warmup"
    check_callable(fn, "schedule", schedule)
    _count(fn, "warmup_steps", warmup_steps, ge=0)
    _check_rate(fn, "init_value", init_value)
    _check_bool(fn, "prefix", prefix)
    W, a, shift = int(warmup_steps), _f(init_value), int(warmup_steps) if prefix else 0

    def warmed(t):
        if W == 0:
            return _out(_call(schedule, t), t)
        after = _call(schedule, jnp.maximum(t - shift, 0))
        first = _call(schedule, jnp.zeros((), jnp.int32))
        return _out(jnp.where(t < W, _lerp_steps(a, first, jnp.minimum(t, W), W), after), t)

    return _compiled(warmed)


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs schedules one after another, each restarted at its boundary
    (torch ``SequentialLR``).

    ``lr(t) = schedules[k](t - m_k)`` with ``k = #{b in boundaries : b <= t}``
    (``bisect_right``), ``m_0 = 0`` and ``m_k = boundaries[k-1]``.

    Args:
      schedules: a non-empty sequence of ``step -> value`` functions.
      boundaries: ``len(schedules) - 1`` non-decreasing integer steps >= 0.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = join([linear(0.0, 1.0, 10), cosine_decay(1.0, 90)], boundaries=[10])
      >>> [round(float(lr(t)), 6) for t in (0, 5, 10, 55, 100)]
      [0.0, 0.5, 1.0, 0.5, 0.0]

    References:
      PyTorch ``torch.optim.lr_scheduler.SequentialLR``.
    """
    fn = "join"
    if isinstance(schedules, (str, bytes)) or not isinstance(schedules, Sequence):
        raise TypeError(f"{fn}(schedules={schedules!r}): schedules must be a sequence of callables")
    if not schedules:
        raise ValueError(f"{fn}(schedules={schedules!r}): schedules must not be empty")
    for i, s in enumerate(schedules):
        check_callable(fn, f"schedules[{i}]", s)
    bs = check_int_sequence(fn, "boundaries", boundaries, ge=0)
    if len(bs) != len(schedules) - 1:
        raise ValueError(
            f"{fn}(boundaries={boundaries!r}): needs len(schedules) - 1 = {len(schedules) - 1} "
            f"boundaries, got {len(bs)}")
    _check_sorted(fn, "boundaries", bs, boundaries)
    parts = tuple(schedules)

    def joined(t):
        v = _call(parts[0], t)
        for b, s in zip(bs, parts[1:]):
            v = jnp.where(t >= b, _call(s, jnp.maximum(t - min(b, _I32_MAX), 0)), v)
        return _out(v, t)

    return _compiled(joined)


def multiply(*schedules: Schedule) -> Schedule:
    """The product of schedules.

    ``lr(t) = schedules[0](t) * schedules[1](t) * ...``, e.g. a base schedule
    times a cyclic modulation.

    Args:
      *schedules: one or more ``step -> value`` functions.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = multiply(constant(2.0), linear(1.0, 0.0, 10))
      >>> [float(lr(t)) for t in (0, 5, 10)]
      [2.0, 1.0, 0.0]

    References:
      No peer: the usual way to modulate one schedule by another.
    """
    fn = "multiply"
    if not schedules:
        raise TypeError(f"{fn}(): needs at least one schedule")
    for i, s in enumerate(schedules):
        check_callable(fn, f"schedules[{i}]", s)

    def product(t):
        v = _call(schedules[0], t)
        for s in schedules[1:]:
            v = jnp.clip(v, -_F32_MAX, _F32_MAX) * _call(s, t)
        return _out(v, t)

    return _compiled(product)


def per_epoch(schedule: Schedule, steps_per_epoch: int) -> Schedule:
    """Holds a per-epoch schedule for every update of the epoch.

    ``lr(t) = schedule(t // steps_per_epoch)`` (integer division, exact under
    ``jit``): a schedule written in epochs (torch's ``scheduler.step()`` once
    per epoch, timm's ``t_in_epochs=True``, a Keras ``LearningRateScheduler``)
    evaluated at every update.

    Args:
      schedule: any ``epoch -> value`` function.
      steps_per_epoch: updates per epoch, an int >= 1.

    Returns:
      ``schedule(step) -> float32 array``.

    Example:
      >>> lr = per_epoch(cosine_decay(1.0, decay_steps=4), steps_per_epoch=10)
      >>> [round(float(lr(t)), 4) for t in (0, 9, 10, 25, 40)]
      [1.0, 1.0, 0.8536, 0.5, 0.0]

    References:
      timm ``Scheduler(t_in_epochs=True)``; torch's per-epoch
      ``scheduler.step()``.
    """
    fn = "per_epoch"
    check_callable(fn, "schedule", schedule)
    _count(fn, "steps_per_epoch", steps_per_epoch, ge=1)
    k = int(steps_per_epoch)

    def held(t):
        return _out(_call(schedule, t // k), t)

    return _compiled(held)
