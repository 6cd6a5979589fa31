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

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optaxsched import _nnx
from optaxsched._groups import DEFAULT_GROUP
from optaxsched._paths import path_str
from optaxsched._validation import check_bool

__all__ = ["telemetry", "effective_learning_rate"]

# Where a node sits: among optimizer-state fields (its scalars are
# statistics) or inside a tree mirroring the parameters (moments, per-tensor
# norms), which is reported only with ``per_tensor=True``.
_STATE, _TENSOR = "state", "tensor"
# Dict-valued state fields that hold statistics, not parameter-shaped trees:
# ``optax.inject_hyperparams``'s current hyperparameter values and
# ``scale_by_group``'s multiplier per group (plain dicts, so the structural
# test below would take them for per-tensor trees).
_HYPERPARAMS = "hyperparams"
_STAT_DICTS = frozenset({_HYPERPARAMS, "group_multipliers"})
# Fields under which wrappers keep the state they wrap (explosion_guard,
# inject_hyperparams, partition, masked, MultiSteps, apply_if_finite): plumbing
# that says nothing about the statistic, dropped from the keys.
_WRAPPER_FIELDS = frozenset({"inner_state", "inner_states", "inner_opt_state"})


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
    if not _nnx.is_variable(x):
        return None
    nnx = _nnx.nnx_module()
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


def telemetry(opt_state: Any, *, per_tensor: bool = False,
              full_paths: bool = False) -> dict[str, jax.Array]:
    """Returns every scalar statistic of an optimizer state as a flat dict.

    A *statistic* is a 0-d (bool, integer or floating) leaf of an optimizer
    state: the counters, norms, scales and flags of every state NamedTuple
    anywhere in the tree (chains, ``optax.partition``, ``explosion_guard``
    and its ``guard_recovery`` state, the inner state of any wrapper), the current
    hyperparameters of ``optax.inject_hyperparams`` (e.g. the scheduled
    learning rate) and, for Flax ``nnx.Optimizer`` states, every ``OptState``
    scalar. Trees that mirror the parameters (Adam's ``mu``/``nu``, AdaGC's
    per-tensor EMA, sgd's momentum) are parameter data: they are skipped
    unless ``per_tensor=True``, which adds their 0-d leaves (one entry per
    parameter tensor, e.g. ``0/adagc_gamma/layers_0/kernel``). Arrays with
    more than one element (moments, ``clip_by_percentile``'s history) are
    never reported.

    Keys are the leaf's path in the state, named as :func:`optaxsched.tree_paths`
    names parameters: chain positions are
    indices, NamedTuple fields and ``flax.struct`` fields their names, dict
    keys (partition labels, hyperparameter names) themselves, nnx
    ``Variable`` boxes dropped, all joined by ``/``; the fields under which
    wrappers keep the state they wrap (``inner_state``, ``inner_states``,
    ``inner_opt_state``) are left out, except where two keys would then
    collide (those keep their whole paths):

    ============================================  ==================================
    ``chain(clip_by_zscore(), adam)``              ``0/zclip_mean``, ``1/0/count``
    ``explosion_guard(adam)``                      ``guard_skipped_steps``,
                                                   ``guard_recovery/recovery_scale``, ``0/count``
    ``inject_hyperparams(sgd)(learning_rate=s)``   ``hyperparams/learning_rate``
    ``partition({"a": tx, ...})``                  ``a/...``
    ============================================  ==================================

    So a key is stable (it depends only on how the optimizer is built, never
    on values or step) and unique; with ``full_paths=True`` it is the whole
    path, which reaches the value with ``jax.tree_util.tree_flatten_with_path``.
    Where the state holds a learning rate (``optax.inject_hyperparams``), the
    dict also has ``effective_learning_rate/<group>``, the rate each
    parameter group gets with every multiplier applied (see
    :func:`effective_learning_rate`; not with ``full_paths``). The
    library's own field names are unique (``zclip_mean``, ``plateau_scale``),
    so ``k.rsplit("/", 1)[-1]`` is a short display name for them. The dict
    follows the state's flattening order.

    The walk only reads the pytree structure: called inside ``jax.jit`` it
    returns the traced scalars (no host transfer; no operation but the few
    scalar products of the effective learning rates), so a
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
      full_paths: key every statistic by its whole path in the state,
        wrapper fields included, and leave the effective learning rates out.

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
      ['0/gclip_clip_count', '0/gclip_clipped', '0/gclip_grad_norm', '0/gclip_nonfinite',
       '0/gclip_nonfinite_count', '1/count', '1/hyperparams/learning_rate',
       'effective_learning_rate/default']
      >>> float(stats["0/gclip_grad_norm"]), bool(stats["0/gclip_clipped"])
      (3.464101552963257, True)

    References:
      ``optax.tree.get`` looks a single field up by name; this reports all
      of them at once with unique keys.
    """
    check_bool("telemetry", "per_tensor", per_tensor)
    check_bool("telemetry", "full_paths", full_paths)
    found: list[tuple[tuple[Any, ...], jax.Array]] = []

    def walk(node: Any, path: tuple[Any, ...], where: str) -> None:
        if node is None:
            return
        if _is_scalar_like(node):
            value = _statistic(node) if where == _STATE or per_tensor else None
            if value is not None:
                found.append((path, value))
            return
        kind = _nnx_kind(node)
        if kind is not None:
            # A Variable box: its value keeps the box's path; its type says
            # whether it holds parameter data.
            for _, child in _children(node):
                walk(child, path, kind or where)
            return
        stat_dicts = _is_namedtuple(node) and not _STAT_DICTS.isdisjoint(node._fields)
        for entry, child in _children(node):
            if where == _TENSOR:
                child_where = _TENSOR
            elif _is_scalar_like(child) or _nnx_kind(child) is not None:
                child_where = _STATE
            elif stat_dicts and _entry_name(entry) in _STAT_DICTS:
                child_where = _STATE
            else:
                child_where = _STATE if _holds_state(child, memo) else _TENSOR
            walk(child, (*path, entry), child_where)

    memo: dict[int, tuple[Any, bool]] = {}
    walk(opt_state, (), _STATE)
    out = _keyed(found, full_paths)
    if not full_paths:
        for group, lr in _effective_rates(opt_state, strict=False, memo=memo).items():
            out.setdefault(f"effective_learning_rate/{group}", lr)
    return out


