"""Numerics shared by every transform: one-pass gradient statistics, safe
norms, running averages, saturating counters, state scalars and the one path
by which updates are scaled.

Precision policy. All statistics are accumulated in float32 whatever the leaf
dtype, so bf16 or fp16 gradients cannot overflow while squaring. The squared
global norm is finite iff every float leaf is finite (a sum of squares of
finite numbers can only overflow to +inf above ~1.8e19, which is an explosion
anyway), so finiteness comes free with the norm and no second pass over the
gradients is needed. Every transform scales updates through :func:`scale_leaf`:
half-precision leaves are multiplied in float32 and rounded once, wider leaves
in their own dtype, and every leaf keeps its dtype.

Running averages. An exponential moving average is kept raw, starting at 0
(:func:`ema`, and :func:`ema_where` for the update that only a valid step may
make), and read through Adam's bias correction (:func:`bias_correction`), so
the state restores from zeros and the read-out is an unbiased weighted mean
from the first step. Three statistics start otherwise, each because the
method it implements prescribes it, and say so where they are kept: ZClip's
mean and variance start from the mean and population variance of the warm-up
norms (Kumar et al. 2025), AdaGC's per-tensor EMA from the smallest clipped norm of its warm-up
(Wang et al. 2025),
and the explosion guard's spike test from the exact sample mean and variance
of its first ``1 / (1 - decay)`` values (weights ``max(1 - decay, 1/(n+1))``,
so its prior-weighted test sees a plain average while the history is short).

Counters are int32 and saturate (``optax.safe_increment``). Every state field
is a fresh array (:func:`scalar`), so a state can be donated to a jitted step.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "INT32_MAX",
    "TINY",
    "is_float_leaf",
    "leaf_sq_norm",
    "global_sq_norm",
    "global_norm_and_finite",
    "leaf_sq_norms",
    "safe_sqrt",
    "hyper_f32",
    "hyper_i32",
    "scalar",
    "alias_fields",
    "increment_where",
    "increment_or_reset",
    "ema",
    "ema_where",
    "bias_correction",
    "scale_tree",
    "psum_if",
    "scale_leaf",
    "scale_tree_or_zero",
    "scale_leaves_or_zero",
    "safe_inverse",
    "clip_factor",
    "masked_percentile",
    "fuse_scalars",
]

INT32_MAX = jnp.iinfo(jnp.int32).max
# Floor for a norm or a spread before a log or a division (float32 has room
# down to ~1e-38, so it never rounds to zero).
TINY = 1e-30


def is_float_leaf(x: Any) -> bool:
    """True for array leaves with an inexact dtype (the only ones we touch)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def psum_if(x: jax.Array, axis_name: str | None) -> jax.Array:
    """``lax.psum`` over ``axis_name`` when one is given (inside shard_map/pmap)."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def leaf_sq_norm(x: jax.Array) -> jax.Array:
    """Sum of squares of one leaf, accumulated in float32 (|z|² for complex)."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.abs(x)
    x = x.astype(jnp.float32)
    return jnp.sum(x * x)


def global_sq_norm(tree: Any, axis_name: str | None = None) -> jax.Array:
    """Squared L2 norm over every float leaf of ``tree``, as a float32 scalar.

    Kept instead of ``optax.tree.norm(tree, squared=True)``, which squares in
    each leaf's dtype (fp16 overflows from a gradient entry of 256) and has no
    ``axis_name``.

    Non-float leaves are ignored and an empty tree gives 0. With ``axis_name``
    the per-shard partial sums are ``psum``-ed, which is what a leaf sharded
    over that axis inside ``shard_map`` needs.
    """
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree_util.tree_leaves(tree):
        if is_float_leaf(leaf):
            total = total + leaf_sq_norm(leaf)
    return psum_if(total, axis_name)


