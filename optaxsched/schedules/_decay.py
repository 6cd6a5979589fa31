"""Decays and the constant schedule: ``constant``, ``step_decay``,
``multistep_decay``, ``piecewise_constant``, ``exponential_decay``,
``inverse_time_decay``, ``power_decay``, ``inverse_sqrt``, ``linear``,
``polynomial_decay`` and ``cosine_decay``.

Each factory checks its arguments eagerly and returns a compiled
``step -> float32`` schedule built on the exact step arithmetic of
:mod:`optaxsched.schedules._arith`. Public as ``optaxsched.schedules.NAME``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxsched._validation import (
    check_bool,
    check_float_sequence,
    check_int_sequence,
    check_number,
    is_traced,
)
from optaxsched.schedules._arith import (
    F32,
    I32_MAX,
    STATIC_HINT,
    Schedule,
    check_count,
    check_rate,
    check_sorted,
    compiled,
    f32,
    lerp_steps,
    mul,
    output,
    ratio,
    sin2,
)

__all__ = [
    "constant", "step_decay", "multistep_decay", "piecewise_constant", "exponential_decay",
    "inverse_time_decay", "power_decay", "inverse_sqrt", "linear", "polynomial_decay",
    "cosine_decay",
]


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
    check_rate("constant", "value", value)
    v = f32(value)
    return compiled(lambda t: output(v, t))


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
    check_rate(fn, "init_value", init_value)
    check_count(fn, "step_size", step_size, gt=0)
    check_number(fn, "gamma", gamma, ge=0)
    init, g, size = f32(init_value), f32(gamma), int(step_size)

    def schedule(t):
        return output(mul(init, jnp.power(g, (t // size).astype(F32))), t)

    return compiled(schedule)


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
    check_rate(fn, "init_value", init_value)
    ms = sorted(check_int_sequence(fn, "milestones", milestones, ge=0))
    check_number(fn, "gamma", gamma, ge=0)
    init, g = f32(init_value), f32(gamma)
    table = jnp.asarray(np.minimum(ms, I32_MAX), jnp.int32)

    def schedule(t):
        if not ms:
            return output(init, t)
        n = jnp.searchsorted(table, t, side="right").astype(F32)
        return output(mul(init, jnp.power(g, n)), t)

    return compiled(schedule)


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
    check_sorted(fn, "boundaries", bs, boundaries)
    vs = check_float_sequence(fn, "values", values)
    for i, v in enumerate(vs):
        check_rate(fn, f"values[{i}]", v)
    if len(vs) != len(bs) + 1:
        raise ValueError(
            f"{fn}(values={values!r}): needs len(boundaries) + 1 = {len(bs) + 1} values, "
            f"got {len(vs)}")
    table = jnp.asarray(np.minimum(bs, I32_MAX), jnp.int32)
    vals = jnp.asarray(vs, F32)

    def schedule(t):
        if not bs:
            return output(vals[0], t)
        return output(vals[jnp.searchsorted(table, t, side="left")], t)

    return compiled(schedule)


def _decay_exponent(t: jax.Array, steps: int, staircase: bool) -> jax.Array:
    """``t / steps`` (floored with ``staircase``) as exact integer part + fraction."""
    q = (t // steps).astype(F32)
    return q if staircase else q + (t % steps).astype(F32) / steps


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
    check_rate(fn, "init_value", init_value)
    check_number(fn, "decay_rate", decay_rate, gt=0)
    check_count(fn, "decay_steps", decay_steps, gt=0)
    check_bool(fn, "staircase", staircase, hint=STATIC_HINT)
    check_rate(fn, "end_value", end_value, allow_none=True)
    if end_value is not None and not any(map(is_traced, (init_value, decay_rate, end_value))):
        # A floor above the start (or a cap below it) is the whole schedule.
        r, a0, e = float(decay_rate), float(init_value), float(end_value)
        if (r < 1 and e > a0) or (r > 1 and e < a0):
            side = "<=" if r < 1 else ">="
            raise ValueError(
                f"{fn}(end_value={end_value!r}): with decay_rate={decay_rate!r} end_value "
                f"must be {side} init_value={init_value!r}, else every step is end_value")
    init, rate, ds = f32(init_value), f32(decay_rate), int(decay_steps)
    end = None if end_value is None else f32(end_value)

    def schedule(t):
        v = mul(init, jnp.power(rate, _decay_exponent(t, ds, bool(staircase))))
        if end is not None:
            v = jnp.where(
                rate < 1, jnp.maximum(v, end), jnp.where(rate > 1, jnp.minimum(v, end), v)
            )
        return output(v, t)

    return compiled(schedule)


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
    check_rate(fn, "init_value", init_value)
    check_number(fn, "decay_rate", decay_rate, ge=0)
    check_count(fn, "decay_steps", decay_steps, gt=0)
    check_bool(fn, "staircase", staircase, hint=STATIC_HINT)
    init, rate, ds = f32(init_value), f32(decay_rate), int(decay_steps)

    def schedule(t):
        return output(init / (1.0 + rate * _decay_exponent(t, ds, bool(staircase))), t)

    return compiled(schedule)


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
    check_rate(fn, "init_value", init_value)
    check_number(fn, "power", power, ge=0)
    check_number(fn, "timescale", timescale, gt=0)
    init, p, tau = f32(init_value), f32(power), f32(timescale)

    def schedule(t):
        x = jnp.where(t > 0, jnp.minimum(t.astype(F32) / tau, 1e38), 0.0)
        return output(init * jnp.exp(-p * jnp.log1p(x)), t)

    return compiled(schedule)


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
    check_rate(fn, "peak_value", peak_value)
    check_count(fn, "warmup_steps", warmup_steps, gt=0)
    peak, w = f32(peak_value), int(warmup_steps)

    def schedule(t):
        ramp = ratio(t, w)
        decay = jnp.sqrt(jnp.float32(w) / jnp.maximum(t.astype(F32), jnp.float32(w)))
        return output(peak * jnp.where(t >= w, jnp.minimum(decay, 1.0), ramp), t)

    return compiled(schedule)


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
    check_rate(fn, "init_value", init_value)
    check_rate(fn, "end_value", end_value)
    check_count(fn, "transition_steps", transition_steps, gt=0)
    a, b, total = f32(init_value), f32(end_value), int(transition_steps)

    def schedule(t):
        return output(lerp_steps(a, b, jnp.minimum(t, total), total), t)

    return compiled(schedule)


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
    check_rate(fn, "init_value", init_value)
    check_count(fn, "decay_steps", decay_steps, gt=0)
    check_rate(fn, "end_value", end_value)
    check_number(fn, "power", power, ge=0)
    check_bool(fn, "cycle", cycle, hint=STATIC_HINT)
    a, b, p, ds = f32(init_value), f32(end_value), f32(power), int(decay_steps)

    def schedule(t):
        if cycle:
            r_mod = t % ds
            mult = jnp.maximum(t // ds + (r_mod != 0).astype(jnp.int32), 1)
            left = jnp.where(t == 0, ds, (ds - r_mod) % ds)  # D*ceil(t/D) - t, exact
            rem = ratio(left, jnp.float32(ds) * mult.astype(F32))
        else:
            rem = ratio(ds - jnp.minimum(t, ds), ds)
        w = jnp.power(rem, p)
        return output(a * w + b * (1.0 - w), t)

    return compiled(schedule)


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
    check_rate(fn, "init_value", init_value)
    check_count(fn, "decay_steps", decay_steps, gt=0)
    check_rate(fn, "end_value", end_value)
    check_bool(fn, "periodic", periodic, hint=STATIC_HINT)
    a, b, T = f32(init_value), f32(end_value), int(decay_steps)

    def schedule(t):
        if periodic:
            s = t % (2 * T) if 2 * T <= I32_MAX else t
            n = jnp.where(s <= T, s, T - (s - T))  # mirror the rising half
        else:
            n = jnp.minimum(t, T)
        return output(a * sin2(ratio(T - n, T)) + b * sin2(ratio(n, T)), t)

    return compiled(schedule)