def _entry_name(entry: Any) -> Any:
    """The field name or dict key of a path entry (None for sequence indices)."""
    return getattr(entry, "name", getattr(entry, "key", None))


def _keyed(found: list[tuple[tuple[Any, ...], jax.Array]],
           full_paths: bool) -> dict[str, jax.Array]:
    """Keys for the statistics: their paths without wrapper fields, or the
    whole path for those whose short keys would collide (or all, when
    ``full_paths``)."""
    def short(path):
        return path_str(tuple(e for e in path if _entry_name(e) not in _WRAPPER_FIELDS))

    shorts = [path_str(p) if full_paths else short(p) for p, _ in found]
    counts = collections.Counter(shorts)
    out: dict[str, jax.Array] = {}
    for (path, value), key in zip(found, shorts):
        if counts[key] > 1:
            key = path_str(path)
        if key in out:
            raise ValueError(
                f"telemetry: two statistics have the path {key!r}; rename the dict "
                f"keys of the state so that their string forms differ"
            )
        out[key] = value
    return out


# ---------------------------------------------------------------------------
# Effective learning rate per parameter group

# State fields that hold a multiplier on the updates of everything below them.
_SCALE_FIELDS = frozenset({
    "plateau_scale",  # reduce_on_plateau
    "metric_plateau_scale",  # MetricPlateau
    "recovery_scale",  # explosion_guard
    "bold_scale",  # bold_driver
    "loss_multiplier",  # scale_by_loss
})
_GROUP_FIELD = "group_multipliers"  # scale_by_group: one multiplier per group
_PARTITION_FIELD = "inner_states"  # optax.partition: one branch per label
_LEARNING_RATE = "learning_rate"

# A group: (name parts, multiplier or None for 1, a learning rate was seen).
_Group = tuple[tuple[str, ...], Any, bool]
_ONE: list[_Group] = [((), None, False)]


