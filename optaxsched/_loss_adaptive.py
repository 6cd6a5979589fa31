"""Loss-adaptive scaling: transforms that read the loss through ``value=``.

``reduce_on_plateau`` reproduces PyTorch's ``ReduceLROnPlateau`` as a
multiplier on the updates, ``bold_driver`` grows or shrinks a multiplier from
one loss to the next, and ``scale_by_loss`` multiplies by any traced function
of the loss. All three take the loss as ``update(..., value=loss)``; the
keyword travels through ``optax.chain``, ``optax.partition`` and
``optax.inject_hyperparams`` unchanged.

Alignment (shared by the stateful two): the update computed together with
loss ``v_t`` is multiplied by the scale *after* ``v_t`` was taken into
account. In PyTorch terms, update ``t`` uses the lr that
``scheduler.step(v_t)`` leaves behind.

A loss that is NaN or infinite is never an improvement: it counts as a bad
step for ``reduce_on_plateau`` and as a rise for ``bold_driver``, and it is
never stored, so no NaN reaches the optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxsched import _numerics as nx
from optaxsched._plateau import check_rule, initial_best, plateau_decision
from optaxsched._validation import (
    check_callable,
    check_int,
    check_number,
    is_traced,
    require_value,
    scalar_f32,
)

__all__ = [
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "ScaleByLossState",
    "scale_by_loss",
    "BoldDriverState",
    "bold_driver",
]

_F32 = jnp.float32
_I32 = jnp.int32


def _loss_value(fn: str, extra_args: dict[str, Any]) -> jax.Array:
    """The scalar loss from ``extra_args`` as float32, with clear errors."""
    return scalar_f32(fn, require_value(fn, extra_args))


# --------------------------------------------------------------------------
# reduce_on_plateau


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau`.

    Attributes:
      plateau_scale: the multiplier applied to the updates (float32, starts at 1).
      plateau_best: best window value so far (float32; ±inf before the first
        finite one).
      plateau_bad_steps: consecutive non-improving windows (torch's
        ``num_bad_epochs``), int32.
      plateau_cooldown: windows left in the cooldown, int32.
      plateau_reductions: number of reductions applied so far (saturating int32).
      plateau_window_sum: sum of the finite values of the current window.
      plateau_window_count: values seen in the current window, int32.
      plateau_window_nonfinite: NaN/Inf values seen in the current window, int32.
    """

    plateau_scale: jax.Array
    plateau_best: jax.Array
    plateau_bad_steps: jax.Array
    plateau_cooldown: jax.Array
    plateau_reductions: jax.Array
    plateau_window_sum: jax.Array
    plateau_window_count: jax.Array
    plateau_window_nonfinite: jax.Array


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    mode: str = "min",
    cooldown: int = 0,
    min_scale: float = 0.0,
    eps: float = 1e-8,
    accumulation_steps: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Multiplies updates by a scale that drops when the loss stops improving.

    PyTorch's ``ReduceLROnPlateau`` as an Optax transform. Values are averaged
    over windows of ``accumulation_steps`` updates; at the end of each window,
    with its mean ``a`` (one torch "epoch"):

    1. ``better`` is a strict comparison against the best mean so far:

       - ``min``/``rel``: :math:`a < b - |b|\,\theta`; ``min``/``abs``: :math:`a < b - \theta`;
       - ``max``/``rel``: :math:`a > b + |b|\,\theta`; ``max``/``abs``: :math:`a > b + \theta`.

       Ties and non-finite means are bad. If better, ``best = a`` and
       ``bad = 0``; otherwise ``bad += 1``.
    2. In cooldown (``cd > 0``): ``cd -= 1`` and ``bad = 0``.
    3. If ``bad > patience``: ``new = max(scale·factor, min_scale)``, applied
       only if ``scale − new > eps``; then ``cd = cooldown`` and ``bad = 0``
       even when the reduction was skipped.

    With ``accumulation_steps=1`` the scale applied to the update made with
    ``value=v_t`` equals torch's lr after ``scheduler.step(v_t)`` divided by
    the base lr (``min_lr = min_scale·base_lr``; ``eps`` is in scale units).
    With ``accumulation_steps=k`` the updates inside a window use the current
    scale and the last update of a window uses the scale decided from it.
    The first reduction comes after ``patience + 1`` non-improving windows;
    with a flat loss, reductions repeat every ``patience + 1 + cooldown``.

    Kept next to ``optax.contrib.reduce_on_plateau``, which has no ``mode``,
    no torch ``threshold_mode`` and no ``eps``, so it cannot follow a torch
    recipe update for update.

    Deliberate differences from torch: in ``rel`` mode the threshold is
    sign-aware (torch's :math:`b(1-\theta)` lets a slightly *worse* negative
    loss count as an improvement; here a negative loss must also improve by
    :math:`|b|\theta`); identical for positive values. A NaN or ±inf value
    never becomes the best (torch would accept ``-inf`` in ``min`` mode);
    it counts as a bad window. All arithmetic is float32.

    Args:
      factor: multiplier applied at each reduction, in [0, 1).
      patience: non-improving windows tolerated before a reduction, int >= 0.
      threshold: minimum improvement, >= 0 (relative or absolute).
      threshold_mode: ``"rel"`` or ``"abs"``.
      mode: ``"min"`` (the value should fall, e.g. a loss) or ``"max"``.
      cooldown: windows after a reduction during which bad windows are not
        counted, int >= 0.
      min_scale: lower bound on the scale, in [0, 1].
      eps: reductions smaller than this (in scale units) are skipped, >= 0.
      accumulation_steps: number of values averaged into one decision,
        int >= 1. Use the number of steps per epoch to reproduce a per-epoch
        torch scheduler fed with the epoch's mean training loss. To step on
        a validation metric once per epoch, use :class:`MetricPlateau`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
      ``value=`` (a scalar loss) and whose state is a
      :class:`ReduceOnPlateauState`.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> tx = optax.chain(optax.sgd(0.1), ox.reduce_on_plateau(factor=0.5, patience=1))
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> for loss in [1.0, 1.0, 1.0]:  # the third flat value triggers a reduction
      ...     updates, state = tx.update({"w": jnp.ones(3)}, state, params, value=loss)
      >>> print(updates["w"])
      [-0.05 -0.05 -0.05]

    References:
      PyTorch ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (torch 2.13).
    """
    fn = "reduce_on_plateau"
    rule = check_rule(fn, factor, patience, threshold, threshold_mode, mode, cooldown,
                      min_scale, eps)
    check_int(fn, "accumulation_steps", accumulation_steps, ge=1)

    def init_fn(params):
        del params
        return ReduceOnPlateauState(
            plateau_scale=nx.scalar(1.0),
            plateau_best=initial_best(rule),
            plateau_bad_steps=nx.scalar(0),
            plateau_cooldown=nx.scalar(0),
            plateau_reductions=nx.scalar(0),
            plateau_window_sum=nx.scalar(0.0),
            plateau_window_count=nx.scalar(0),
            plateau_window_nonfinite=nx.scalar(0),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        value = _loss_value(fn, extra_args)
        finite = jnp.isfinite(value)
        wsum = state.plateau_window_sum + jnp.where(finite, value, 0.0)
        wcount = state.plateau_window_count + 1
        wbad = state.plateau_window_nonfinite + (~finite).astype(_I32)
        window_done = wcount >= nx.hyper_i32(accumulation_steps)
        mean = wsum / wcount.astype(_F32)
        # A sum of finite values can still overflow to inf: check the mean too.
        mean_ok = (wbad == 0) & jnp.isfinite(mean)
        kept = (
            state.plateau_scale, state.plateau_best, state.plateau_bad_steps,
            state.plateau_cooldown, state.plateau_reductions,
        )
        decided = plateau_decision(rule, *kept, mean, mean_ok)
        scale, best, bad, cd, reductions = (
            jnp.where(window_done, new, old) for new, old in zip(decided, kept)
        )
        new_state = ReduceOnPlateauState(
            plateau_scale=scale,
            plateau_best=best,
            plateau_bad_steps=bad,
            plateau_cooldown=cd,
            plateau_reductions=reductions,
            plateau_window_sum=jnp.where(window_done, 0.0, wsum),
            plateau_window_count=jnp.where(window_done, 0, wcount).astype(_I32),
            plateau_window_nonfinite=jnp.where(window_done, 0, wbad).astype(_I32),
        )
        return nx.scale_tree(updates, scale), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------
# scale_by_loss


class ScaleByLossState(NamedTuple):
    """State of :func:`scale_by_loss`.

    Attributes:
      loss_multiplier: the multiplier applied at the last update (float32;
        0 when it was rejected).
      loss_multiplier_rejected: updates whose multiplier was NaN, infinite or
        negative and that were zeroed instead (saturating int32).
    """

    loss_multiplier: jax.Array
    loss_multiplier_rejected: jax.Array


def scale_by_loss(fn: Callable[[jax.Array], Any]) -> optax.GradientTransformationExtraArgs:
    r"""Multiplies updates by ``fn(value)``, a traced function of the loss.

    .. math::  u_t \leftarrow m_t\,u_t, \qquad m_t = f(v_t)

    ``fn`` receives the loss as a float32 scalar and is traced into the
    compiled step, so it must be written with ``jax.numpy`` (no Python
    branching on the loss) and return a scalar. A multiplier that is NaN,
    infinite or negative cannot be rejected at run time by an exception, so
    the update is replaced by exact zeros (parameters stay where they are,
    even if the gradients held NaN) and ``loss_multiplier_rejected`` counts
    it. ``m = 0`` is a valid multiplier. A NaN loss usually gives a NaN
    multiplier and therefore a skipped step.

    Args:
      fn: callable mapping the scalar loss to a scalar multiplier.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
      ``value=`` and whose state is a :class:`ScaleByLossState`.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> # Polyak-like: larger steps while the loss is far above 0.5.
      >>> tx = optax.chain(optax.sgd(1.0), ox.scale_by_loss(lambda v: jnp.maximum(v - 0.5, 0.0)))
      >>> params = jnp.ones(2)
      >>> updates, _ = tx.update(jnp.ones(2), tx.init(params), params, value=2.0)
      >>> print(updates)
      [-1.5 -1.5]

    References:
      Polyak, "Introduction to optimization", 1987 (loss-driven step sizes);
      Loizou et al., "Stochastic Polyak step-size for SGD", AISTATS 2021.
    """
    # Messages name the function through `fn` everywhere else; here `fn` is
    # the public argument, so the name is `name`.
    name = "scale_by_loss"
    check_callable(name, "fn", fn)

    def init_fn(params):
        del params
        return ScaleByLossState(
            loss_multiplier=nx.scalar(1.0),
            loss_multiplier_rejected=nx.scalar(0),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        value = _loss_value(name, extra_args)
        m = jnp.asarray(fn(value))
        if m.shape != ():
            raise ValueError(
                f"{name}(fn={fn!r}): fn must return a scalar, got shape {m.shape}"
            )
        m = m.astype(_F32)
        ok = jnp.isfinite(m) & (m >= 0.0)
        m = jnp.where(ok, m, 0.0)
        new_state = ScaleByLossState(
            loss_multiplier=m,
            loss_multiplier_rejected=nx.increment_where(state.loss_multiplier_rejected, ~ok),
        )
        return nx.scale_tree_or_zero(updates, m, ok), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------
# bold_driver


class BoldDriverState(NamedTuple):
    """State of :func:`bold_driver`.

    Attributes:
      bold_scale: the multiplier applied to the updates (float32).
      bold_prev_loss: last finite loss seen (float32; +inf before the first).
      bold_rises: updates at which the loss rose (or was non-finite), saturating
        int32.
    """

    bold_scale: jax.Array
    bold_prev_loss: jax.Array
    bold_rises: jax.Array


def bold_driver(
    increase: float = 1.05,
    decrease: float = 0.5,
    tolerance: float = 1.0,
    min_scale: float = 1e-3,
    max_scale: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Grows the update scale while the loss falls, cuts it when the loss rises.

    With :math:`p` the last finite loss, the loss ``v_t`` is *fine* when it is
    finite and

    .. math::  v_t \le p + (\tau - 1)\,|p|

    (``tolerance`` :math:`\tau`; for a positive previous loss this is
    :math:`v_t \le \tau p`, and it stays meaningful for negative losses). Then

    .. math::  s_t = \mathrm{clip}(s_{t-1}\cdot(\text{increase if fine else decrease}),
               \text{min\_scale}, \text{max\_scale})

    and the update made with ``value=v_t`` is multiplied by :math:`s_t`. The
    scale starts at ``max_scale`` (the base learning rate is the ceiling; the
    first loss has nothing to compare with and counts as fine). A NaN or
    infinite loss counts as a rise and is not remembered, so the next loss is
    compared with the last finite one. Unlike the classic bold driver this
    does not undo the step that raised the loss; wrap the optimizer in
    ``explosion_guard`` to skip bad steps. It reacts to every value, so feed
    it full-batch or smoothed losses rather than noisy mini-batch ones.

    Args:
      increase: growth factor while the loss does not rise, >= 1.
      decrease: shrink factor when it rises, in (0, 1].
      tolerance: allowed relative rise, > 0 (1.0: any rise counts; 1.04: the
        MATLAB ``traingda`` ``max_perf_inc``).
      min_scale: lower bound of the scale, > 0.
      max_scale: upper bound and initial value of the scale, >= min_scale.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires
      ``value=`` and whose state is a :class:`BoldDriverState`.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> tx = optax.chain(optax.sgd(1.0), ox.bold_driver(decrease=0.5))
      >>> params = jnp.zeros(1)
      >>> state = tx.init(params)
      >>> for loss in [1.0, 2.0]:  # the loss rises: the scale halves
      ...     updates, state = tx.update(jnp.ones(1), state, params, value=loss)
      >>> print(updates)
      [-0.5]

    References:
      Battiti, "Accelerated backpropagation learning: two optimization
      methods", Complex Systems, 1989; Vogl et al., "Accelerating the
      convergence of the back-propagation method", Biol. Cybern., 1988.
    """
    fn = "bold_driver"
    check_number(fn, "increase", increase, ge=1.0)
    check_number(fn, "decrease", decrease, gt=0.0, le=1.0)
    check_number(fn, "tolerance", tolerance, gt=0.0)
    check_number(fn, "min_scale", min_scale, gt=0.0)
    check_number(fn, "max_scale", max_scale, gt=0.0)
    if not (is_traced(min_scale) or is_traced(max_scale)):
        if float(max_scale) < float(min_scale):
            raise ValueError(
                f"{fn}(min_scale={min_scale!r}, max_scale={max_scale!r}): "
                "max_scale must be >= min_scale"
            )

    def init_fn(params):
        del params
        return BoldDriverState(
            bold_scale=nx.scalar(max_scale, _F32),
            bold_prev_loss=nx.scalar(float("inf")),
            bold_rises=nx.scalar(0),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        value = _loss_value(fn, extra_args)
        prev = state.bold_prev_loss
        finite = jnp.isfinite(value)
        prev_finite = jnp.isfinite(prev)
        limit = jnp.where(
            prev_finite, prev + (nx.hyper_f32(tolerance) - 1.0) * jnp.abs(prev), jnp.inf
        )
        fine = finite & (value <= limit)
        factor = jnp.where(fine, nx.hyper_f32(increase), nx.hyper_f32(decrease))
        scale = jnp.clip(state.bold_scale * factor, nx.hyper_f32(min_scale),
                         nx.hyper_f32(max_scale))
        new_state = BoldDriverState(
            bold_scale=scale,
            bold_prev_loss=jnp.where(finite, value, prev),
            bold_rises=nx.increment_where(state.bold_rises, ~fine),
        )
        return nx.scale_tree(updates, scale), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
