"""The 8-device checks of ``test_conformance_sharded.py``, run as a script.

JAX fixes the device count when it starts, so these checks run in a
subprocess started with ``--xla_force_host_platform_device_count=8``; one
process serves all of them, so JAX starts and the mesh is built once.
Each section collects its failures instead of stopping at the first; the
script prints them as one JSON line after ``RESULT``, a list per section.

Every run is one jitted training step that updates every case side by side
(one compilation), ``STEPS`` times, with params and states donated:

- ``donation_one_device`` / ``donation_sharded``: on one device and sharded
  over the mesh, no warning (XLA warns about a donated buffer it cannot
  reuse), the donated arrays are consumed and the second call does not
  compile again. The one-device run is the reference of the others.
- ``named_sharding``: params, gradients and optimizer state sharded
  FSDP-style (``NamedSharding`` on the leading axis) give the single-device
  updates and states, for every conformance case.
- ``shard_map``: every case whose factory takes ``axis_name``, run inside
  ``jax.shard_map`` with each device holding 1/8 of every leaf, gives the
  single-device updates, states and telemetry: its global statistics are
  ``psum``-ed over the axis. ``check_vma`` also proves that every replicated
  state field is the same on all devices.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optaxsched as ox
from conformance_cases import CASES, LOSSES, grad_sequence, make_tree
from optaxsched._paths import path_str

# The same settings as conftest.py: the library must not upcast or broadcast
# by accident on the multi-device path either.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

AXIS = "fsdp"
STEPS = 4

# Counts XLA compilations. (A jitted function's own cache also grows when an
# argument goes from uncommitted to committed, which compiles nothing.)
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compilations: list[float] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: _compilations.append(duration)
    if event == _COMPILE_EVENT else None
)


class Entry(NamedTuple):
    name: str
    tx: optax.GradientTransformation
    needs_value: bool


def side_by_side(entries: list[Entry]) -> Callable:
    """One training step updating every entry's own params and state.

    All transforms share one compilation (compile time dominates these
    checks). Returns ``(params, states, updates)``, each a tuple by entry.
    """

    def step(all_params, states, grads, value):
        new_params, new_states, all_updates = [], [], []
        for entry, params, state in zip(entries, all_params, states):
            kw = {"value": value} if entry.needs_value else {}
            updates, state = entry.tx.update(grads, state, params, **kw)
            new_params.append(optax.apply_updates(params, updates))
            new_states.append(state)
            all_updates.append(updates)
        return tuple(new_params), tuple(new_states), tuple(all_updates)

    return step


def state_specs(state, params):
    """``P(AXIS)`` for the parameter-shaped leaves of an optimizer state.

    A leaf is parameter-shaped when its path ends with a parameter's path and
    it has that parameter's shape (sgd's momentum ``.../trace/w``); every
    other leaf (counters, statistics, ``clip_by_percentile``'s history) is
    replicated.
    """
    shapes = {path_str(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

    def spec(path, x):
        key = path_str(path)
        for name, shape in shapes.items():
            if (key == name or key.endswith("/" + name)) and np.shape(x) == shape:
                return P(AXIS)
        return P()

    return jax.tree_util.tree_map_with_path(spec, state)


def place(tree, specs, placement):
    """Each leaf of ``tree`` in buffers of its own on ``placement(spec)``.

    Donating one buffer twice (the same zeros in two states) is an error, so
    every leaf is copied first: a replicated ``device_put`` may reuse the
    source buffer for the shard on its device even with ``may_alias=False``.
    A placement of None leaves the copy on the default device, uncommitted,
    as arrays are in a single-device training loop.
    """

    def put(x, spec):
        target = placement(spec)
        return x.copy() if target is None else jax.device_put(x.copy(), target, may_alias=False)

    return jax.tree_util.tree_map(put, tree, specs)


def shared_arrays(state) -> list[str]:
    """The fields of ``state`` that hold the same array object as an earlier one."""
    first: dict[int, str] = {}
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        key = jax.tree_util.keystr(path)
        if id(x) in first:
            out.append(f"{key} is the same array as {first[id(x)]}")
        first.setdefault(id(x), key)
    return out


def train(step, all_params, states, grads, devices: int) -> list:
    """``STEPS`` calls of ``jit(step)`` with params and states donated.

    Raises AssertionError when a donated array is not consumed, a call after
    the first compiles or the new params do not lie on ``devices`` devices;
    any warning (XLA warns about a donated buffer it cannot reuse) is an
    error. Returns each step's ``(updates, states)`` as NumPy arrays.
    """
    jitted = jax.jit(step, donate_argnums=(0, 1))
    history = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, g in enumerate(grads):
            # A scalar the step overwrites without reading is pruned from the
            # call, so only arrays must have been consumed.
            donated = [x for x in jax.tree_util.tree_leaves((all_params, states)) if x.ndim]
            all_params, states, updates = jitted(
                all_params, states, g, jnp.float32(LOSSES[i])
            )
            kept = [x for x in donated if not x.is_deleted()]
            spread = {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(all_params)}
            assert spread == {devices}, f"params on {spread} devices, not {devices}"
            assert not kept, f"step {i}: {len(kept)} donated arrays were not consumed"
            if i == 0:
                compiled = len(_compilations)
            # Copies: a NumPy view of a CPU buffer would keep the buffer alive,
            # and a buffer referenced from outside cannot be donated.
            history.append(jax.tree_util.tree_map(np.array, (updates, states)))
    assert len(_compilations) == compiled, "a later call compiled again"
    return history


def compare(ref, out, rtol=2e-5, atol=1e-6) -> None:
    assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(out)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree_util.tree_leaves(out)
    ):
        np.testing.assert_allclose(
            np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )


def compare_entries(entries, refs, history, what) -> list[str]:
    """Failures where ``history`` (by step, then entry) differs from ``refs``."""
    failures = []
    for k, entry in enumerate(entries):
        try:
            for i, (updates, states) in enumerate(history):
                ref_updates, ref_states = refs[i]
                compare((ref_updates[entry.name], ref_states[entry.name]),
                        (updates[k], states[k]))
            if what:
                what(entry, refs[-1][1][entry.name], history[-1][1][k])
        except AssertionError as e:
            failures.append(f"{entry.name}: {e}")
    return failures


def run_all(mesh, params, grads) -> dict[str, list[str]]:
    row, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    param_specs = jax.tree_util.tree_map(lambda _: P(AXIS), params)
    entries = [Entry(c.name, c.make(), c.needs_value) for c in CASES]
    init = lambda entries: tuple(e.tx.init(params) for e in entries)  # noqa: E731
    specs = lambda states: tuple(state_specs(s, params) for s in states)  # noqa: E731
    result: dict[str, list[str]] = {}

    # Every case on one device, donated: the reference for the others. The
    # states go in as init returns them, as in a user's loop: two fields
    # sharing one array would be donated twice, which is an error.
    def on_one(_spec):
        return None

    states = init(entries)
    shared = [f"{e.name}: {msg}" for e, st in zip(entries, states) for msg in shared_arrays(st)]
    result["donation_one_device"] = shared
    try:
        history = train(
            side_by_side(entries), tuple(place(params, param_specs, on_one) for _ in entries),
            states, [place(g, param_specs, on_one) for g in grads], devices=1,
        )
    except Exception as e:  # a warning raised as an error included
        result["donation_one_device"].append(f"{type(e).__name__}: {e}")
        # Copies of the states still give the reference for the other checks.
        states = init(entries)
        history = train(
            side_by_side(entries), tuple(place(params, param_specs, on_one) for _ in entries),
            place(states, specs(states), on_one),
            [place(g, param_specs, on_one) for g in grads], devices=1,
        )
    refs = [
        ({e.name: u[k] for k, e in enumerate(entries)},
         {e.name: s[k] for k, e in enumerate(entries)})
        for u, s in history
    ]

    # FSDP-style NamedSharding, donated: jit partitions the same program.
    def sharded(spec):
        return row if spec == P(AXIS) else rep

    states = init(entries)  # the first ones were donated
    try:
        history = train(
            side_by_side(entries), tuple(place(params, param_specs, sharded) for _ in entries),
            place(states, specs(states), sharded),
            [place(g, param_specs, sharded) for g in grads], devices=8,
        )
        result["donation_sharded"] = []
        result["named_sharding"] = compare_entries(entries, refs, history, None)
    except Exception as e:
        result["donation_sharded"] = [f"{type(e).__name__}: {e}"]

    # shard_map: each device holds 1/8 of every leaf and only the axis_name
    # psum makes the statistics global. check_vma (on by default) rejects a
    # replicated output that is not provably the same on every device.
    axis_entries = [
        Entry(c.name, c.factory(**c.kwargs, axis_name=AXIS), c.needs_value)
        for c in CASES if "axis_name" in inspect.signature(c.factory).parameters
    ]
    assert axis_entries, "no transform takes axis_name"
    states = init(axis_entries)
    state_spec = specs(states)
    all_param_specs = tuple(param_specs for _ in axis_entries)
    step = jax.shard_map(
        side_by_side(axis_entries), mesh=mesh,
        in_specs=(all_param_specs, state_spec, param_specs, P()),
        out_specs=(all_param_specs, state_spec, all_param_specs),
    )

    def same_telemetry(entry, ref_state, state):
        expected = ox.telemetry(ref_state)
        assert expected, entry.name
        compare(expected, ox.telemetry(state))

    try:
        history = train(
            step, tuple(place(params, param_specs, sharded) for _ in axis_entries),
            place(states, state_spec, sharded),
            [place(g, param_specs, sharded) for g in grads], devices=8,
        )
        result["shard_map"] = compare_entries(axis_entries, refs, history, same_telemetry)
    except Exception as e:  # a vma error names a leaf that differs per device
        result["shard_map"] = [f"{type(e).__name__}: {e}"]

    # The check has teeth: without axis_name each device sees only its
    # shard's norm (check_vma off, since that norm is then not replicated).
    tx = ox.clip_by_global_norm(8.0)
    local_norm = jax.jit(
        jax.shard_map(
            lambda g, s: tx.update(g, s)[1].gclip_grad_norm[None], mesh=mesh,
            in_specs=(param_specs, P()), out_specs=P(AXIS), check_vma=False,
        )
    )(grads[0], tx.init(params))
    if np.allclose(local_norm, float(optax.tree.norm(grads[0])), rtol=1e-3):
        result["shard_map"].append("without axis_name the norm was global: no psum tested")
    return result


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), (AXIS,))
    result = run_all(mesh, make_tree(0), grad_sequence(STEPS))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
