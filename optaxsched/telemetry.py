"""Every statistic of an optimizer state as a flat ``{path: scalar}`` dict.

``telemetry(opt_state)`` walks any optimizer state (chains, ``optax.partition``
/ ``multi_transform``, ``explosion_guard`` and its inner state,
``inject_hyperparams``, ``optax.MultiSteps``, Flax ``nnx.Optimizer`` states,
whole ``TrainState`` objects) and returns its scalar statistics: counters,
norms, scales, flags and injected hyperparameters. The walk is plain Python
over the pytree structure and adds no operation to a compiled step, so a
jitted training step can return the dict next to the loss.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxsched.groups import path_str

__all__ = ["telemetry"]

# Where a node sits: among optimizer-state fields (its scalars are
# statistics) or inside a tree mirroring the parameters (moments, per-tensor
# norms), which is reported only with ``per_tensor=True``.
_STATE, _TENSOR = "state", "tensor"
# The NamedTuple field under which ``optax.inject_hyperparams`` keeps the
# current hyperparameter values (a plain dict, so the structural test below
# would take it for a per-tensor tree).
_HYPERPARAMS = "hyperparams"


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _nnx_kind(x: Any) -> str | None:
    """For a Flax ``nnx.Variable``: where its value belongs; None otherwise.

    ``nnx.Optimizer`` wraps parameter-shaped state (Adam's moments) in
    ``OptVariable`` and everything else (counters, statistics, injected
    hyperparameters, its ``step``) in other ``OptState`` types; ``nnx.Param``
    holds parameters. Other Variables take their place from the structure.
    flax is never imported here: an nnx Variable can only exist once it is.
    """
    nnx = sys.modules.get("flax.nnx")
    if nnx is None or not isinstance(x, nnx.Variable):
        return None
    opt = getattr(getattr(nnx, "training", None), "optimizer", None)
    opt_variable = getattr(opt, "OptVariable", None)
    opt_state = getattr(opt, "OptState", None)
    if isinstance(x, nnx.Param) or (opt_variable is not None and isinstance(x, opt_variable)):
        return _TENSOR
    if opt_state is not None and isinstance(x, opt_state):
        return _STATE
    return ""


def _children(node: Any) -> list[tuple[Any, Any]]:
    """One level of ``node``'s pytree children, with their key entries."""
    if _is_namedtuple(node):
        return [(jax.tree_util.GetAttrKey(f), getattr(node, f)) for f in node._fields]
    keyed, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return [(path[0], child) for path, child in keyed if path]


def _holds_state(node: Any, memo: dict[int, tuple[Any, bool]]) -> bool:
    """True when ``node`` contains an optimizer state (a NamedTuple with fields
    or an nnx ``OptState``), i.e. is structure rather than a parameter tree.
    Empty NamedTuples (``EmptyState``, ``optax.MaskedNode``) do not count."""
    key = id(node)
    if key in memo:
        return memo[key][1]
    kind = _nnx_kind(node)
    if kind is not None:
        found = kind == _STATE or (
            kind == "" and any(_holds_state(c, memo) for _, c in _children(node))
        )
    elif _is_namedtuple(node):
        found = bool(node._fields)
    elif _is_scalar_like(node) or node is None:
        found = False
    else:
        found = any(_holds_state(c, memo) for _, c in _children(node))
    # The node is kept alive with its answer so that its id cannot be reused
    # by a temporary object during the walk.
    memo[key] = (node, found)
    return found


def _is_scalar_like(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, bool, int, float))