def safe_sqrt(sq: jax.Array) -> jax.Array:
    """sqrt that maps NaN to +inf (NaN must read as an explosion, never as small)."""
    sq = jnp.where(jnp.isnan(sq), jnp.inf, sq)
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def global_norm_and_finite(
    tree: Any, axis_name: str | None = None
) -> tuple[jax.Array, jax.Array]:
    """Global L2 norm (float32, +inf when non-finite) and an all-finite flag.

    Both come from the same sum of squares, so the gradients are read once.
    """
    # Everything downstream reads the one sqrt, never the sum of squares: XLA
    # duplicates cheap scalar adds into every consumer kernel, so deriving the
    # flag from the sum would drag all per-leaf partial sums into each
    # elementwise fusion of the optimizer (too many operands to fuse well),
    # while a sqrt is materialised once.
    norm = jnp.sqrt(global_sq_norm(tree, axis_name))
    finite = jnp.isfinite(norm)
    return jnp.where(jnp.isnan(norm), jnp.inf, norm), finite


def leaf_sq_norms(tree: Any, axis_name: str | None = None) -> Any:
    """Per-leaf squared norms (float32 scalars; 0 for non-float leaves)."""

    def one(x):
        if is_float_leaf(x):
            return psum_if(leaf_sq_norm(x), axis_name)
        return jnp.zeros((), jnp.float32)

    return jax.tree_util.tree_map(one, tree)


def hyper_f32(x: Any) -> jax.Array:
    """A hyperparameter as a float32 scalar for the statistics.

    ``optax.inject_hyperparams`` hands float hyperparameters over in the
    params' dtype (bf16 for bf16 params); the statistics stay float32.
    """
    return jnp.asarray(x, jnp.float32)


def hyper_i32(x: Any) -> jax.Array:
    """An integer hyperparameter (possibly injected) as an int32 scalar."""
    return jnp.asarray(x).astype(jnp.int32)


def scalar(value: bool | int | float = 0.0, dtype: Any = None) -> jax.Array:
    """A new 0-d array holding ``value``, for one state field.

    The dtype is ``dtype`` or follows ``value``: bool, int32 for an ``int``,
    float32 for a ``float``.

    Each call makes its own buffer: two fields sharing one array would make
    ``jax.jit(..., donate_argnums=...)`` refuse to donate the state (a buffer
    donated twice), so every ``init`` builds each field with its own call.
    """
    if dtype is None:
        if not isinstance(value, (bool, int, float)):
            raise TypeError(f"scalar({value!r}): give dtype= for a value that is not a "
                            "Python bool, int or float")
        dtype = (jnp.bool_ if isinstance(value, bool)
                 else jnp.int32 if isinstance(value, int) else jnp.float32)
    # jnp.array copies: an array value (an injected hyperparameter) must not
    # end up shared between the state and its source either.
    return jnp.array(value, dtype=dtype).reshape(())


def alias_fields(cls: type, renamed: dict[str, str]) -> None:
    """Gives the NamedTuple ``cls`` read-only attributes under former field
    names: ``renamed`` maps each old name to its field. They are properties,
    not fields, so the state's structure (its checkpoint format) has the new
    names only, while code reading ``state.old_name`` keeps working."""
    for old, new in renamed.items():
        if old in cls._fields or new not in cls._fields:  # type: ignore[attr-defined]
            raise ValueError(f"alias_fields({cls.__name__}): bad alias {old!r} -> {new!r}")
        prop = property(operator.attrgetter(new), doc=f"Former name of ``{new}``.")
        setattr(cls, old, prop)


def increment_where(count: jax.Array, cond: jax.Array) -> jax.Array:
    """Saturating ``count + 1`` (``optax.safe_increment``) where ``cond`` is
    true, else ``count``; int32."""
    return jnp.where(cond, optax.safe_increment(count), count).astype(jnp.int32)


def increment_or_reset(count: jax.Array, increment: jax.Array) -> jax.Array:
    """Saturating ``count + 1`` where ``increment`` is true, else 0; int32."""
    return jnp.where(increment, optax.safe_increment(count), 0).astype(jnp.int32)


