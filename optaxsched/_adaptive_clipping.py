"""Clipping whose threshold follows the history of gradient norms.

ZClip (``clip_by_zscore``: a z-score against EMAs of the norm's mean and
variance), AutoClip (``clip_by_percentile``: a percentile of a ring buffer of
norms) and AdaGC (``clip_by_ema_ratio``: a multiple of each tensor's EMA of
clipped norms). They share the behaviour described in ``_clipping``: one read
of the gradients, float32 statistics, non-finite steps zeroed and never fed to
the statistics, prefixed state fields, saturating counters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optaxsched import _numerics as nx
from optaxsched._validation import check_bool, check_int, check_number, check_static

__all__ = [
    "ClipByZscoreState",
    "ClipByPercentileState",
    "ClipByEmaRatioState",
    "clip_by_zscore",
    "clip_by_percentile",
    "clip_by_ema_ratio",
]

_F32 = jnp.float32
_INF = float("inf")
# ZClip's constant in the z-score denominator, z = (g - mu) / (sigma + 1e-6).
_ZCLIP_EPS = 1e-6


class ClipByZscoreState(NamedTuple):
    """State of ``clip_by_zscore`` (ZClip)."""

    zclip_grad_norm: jax.Array  # pre-clip global norm (+inf when non-finite)
    zclip_zscore: jax.Array  # z of this step (0 during warm-up)
    zclip_threshold: jax.Array  # norms above this were clipped to it
    zclip_clipped: jax.Array  # bool
    zclip_mean: jax.Array  # mu: EMA of the clipped norm (warm-up mean first)
    zclip_var: jax.Array  # sigma**2: EMA variance (warm-up variance first)
    zclip_count: jax.Array  # int32: finite steps seen (warm-up progress)
    zclip_clip_count: jax.Array  # int32: clipped steps
    zclip_nonfinite_count: jax.Array  # int32: zeroed non-finite steps


def clip_by_zscore(z_threshold: Any = 2.5, decay: Any = 0.97, warmup_steps: Any = 25,
                   max_norm: Any = None, axis_name: str | None = None
                   ) -> optax.GradientTransformationExtraArgs:
    """ZClip: clips global-norm spikes detected by a z-score over EMA statistics.

    With g the global norm and alpha = ``decay``:

    - Warm-up (first ``warmup_steps`` finite steps): clip at ``max_norm`` if
      given; mu and sigma² become the mean and (population) variance of the
      warm-up norms, accumulated with Welford's update instead of a buffer.
    - Then z = (g - mu) / (sigma + 1e-6). If z > z_thr (a spike) the adaptive
      threshold is tau = mu + z_thr² sigma / z (ZClip's default
      ``adaptive_scaling``: the larger the outlier, the harder the clip) and
      the update is rescaled to norm min(tau, max_norm); otherwise only
      ``max_norm`` applies.
    - Statistics follow the z-clipped norm x = min(g, tau):
      mu ← alpha mu + (1-alpha) x, then sigma² ← alpha sigma² + (1-alpha)(x - mu)²
      with the new mu. As in the reference code, ``max_norm`` caps the update
      but not x, so a small cap does not drag the statistics down.

    ``zclip_threshold`` is the norm above which this step clipped: tau on a
    spike, otherwise mu + z_thr (sigma + 1e-6) (where tau starts), capped at
    ``max_norm`` (+inf in warm-up without ``max_norm``). Non-finite gradients
    give zero updates and touch neither the statistics nor the warm-up count.

    Args:
      z_threshold: z_thr, > 0 (injectable).
      decay: alpha, in [0, 1) (injectable).
      warmup_steps: number of warm-up steps, >= 1.
      max_norm: optional absolute cap, > 0, or None (injectable when set).
      axis_name: mapped axis to ``psum`` partial norms over, or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``ClipByZscoreState``.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> tx = optax.chain(ox.clip_by_zscore(warmup_steps=3), optax.sgd(0.1))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> for scale in [1.0, 1.1, 0.9, 50.0]:  # the last step is a spike
      ...     g = {"w": jnp.array([0.6, 0.8]) * scale}
      ...     u, state = tx.update(g, state, params)
      >>> print(state[0].zclip_clipped, state[0].zclip_grad_norm)
      True 50.0

    References:
      Kumar, Owen, Ashraf et al., "ZClip: Adaptive Spike Mitigation for LLM
      Pre-Training", arXiv:2504.02507, 2025.
    """
    fn = "clip_by_zscore"
    check_number(fn, "z_threshold", z_threshold, gt=0)
    check_number(fn, "decay", decay, ge=0, lt=1)
    check_int(fn, "warmup_steps", warmup_steps, ge=1)
    check_number(fn, "max_norm", max_norm, gt=0, allow_none=True)

    def init_fn(params):
        del params
        return ClipByZscoreState(nx.scalar(0.0), nx.scalar(0.0), nx.scalar(0.0), nx.scalar(False),
                                 nx.scalar(0.0), nx.scalar(0.0), nx.scalar(0), nx.scalar(0),
                                 nx.scalar(0))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norm, finite = nx.global_norm_and_finite(updates, axis_name)
        g = jnp.where(finite, norm, 0.0)
        alpha, zt = nx.hyper_f32(decay), nx.hyper_f32(z_threshold)
        cap = nx.hyper_f32(_INF if max_norm is None else max_norm)
        mu, var = state.zclip_mean, state.zclip_var
        warm = state.zclip_count < warmup_steps
        sigma = jnp.sqrt(jnp.maximum(var, 0.0))
        z = (g - mu) / (sigma + _ZCLIP_EPS)
        spike = ~warm & (z > zt)
        tau = jnp.where(spike, mu + zt * zt * sigma / jnp.where(spike, z, 1.0),
                        mu + zt * (sigma + _ZCLIP_EPS))
        threshold = jnp.where(warm, cap, jnp.minimum(tau, cap))
        scale, clipped = nx.clip_factor(g, threshold)
        clipped = clipped & finite

        # Welford's running mean/variance during warm-up: at its end they equal
        # the mean and population variance of the warm-up norms.
        n = optax.safe_increment(state.zclip_count).astype(_F32)
        delta = g - mu
        mu_w = mu + delta / n
        var_w = var + (delta * (g - mu_w) - var) / n
        x = jnp.where(spike, tau, g)
        mu_e = nx.ema(mu, x, alpha)
        var_e = nx.ema(var, (x - mu_e) ** 2, alpha)
        skip = ~finite
        return nx.scale_tree_or_zero(updates, scale, finite), ClipByZscoreState(
            zclip_grad_norm=norm,
            zclip_zscore=jnp.where(finite, jnp.where(warm, 0.0, z), _INF),
            zclip_threshold=threshold,
            zclip_clipped=clipped,
            zclip_mean=jnp.where(skip, mu, jnp.where(warm, mu_w, mu_e)),
            zclip_var=jnp.where(skip, var, jnp.where(warm, var_w, var_e)),
            zclip_count=nx.increment_where(state.zclip_count, finite),
            zclip_clip_count=nx.increment_where(state.zclip_clip_count, clipped),
            zclip_nonfinite_count=nx.increment_where(state.zclip_nonfinite_count, ~finite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ClipByPercentileState(NamedTuple):
    """State of ``clip_by_percentile`` (AutoClip)."""

    autoclip_grad_norm: jax.Array  # pre-clip global norm (+inf when non-finite)
    autoclip_threshold: jax.Array  # percentile used as the clip norm
    autoclip_clipped: jax.Array  # bool
    autoclip_history: jax.Array  # float32[history] ring buffer of finite norms
    autoclip_position: jax.Array  # int32: next slot of the ring buffer
    autoclip_count: jax.Array  # int32: norms recorded (the filled part is min(count, history))
    autoclip_clip_count: jax.Array  # int32: clipped steps
    autoclip_nonfinite_count: jax.Array  # int32: zeroed non-finite steps


def clip_by_percentile(percentile: Any = 10.0, history: Any = 1000,
                       axis_name: str | None = None
                       ) -> optax.GradientTransformationExtraArgs:
    """AutoClip: clips the global norm to a percentile of the norms seen so far.

    .. math:: \\eta_t = P_p(\\{\\lVert g_s \\rVert\\}_{s \\le t}), \\quad
              u \\leftarrow u \\cdot \\min(1, \\eta_t / \\lVert g_t \\rVert)

    The percentile includes the current norm and uses NumPy's default linear
    interpolation; with ``p=100`` nothing is ever clipped. The paper keeps
    every past norm; here the last ``history`` finite norms live in a
    fixed-size ring buffer (the state's size never changes, so nothing
    recompiles) and the percentile is taken over its filled part only. A
    non-finite norm never enters the history: its step gives zero updates.

    Args:
      percentile: p, in [0, 100] (injectable).
      history: ring-buffer length, >= 1 (static).
      axis_name: mapped axis to ``psum`` partial norms over, or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``ClipByPercentileState``.

    Example:
      >>> import jax.numpy as jnp, optaxsched as ox
      >>> tx = ox.clip_by_percentile(percentile=50.0, history=8)
      >>> state = tx.init({"w": jnp.zeros(1)})
      >>> for norm in [1.0, 2.0, 3.0, 10.0]:
      ...     u, state = tx.update({"w": jnp.array([norm])}, state)
      >>> print(u["w"], state.autoclip_threshold)
      [2.5] 2.5

    References:
      Seetharaman, Wichern, Pardo and Le Roux, "AutoClip: Adaptive gradient
      clipping for source separation networks", IEEE MLSP 2020.
    """
    fn = "clip_by_percentile"
    check_number(fn, "percentile", percentile, ge=0, le=100)
    check_static(fn, "history", history)
    check_int(fn, "history", history, ge=1)
    size = int(history)

    def init_fn(params):
        del params
        return ClipByPercentileState(nx.scalar(0.0), nx.scalar(0.0), nx.scalar(False),
                                     jnp.zeros((size,), _F32), nx.scalar(0), nx.scalar(0),
                                     nx.scalar(0), nx.scalar(0))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norm, finite = nx.global_norm_and_finite(updates, axis_name)
        g = jnp.where(finite, norm, 0.0)
        pos = state.autoclip_position
        slot = jnp.arange(size) == pos
        hist = jnp.where(finite & slot, g, state.autoclip_history)
        count = nx.increment_where(state.autoclip_count, finite)
        q = nx.hyper_f32(percentile) / 100.0
        threshold = nx.masked_percentile(hist, jnp.minimum(count, size), q)
        scale, clipped = nx.clip_factor(g, threshold)
        clipped = clipped & finite
        return nx.scale_tree_or_zero(updates, scale, finite), ClipByPercentileState(
            autoclip_grad_norm=norm,
            autoclip_threshold=threshold,
            autoclip_clipped=clipped,
            autoclip_history=hist,
            autoclip_position=jnp.where(finite, (pos + 1) % size, pos).astype(jnp.int32),
            autoclip_count=count,
            autoclip_clip_count=nx.increment_where(state.autoclip_clip_count, clipped),
            autoclip_nonfinite_count=nx.increment_where(state.autoclip_nonfinite_count, ~finite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ClipByEmaRatioState(NamedTuple):
    """State of ``clip_by_ema_ratio`` (AdaGC). Per-tensor fields mirror the
    params tree with one float32 scalar per leaf (one scalar when global)."""

    adagc_grad_norm: jax.Array  # pre-clip global norm (+inf when non-finite)
    adagc_threshold: Any  # per-tensor clip norm used (warm-up: the global warmup_max_norm)
    adagc_clipped: jax.Array  # bool: some tensor was rescaled
    adagc_clipped_tensors: jax.Array  # int32: how many tensors were rescaled
    adagc_gamma: Any  # gamma: EMA of each tensor's clipped norm (0 = none seen yet)
    adagc_count: jax.Array  # int32: finite steps seen (warm-up progress)
    adagc_clip_count: jax.Array  # int32: steps with some clipping
    adagc_nonfinite_count: jax.Array  # int32: zeroed non-finite steps


def clip_by_ema_ratio(ratio: Any = 1.05, decay: Any = 0.98, warmup_steps: Any = 100,
                      warmup_max_norm: Any = 1.0, per_tensor: bool = True,
                      axis_name: str | None = None
                      ) -> optax.GradientTransformationExtraArgs:
    """AdaGC: clips each tensor to ``ratio`` times an EMA of its own clipped norm.

    For each tensor i (or the whole gradient with ``per_tensor=False``), with
    lambda_rel = ``ratio`` and beta = ``decay``:

    .. math::
      h_{t,i} = \\min(1, \\lambda_{rel} \\gamma_{t-1,i} / \\lVert g_{t,i} \\rVert),
      \\quad \\hat g_{t,i} = h_{t,i} g_{t,i}, \\quad
      \\gamma_{t,i} = \\beta \\gamma_{t-1,i} + (1 - \\beta) \\lVert \\hat g_{t,i} \\rVert

    Warm-up (the first ``warmup_steps`` finite steps, the paper's T_start):
    global-norm clipping at lambda_abs = ``warmup_max_norm``, and gamma_i is
    the running **minimum** of the clipped norms ``‖ĝ_{t,i}‖``.

    One guard the paper lacks: gamma_i = 0 means "no nonzero norm seen yet".
    Zero norms do not enter the warm-up minimum, and a tensor whose gamma is
    still 0 after warm-up is not clipped and takes its first nonzero norm as
    gamma. Without this, a tensor with an all-zero gradient at one warm-up step
    (e.g. behind a zero-initialised layer) would get gamma = 0 and be clipped
    to zero forever. Non-finite gradients (anywhere) give zero updates for all
    tensors and leave gamma and the warm-up count untouched.

    Args:
      ratio: lambda_rel, > 0 (injectable).
      decay: beta, in [0, 1) (injectable).
      warmup_steps: T_start, >= 0.
      warmup_max_norm: lambda_abs, > 0 (injectable).
      per_tensor: clip each leaf separately (AdaGC) or the global norm.
      axis_name: mapped axis to ``psum`` partial norms over, or None.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      ``ClipByEmaRatioState``.

    Example:
      >>> import jax.numpy as jnp, optaxsched as ox
      >>> tx = ox.clip_by_ema_ratio(warmup_steps=1, decay=0.5, ratio=2.0)
      >>> g = {"a": jnp.array([0.5]), "b": jnp.array([0.25])}
      >>> state = tx.init(g)
      >>> _, state = tx.update(g, state)  # warm-up: gamma = norms
      >>> u, state = tx.update({"a": jnp.array([5.0]), "b": jnp.array([0.25])}, state)
      >>> print(u["a"], u["b"], state.adagc_clipped_tensors)
      [1.] [0.25] 1

    References:
      Wang et al., "AdaGC: Improving Training Stability for Large Language
      Model Pretraining", arXiv:2502.11034, 2025.
    """
    fn = "clip_by_ema_ratio"
    check_number(fn, "ratio", ratio, gt=0)
    check_number(fn, "decay", decay, ge=0, lt=1)
    check_int(fn, "warmup_steps", warmup_steps, ge=0)
    check_number(fn, "warmup_max_norm", warmup_max_norm, gt=0)
    check_bool(fn, "per_tensor", per_tensor)

    def init_fn(params):
        def stat():
            if per_tensor:
                return jax.tree_util.tree_map(lambda _: nx.scalar(0.0), params)
            return nx.scalar(0.0)

        return ClipByEmaRatioState(nx.scalar(0.0), stat(), nx.scalar(False), nx.scalar(0), stat(),
                                   nx.scalar(0), nx.scalar(0), nx.scalar(0))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        # One pass: per-leaf sums of squares, psum-ed together in one collective.
        sq = nx.psum_if(nx.leaf_sq_norms(updates), axis_name)
        total = sum(jax.tree_util.tree_leaves(sq), nx.scalar(0.0))
        finite = jnp.isfinite(total)
        g = jnp.where(finite, nx.safe_sqrt(total), 0.0)
        warm = state.adagc_count < warmup_steps
        lam_rel, beta = nx.hyper_f32(ratio), nx.hyper_f32(decay)
        lam_abs = nx.hyper_f32(warmup_max_norm)
        h_warm, _ = nx.clip_factor(g, lam_abs)

        def one(norm, gamma):
            seen = gamma > 0
            clipped_w = h_warm * norm
            gamma_w = jnp.where(seen & (clipped_w > 0), jnp.minimum(gamma, clipped_w),
                                jnp.where(seen, gamma, clipped_w))
            h_run, _ = nx.clip_factor(norm, jnp.where(seen, lam_rel * gamma, _INF))
            clipped_r = h_run * norm
            gamma_r = jnp.where(seen, nx.ema(gamma, clipped_r, beta), clipped_r)
            h = jnp.where(warm, h_warm, h_run)
            new_gamma = jnp.where(finite, jnp.where(warm, gamma_w, gamma_r), gamma)
            threshold = jnp.where(warm, lam_abs, jnp.where(seen, lam_rel * gamma, _INF))
            hit = finite & (h < 1.0) & (norm > 0)
            return h, new_gamma, threshold, hit

        if per_tensor:
            norms = jax.tree_util.tree_map(lambda s: jnp.sqrt(jnp.where(finite, s, 0.0)), sq)
            out = jax.tree_util.tree_map(one, norms, state.adagc_gamma)
            treedef = jax.tree_util.tree_structure(norms)
            flat = treedef.flatten_up_to(out)
            h, gamma, threshold, hit = (
                treedef.unflatten([o[k] for o in flat]) for k in range(4)
            )
            new_updates = nx.scale_leaves_or_zero(updates, h, finite)
            hits = jax.tree_util.tree_leaves(hit)
        else:
            h, gamma, threshold, hit = one(g, state.adagc_gamma)
            new_updates = nx.scale_tree_or_zero(updates, h, finite)
            hits = [hit]
        n_hit = sum((x.astype(jnp.int32) for x in hits), nx.scalar(0))
        any_hit = n_hit > 0
        return new_updates, ClipByEmaRatioState(
            adagc_grad_norm=jnp.where(finite, g, _INF),
            adagc_threshold=threshold,
            adagc_clipped=any_hit,
            adagc_clipped_tensors=n_hit,
            adagc_gamma=gamma,
            adagc_count=nx.increment_where(state.adagc_count, finite),
            adagc_clip_count=nx.increment_where(state.adagc_clip_count, any_hit),
            adagc_nonfinite_count=nx.increment_where(state.adagc_nonfinite_count, ~finite),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