def _times(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return b if a is None else a
    return jnp.asarray(a).astype(jnp.float32) * jnp.asarray(b).astype(jnp.float32)


def _product(a: list[_Group], b: list[_Group]) -> list[_Group]:
    """Transforms applied one after another (a chain): every pair of groups."""
    return [(pa + pb, _times(fa, fb), ha or hb) for pa, fa, ha in a for pb, fb, hb in b]


def _own_factors(node: Any) -> list[_Group]:
    """The multipliers a state NamedTuple holds itself (not its children's)."""
    groups = _ONE
    for field in node._fields:
        value = getattr(node, field)
        if field in _SCALE_FIELDS:
            groups = _product(groups, [((), _nnx.unbox(value), False)])
        elif field == _HYPERPARAMS and isinstance(value, dict) and _LEARNING_RATE in value:
            groups = _product(groups, [((), _nnx.unbox(value[_LEARNING_RATE]), True)])
        elif field == _GROUP_FIELD and isinstance(value, dict):
            groups = _product(groups, [((str(k),), _nnx.unbox(v), False) for k, v in value.items()])
    if type(node).__name__ == "ReduceLROnPlateauState" and "scale" in node._fields:
        groups = _product(groups, [((), _nnx.unbox(node.scale), False)])  # optax.contrib's
    return groups


def _rate_groups(node: Any, memo: dict[int, tuple[Any, bool]]) -> list[_Group]:
    """Every parameter group below ``node`` with the product of the
    multipliers along its way (``memo``: that of :func:`_holds_state`)."""
    if _nnx_kind(node) is not None or _is_scalar_like(node) or node is None:
        return _ONE
    state = _is_namedtuple(node)
    groups = _own_factors(node) if state else _ONE
    for entry, child in _children(node):
        field = _entry_name(entry) if state else None
        if field == _PARTITION_FIELD and isinstance(child, dict):
            branches = [((str(label), *p), f, h) for label, sub in child.items()
                        for p, f, h in _rate_groups(sub, memo)]
            groups = _product(groups, branches)
        elif field not in _STAT_DICTS and _holds_state(child, memo):
            groups = _product(groups, _rate_groups(child, memo))
    return groups


def _effective_rates(opt_state: Any, strict: bool,
                     memo: dict[int, tuple[Any, bool]] | None = None) -> dict[str, jax.Array]:
    groups = _rate_groups(opt_state, {} if memo is None else memo)
    missing = [p for p, _, has_lr in groups if not has_lr]
    if strict and missing:
        names = ", ".join(repr("/".join(p) or DEFAULT_GROUP) for p in missing)
        raise ValueError(
            f"effective_learning_rate: no learning rate found in the state for the "
            f"parameter group(s) {names}; build the optimizer with "
            f"optax.inject_hyperparams, e.g. "
            f"optax.inject_hyperparams(optax.adamw)(learning_rate=schedule), so that "
            f"the state records the learning rate in use"
        )
    return {"/".join(p) or DEFAULT_GROUP: jnp.asarray(f).astype(jnp.float32)
            for p, f, has_lr in groups if has_lr}


def effective_learning_rate(opt_state: Any) -> dict[str, jax.Array]:
    """The learning rate each parameter group gets, all multipliers included.

    .. math::

       \\mathrm{lr}_g = \\mathrm{lr} \\cdot m_g \\cdot s_\\mathrm{plateau}
       \\cdot s_\\mathrm{guard} \\cdots

    the product, along the way from the root of the state to the group, of
    the scheduled learning rate of ``optax.inject_hyperparams`` (its
    ``learning_rate``), the group's multiplier of :func:`scale_by_group`, and
    every scale on the updates: ``reduce_on_plateau``, :class:`MetricPlateau`,
    ``explosion_guard``'s recovery multiplier, ``bold_driver``,
    ``scale_by_loss`` and ``optax.contrib.reduce_on_plateau``. Groups come
    from ``optax.partition`` labels and ``scale_by_group`` rules (named by
    their pattern; ``"default"`` for parameters no rule matches), joined by
    ``/`` (``"adam/encoder"``); an optimizer with neither has the one group
    ``"default"``. Each value is what the state holds after the most recent
    update, i.e. the rate of that update (before any update: of the first).
    Skipped steps (``explosion_guard``) are counted in its own statistics,
    not here. Gradient clipping is not a learning rate and is not included.

    :func:`telemetry` reports the same values as
    ``effective_learning_rate/<group>``.

    Args:
      opt_state: any optimizer state, or a pytree holding one (a Flax
        ``TrainState``, ``nnx.Optimizer.opt_state``). Usable inside ``jit``.

    Returns:
      ``dict[str, jax.Array]``: group name -> float32 scalar.

    Raises:
      ValueError: a group's learning rate is not in the state (the optimizer
        was built with a plain ``optax.adam(schedule)``, whose state keeps only
        a step count): wrap it with ``optax.inject_hyperparams``.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> params = {"backbone": jnp.ones(2), "head": jnp.ones(2)}
      >>> tx = ox.explosion_guard(optax.chain(
      ...     optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
      ...     ox.scale_by_group({"backbone": 0.1})))
      >>> rates = ox.effective_learning_rate(tx.init(params))
      >>> {k: round(float(v), 6) for k, v in rates.items()}
      {'backbone': 0.0001, 'default': 0.001}

    References:
      PyTorch exposes the same number as ``optimizer.param_groups[i]["lr"]``.
    """
    return _effective_rates(opt_state, strict=True)
