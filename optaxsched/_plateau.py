"""The plateau rule of PyTorch's ``ReduceLROnPlateau``, and ``MetricPlateau``.

``plateau_decision`` is the rule itself: one decision on one value, shared by
:func:`optaxsched.reduce_on_plateau` (which decides on the loss passed to
every update) and :class:`MetricPlateau` (which decides when the training
loop hands it a metric, typically once per epoch on a validation score).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxsched import _nnx
from optaxsched import _numerics as nx
from optaxsched._validation import check_choice, check_int, check_number, scalar_f32

__all__ = ["PlateauRule", "check_rule", "initial_best", "plateau_decision",
           "MetricPlateauState", "MetricPlateau"]

_F32 = jnp.float32
_I32 = jnp.int32


class PlateauRule(NamedTuple):
    """The checked hyperparameters of a plateau rule (Python values or, under
    ``optax.inject_hyperparams``, traced scalars)."""

    factor: Any
    patience: Any
    threshold: Any
    threshold_mode: str
    mode: str
    cooldown: Any
    min_scale: Any
    eps: Any


def check_rule(fn: str, factor: Any, patience: Any, threshold: Any, threshold_mode: Any,
               mode: Any, cooldown: Any, min_scale: Any, eps: Any) -> PlateauRule:
    """Checks the arguments shared by every plateau rule, naming ``fn``."""
    check_number(fn, "factor", factor, ge=0.0, lt=1.0)
    check_int(fn, "patience", patience, ge=0)
    check_number(fn, "threshold", threshold, ge=0.0)
    check_choice(fn, "threshold_mode", threshold_mode, ("rel", "abs"))
    check_choice(fn, "mode", mode, ("min", "max"))
    check_int(fn, "cooldown", cooldown, ge=0)
    check_number(fn, "min_scale", min_scale, ge=0.0, le=1.0)
    check_number(fn, "eps", eps, ge=0.0)
    return PlateauRule(factor, patience, threshold, threshold_mode, mode, cooldown,
                       min_scale, eps)


def initial_best(rule: PlateauRule) -> jax.Array:
    """``+inf`` for ``mode="min"``, ``-inf`` for ``"max"``: anything finite improves it."""
    return nx.scalar(float("inf") if rule.mode == "min" else float("-inf"))


def _is_better(rule: PlateauRule, a: jax.Array, best: jax.Array) -> jax.Array:
    thr = nx.hyper_f32(rule.threshold)
    if rule.threshold_mode == "rel":
        # |best|·θ is inf − inf = NaN for the initial ±inf best; no margin then.
        margin = jnp.where(jnp.isfinite(best), jnp.abs(best) * thr, 0.0)
    else:
        margin = thr
    if rule.mode == "min":
        return a < best - margin
    return a > best + margin


def plateau_decision(rule: PlateauRule, scale: jax.Array, best: jax.Array, bad: jax.Array,
                     cooldown: jax.Array, reductions: jax.Array, a: jax.Array,
                     a_ok: jax.Array) -> tuple[jax.Array, ...]:
    """One ``ReduceLROnPlateau.step(a)``; returns ``(scale, best, bad, cooldown,
    reductions)``. ``a_ok`` false (a non-finite value) counts as not better."""
    better = a_ok & _is_better(rule, a, best)
    best = jnp.where(better, a, best)
    bad = nx.increment_or_reset(bad, ~better)
    in_cooldown = cooldown > 0
    cd = jnp.where(in_cooldown, cooldown - 1, cooldown)
    bad = jnp.where(in_cooldown, 0, bad)
    trigger = bad > nx.hyper_i32(rule.patience)
    candidate = jnp.maximum(scale * nx.hyper_f32(rule.factor), nx.hyper_f32(rule.min_scale))
    apply = trigger & (scale - candidate > nx.hyper_f32(rule.eps))
    return (
        jnp.where(apply, candidate, scale),
        best,
        jnp.where(trigger, 0, bad).astype(_I32),
        jnp.where(trigger, nx.hyper_i32(rule.cooldown), cd).astype(_I32),
        nx.increment_where(reductions, apply),
    )


class MetricPlateauState(NamedTuple):
    """State of :class:`MetricPlateau`.

    Attributes:
      metric_plateau_scale: the multiplier applied to the updates (float32,
        starts at 1).
      metric_plateau_best: best metric so far (float32; ±inf before the first
        finite one).
      metric_plateau_bad_epochs: consecutive non-improving metrics (torch's
        ``num_bad_epochs``), int32.
      metric_plateau_cooldown: metrics left in the cooldown, int32.
      metric_plateau_reductions: reductions applied so far (saturating int32).
      metric_plateau_steps: metrics seen so far (saturating int32).
    """

    metric_plateau_scale: jax.Array
    metric_plateau_best: jax.Array
    metric_plateau_bad_epochs: jax.Array
    metric_plateau_cooldown: jax.Array
    metric_plateau_reductions: jax.Array
    metric_plateau_steps: jax.Array


def _metric(value: Any) -> jax.Array:
    """The metric as a float32 scalar, or a TypeError/ValueError naming it."""
    return scalar_f32("MetricPlateau.step", value, name="metric", what="the epoch's metric",
                      example="val_accuracy")


class MetricPlateau:
    r"""PyTorch's ``ReduceLROnPlateau`` stepped on a metric, e.g. once per epoch.

    The transform multiplies updates by a scale; the scale changes only when
    the training loop calls :meth:`step` with a metric (a validation loss,
    ``mode="min"``, or an accuracy, ``mode="max"``), exactly as torch's
    ``scheduler.step(metric)``: the updates made after the ``k``-th call use
    torch's lr after its ``k``-th ``step`` divided by the base lr. The rule
    (per call, with the metric ``a``; identical to
    :func:`optaxsched.reduce_on_plateau`):

    1. ``better``: :math:`a < b - |b|\,\theta` (``min``/``rel``),
       :math:`a < b - \theta` (``min``/``abs``), and mirrored for ``max``.
       If better, ``best = a`` and ``bad = 0``; otherwise ``bad += 1``.
       A NaN or infinite metric is never better.
    2. In cooldown (``cd > 0``): ``cd -= 1`` and ``bad = 0``.
    3. If ``bad > patience``: ``new = max(scale·factor, min_scale)``, applied
       only if ``scale − new > eps``; then ``cd = cooldown`` and ``bad = 0``.

    Use :func:`optaxsched.reduce_on_plateau` instead to decide on the training
    loss passed to every update (``value=``). The one deliberate difference
    from torch is shared with it: ``rel`` mode is sign-aware, so negative
    metrics behave.

    ``MetricPlateau`` is a ``GradientTransformation``-like object (``init``
    and ``update``, like ``optax.MultiSteps``) that goes anywhere an optax
    transform does (``optax.chain``, ``optax.partition``, Flax
    ``TrainState``, ``nnx.Optimizer``), plus :meth:`step`, which finds its
    state inside any optimizer state and advances it. ``step`` is a pure
    function of arrays: call it eagerly between epochs, inside a jitted
    epoch-end function, or inside the jitted train step with ``when=`` set on
    the last step of each epoch. The updates' dtype is kept.

    Args:
      factor: multiplier applied at each reduction, in [0, 1).
      patience: non-improving metrics tolerated before a reduction, int >= 0.
      threshold: minimum improvement, >= 0 (relative or absolute).
      threshold_mode: ``"rel"`` or ``"abs"``.
      mode: ``"min"`` (the metric should fall) or ``"max"`` (it should rise).
      cooldown: metrics after a reduction during which bad ones are not
        counted, int >= 0.
      min_scale: lower bound on the scale, in [0, 1] (torch's ``min_lr``
        divided by the base lr).
      eps: reductions smaller than this (in scale units) are skipped, >= 0.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> plateau = ox.MetricPlateau(mode="max", factor=0.5, patience=1)
      >>> tx = optax.chain(optax.sgd(0.1), plateau)
      >>> params = {"w": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> for accuracy in [0.5, 0.6, 0.6, 0.6]:  # once per epoch, after evaluating
      ...     state = plateau.step(state, accuracy)
      >>> float(plateau.scale(state))  # two epochs without improvement: halved
      0.5
      >>> updates, state = tx.update({"w": jnp.ones(2)}, state, params)
      >>> updates["w"].tolist()
      [-0.05000000074505806, -0.05000000074505806]

    References:
      PyTorch ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (torch 2.14);
      Keras ``ReduceLROnPlateau`` callback.
    """

    def __init__(self, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 threshold_mode: str = "rel", mode: str = "min", cooldown: int = 0,
                 min_scale: float = 0.0, eps: float = 1e-8):
        self.rule = check_rule("MetricPlateau", factor, patience, threshold, threshold_mode,
                               mode, cooldown, min_scale, eps)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.rule._asdict().items())
        return f"MetricPlateau({args})"

    def init(self, params: Any) -> MetricPlateauState:
        """The state before any metric: scale 1, no best yet."""
        del params
        return MetricPlateauState(
            metric_plateau_scale=nx.scalar(1.0),
            metric_plateau_best=initial_best(self.rule),
            metric_plateau_bad_epochs=nx.scalar(0),
            metric_plateau_cooldown=nx.scalar(0),
            metric_plateau_reductions=nx.scalar(0),
            metric_plateau_steps=nx.scalar(0),
        )

    def update(self, updates: Any, state: MetricPlateauState, params: Any = None,
               **extra_args: Any) -> tuple[Any, MetricPlateauState]:
        """Multiplies the updates by the current scale; the state is unchanged
        (only :meth:`step` changes it). Extra arguments are ignored."""
        del params, extra_args
        return nx.scale_tree(updates, state.metric_plateau_scale), state

    def _advance(self, state: MetricPlateauState, metric: jax.Array,
                 when: jax.Array) -> MetricPlateauState:
        old = [_nnx.unbox(x) for x in state]
        scale, best, bad, cd, reductions, steps = old
        decided = plateau_decision(self.rule, scale, best, bad, cd, reductions, metric,
                                   jnp.isfinite(metric))
        decided = (*decided, optax.safe_increment(steps))
        # jnp.where makes a new array for every field, so no two states (the
        # old one a caller may donate, the new one) share a buffer.
        new = [jnp.where(when, n, o).astype(jnp.asarray(o).dtype)
               for n, o in zip(decided, old)]
        if any(map(_nnx.is_variable, state)):
            for var, value in zip(state, new):
                _nnx.set_value(var, value)  # nnx Variables are updated in place
            return state
        return MetricPlateauState(*new)

    def step(self, opt_state: Any, metric: Any, *, when: Any = True) -> Any:
        """Takes one metric (torch's ``scheduler.step(metric)``) into every
        :class:`MetricPlateauState` inside ``opt_state``.

        Args:
          opt_state: any optimizer state holding this transform's state (a
            chain, a partition, an ``explosion_guard`` state, a Flax
            ``TrainState``'s ``opt_state``, an ``nnx.Optimizer``'s
            ``opt_state``, whose Variables are updated in place).
          metric: a real scalar (Python number or array, may be traced).
          when: a bool scalar (may be traced); False leaves the state as it
            is, so the call can sit inside a jitted train step and act only on
            the last step of each epoch.

        Returns:
          The new optimizer state, with the same structure.

        Raises:
          ValueError: ``opt_state`` holds no ``MetricPlateauState``.
        """
        m = _metric(metric)
        ok = jnp.asarray(when)
        if ok.shape != () or ok.dtype != jnp.bool_:
            raise TypeError(f"MetricPlateau.step(when={when!r}): when must be a bool scalar")
        found = []

        def visit(node):
            if isinstance(node, MetricPlateauState):
                found.append(True)
                return self._advance(node, m, ok)
            return node

        out = jax.tree_util.tree_map(visit, opt_state,
                                     is_leaf=lambda x: isinstance(x, MetricPlateauState))
        if not found:
            raise ValueError(
                "MetricPlateau.step: opt_state holds no MetricPlateauState; chain the "
                "MetricPlateau into the optimizer (optax.chain(..., plateau)) and pass "
                "that optimizer's state"
            )
        return out

    def scale(self, opt_state: Any) -> jax.Array:
        """The current multiplier (a copy) of the first ``MetricPlateauState``
        in ``opt_state``."""
        nodes = jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, MetricPlateauState))
        for node in nodes:
            if isinstance(node, MetricPlateauState):
                return jnp.array(_nnx.unbox(node.metric_plateau_scale), copy=True)
        raise ValueError("MetricPlateau.scale: opt_state holds no MetricPlateauState")