def ema(average: jax.Array, value: jax.Array, decay: Any) -> jax.Array:
    """One EMA step: ``decay * average + (1 - decay) * value`` in float32.

    A scalar statistic, so not ``optax.tree.update_moment`` (a tree, in the
    leaf's dtype)."""
    decay = jnp.asarray(decay, jnp.float32)
    return decay * average + (1.0 - decay) * jnp.asarray(value, jnp.float32)


def ema_where(average: jax.Array, value: jax.Array, decay: Any, ok: jax.Array) -> jax.Array:
    """:func:`ema` where ``ok`` is true, else ``average`` unchanged (a step that
    must not feed the average: non-finite, rejected or skipped)."""
    return jnp.where(ok, ema(average, value, decay), average)


def bias_correction(average: jax.Array, decay: Any, count: jax.Array) -> jax.Array:
    """Adam-style bias correction ``average / (1 - decay**count)``.

    ``count`` is the number of EMA updates folded into ``average``; with
    ``count == 0`` the average is returned unchanged (nothing to correct).
    Kept instead of ``optax.tree.bias_correction``, which divides by zero at
    ``count == 0`` and would put a NaN into a fresh state.
    """
    decay = jnp.asarray(decay, jnp.float32)
    count = jnp.asarray(count, jnp.float32)
    denom = 1.0 - decay**count
    return jnp.where(count > 0, average / jnp.where(denom > 0, denom, 1.0), average)


def scale_leaf(x: Any, scale: jax.Array) -> Any:
    """``x * scale`` for one leaf, computed in at least float32, keeping ``x.dtype``.

    This is the one place where the library multiplies an update. Half-precision
    leaves are multiplied in float32 and rounded once, so a clip factor such as
    1e-5 (subnormal in fp16) or 1e8 (beyond fp16's range) does not lose
    precision or overflow before it meets the gradient; float32 and wider
    leaves are multiplied in their own dtype. Non-float leaves pass through.
    """
    if not is_float_leaf(x):
        return x
    scale = jnp.asarray(scale)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return (x.astype(jnp.float32) * scale.astype(jnp.float32)).astype(x.dtype)
    return x * scale.astype(x.dtype)


def scale_tree(tree: Any, scale: jax.Array) -> Any:
    """Every float leaf times the scalar ``scale`` (:func:`scale_leaf`); other
    leaves pass through."""
    return jax.tree_util.tree_map(lambda x: scale_leaf(x, scale), tree)


def _scale_or_zero(x: Any, scale: jax.Array, keep: jax.Array) -> Any:
    if not is_float_leaf(x):
        return x
    y = scale_leaf(x, scale)
    # A NaN gradient times a zero scale is still NaN, hence the select; XLA
    # fuses it into the multiply, so the gradients are still read once.
    # lax.select, not jnp.where: one primitive per leaf instead of a nested
    # jit call, which matters for trace time at hundreds of leaves.
    return jax.lax.select(keep, y, jnp.zeros_like(y))


def scale_tree_or_zero(tree: Any, scale: jax.Array, keep: jax.Array) -> Any:
    """Every float leaf times the scalar ``scale`` (see ``scale_leaf``), or zeros
    everywhere when the scalar ``keep`` is false."""
    return jax.tree_util.tree_map(lambda x: _scale_or_zero(x, scale, keep), tree)


def scale_leaves_or_zero(tree: Any, scales: Any, keep: jax.Array) -> Any:
    """Like ``scale_tree_or_zero`` with one scalar scale per leaf: ``scales`` is a
    tree of scalars with the structure of ``tree``."""
    return jax.tree_util.tree_map(lambda x, s: _scale_or_zero(x, s, keep), tree, scales)


def safe_inverse(denom: jax.Array) -> jax.Array:
    """``1 / denom``, and 0 for a zero denominator (with ``eps = 0`` and an
    all-zero gradient, whose updates are zero whatever the scale)."""
    return jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)


