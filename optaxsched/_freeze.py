"""Run an inner optimizer's update with its new state frozen *where it is made*.

``explosion_guard`` must leave the inner state bitwise unchanged on a skipped
step. The obvious way, ``jnp.where(skip, old_state, new_state)`` after the
update, is correct but slow on XLA:CPU: the inner updates are still computed
from the *unselected* new state, so the kernel that applies them must read
the old state while the select writes the new state into the same donated
buffer, and XLA inserts a copy of every state array (measured 3.5-5x the step
time of plain Adam at 10M parameters).

Here the inner update is traced to a jaxpr and re-evaluated with the select
inserted right after each equation that produces a state output, so every
later use -- including the computation of the updates -- reads the selected
value. This changes no value when the step is taken (select picks the new
value) and, when it is skipped, only intermediate values that end up in the
updates, which the guard zeroes with a select anyway. XLA then fuses each
select into the kernel that makes the state and the apply kernel reads the
state it just wrote, with no copies. (The values are the same; the bits of a
taken step can still differ in the last place from an unguarded step, because
XLA:CPU contracts a multiply and an add into one FMA depending on how LLVM
orders the operands of a kernel, and the select changes that order.)

Anything not recognised as safe takes the **fallback**, the plain select
after the update, which is always correct and only slower:

* a call with no tracer among its arguments (eager use) runs the inner update
  as it is: op by op there are no fused kernels to save copies in;
* an inner update that cannot be traced abstractly (it needs an array's
  value: Python control flow, an index, NumPy) runs as it is;
* a state output that is not made by an equation (an input passed through, a
  literal) or whose type differs from the old leaf's (a state that changes
  dtype or shape; those get ``jnp.where``'s promotion) is selected after the
  update;
* equations are re-bound as ``jax.core.eval_jaxpr`` does, control flow
  (``cond``, ``while``, ``scan``), custom derivatives and callbacks included;
  a select is then placed right after the equation, never inside its
  sub-jaxprs. Only plain nested ``jit`` calls (no shardings, layouts, mesh or
  compiler options) are opened so that uses inside them read the selected
  value; any other call keeps its own semantics and is selected after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from optaxsched._validation import is_traced

__all__ = ["update_with_frozen_state"]

# The nested-jit primitive: "jit" since JAX 0.7, "pjit" before.
_JIT_PRIMITIVES = frozenset({"jit", "pjit"})

# What tracing raises when a function needs a concrete value.
_NEEDS_VALUES = (
    jax.errors.ConcretizationTypeError,  # bool(), float(), int() of a tracer
    jax.errors.TracerIntegerConversionError,  # a tracer as an index
    jax.errors.TracerArrayConversionError,  # np.asarray() of a tracer
)


def _select(skip: jax.Array, old: Any, new: Any) -> Any:
    # lax.select, not jnp.where: one primitive per state array instead of a
    # nested jit call, which matters for trace and lowering time at
    # hundreds of leaves.
    return jax.lax.select(skip, old, new)


def _plain_select(skip: jax.Array, old: Any, new: Any) -> Any:
    """The select after the update, for a leaf not frozen where it is made."""
    if jnp.shape(old) == jnp.shape(new) and jnp.result_type(old) == jnp.result_type(new):
        return _select(skip, old, new)
    # A leaf whose dtype or shape changed: lax.select would reject it; give it
    # what the plain `jnp.where(skip, old, new)` would (promotion, broadcast).
    return jnp.where(skip, old, new)


def _is_traced(*trees: Any) -> bool:
    return any(is_traced(x) for x in jax.tree_util.tree_leaves(trees))


def _inlinable(eqn: Any) -> bool:
    """Whether ``eqn`` is a nested ``jit`` that means nothing but its jaxpr.

    Its equations can then be evaluated in place, so a select pushed into it
    is read by the uses inside. A jit with shardings, layouts, a mesh or
    compiler options would lose them if inlined; it is selected after.
    """
    p = eqn.params
    if eqn.primitive.name not in _JIT_PRIMITIVES or not isinstance(
        p.get("jaxpr"), jcore.ClosedJaxpr
    ):
        return False
    shardings = (*p.get("in_shardings", ()), *p.get("out_shardings", ()))
    layouts = (*p.get("in_layouts", ()), *p.get("out_layouts", ()))
    return (
        all(type(s).__name__ == "UnspecifiedValue" for s in shardings)
        and all(x is None for x in layouts)
        and getattr(p.get("ctx_mesh"), "empty", True)
        and not p.get("compiler_options_kvs")
    )


def _bind(eqn: Any, invals: list) -> list:
    """Re-bind ``eqn`` on ``invals`` as ``jax.core.eval_jaxpr`` does."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: list = []
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def _eval_inlined(eqn: Any, invals: list, hooks: dict) -> tuple[list, list[bool]]:
    """Evaluate a plain nested jit in place, with ``hooks`` on its outputs
    pushed to the callee's variables. Returns the outputs and, for each,
    whether its hook was already applied inside."""
    sub = eqn.params["jaxpr"]
    sub_invars = set(sub.jaxpr.invars)
    inner_hooks: dict = {}
    for out_v, sub_v in zip(eqn.outvars, sub.jaxpr.outvars):
        if (
            out_v in hooks
            and isinstance(sub_v, jcore.Var)
            and sub_v not in sub_invars
            and sub_v not in inner_hooks
        ):
            inner_hooks[sub_v] = hooks[out_v]
    outs = _eval(sub.jaxpr, sub.consts, invals, inner_hooks)
    done = [
        isinstance(sub_v, jcore.Var)
        and out_v in hooks
        and inner_hooks.get(sub_v) is hooks[out_v]
        for out_v, sub_v in zip(eqn.outvars, sub.jaxpr.outvars)
    ]
    return outs, done


