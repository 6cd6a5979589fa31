"""Optimizer states survive checkpoints: orbax ``StandardCheckpointer`` and
``flax.serialization`` (msgpack bytes and state dicts) restore every
transform's state bitwise, with its structure and dtypes, and training
continues bitwise identically.

All transforms run side by side in one jitted update (one compilation):
every conformance case, its ``inject_hyperparams`` form, a realistic stack
and an ``optax.partition``. A checkpoint is taken after a NaN and an Inf step
(so counters and statistics are non-trivial), restored into the *initial*
state as target, and the next steps (among them a x1e4 spike) are compared
with the uninterrupted run.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optaxsched as ox
from conformance_cases import BAD_LOSSES, CASES, bad_grad_sequence, make_tree

# optax.adamw in the realistic stack needs standard dtype promotion.
pytestmark = pytest.mark.usefixtures("standard_promotion")

SAVE_AT = 3  # steps before the checkpoint: a good, a NaN and an Inf step


class Entry(NamedTuple):
    name: str
    tx: optax.GradientTransformation
    needs_value: bool


def _stack() -> optax.GradientTransformation:
    schedule = ox.schedules.warmup(ox.schedules.cosine_decay(1e-2, 20), 2)
    return optax.chain(
        ox.clip_by_zscore(warmup_steps=2),
        ox.explosion_guard(
            optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, weight_decay=1e-4),
        ),
        ox.scale_by_group(ox.layer_decay_rules(0.5, 1, embed_pattern=r"^w$")),
        ox.reduce_on_plateau(patience=1),
    )


def _partition() -> optax.GradientTransformation:
    labels = ox.label_by_path({"layers_0": "body"}, default="rest")
    return optax.partition(
        {"body": ox.clip_by_ema_ratio(warmup_steps=1), "rest": optax.sgd(0.1, momentum=0.9)},
        labels,
    )


ENTRIES = (
    [Entry(c.name, c.make(), c.needs_value) for c in CASES]
    + [Entry(c.name + "_injected", c.make_injected(), c.needs_value) for c in CASES if c.inject]
    + [Entry("stack", _stack(), True), Entry("partition", _partition(), False)]
)
IDS = [e.name for e in ENTRIES]


def _side_by_side(entries) -> optax.GradientTransformationExtraArgs:
    """Every entry updates the same gradients; states and outputs are tuples."""
    txs = [optax.with_extra_args_support(e.tx) for e in entries]

    def init_fn(params):
        return tuple(tx.init(params) for tx in txs)

    def update_fn(updates, state, params=None, value=None, **extra_args):
        outs = [
            tx.update(updates, s, params, **({"value": value} if e.needs_value else {}))
            for tx, e, s in zip(txs, entries, state)
        ]
        return tuple(u for u, _ in outs), tuple(s for _, s in outs)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class Run(NamedTuple):
    update: Any
    params: Any
    init: tuple
    saved: tuple  # the state at the checkpoint
    outs: list  # uninterrupted updates after the checkpoint
    final: tuple


def _continue(run: Run, state: tuple) -> tuple[list, tuple]:
    grads, losses = bad_grad_sequence(), BAD_LOSSES
    outs = []
    for i in range(SAVE_AT, len(grads)):
        u, state = run.update(grads[i], state, run.params, value=jnp.float32(losses[i]))
        outs.append(u)
    return outs, state


@pytest.fixture(scope="module")
def run() -> Run:
    with jax.numpy_dtype_promotion("standard"):
        tx = _side_by_side(ENTRIES)
        params = make_tree(0)
        update = jax.jit(tx.update)
        init = tx.init(params)
        state = init
        for i, g in enumerate(bad_grad_sequence()[:SAVE_AT]):
            _, state = update(g, state, params, value=jnp.float32(BAD_LOSSES[i]))
        partial = Run(update, params, init, state, [], ())
        outs, final = _continue(partial, state)
    return partial._replace(outs=outs, final=final)


def _bits(x: Any) -> tuple:
    a = np.asarray(x)
    return a.dtype, a.shape, a.tobytes()


def _assert_bitwise(restored: Any, expected: Any) -> None:
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree_util.tree_leaves(expected)
    ):
        assert _bits(a) == _bits(b), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def checkpointer():
    ckptr = ocp.StandardCheckpointer()
    yield ckptr
    ckptr.close()


def _orbax_round_trip(ckptr, path, state, target):
    ckptr.save(path, state)
    ckptr.wait_until_finished()
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    return ckptr.restore(path, abstract)


@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=IDS)
def test_orbax_round_trip(index, run, checkpointer, tmp_path):
    restored = _orbax_round_trip(
        checkpointer, tmp_path / "ckpt", run.saved[index], run.init[index]
    )
    _assert_bitwise(restored, run.saved[index])


@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=IDS)
def test_flax_serialization_round_trip(index, run):
    saved, target = run.saved[index], run.init[index]
    blob = flax.serialization.to_bytes(saved)
    _assert_bitwise(flax.serialization.from_bytes(target, blob), saved)
    state_dict = flax.serialization.to_state_dict(saved)
    # A state dict is nested dicts of arrays: what checkpoint libraries store.
    flax.serialization.msgpack_restore(flax.serialization.msgpack_serialize(state_dict))
    _assert_bitwise(flax.serialization.from_state_dict(target, state_dict), saved)


@pytest.mark.parametrize("method", ["orbax", "bytes", "state_dict"])
def test_training_continues_bitwise_after_restore(method, run, checkpointer, tmp_path):
    if method == "orbax":
        restored = _orbax_round_trip(checkpointer, tmp_path / "all", run.saved, run.init)
    elif method == "bytes":
        restored = flax.serialization.from_bytes(
            run.init, flax.serialization.to_bytes(run.saved)
        )
    else:
        restored = flax.serialization.from_state_dict(
            run.init, flax.serialization.to_state_dict(run.saved)
        )
    outs, final = _continue(run, restored)
    _assert_bitwise(outs, run.outs)
    _assert_bitwise(final, run.final)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_states_have_no_weak_types(case, run):
    """Restored arrays are never weakly typed, so a state with a weakly typed
    leaf would recompile the step after a restore. (``inject_hyperparams``
    keeps Python-int hyperparameters weakly typed: its own business.)"""
    index = IDS.index(case.name)
    for state in (run.init[index], run.final[index]):
        weak = [
            jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if getattr(x, "weak_type", False)
        ]
        assert not weak, weak


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_state_fields_are_distinct_arrays(case):
    """No array sits in two fields of an initial state: a training step that
    donates the state would donate it twice, which jit rejects."""
    seen: dict[int, str] = {}
    for path, x in jax.tree_util.tree_flatten_with_path(case.make().init(make_tree(0)))[0]:
        key = jax.tree_util.keystr(path)
        assert id(x) not in seen, f"{key} is the same array as {seen[id(x)]}"
        seen[id(x)] = key


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Linear(3, 8, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.embed(x)))


def test_nnx_optimizer_state_through_orbax(checkpointer, tmp_path):
    tx = optax.chain(
        ox.explosion_guard(optax.adam(1e-2)), ox.reduce_on_plateau(patience=1)
    )

    def make():
        model = _Net(nnx.Rngs(0))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads, value=loss)
        return loss

    xs = [jnp.full((4, 3), s, jnp.float32) for s in (1.0, 2.0, jnp.nan, 1.5, 0.5)]
    model, optimizer = make()
    for x in xs[:3]:
        step(model, optimizer, x)
    path = tmp_path / "nnx"
    checkpointer.save(path, nnx.state((model, optimizer)))
    checkpointer.wait_until_finished()

    model2, optimizer2 = make()
    abstract = nnx.state(nnx.eval_shape(make))
    nnx.update((model2, optimizer2), checkpointer.restore(path, abstract))
    skipped = int(ox.telemetry(optimizer.opt_state)["0/guard_skipped_steps"])
    assert skipped >= 1  # the NaN batch
    assert int(ox.telemetry(optimizer2.opt_state)["0/guard_skipped_steps"]) == skipped
    for x in xs[3:]:
        np.testing.assert_array_equal(step(model, optimizer, x), step(model2, optimizer2, x))
    _assert_bitwise(nnx.state((model2, optimizer2)), nnx.state((model, optimizer)))