def clip_factor(norm: jax.Array, threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(scale, clipped) rescaling ``norm`` down to ``threshold`` when it is above."""
    clipped = norm > threshold
    return jnp.where(clipped, threshold / jnp.where(clipped, norm, 1.0), 1.0), clipped


def masked_percentile(values: jax.Array, n: jax.Array, q: jax.Array) -> jax.Array:
    """``np.percentile(values[:n], 100 * q)`` with NumPy's default linear
    interpolation, for a 1-D float32 ``values`` whose first ``n`` (traced)
    entries are filled; +inf when ``n == 0``. One sort of ``values``.

    Not ``jnp.percentile``: the filled length ``n`` is traced (a ring buffer
    filling up), which it cannot mask; padding with +inf keeps one sort."""
    size = values.shape[0]
    srt = jnp.sort(jnp.where(jnp.arange(size) < n, values, jnp.inf))
    last = jnp.maximum(n, 1) - 1
    rank = q * last.astype(jnp.float32)
    lo = jnp.clip(jnp.floor(rank).astype(jnp.int32), 0, last)
    hi = jnp.minimum(lo + 1, last)
    t = rank - lo.astype(jnp.float32)
    a, b = srt[lo], srt[hi]
    # NumPy's lerp: from the nearer end, so t = 1 gives b exactly.
    val = jnp.where(t >= 0.5, b - (b - a) * (1.0 - t), a + (b - a) * t)
    return jnp.where(n > 0, val, jnp.inf)


def fuse_scalars(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for a function of scalars, compiled as a single XLA kernel.

    ``args`` is any tree of scalars (state fields, flags, partial sums); the
    result is the tree ``fn`` returns, with every leaf a scalar, materialised
    once. Two things keep XLA:CPU from fusing scalar logic of some size into
    one kernel, and each kernel it splits off costs 5-10 ms of compilation
    (its own LLVM module) and, on GPU, a launch per step:

    * it has no multi-output loop fusion, so twenty outputs would make twenty
      kernels; a variadic ``reduce`` is the one multi-output operation every
      backend fuses;
    * inside a fusion it counts how often each value would be emitted, and
      every reshape on the way to an output is a separate emission: a value
      that more than 15 outputs depend on (a skip flag, the log of the norm)
      is split off into a kernel of its own, with everything it is computed
      from, and later kernels only read it.

    So ``fn`` runs on *lanes*: every input ``x`` enters as the 2-vector
    ``[x, 0]``, all of ``fn``'s arithmetic is elementwise on that one shape
    (nothing is recomputed per output), and each output ``y`` leaves through
    ``sum([y, 0])`` (``|`` for booleans), which is ``y`` exactly (``-0.0``
    comes back as ``+0.0``). Lane 1 computes ``fn`` of zeros and is dropped.
    ``fn`` must therefore be elementwise in its inputs: no reductions, no
    indexing, no shape tests.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    leaves = [jnp.asarray(x) for x in leaves]
    for x in leaves:
        if x.ndim:
            raise ValueError(f"fuse_scalars: inputs must be scalars, got shape {x.shape}")
    lane0 = jax.lax.iota(jnp.int32, 2) == 0

    def first_lane(x):
        # lax.select, not jnp.where: one primitive instead of a nested jit call.
        if x.shape != (2,):
            x = jax.lax.broadcast(x, (2,))
        return jax.lax.select(lane0, x, jnp.zeros((2,), x.dtype))

    out = fn(*jax.tree_util.tree_unflatten(treedef, [first_lane(x) for x in leaves]))
    out_leaves, out_tree = jax.tree_util.tree_flatten(out)
    if not out_leaves:
        return out
    out_leaves = [jnp.asarray(y) for y in out_leaves]
    for y in out_leaves:
        if y.shape not in ((), (2,)):
            raise ValueError(f"fuse_scalars: fn must return scalars, got shape {y.shape}")
    is_bool = [y.dtype == jnp.bool_ for y in out_leaves]

    def combine(a, b):
        return tuple(
            jnp.logical_or(x, y) if flag else x + y for x, y, flag in zip(a, b, is_bool)
        )

    reduced = jax.lax.reduce(
        [first_lane(y) for y in out_leaves],
        [jnp.zeros((), y.dtype) for y in out_leaves],
        combine,
        (0,),
    )
    return jax.tree_util.tree_unflatten(out_tree, list(reduced))