def _eval(jaxpr: Any, consts: Any, args: Any, hooks: dict) -> list:
    """``jax.core.eval_jaxpr`` that applies ``hooks[var]`` to the value of ``var``.

    Hooks on the outputs of plain nested ``jit`` calls are pushed into the
    callee so that uses inside it see the hooked value as well.
    """
    env: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    def write(v: Any, val: Any, hooked: bool = False) -> None:
        if isinstance(v, jcore.DropVar):
            return
        hook = None if hooked else hooks.get(v)
        env[v] = hook(val) if hook is not None else val

    for v, val in zip(jaxpr.constvars, consts):
        write(v, val)
    for v, val in zip(jaxpr.invars, args):
        write(v, val)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if any(v in hooks for v in eqn.outvars) and _inlinable(eqn):
            outs, done = _eval_inlined(eqn, invals, hooks)
        else:
            outs = _bind(eqn, invals)
            done = [False] * len(outs)
        for v, val, hooked in zip(eqn.outvars, outs, done):
            write(v, val, hooked)
    return [read(v) for v in jaxpr.outvars]


def _plain_update(
    update_fn: Callable[..., tuple[Any, Any]],
    skip: jax.Array,
    updates: Any,
    state: Any,
    params: Any,
    extra_args: dict[str, Any],
) -> tuple[Any, Any]:
    """The fallback: the update as it is, then the plain select."""
    new_updates, new_state = update_fn(updates, state, params, **extra_args)
    _check_structure(new_state, state)
    return new_updates, jax.tree_util.tree_map(
        lambda o, n: _plain_select(skip, o, n), state, new_state
    )


def _check_structure(new_state: Any, state: Any) -> None:
    # Annotated with jax's public alias: mypy cannot resolve jaxlib's
    # PyTreeDef (a compiled extension) and would reject `!=` on it.
    new_tree: jax.tree_util.PyTreeDef = jax.tree_util.tree_structure(new_state)
    old_tree: jax.tree_util.PyTreeDef = jax.tree_util.tree_structure(state)
    if new_tree != old_tree:
        raise TypeError(
            "explosion_guard: the inner optimizer returned a state whose structure "
            f"differs from the one it was given ({new_tree} vs {old_tree}); a state "
            "that changes structure cannot be frozen or carried through jit"
        )


def _state_hooks(
    jaxpr: Any, state_invars: list, n_u: int, skip: jax.Array, old_leaves: list
) -> tuple[dict, set[int]]:
    """Hooks freezing each state output where it is made, and the indices of
    the state leaves they cover; the other leaves take the plain select."""
    invars = set(jaxpr.invars)
    hooks: dict = {}
    hooked: set[int] = set()
    for j, (v, old_v, old) in enumerate(zip(jaxpr.outvars[n_u:], state_invars, old_leaves)):
        # Only a variable made by an equation (or a constant), of exactly the
        # old leaf's type (shape, dtype, weak type, sharding): the select then
        # has the type every later use was traced with.
        if (
            isinstance(v, jcore.Var)
            and v not in invars
            and v not in hooks
            and v.aval == old_v.aval
        ):
            hooks[v] = lambda new, old=old: _select(skip, old, new)
            hooked.add(j)
    return hooks, hooked


def update_with_frozen_state(
    update_fn: Callable[..., tuple[Any, Any]],
    skip: jax.Array,
    updates: Any,
    state: Any,
    params: Any,
    extra_args: dict[str, Any],
) -> tuple[Any, Any]:
    """``update_fn(updates, state, params, **extra_args)`` with the new state
    replaced by ``state`` where ``skip`` is true.

    Returns the inner updates (computed from the selected state; the caller
    must zero them when ``skip``) and the selected state, which is bitwise
    ``state`` when ``skip`` and the inner optimizer's new state otherwise (a
    leaf whose dtype the inner optimizer changes is promoted as ``jnp.where``
    promotes). Raises ``TypeError`` if the inner optimizer changes the state's
    structure.
    """
    args = (update_fn, skip, updates, state, params, extra_args)
    if not _is_traced(skip, updates, state, params, extra_args):
        return _plain_update(*args)
    in_leaves, in_tree = jax.tree_util.tree_flatten((updates, state, params))

    def flat_update(*leaves):
        u, s, p = jax.tree_util.tree_unflatten(in_tree, leaves)
        return update_fn(u, s, p, **extra_args)

    try:
        closed, (out_u_shape, out_s_shape) = jax.make_jaxpr(flat_update, return_shape=True)(
            *in_leaves
        )
    except _NEEDS_VALUES:
        # The update needs an array's value (Python control flow, an index,
        # NumPy), so it has no jaxpr for abstract inputs. Under a jit the
        # plain call raises the same error; under grad or vmap with a
        # concrete state the values are there.
        return _plain_update(*args)
    _check_structure(out_s_shape, state)
    old_leaves = jax.tree_util.tree_leaves(state)
    n_u = len(jax.tree_util.tree_leaves(out_u_shape))
    n_in_u = len(jax.tree_util.tree_leaves(updates))
    state_invars = closed.jaxpr.invars[n_in_u : n_in_u + len(old_leaves)]
    hooks, hooked = _state_hooks(closed.jaxpr, state_invars, n_u, skip, old_leaves)
    outs = _eval(closed.jaxpr, closed.consts, in_leaves, hooks)
    frozen = [
        val if j in hooked else _plain_select(skip, old, val)
        for j, (val, old) in enumerate(zip(outs[n_u:], old_leaves))
    ]
    return (
        jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_u_shape), outs[:n_u]),
        jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), frozen),
    )
