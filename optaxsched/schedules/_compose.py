"""Composition of schedules: ``warmup``, ``join``, ``multiply`` and
``per_epoch``.

They accept any ``step -> value`` function (this package's schedules, Optax's
or a plain Python function), cast its values to float32 of the step's shape
and shift or divide the int32 step exactly (see
:mod:`optaxsched.schedules._arith`). Public as ``optaxsched.schedules.NAME``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from optaxsched._validation import check_bool, check_callable, check_int_sequence
from optaxsched.schedules._arith import (
    F32,
    F32_MAX,
    I32_MAX,
    STATIC_HINT,
    Schedule,
    check_count,
    check_rate,
    check_sorted,
    compiled,
    f32,
    lerp_steps,
    output,
)

__all__ = ["warmup", "join", "multiply", "per_epoch"]


def _call(schedule: Callable, t: jax.Array) -> jax.Array:
    """A user's schedule at ``t`` as float32 of ``t``'s shape."""
    return jnp.broadcast_to(jnp.asarray(schedule(t)).astype(F32), t.shape)


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
    check_count(fn, "warmup_steps", warmup_steps, ge=0)
    check_rate(fn, "init_value", init_value)
    check_bool(fn, "prefix", prefix, hint=STATIC_HINT)
    W, a, shift = int(warmup_steps), f32(init_value), int(warmup_steps) if prefix else 0

    def warmed(t):
        if W == 0:
            return output(_call(schedule, t), t)
        after = _call(schedule, jnp.maximum(t - shift, 0))
        first = _call(schedule, jnp.zeros((), jnp.int32))
        return output(jnp.where(t < W, lerp_steps(a, first, jnp.minimum(t, W), W), after), t)

    return compiled(warmed)


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
    check_sorted(fn, "boundaries", bs, boundaries)
    parts = tuple(schedules)

    def joined(t):
        v = _call(parts[0], t)
        for b, s in zip(bs, parts[1:]):
            v = jnp.where(t >= b, _call(s, jnp.maximum(t - min(b, I32_MAX), 0)), v)
        return output(v, t)

    return compiled(joined)


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
            v = jnp.clip(v, -F32_MAX, F32_MAX) * _call(s, t)
        return output(v, t)

    return compiled(product)


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
    check_count(fn, "steps_per_epoch", steps_per_epoch, ge=1)
    k = int(steps_per_epoch)

    def held(t):
        return output(_call(schedule, t // k), t)

    return compiled(held)
