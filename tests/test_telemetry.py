"""``telemetry``: which leaves it reports, under which keys, and inside jit."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxsched as ox
from conformance_cases import CASES, LOSSES, grad_sequence, make_tree
from optaxsched._paths import path_str


def _scalar_leaves(tree) -> dict[str, jax.Array]:
    """Every 0-d leaf keyed by its path: what ``per_tensor=True`` must return
    for states made only of NamedTuples and parameter trees."""
    return {
        path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if np.ndim(x) == 0
    }


@pytest.fixture(scope="module")
def params():
    return make_tree(0)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_case_reports_its_scalar_fields(case, params):
    tx = case.make()
    state = tx.init(params)
    for i, g in enumerate(grad_sequence(2)):
        kw = {"value": jnp.float32(LOSSES[i])} if case.needs_value else {}
        _, state = tx.update(g, state, params, **kw)
    stats = ox.telemetry(state, full_paths=True)
    every = ox.telemetry(state, per_tensor=True, full_paths=True)
    assert stats, case.name
    # The library's states hold statistics and parameter-shaped trees only,
    # so with per_tensor every 0-d leaf is reported, at its own path.
    assert every.keys() == _scalar_leaves(state).keys()
    for key, value in every.items():
        assert value is _scalar_leaves(state)[key]
    # Without it, exactly the direct 0-d fields of the state NamedTuples
    # (nested NamedTuples included; not the inner optimizer's momentum).
    assert set(stats) <= set(every)
    for key in set(every) - set(stats):
        assert "adagc_gamma/" in key or "adagc_threshold/" in key, key


def test_keys_in_chain_guard_and_inject(params):
    schedule = ox.schedules.linear(0.1, 0.0, 10)
    tx = optax.chain(
        ox.clip_by_zscore(warmup_steps=2),
        ox.explosion_guard(
            optax.inject_hyperparams(optax.sgd)(learning_rate=schedule, momentum=0.9)
        ),
        ox.reduce_on_plateau(),
    )
    state = tx.init(params)
    stats = ox.telemetry(state)
    assert "0/zclip_mean" in stats
    assert "1/guard_skipped_steps" in stats
    assert "1/guard_recovery/recovery_scale" in stats
    assert "1/hyperparams/learning_rate" in stats
    assert "1/hyperparams/momentum" in stats
    assert "2/plateau_scale" in stats
    assert float(stats["effective_learning_rate/default"]) == pytest.approx(0.1)
    # sgd's momentum trace mirrors the parameters: not a statistic.
    assert not any("trace" in k for k in stats)
    assert all(v.ndim == 0 for v in stats.values())
    # Keys name real locations in the state.
    assert stats["1/guard_recovery/recovery_scale"] is state[1].guard_recovery.recovery_scale
    assert stats["2/plateau_scale"] is state[2].plateau_scale


def test_partition_and_multi_steps(params):
    labels = {"w": "fast", "b": "plateau", "layers_0": {"kernel": "fast"}}
    tx = optax.MultiSteps(
        optax.partition({"fast": ox.clip_by_global_norm(1.0), "plateau": ox.reduce_on_plateau()},
                        labels),
        every_k_schedule=2,
    )
    state = tx.init(params)
    stats = ox.telemetry(state)
    assert "mini_step" in stats and "gradient_step" in stats
    assert "fast/gclip_grad_norm" in stats
    assert "plateau/plateau_best" in stats
    full = ox.telemetry(state, full_paths=True)
    assert "inner_opt_state/inner_states/fast/inner_state/gclip_grad_norm" in full
    assert full["inner_opt_state/inner_states/plateau/inner_state/plateau_best"] is (
        stats["plateau/plateau_best"])
    # The accumulated gradients are parameter data.
    assert not any("acc_grads" in k for k in stats)


def test_scalar_parameters_and_big_arrays_are_skipped():
    params = {"temperature": jnp.float32(1.0), "w": jnp.ones(3, jnp.float32)}
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), ox.clip_by_percentile(history=5))
    state = tx.init(params)
    stats = ox.telemetry(state)
    assert "0/0/trace/temperature" not in stats  # the momentum of a 0-d parameter
    assert "0/0/trace/temperature" in ox.telemetry(state, per_tensor=True)
    assert "1/autoclip_count" in stats
    assert not any(k.endswith("autoclip_history") for k in ox.telemetry(state, per_tensor=True))
    assert ox.telemetry(optax.sgd(0.1).init(params)) == {}


def test_inside_jit_returns_the_scheduled_learning_rate(params):
    schedule = ox.schedules.linear(1.0, 0.0, 4)
    tx = optax.chain(
        ox.clip_by_global_norm(8.0),
        optax.inject_hyperparams(optax.sgd)(learning_rate=schedule),
    )

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, ox.telemetry(state)

    state = tx.init(params)
    lrs, norms = [], []
    for g in grad_sequence(3):
        params, state, stats = step(params, state, g)
        lrs.append(float(stats["1/hyperparams/learning_rate"]))
        norms.append(float(stats["0/gclip_grad_norm"]))
    # inject_hyperparams evaluates the schedule at the update count.
    np.testing.assert_allclose(lrs, [1.0, 0.75, 0.5], rtol=1e-6)
    expected = [float(optax.tree.norm(g)) for g in grad_sequence(3)]
    np.testing.assert_allclose(norms, expected, rtol=1e-5)


def test_adds_no_operations_under_jit(params):
    state = optax.chain(
        ox.clip_by_zscore(), ox.explosion_guard(optax.sgd(0.1, momentum=0.9))
    ).init(params)
    jaxpr = jax.make_jaxpr(ox.telemetry)(state)
    assert not jaxpr.eqns
    # Output scalars are the state's own input variables, passed through.
    assert set(map(id, jaxpr.jaxpr.outvars)) <= set(map(id, jaxpr.jaxpr.invars))


def test_train_state_dataclass(params):
    @flax.struct.dataclass
    class Train:
        step: jax.Array
        params: dict
        opt_state: tuple
        tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    tx = optax.chain(ox.clip_by_global_norm(1.0), optax.sgd(0.1))
    train = Train(jnp.zeros((), jnp.int32), {**params, "scalar": jnp.float32(1.0)},
                  tx.init(params), tx)
    stats = ox.telemetry(train)
    assert "step" in stats and "opt_state/0/gclip_grad_norm" in stats
    assert not any(k.startswith("params") for k in stats)


def test_linen_train_state(params):
    from optaxsched.flax import TrainState

    tx = optax.chain(
        ox.explosion_guard(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)),
        ox.reduce_on_plateau(),
    )
    state = TrainState.create(apply_fn=None, params=params, tx=tx)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = state.apply_gradients(grads=grads, value=jnp.float32(1.0))
    stats = ox.telemetry(state)
    assert int(stats["step"]) == 1
    assert int(stats["opt_state/0/guard_steps"]) == 1
    assert "opt_state/0/hyperparams/learning_rate" in stats
    assert float(stats["effective_learning_rate/default"]) == pytest.approx(0.1)
    assert "opt_state/1/plateau_scale" in stats
    assert not any(k.startswith("params") for k in stats)


class _Mlp(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Linear(3, 8, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.embed(x)))


def test_nnx_optimizer_state_and_nnx_state():
    model = _Mlp(nnx.Rngs(0))
    tx = optax.chain(
        ox.clip_by_ema_ratio(warmup_steps=1),
        ox.explosion_guard(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)),
        ox.reduce_on_plateau(),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.ones((4, 3), jnp.float32)

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads, value=loss)
        return ox.telemetry(optimizer.opt_state)

    stats = step(model, optimizer, x)
    assert int(stats["1/guard_steps"]) == 1
    assert "1/hyperparams/learning_rate" in stats
    assert "2/plateau_window_count" in stats
    assert not any("adagc_gamma" in k for k in stats)
    per_tensor = ox.telemetry(optimizer.opt_state, per_tensor=True)
    assert "0/adagc_gamma/embed/kernel" in per_tensor

    # The same statistics from the nnx.State of the whole optimizer, whose
    # NamedTuples have become dicts: the Variable types tell them apart.
    from_state = ox.telemetry(nnx.state(optimizer))
    assert int(from_state["step"]) == 1
    # nnx.state turns the state NamedTuples into dicts, so the effective learning
    # rate (which reads them by type) comes from optimizer.opt_state only.
    stats = {k: v for k, v in stats.items() if not k.startswith("effective_learning_rate")}
    assert {k.removeprefix("opt_state/") for k in from_state} - {"step"} == set(stats)
    for key, value in stats.items():
        np.testing.assert_array_equal(value, from_state["opt_state/" + key])
    assert ox.telemetry(nnx.state(optimizer), per_tensor=True).keys() == {
        "opt_state/" + k for k in per_tensor if not k.startswith("effective")} | {"step"}


def test_duplicate_paths_and_bad_arguments():
    state = {"a/count": jnp.zeros(()), "a": optax.ScaleByScheduleState(count=jnp.ones(()))}
    with pytest.raises(ValueError, match="two statistics have the path 'a/count'"):
        ox.telemetry(state)
    with pytest.raises(TypeError, match=r"telemetry\(per_tensor=1\)"):
        ox.telemetry((), per_tensor=1)


def test_non_real_scalars_are_skipped():
    state = {"key": jax.random.key(0), "z": jnp.complex64(1j), "n": np.int32(3), "f": 0.5}
    stats = ox.telemetry(state)
    assert set(stats) == {"n", "f"}
    assert all(isinstance(v, jax.Array) for v in stats.values())


def test_short_keys_fall_back_to_full_paths_where_they_collide():
    tx = optax.chain(ox.explosion_guard(ox.explosion_guard(optax.sgd(0.1))),
                     ox.clip_by_global_norm(1.0))
    stats = ox.telemetry(tx.init({"w": jnp.ones(2)}))
    # Both guards have skipped_steps: those keep their whole paths.
    assert "0/guard_skipped_steps" in stats and "0/inner_state/guard_skipped_steps" in stats
    assert "1/gclip_grad_norm" in stats  # no collision: short


# ---------------------------------------------------------------------------
# effective_learning_rate


def _rates(state):
    return {k: float(v) for k, v in ox.effective_learning_rate(state).items()}


def test_effective_rate_through_guard_groups_plateaus_and_schedule():
    params = {"embed": jnp.ones(2), "head": jnp.ones(2)}
    schedule = ox.schedules.linear(1.0, 0.5, 2)
    metric = ox.MetricPlateau(factor=0.5, patience=0)
    tx = ox.explosion_guard(optax.chain(
        optax.inject_hyperparams(optax.sgd)(learning_rate=schedule),
        ox.scale_by_group({"embed": 0.1}),
        ox.reduce_on_plateau(factor=0.5, patience=0),
        metric,
    ), watch_loss=False)
    state = tx.init(params)
    assert _rates(state) == pytest.approx({"embed": 0.1, "default": 1.0})
    update = jax.jit(lambda g, s, v: tx.update(g, s, params, value=v))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = update(grads, state, jnp.float32(1.0))
    _, state = update(grads, state, jnp.float32(1.0))  # flat: plateau halves
    state = metric.step(metric.step(state, 1.0), 1.0)  # MetricPlateau halves
    # lr of update 1 is 0.75; x0.5 (plateau) x0.5 (metric plateau) x group.
    assert _rates(state) == pytest.approx({"embed": 0.01875, "default": 0.1875})
    # The recovery multiplier of the guard is a factor too.
    state = state._replace(guard_recovery=state.guard_recovery._replace(
        recovery_scale=jnp.float32(0.5)))
    assert _rates(state)["default"] == pytest.approx(0.09375)
    assert float(ox.telemetry(state)["effective_learning_rate/embed"]) == pytest.approx(
        0.009375)


def test_effective_rate_under_partition_and_jit():
    params = {"backbone": {"kernel": jnp.ones(2)}, "head": jnp.ones(2)}
    tx = optax.partition(
        {"sgd": optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                            ox.scale_by_group({"kernel": ox.schedules.constant(0.5)})),
         "adam": optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)},
        {"backbone": {"kernel": "sgd"}, "head": "adam"})
    state = tx.init(params)
    # The head's group of the sgd branch holds no parameter: not reported.
    assert _rates(state) == pytest.approx({"sgd/kernel": 0.05, "adam": 1e-3})
    rates = jax.jit(ox.effective_learning_rate)(state)
    assert {k: float(v) for k, v in rates.items()} == pytest.approx(_rates(state))


def test_effective_rate_needs_an_injected_learning_rate():
    state = optax.chain(optax.adam(1e-3), ox.reduce_on_plateau()).init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="inject_hyperparams"):
        ox.effective_learning_rate(state)
    assert not any(k.startswith("effective") for k in ox.telemetry(state))
    part = optax.partition({"a": optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
                            "b": optax.sgd(0.1)}, {"w": "a", "v": "b"})
    with pytest.raises(ValueError, match="group\\(s\\) 'b'"):
        ox.effective_learning_rate(part.init({"w": jnp.ones(1), "v": jnp.ones(1)}))
