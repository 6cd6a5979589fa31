"""MetricPlateau: torch's ReduceLROnPlateau stepped once per epoch on a metric.

Compared epoch for epoch against lr sequences recorded from real torch
training loops (``golden/generate_metric_plateau_golden.py``), and used the
three ways a training loop steps it: eagerly between epochs, inside a jitted
epoch-end function, and inside the jitted train step with ``when=``."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optaxsched as ox
from optaxsched import flax as oxflax

GOLDEN = json.loads(
    (Path(__file__).parent / "golden" / "metric_plateau_golden.json").read_text())
K = GOLDEN["steps_per_epoch"]
HP = ("factor", "patience", "threshold", "cooldown", "min_scale", "eps")
MODES = [("min", "rel"), ("min", "abs"), ("max", "rel"), ("max", "abs")]


def _metrics(name):
    return np.array([np.nan if v is None else v for v in GOLDEN["sequences"][name]],
                    np.float32)


def _torch_lrs(case):
    """The lr of every update, rebuilt from the recorded changes (base lr 1)."""
    lrs, current, changes = [], 1.0, dict((t, lr) for t, lr in case["changes"])
    for t in range(GOLDEN["epochs"] * K):
        current = changes.get(t, current)
        lrs.append(current)
    return np.array(lrs)


@functools.partial(jax.jit, static_argnames=("mode", "threshold_mode"))
def _epoch_scales(metrics, hp, *, mode, threshold_mode):
    """Scale in force during each epoch, for a batch of (metrics, hp) cases."""

    def one(metrics, hp):
        plateau = ox.MetricPlateau(mode=mode, threshold_mode=threshold_mode, **hp)

        def epoch(state, metric):
            return plateau.step(state, metric), plateau.scale(state)

        return jax.lax.scan(epoch, plateau.init(None), metrics)[1]

    return jax.vmap(one)(metrics, hp)


@pytest.mark.parametrize("mode,threshold_mode", MODES)
def test_matches_torch_epoch_for_epoch(mode, threshold_mode):
    cases = [c for c in GOLDEN["cases"]
             if c["mode"] == mode and c["threshold_mode"] == threshold_mode]
    assert len(cases) >= 30
    metrics = jnp.asarray(np.stack([_metrics(c["sequence"]) for c in cases]))
    hp = {k: jnp.asarray([c[k] for c in cases],
                         jnp.int32 if k in ("patience", "cooldown") else jnp.float32)
          for k in HP}
    scales = np.asarray(_epoch_scales(metrics, hp, mode=mode, threshold_mode=threshold_mode))
    reductions = 0
    for case, per_epoch in zip(cases, scales):
        want = _torch_lrs(case)
        got = np.repeat(per_epoch, K)  # every update of an epoch uses its scale
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-12,
                                   err_msg=f"{case['sequence']} {[case[k] for k in HP]}")
        reductions += len(case["changes"])
    assert reductions > 50  # the cases do exercise the rule


def _setup(plateau, lr=0.1):
    tx = optax.chain(optax.sgd(lr), plateau)
    params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    return tx, params, tx.init(params)


def test_update_scales_and_step_is_the_only_change():
    plateau = ox.MetricPlateau(factor=0.5, patience=0)
    tx, params, state = _setup(plateau)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state2 = tx.update(grads, state, params, value=123.0)  # extra args ignored
    assert float(plateau.scale(state2)) == 1.0
    state = plateau.step(state, 1.0)
    state = plateau.step(state, 2.0)  # worse: patience 0 cuts at once
    assert float(plateau.scale(state)) == 0.5
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["w"], np.full(3, -0.05, np.float32))
    tele = ox.telemetry(state)
    assert float(tele["1/metric_plateau_scale"]) == 0.5
    assert int(tele["1/metric_plateau_steps"]) == 2
    assert int(tele["1/metric_plateau_reductions"]) == 1


def test_eager_jit_and_inside_train_step_agree():
    """The three ways to step it give the same scales, epoch for epoch."""
    plateau = ox.MetricPlateau(mode="max", factor=0.5, patience=1, cooldown=1)
    tx, params, state0 = _setup(plateau)
    accs = [0.5, 0.6, 0.6, 0.6, 0.61, 0.6, 0.6, 0.6, 0.7, 0.7]

    eager = state0
    jitted_step = jax.jit(plateau.step)
    jitted = state0
    for acc in accs:
        eager = plateau.step(eager, acc)
        jitted = jitted_step(jitted, jnp.float32(acc))
    assert float(plateau.scale(eager)) == 0.25
    jax.tree_util.tree_map(np.testing.assert_array_equal, eager, jitted)

    # Inside the train step: the metric is handed in on every step and taken
    # into account only on the last step of each epoch.
    @jax.jit
    def train_step(params, state, metric, epoch_end):
        grads = jax.tree_util.tree_map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        state = plateau.step(state, metric, when=epoch_end)
        return optax.apply_updates(params, updates), state

    inside, p = state0, params
    for acc in accs:
        for i in range(3):
            p, inside = train_step(p, inside, jnp.float32(acc), jnp.asarray(i == 2))
    jax.tree_util.tree_map(np.testing.assert_array_equal, eager, inside)


def test_flax_train_state_with_donated_step():
    """The epoch-end step between donated train steps: no deleted buffers."""
    plateau = ox.MetricPlateau(factor=0.1, patience=0)
    params = {"w": jnp.ones(3)}
    ts = oxflax.TrainState.create(apply_fn=None, params=params,
                                  tx=optax.chain(optax.sgd(1.0), plateau))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(ts):
        return ts.apply_gradients(grads={"w": jnp.ones(3)})

    ws = []
    for loss in [1.0, 2.0, 3.0]:
        ts = train_step(train_step(ts))
        ws.append(float(ts.params["w"][0]))
        ts = ts.replace(opt_state=plateau.step(ts.opt_state, loss))
        scale = plateau.scale(ts.opt_state)  # a copy: survives the next donation
    ts = train_step(ts)
    assert float(scale) == pytest.approx(0.01)
    # Epoch 0: 2 steps at 1; epoch 1: at 1 (1.0 was the first, best); then 0.1, 0.01.
    np.testing.assert_allclose(ws, [-1.0, -3.0, -3.2], rtol=1e-6)
    assert float(ts.params["w"][0]) == pytest.approx(-3.21, rel=1e-6)


def test_nnx_optimizer_is_updated_in_place():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    plateau = ox.MetricPlateau(factor=0.5, patience=0)
    optimizer = nnx.Optimizer(model, optax.chain(optax.sgd(1.0), plateau), wrt=nnx.Param)
    plateau.step(optimizer.opt_state, 1.0)
    plateau.step(optimizer.opt_state, 1.0)
    assert float(plateau.scale(optimizer.opt_state)) == 0.5
    before = np.asarray(model.bias[...])
    grads = jax.tree_util.tree_map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    np.testing.assert_allclose(np.asarray(model.bias[...]), before - 0.5)


def test_every_plateau_state_in_a_partition_is_stepped():
    plateau = ox.MetricPlateau(factor=0.5, patience=0)
    tx = optax.partition({"a": optax.chain(optax.sgd(1.0), plateau), "b": optax.sgd(1.0)},
                         {"w": "a", "b": "b"})
    state = tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})
    state = plateau.step(plateau.step(state, 1.0), 1.0)
    updates, _ = tx.update({"w": jnp.ones(2), "b": jnp.ones(2)}, state)
    np.testing.assert_array_equal(updates["w"], [-0.5, -0.5])
    np.testing.assert_array_equal(updates["b"], [-1.0, -1.0])


def test_nonfinite_metric_is_bad_and_never_stored():
    plateau = ox.MetricPlateau(factor=0.5, patience=1)
    state = plateau.init(None)
    for m in [1.0, math.nan, math.inf, 0.5]:
        state = plateau.step(state, m)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in state)
    assert float(state.metric_plateau_best) == 0.5
    assert float(state.metric_plateau_scale) == 0.5  # nan, inf: two bad epochs


def test_repr_and_bf16_updates_keep_dtype():
    plateau = ox.MetricPlateau(patience=2, mode="max")
    assert "patience=2" in repr(plateau) and "mode='max'" in repr(plateau)
    state = plateau.step(plateau.step(plateau.step(plateau.step(
        plateau.init(None), 1.0), 1.0), 1.0), 1.0)
    u, _ = plateau.update({"w": jnp.ones(2, jnp.bfloat16)}, state)
    assert u["w"].dtype == jnp.bfloat16 and float(u["w"][0]) == pytest.approx(0.1, rel=1e-2)


@pytest.mark.parametrize("call,err,match", [
    (lambda: ox.MetricPlateau(factor=1.5), ValueError, r"MetricPlateau\(factor=1.5\)"),
    (lambda: ox.MetricPlateau(patience=-1), ValueError, r"patience"),
    (lambda: ox.MetricPlateau(mode="maximum"), ValueError, r"mode"),
    (lambda: ox.MetricPlateau(threshold_mode="relative"), ValueError, r"threshold_mode"),
    (lambda: ox.MetricPlateau(min_scale=2.0), ValueError, r"min_scale"),
    (lambda: ox.MetricPlateau().step(optax.sgd(1.0).init({"w": jnp.ones(1)}), 1.0),
     ValueError, r"holds no MetricPlateauState"),
    (lambda: ox.MetricPlateau().scale(()), ValueError, r"holds no MetricPlateauState"),
    (lambda: ox.MetricPlateau().step(ox.MetricPlateau().init(None), "0.5"),
     TypeError, r"metric='0.5'"),
    (lambda: ox.MetricPlateau().step(ox.MetricPlateau().init(None), {"acc": 0.5}),
     TypeError, r"metric"),
    (lambda: ox.MetricPlateau().step(ox.MetricPlateau().init(None), jnp.ones(3)),
     ValueError, r"shape \(3,\)"),
    (lambda: ox.MetricPlateau().step(ox.MetricPlateau().init(None), 1.0, when=1),
     TypeError, r"when"),
])
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
