"""Cyclic and restart schedules: ``cosine_restarts`` (with its restart table),
``cyclic``, ``one_cycle`` and ``wsd``.

Their phases repeat or change shape at positions that may be real-valued
(a fractional ``period_mult``, ``pct_start * total_steps``); those positions
are computed once on the host in float64 and split into int32 floors plus
float32 fractions, so that which phase a step is in is decided by integer
arithmetic (see :mod:`optaxsched.schedules._arith`). Public as
``optaxsched.schedules.NAME``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from optaxsched._validation import (
    check_bool,
    check_choice,
    check_number,
    check_static,
    is_traced,
)
from optaxsched.schedules._arith import (
    F32,
    F32_MAX,
    I32_MAX,
    STATIC_HINT,
    Schedule,
    check_count,
    check_rate,
    compiled,
    f32,
    lerp_steps,
    mul,
    output,
    ratio,
    sin2,
    split,
)

__all__ = ["cosine_restarts", "cyclic", "one_cycle", "wsd"]

_MAX_PERIODS = 1 << 16  # restart-table size limit of cosine_restarts


def _restart_table(fn: str, first: int, mult: float) -> dict[str, jax.Array]:
    """Restart positions S_k = first * (mult**k - 1) / (mult - 1) covering int32.

    S_k are accumulated in float64 (exact for integer ``mult``, and for dyadic
    ones such as 1.5 while they fit) and split into int32 floors plus float32
    fractions, so the period index is an exact integer search.
    """
    starts, s, period = [], 0.0, float(first)
    while s <= I32_MAX:
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
        "frac": jnp.asarray([x - f for x, f in zip(starts, floors)], F32),
        "gap": jnp.asarray([min(g, I32_MAX) for g in gaps], jnp.int32),
        "gap_excess": jnp.asarray([g - min(g, I32_MAX) for g in gaps], F32),
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
    check_rate(fn, "init_value", init_value)
    check_count(fn, "first_period", first_period, gt=0)
    check_static(fn, "period_mult", period_mult, sets="the restart table", hint=STATIC_HINT)
    check_number(fn, "period_mult", period_mult, ge=1)
    check_rate(fn, "end_value", end_value)
    check_number(fn, "amplitude_mult", amplitude_mult, ge=0)
    if (not any(map(is_traced, (init_value, end_value, amplitude_mult)))
            and float(end_value) > float(init_value) and float(amplitude_mult) > 1):
        raise ValueError(
            f"{fn}(amplitude_mult={amplitude_mult!r}): amplitude_mult must be <= 1 when "
            f"end_value={end_value!r} > init_value={init_value!r}: the restart value "
            f"end + amplitude_mult**i * (init - end) turns negative")
    a, b, amp, P = f32(init_value), f32(end_value), f32(amplitude_mult), int(first_period)
    table = None if float(period_mult) == 1.0 else _restart_table(fn, P, float(period_mult))

    def schedule(t):
        if table is None:
            i, d = t // P, t % P
            done, left = d.astype(F32), (P - d).astype(F32)
        else:
            i = jnp.searchsorted(table["ceil"], t, side="right") - 1
            d = t - table["floor"][i]  # >= 1 whenever the start is fractional
            done = d.astype(F32) - table["frac"][i]
            left = ((table["gap"][i] - d).astype(F32) + table["gap_excess"][i]
                    + table["frac"][i + 1])
        length = done + left
        peak = jnp.clip(b + mul(a - b, jnp.power(amp, i.astype(F32))), -F32_MAX, F32_MAX)
        return output(peak * sin2(ratio(left, length)) + b * sin2(ratio(done, length)), t)

    return compiled(schedule)


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
    check_rate(fn, "base_value", base_value)
    check_rate(fn, "max_value", max_value)
    check_count(fn, "step_size_up", step_size_up, gt=0)
    check_count(fn, "step_size_down", step_size_down, gt=0, allow_none=True)
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
    lo, hi, g = f32(base_value), f32(max_value), f32(gamma)

    def schedule(t):
        u, n = (t % total, t // total) if total <= I32_MAX else (t, jnp.zeros_like(t))
        s = jnp.where(u <= up, ratio(u, up), ratio(total - u, down))
        if mode == "triangular2":
            s = s * jnp.power(jnp.float32(0.5), n.astype(F32))
        elif mode == "exp_range":
            s = mul(s, jnp.power(g, t.astype(F32)))
        return output(lo + mul(hi - lo, s), t)

    return compiled(schedule)


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
    check_rate(fn, "max_value", max_value)
    check_count(fn, "total_steps", total_steps, ge=2)
    check_static(fn, "pct_start", pct_start, sets="the phase boundaries", hint=STATIC_HINT)
    check_number(fn, "pct_start", pct_start, gt=0, lt=1)
    check_choice(fn, "anneal", anneal, ("cos", "linear"))
    check_number(fn, "div_factor", div_factor, gt=0)
    check_number(fn, "final_div_factor", final_div_factor, gt=0)
    check_bool(fn, "three_phase", three_phase, hint=STATIC_HINT)
    T, pct = int(total_steps), float(pct_start)
    top = f32(max_value)
    init = top / f32(div_factor)
    low = init / f32(final_div_factor)
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
    s_split, e_split = [split(s) for s in starts], [split(e) for e in ends]
    s_floor = jnp.asarray([x for x, _ in s_split], jnp.int32)
    s_frac = jnp.asarray([x for _, x in s_split], F32)
    e_floor = jnp.asarray([x for x, _ in e_split], jnp.int32)
    e_frac = jnp.asarray([x for _, x in e_split], F32)
    v_start, v_end = jnp.stack(vals[:-1]), jnp.stack(vals[1:])

    def schedule(t):
        k = sum((t > x).astype(jnp.int32) for x, _ in e_split[:-1]) + jnp.zeros_like(t)
        done = (t - s_floor[k]).astype(F32) - s_frac[k]
        left = jnp.maximum((e_floor[k] - t).astype(F32) + e_frac[k], 0.0)  # held past T-1
        length = done + left
        w_start, w_end = ratio(left, length), ratio(done, length)
        if anneal == "cos":
            w_start, w_end = sin2(w_start), sin2(w_end)
        return output(v_start[k] * w_start + v_end[k] * w_end, t)

    return compiled(schedule)


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
    check_rate(fn, "peak_value", peak_value)
    check_count(fn, "total_steps", total_steps, gt=0)
    check_count(fn, "warmup_steps", warmup_steps, ge=0)
    check_count(fn, "decay_steps", decay_steps, ge=0, allow_none=True)
    check_rate(fn, "init_value", init_value)
    check_rate(fn, "end_value", end_value)
    check_choice(fn, "decay_shape", decay_shape, ("linear", "cosine", "1-sqrt"))
    T, W = int(total_steps), int(warmup_steps)
    D = (T + 5) // 10 if decay_steps is None else int(decay_steps)
    _check_wsd_phases(fn, T, W, D, decay_steps)
    peak, a, b = f32(peak_value), f32(init_value), f32(end_value)

    def schedule(t):
        if D > 0:
            n = jnp.clip(t - (T - D), 0, D)
            f, r = ratio(n, D), ratio(D - n, D)
            if decay_shape == "linear":
                w_peak, w_end = r, f
            elif decay_shape == "cosine":
                w_peak, w_end = sin2(r), sin2(f)
            else:
                sf = jnp.sqrt(f)
                w_peak, w_end = r / (1.0 + sf), sf  # 1 - sqrt(f) without cancellation
            v = jnp.where(n <= 0, peak, jnp.where(n >= D, b, peak * w_peak + b * w_end))
        else:
            v = jnp.where(t >= T, b, peak)
        if W > 0:
            v = jnp.where(t < W, lerp_steps(a, peak, jnp.minimum(t, W), W), v)
        return output(v, t)

    return compiled(schedule)