def _statistic(x: Any) -> jax.Array | None:
    """``x`` as a 0-d array when it is a real or boolean scalar, else None."""
    if isinstance(x, (bool, int, float)):
        return jnp.asarray(x)
    if np.ndim(x) != 0:
        return None
    dtype = x.dtype
    if not (
        jnp.issubdtype(dtype, jnp.bool_)
        or jnp.issubdtype(dtype, jnp.integer)
        or jnp.issubdtype(dtype, jnp.floating)
    ):
        return None  # complex numbers, PRNG keys
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def telemetry(opt_state: Any, *, per_tensor: bool = False) -> dict[str, jax.Array]:
    """Returns every scalar statistic of an optimizer state as a flat dict.

    A *statistic* is a 0-d (bool, integer or floating) leaf of an optimizer
    state: the counters, norms, scales and flags of every state NamedTuple
    anywhere in the tree (chains, ``optax.partition``, ``explosion_guard``
    and its ``recovery`` state, the inner state of any wrapper), the current
    hyperparameters of ``optax.inject_hyperparams`` (e.g. the scheduled
    learning rate) and, for Flax ``nnx.Optimizer`` states, every ``OptState``
    scalar. Trees that mirror the parameters (Adam's ``mu``/``nu``, AdaGC's
    per-tensor EMA, sgd's momentum) are parameter data: they are skipped
    unless ``per_tensor=True``, which adds their 0-d leaves (one entry per
    parameter tensor, e.g. ``0/adagc_gamma/layers_0/kernel``). Arrays with
    more than one element (moments, ``clip_by_percentile``'s history) are
    never reported.

    Keys are the leaf's path in the state, with the library's path
    convention (:func:`optaxsched.groups.path_str`): chain positions are
    indices, NamedTuple fields and ``flax.struct`` fields their names, dict
    keys (partition labels, hyperparameter names) themselves, nnx
    ``Variable`` boxes dropped, all joined by ``/``:

    ============================================  ==================================
    ``chain(clip_by_zscore(), adam)``              ``0/zclip_mean``, ``1/0/count``
    ``explosion_guard(adam)``                      ``skipped_steps``,
                                                   ``recovery/recovery_scale``
    ``inject_hyperparams(sgd)(learning_rate=s)``   ``hyperparams/learning_rate``
    ``partition({"a": tx, ...})``                  ``inner_states/a/inner_state/...``
    ============================================  ==================================

    So a key is stable (it depends only on how the optimizer is built, never
    on values or step), unique, and names a real location: the same path
    reaches the value with ``jax.tree_util.tree_flatten_with_path``. The
    library's own field names are unique (``zclip_mean``, ``plateau_scale``),
    so ``k.rsplit("/", 1)[-1]`` is a short display name for them. The dict
    follows the state's flattening order.

    The walk only reads the pytree structure: called inside ``jax.jit`` it
    returns the traced scalars (no host transfer, no extra operations), so a
    training step can return ``telemetry(opt_state)`` and the loop logs it
    every N steps. A state whose parameters live in a NamedTuple container
    (rather than a dict, list or Flax module) shows the moments of its 0-d
    parameters as statistics, since NamedTuples are taken for optimizer
    states.

    Args:
      opt_state: any optimizer state, or any pytree holding one (a Flax
        ``TrainState``, ``nnx.Optimizer.opt_state``, ``nnx.state(optimizer)``).
      per_tensor: also report the 0-d leaves of parameter-shaped trees
        (per-tensor statistics such as AdaGC's ``adagc_gamma``; also the
        moments of scalar parameters).

    Returns:
      ``dict[str, jax.Array]`` of 0-d arrays keyed by path; empty for a
      state without statistics (e.g. plain ``optax.sgd``).

    Raises:
      ValueError: two leaves have the same path string (a dict key that
        contains ``/``, as in ``{"a/count": x, "a": State(count=y)}``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optaxsched as ox
      >>> tx = optax.chain(
      ...     ox.clip_by_global_norm(1.0),
      ...     optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
      >>> params = {"w": jnp.ones(3)}
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     updates, state = tx.update({"w": jnp.full(3, 2.0)}, state, params)
      ...     return optax.apply_updates(params, updates), state, ox.telemetry(state)
      >>> params, state, stats = step(params, state)
      >>> sorted(stats)  # doctest: +NORMALIZE_WHITESPACE
      ['0/clip_count', '0/clip_nonfinite', '0/clip_nonfinite_count', '0/clipped',
       '0/grad_norm', '1/count', '1/hyperparams/learning_rate']
      >>> float(stats["0/grad_norm"]), bool(stats["0/clipped"])
      (3.464101552963257, True)

    References:
      ``optax.tree.get`` looks a single field up by name; this reports all
      of them at once with unique keys.
    """
    if not isinstance(per_tensor, bool):
        raise TypeError(f"telemetry(per_tensor={per_tensor!r}): per_tensor must be a bool")
    out: dict[str, jax.Array] = {}
    memo: dict[int, tuple[Any, bool]] = {}

    def emit(path: tuple[Any, ...], leaf: Any) -> None:
        value = _statistic(leaf)
        if value is None:
            return
        key = path_str(path)
        if key in out:
            raise ValueError(
                f"telemetry: two statistics have the path {key!r}; rename the dict "
                f"keys of the state so that their string forms differ"
            )
        out[key] = value

    def walk(node: Any, path: tuple[Any, ...], where: str) -> None:
        if node is None:
            return
        if _is_scalar_like(node):
            if where == _STATE or per_tensor:
                emit(path, node)
            return
        kind = _nnx_kind(node)
        if kind is not None:
            # A Variable box: its value keeps the box's path; its type says
            # whether it holds parameter data.
            for _, child in _children(node):
                walk(child, path, kind or where)
            return
        hyper_fields = _is_namedtuple(node) and _HYPERPARAMS in node._fields
        for entry, child in _children(node):
            if where == _TENSOR:
                child_where = _TENSOR
            elif _is_scalar_like(child) or _nnx_kind(child) is not None:
                child_where = _STATE
            elif hyper_fields and getattr(entry, "name", None) == _HYPERPARAMS:
                child_where = _STATE
            else:
                child_where = _STATE if _holds_state(child, memo) else _TENSOR
            walk(child, (*path, entry), child_where)

    walk(opt_state, (), _STATE)
    return out
