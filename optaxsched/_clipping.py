"""Gradient-norm-adaptive scaling and clipping.

Every transform reads the incoming updates once: the float32 sum of squares
gives the global norm (and per-tensor norms for ``clip_by_ema_ratio``) and,
for free, whether every gradient is finite. Then it writes them once, scaled.

Shared behaviour:

- Statistics are float32 whatever the gradient dtype; updates keep their dtype
  (half-precision leaves are scaled in float32 and rounded once).
- A non-finite gradient (any NaN or Inf, or a float32 sum of squares that
  overflows, i.e. a norm above ~1.8e19) is skipped: the updates are exact
  zeros, the running statistics and warm-up counters are left untouched, the
  step's ``*_grad_norm`` reads ``+inf`` and ``*_nonfinite_count`` grows. No
  state field can become NaN.
- ``axis_name``: inside ``shard_map``/``pmap`` with leaves sharded over that
  axis, the partial sums of squares are ``psum``-ed (one collective).
- State field names carry a per-transform prefix so that
  ``optax.tree.get(state, "zclip_mean")`` finds one value in any chain.
  Counters are int32 and saturate at 2**31 - 1.

This module holds the transforms with a fixed rule (clip to a norm, divide by
the norm or its running RMS); ``_adaptive_clipping`` those whose threshold
follows the history of norms (ZClip, AutoClip, AdaGC).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxsched import _numerics as nx
from optaxsched._validation import check_number

__all__ = [
    "ClipByGlobalNormState",
    "ScaleByGradNormState",
    "ScaleByGradNormRmsState",
    "clip_by_global_norm",
    "scale_by_grad_norm",
    "scale_by_grad_norm_rms",
]



class ClipByGlobalNormState(NamedTuple):
    """State of ``clip_by_global_norm`` (statistics of the last step and counts)."""

    gclip_grad_norm: jax.Array  # pre-clip global norm (+inf when non-finite)
    gclip_clipped: jax.Array  # bool: the step was rescaled to max_norm
    gclip_nonfinite: jax.Array  # bool: the step was non-finite and zeroed
    gclip_clip_count: jax.Array  # int32: clipped steps so far
    gclip_nonfinite_count: jax.Array  # int32: non-finite steps so far


# The field names of version 0.1, still readable as attributes (not fields).
nx.alias_fields(ClipByGlobalNormState, {
    "grad_norm": "gclip_grad_norm", "clipped": "gclip_clipped", "clip_nonfinite": "gclip_nonfinite",
    "clip_count": "gclip_clip_count", "clip_nonfinite_count": "gclip_nonfinite_count"})


def clip_by_global_norm(max_norm: Any, axis_name: str | None = None
                        ) -> optax.GradientTransformationExtraArgs:
    """Rescales the updates so their global L2 norm is at most ``max_norm``.

    .. math:: u \\leftarrow u \\cdot \\min(1, c / \\lVert u \\rVert_2)

    The norm is accumulated in float32 (bf16/fp16 cannot overflow). Unlike
    ``optax.clip_by_global_norm``, a non-finite gradient gives zero updates
    (never NaN) and sets ``gclip_nonfinite``; the pre-clip norm is kept.

    Args:
      max_norm: the maximum global norm c, > 0 (injectable).
      axis_name: mapped axis to ``psum`` partial norms over, or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``ClipByGlobalNormState(gclip_grad_norm, gclip_clipped, gclip_nonfinite,
      gclip_clip_count, gclip_nonfinite_count)``.

    Example:
      >>> import jax.numpy as jnp, optaxsched as ox
      >>> tx = ox.clip_by_global_norm(1.0)
      >>> g = {"w": jnp.array([3.0, 4.0])}
      >>> u, s = tx.update(g, tx.init(g))
      >>> print(u["w"], s.gclip_grad_norm, s.gclip_clipped)
      [0.6 0.8] 5.0 True

    References:
      Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent
      neural networks", ICML 2013.
    """
    fn = "clip_by_global_norm"
    check_number(fn, "max_norm", max_norm, gt=0)

    def init_fn(params):
        del params
        return ClipByGlobalNormState(nx.scalar(0.0), nx.scalar(False), nx.scalar(False),
                                     nx.scalar(0), nx.scalar(0))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norm, finite = nx.global_norm_and_finite(updates, axis_name)
        scale, clipped = nx.clip_factor(norm, nx.hyper_f32(max_norm))
        clipped = clipped & finite
        return nx.scale_tree_or_zero(updates, scale, finite), ClipByGlobalNormState(
            gclip_grad_norm=norm,
            gclip_clipped=clipped,
            gclip_nonfinite=~finite,
            gclip_clip_count=nx.increment_where(state.gclip_clip_count, clipped),
            gclip_nonfinite_count=nx.increment_where(state.gclip_nonfinite_count, ~finite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByGradNormState(NamedTuple):
    """State of ``scale_by_grad_norm``."""

    normalize_grad_norm: jax.Array  # global norm of the incoming updates
    normalize_scale: jax.Array  # multiplier applied, 1 / (norm**power + eps)
    normalize_nonfinite_count: jax.Array  # int32: zeroed non-finite steps


def scale_by_grad_norm(power: Any = 1.0, eps: Any = 1e-8, axis_name: str | None = None
                       ) -> optax.GradientTransformationExtraArgs:
    """Divides the updates by a power of their global norm (normalized gradient).

    .. math:: u \\leftarrow u / (\\lVert u \\rVert_2^{p} + \\epsilon)

    ``power=1`` gives unit-norm updates (normalized gradient descent); p=0
    leaves the gradient unchanged (up to 1/(1+eps)) and p between 0 and 1
    interpolates. A non-finite gradient gives zero updates; a zero gradient
    stays zero.

    Args:
      power: exponent p, >= 0 (injectable).
      eps: added to the denominator, >= 0 (injectable). With ``eps=0`` a zero
        gradient gives zero updates rather than 0/0.
      axis_name: mapped axis to ``psum`` partial norms over, or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``ScaleByGradNormState(normalize_grad_norm, normalize_scale,
      normalize_nonfinite_count)``.

    Example:
      >>> import jax.numpy as jnp, optaxsched as ox
      >>> tx = ox.scale_by_grad_norm(eps=0.0)
      >>> g = {"w": jnp.array([3.0, 4.0])}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> print(u["w"])
      [0.6 0.8]

    References:
      Hazan, Levy and Shalev-Shwartz, "Beyond convexity: stochastic
      quasi-convex optimization", NeurIPS 2015 (normalized gradient descent).
    """
    fn = "scale_by_grad_norm"
    check_number(fn, "power", power, ge=0)
    check_number(fn, "eps", eps, ge=0)

    def init_fn(params):
        del params
        return ScaleByGradNormState(nx.scalar(0.0), nx.scalar(0.0), nx.scalar(0))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norm, finite = nx.global_norm_and_finite(updates, axis_name)
        magnitude = jnp.power(jnp.where(finite, norm, 0.0), nx.hyper_f32(power))
        scale = nx.safe_inverse(magnitude + nx.hyper_f32(eps))
        return nx.scale_tree_or_zero(updates, scale, finite), ScaleByGradNormState(
            normalize_grad_norm=norm,
            normalize_scale=scale,
            normalize_nonfinite_count=nx.increment_where(state.normalize_nonfinite_count, ~finite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByGradNormRmsState(NamedTuple):
    """State of ``scale_by_grad_norm_rms``."""

    rms_grad_norm: jax.Array  # global norm of the incoming updates
    rms_sq_norm_ema: jax.Array  # raw (not bias-corrected) EMA of the squared norm
    rms_count: jax.Array  # int32: finite steps folded into the EMA
    rms_scale: jax.Array  # multiplier applied, 1 / (sqrt(v_hat) + eps)
    rms_nonfinite_count: jax.Array  # int32: zeroed non-finite steps


def scale_by_grad_norm_rms(decay: Any = 0.99, eps: Any = 1e-8,
                           axis_name: str | None = None
                           ) -> optax.GradientTransformationExtraArgs:
    """Divides the updates by the root of a bias-corrected EMA of ‖g‖².

    .. math::
      v_t = \\beta v_{t-1} + (1 - \\beta) \\lVert g_t \\rVert^2, \\quad
      \\hat v_t = v_t / (1 - \\beta^t), \\quad
      u \\leftarrow u / (\\sqrt{\\hat v_t} + \\epsilon)

    Adam's second moment, for the whole gradient at once: the step size stays
    scale-free but, unlike ``scale_by_grad_norm``, a single large gradient is
    damped by the history. ``eps`` sits outside the root, as in Adam. The first
    step is the normalized gradient. t counts finite steps only: a non-finite
    gradient gives zero updates and leaves v and t untouched.

    Args:
      decay: EMA decay beta, in [0, 1) (injectable).
      eps: added to the root, >= 0 (injectable).
      axis_name: mapped axis to ``psum`` partial norms over, or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``ScaleByGradNormRmsState``.

    Example:
      >>> import jax.numpy as jnp, optaxsched as ox
      >>> tx = ox.scale_by_grad_norm_rms(eps=0.0)
      >>> g = {"w": jnp.array([3.0, 4.0])}
      >>> u, s = tx.update(g, tx.init(g))
      >>> print(u["w"], s.rms_count)
      [0.6 0.8] 1

    References:
      Kingma and Ba, "Adam: a method for stochastic optimization", ICLR 2015
      (bias-corrected second moment, here of the global norm).
    """
    fn = "scale_by_grad_norm_rms"
    check_number(fn, "decay", decay, ge=0, lt=1)
    check_number(fn, "eps", eps, ge=0)

    def init_fn(params):
        del params
        return ScaleByGradNormRmsState(nx.scalar(0.0), nx.scalar(0.0), nx.scalar(0),
                                       nx.scalar(0.0), nx.scalar(0))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        sq = nx.global_sq_norm(updates, axis_name)
        finite = jnp.isfinite(sq)
        v = nx.ema_where(state.rms_sq_norm_ema, sq, decay, finite)
        count = nx.increment_where(state.rms_count, finite)
        scale = nx.safe_inverse(jnp.sqrt(nx.bias_correction(v, decay, count)) + nx.hyper_f32(eps))
        return nx.scale_tree_or_zero(updates, scale, finite), ScaleByGradNormRmsState(
            rms_grad_norm=nx.safe_sqrt(sq),
            rms_sq_norm_ema=v,
            rms_count=count,
            rms_scale=scale,
            rms_nonfinite_count=nx.increment_where(state.rms_nonfinite_count, ~finite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
