"""optaxsched.flax.TrainState with a real linen model, and flax.nnx.Optimizer
feeding ``value=loss`` to the loss-adaptive transforms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, struct

import optaxsched as ox
import optaxsched.flax as oxflax
from optaxsched.flax import TrainState


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(1)(x)


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    y = jnp.asarray(np.sin(np.asarray(x).sum(1, keepdims=True)), jnp.float32)
    return x, y


def _tx():
    # (optax.adam itself trips the suite's strict dtype promotion, hence momentum SGD.)
    return optax.chain(optax.sgd(0.05, momentum=0.9), ox.reduce_on_plateau(factor=0.5, patience=1))


def _loss(apply_fn, params, x, y):
    return jnp.mean((apply_fn({"params": params}, x) - y) ** 2)


@jax.jit
def train_step(state, x, y, offset):
    # ``offset`` lets the test feed a flat "loss" to force plateaus.
    loss, grads = jax.value_and_grad(lambda p: _loss(state.apply_fn, p, x, y))(state.params)
    return state.apply_gradients(grads=grads, value=loss * 0.0 + offset), loss


def test_linen_train_state_forwards_value_and_matches_plain_optax():
    x, y = _data()
    model = MLP()
    params = model.init(jax.random.key(0), x)["params"]
    tx = _tx()
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    offsets = [3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    for off in offsets:
        state, _ = train_step(state, x, y, jnp.float32(off))

    # The same steps by hand with tx.update(..., value=...).
    @jax.jit
    def manual(p, s, off):
        g = jax.grad(lambda q: _loss(model.apply, q, x, y))(p)
        u, s = tx.update(g, s, p, value=off)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for off in offsets:
        p, s = manual(p, s, jnp.float32(off))

    assert int(state.step) == len(offsets)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # patience=1: drops at the 2nd bad value of each plateau (steps 3 and 6).
    assert float(optax.tree.get(state.opt_state, "plateau_scale")) == 0.25
    assert float(optax.tree.get(s, "plateau_scale")) == 0.25


def test_linen_train_state_trains_on_real_loss():
    x, y = _data()
    model = MLP()
    state = TrainState.create(apply_fn=model.apply,
                              params=model.init(jax.random.key(1), x)["params"], tx=_tx())

    @jax.jit
    def step(state):
        loss, grads = jax.value_and_grad(lambda p: _loss(state.apply_fn, p, x, y))(state.params)
        return state.apply_gradients(grads=grads, value=loss), loss

    losses = []
    for _ in range(40):
        state, loss = step(state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_train_state_without_value_and_extra_fields():
    class WithStats(TrainState):
        batch_stats: Any = struct.field(pytree_node=True, default=None)

    params = {"w": jnp.ones(2, jnp.float32)}
    # A plain optax optimizer (no extra-args support) keeps working without value.
    st = WithStats.create(apply_fn=None, params=params, tx=optax.sgd(0.5),
                          batch_stats=jnp.zeros(()))
    st = st.apply_gradients(grads={"w": jnp.ones(2, jnp.float32)}, batch_stats=jnp.ones(()))
    np.testing.assert_allclose(st.params["w"], [0.5, 0.5])
    assert float(st.batch_stats) == 1.0 and int(st.step) == 1
    # ... and with value, which plain optax ignores.
    st = st.apply_gradients(grads={"w": jnp.ones(2, jnp.float32)}, value=jnp.float32(1.0))
    np.testing.assert_allclose(st.params["w"], [0.0, 0.0])
    # A loss-driven transform without value: the library's error, naming the fix.
    st = TrainState.create(apply_fn=None, params=params, tx=ox.bold_driver())
    with pytest.raises(TypeError, match=r"bold_driver needs the current loss.*value=loss"):
        st.apply_gradients(grads=params)


def test_train_state_overwrite_with_gradient_is_kept():
    owg = oxflax._OWG
    params = {"params": {"w": jnp.ones(2, jnp.float32)}, owg: {"s": jnp.zeros(())}}
    st = TrainState.create(apply_fn=None, params=params, tx=ox.scale_by_loss(lambda v: v))
    grads = {"params": {"w": jnp.ones(2, jnp.float32)}, owg: {"s": jnp.full((), 7.0)}}
    st = st.apply_gradients(grads=grads, value=jnp.float32(0.5))
    np.testing.assert_allclose(st.params["params"]["w"], [1.5, 1.5])
    assert float(st.params[owg]["s"]) == 7.0


class NnxModel(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


@nnx.jit
def nnx_step(model, optimizer, x, y, offset):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads, value=loss * 0.0 + offset)
    return loss


@pytest.mark.parametrize("name", ["reduce_on_plateau", "bold_driver", "scale_by_loss"])
def test_nnx_optimizer_update_forwards_value(name):
    x, y = _data()
    loss_tx = {
        "reduce_on_plateau": ox.reduce_on_plateau(factor=0.5, patience=0),
        "bold_driver": ox.bold_driver(decrease=0.5),
        "scale_by_loss": ox.scale_by_loss(lambda v: 1.0 / v),
    }[name]
    model = NnxModel(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(optax.sgd(0.1), loss_tx), wrt=nnx.Param)
    before = jax.tree_util.tree_map(jnp.copy, nnx.state(model, nnx.Param))
    for off in [1.0, 2.0, 4.0]:  # constant-then-rising: every transform ends at 0.25
        nnx_step(model, optimizer, x, y, jnp.float32(off))
    assert int(optimizer.step[...]) == 3
    state = nnx.as_pure(optimizer.opt_state)
    field = {"reduce_on_plateau": "plateau_scale", "bold_driver": "bold_scale",
             "scale_by_loss": "loss_multiplier"}[name]
    assert float(optax.tree.get(state, field)) == 0.25
    after = nnx.state(model, nnx.Param)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before, after)
    assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_nnx_optimizer_without_value_raises_the_library_error():
    model = NnxModel(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, ox.reduce_on_plateau(), wrt=nnx.Param)
    x, y = _data()
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    with pytest.raises(TypeError, match="reduce_on_plateau needs the current loss"):
        optimizer.update(model, grads)



def test_importing_optaxsched_does_not_import_flax():
    code = "import sys, optaxsched; assert 'flax' not in sys.modules, 'flax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[1])
