"""Per-parameter rates by path, on real Flax parameter trees (linen and nnx).

Multipliers are checked against values written out by hand from the LLRD
definition (embed id 0, block i id i+1, rest id L+1, multiplier
decay^(L+1-id)); optimizer results against optax's own optimizers applied
leaf by leaf.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optaxsched as ox
from optaxsched._paths import path_str

VOCAB, D, L = 11, 8, 2
NO_DECAY = r"bias|scale|embedding"


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(h)
        h = nn.Dense(2 * D, name="mlp_in")(nn.LayerNorm(name="ln2")(x))
        return x + nn.Dense(D, name="mlp_out")(nn.gelu(h))


class LinenLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, D, name="embed")(tokens)
        for i in range(L):
            x = LinenBlock(name=f"layers_{i}")(x)
        return nn.Dense(VOCAB, name="head")(nn.LayerNorm(name="ln_f")(x))


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.linear = nnx.Linear(D, D, rngs=rngs)


class NnxLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.layers = nnx.List([NnxBlock(rngs) for _ in range(L)])
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)
        self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))


def _random_like(tree, seed):
    """Random normal leaves of the tree's shapes (NumPy: nothing to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), tree)


@pytest.fixture(scope="module")
def linen_params():
    # The real linen parameter tree; values drawn with NumPy instead of running
    # the initializers, which would compile dozens of small kernels.
    shapes = jax.eval_shape(LinenLM().init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return _random_like(shapes["params"], 0)


def _nnx_model():
    """A real nnx model; values filled with NumPy rather than by its initializers."""
    model = nnx.eval_shape(lambda: NnxLM(nnx.Rngs(0)))
    rng = np.random.default_rng(0)

    def fill(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(x.shape), x.dtype)
        return jnp.zeros(x.shape, x.dtype)

    nnx.update(model, jax.tree.map(fill, nnx.state(model)))
    return model


def _llrd(path, decay=0.5, layer=r"layers_(\d+)"):
    """Hand-written LLRD multiplier of one path."""
    if "embed" in path:
        return decay ** (L + 1)
    m = re.search(layer, path)
    return decay ** (L - int(m.group(1))) if m else 1.0


def _by_path(tree):
    keyed = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(k): np.asarray(x) for k, x in keyed}


# --- paths ------------------------------------------------------------------


class _NT(NamedTuple):
    mu: jax.Array
    nu: tuple


@flax.struct.dataclass
class _Struct:
    w: jax.Array
    name: str = flax.struct.field(pytree_node=False, default="x")


@dataclasses.dataclass
class _Opaque:  # registered without keys: jax reports FlattenedIndexKey
    a: jax.Array
    b: jax.Array


jax.tree_util.register_pytree_node(_Opaque, lambda o: ((o.a, o.b), None), lambda _, c: _Opaque(*c))


def test_paths_of_every_key_kind():
    one = jnp.ones(1)
    tree = {"d": {"x": one}, "seq": [one, (one,)], "nt": _NT(one, (one,)),
            "st": _Struct(one), "op": _Opaque(one, one)}
    got = sorted(jax.tree.leaves(ox.tree_paths(tree)))
    assert got == sorted(["d/x", "seq/0", "seq/1/0", "nt/mu", "nt/nu/0", "st/w",
                          "op/0", "op/1"])
    assert ox.tree_paths({3: {"k": one}}) == {3: {"k": "3/k"}}
    assert ox.tree_paths(one) == ""
    assert path_str(("layers", 0, "kernel")) == "layers/0/kernel"  # nnx flat-state paths
    assert path_str([jax.tree_util.DictKey("a"), jax.tree_util.SequenceKey(2)], sep=".") == "a.2"


def test_linen_paths_and_boxes(linen_params):
    paths = set(jax.tree.leaves(ox.tree_paths(linen_params)))
    for p in ["embed/embedding", "layers_0/attn/query/kernel", "layers_1/attn/value/bias",
              "layers_1/ln2/scale", "ln_f/bias", "head/kernel"]:
        assert p in paths
    boxed = {"k": nn.Partitioned(jnp.ones((2, 2)), names=("a", None))}
    assert jax.tree.leaves(ox.tree_paths(boxed)) == ["k"]


def test_nnx_paths_drop_the_variable_box():
    state = nnx.state(_nnx_model(), nnx.Param)
    paths = ox.tree_paths(state)
    # Same structure as the state (Param boxes holding strings) ...
    assert jax.tree.structure(paths) == jax.tree.structure(state)
    assert isinstance(paths["layers"][0]["linear"]["kernel"], nnx.Param)
    leaves = jax.tree.leaves(paths)
    assert "layers/1/linear/kernel" in leaves and "embed/embedding" in leaves
    assert not any("value" in p for p in leaves)
    # ... and the same paths as its pure copies.
    assert jax.tree.leaves(ox.tree_paths(nnx.as_pure(state))) == leaves
    assert jax.tree.leaves(ox.tree_paths(nnx.to_pure_dict(state))) == leaves


# --- scale_by_group -----------------------------------------------------------


def test_llrd_multipliers_on_linen(linen_params):
    rules = ox.layer_decay_rules(0.5, num_layers=L)
    assert [m for _, m in rules] == [0.125, 0.25, 0.5]
    tx = ox.scale_by_group(rules)
    grads = _random_like(linen_params, 1)
    updates, state = jax.jit(tx.update)(grads, tx.init(linen_params))
    assert int(state.group_count) == 1
    g, u = _by_path(grads), _by_path(updates)
    assert {_llrd(p) for p in g} == {0.125, 0.25, 0.5, 1.0}
    for p in g:
        np.testing.assert_allclose(u[p], g[p] * _llrd(p), rtol=1e-6, err_msg=p)


def test_first_match_wins_and_both_rule_forms():
    params = {"layers_0": {"bias": jnp.ones(2), "kernel": jnp.ones(2)},
              "layers_1": {"bias": jnp.ones(2)}, "step": jnp.ones((), jnp.int32)}
    as_pairs = [("bias", 0.0), ("layers_0", 0.25), (re.compile("STEP", re.I), 3.0)]
    for rules in (as_pairs, dict(as_pairs)):
        tx = ox.scale_by_group(rules, default=7.0)
        u, _ = tx.update(params, tx.init(params))
        np.testing.assert_array_equal(u["layers_0"]["bias"], 0.0)
        np.testing.assert_array_equal(u["layers_1"]["bias"], 0.0)
        np.testing.assert_array_equal(u["layers_0"]["kernel"], 0.25)
        assert u["step"] is params["step"]  # non-float leaves untouched


def test_schedules_use_the_own_step_count_and_saturate():
    params = {"head": jnp.ones(3), "body": jnp.ones(3)}
    head = optax.linear_schedule(1.0, 0.0, 4)
    default = optax.linear_schedule(0.0, 2.0, 2)
    tx = ox.scale_by_group({"head": head}, default=default)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for t in range(6):
        u, state = update(params, state)
        np.testing.assert_allclose(u["head"], head(t), rtol=1e-6)
        np.testing.assert_allclose(u["body"], default(t), rtol=1e-6)
    assert int(state.group_count) == 6
    # The multipliers of the last update, one per group.
    assert {k: float(v) for k, v in state.group_multipliers.items()} == pytest.approx(
        {"head": float(head(5)), "default": float(default(5))})
    big = state._replace(group_count=jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    assert int(update(params, big)[1].group_count) == np.iinfo(np.int32).max


def test_half_precision_zero_and_nan():
    grads = {"a": jnp.full(2, 3.0, jnp.float16), "frozen": jnp.array([jnp.nan, 1.0], jnp.bfloat16)}
    tx = ox.scale_by_group({"a": 1e-6, "frozen": 0.0})
    u, _ = jax.jit(tx.update)(grads, tx.init(grads))
    assert u["a"].dtype == jnp.float16 and u["frozen"].dtype == jnp.bfloat16
    # float32 product rounded once: 3e-6 is subnormal in fp16 but not lost.
    want = np.float16(np.float32(3.0) * np.float32(1e-6))
    np.testing.assert_array_equal(np.asarray(u["a"]), want)
    np.testing.assert_array_equal(np.asarray(u["frozen"], np.float32), 0.0)


def test_strict_reports_typos_and_shadowed_rules(linen_params):
    tx = ox.scale_by_group({"layers_0/atn": 0.5, "ln_f": 2.0})
    with pytest.raises(ValueError, match=r"'layers_0/atn' matches no parameter path") as e:
        tx.init(linen_params)
    assert "layers_0/attn/query/kernel" in str(e.value)  # the available paths are listed
    with pytest.raises(ValueError, match=r"'layers_0/atn'"):
        jax.jit(tx.init)(linen_params)  # matching is on Python strings, also under jit
    shadowed = ox.scale_by_group([("layers", 0.5), ("layers_1", 0.1)])
    with pytest.raises(ValueError, match=r"'layers_1' only matches paths taken by earlier"):
        shadowed.init(linen_params)
    lax_tx = ox.scale_by_group({"layers_0/atn": 0.5}, strict=False)
    lax_tx.init(linen_params)


def test_layer_decay_rules_check_the_layer_count(linen_params):
    with pytest.raises(ValueError, match=r"layer index 1, outside 0\.\.0"):
        ox.scale_by_group(ox.layer_decay_rules(0.8, 1)).init(linen_params)
    with pytest.raises(ValueError, match=r"'layers_\(\\d\+\) == 2' matches no parameter"):
        ox.scale_by_group(ox.layer_decay_rules(0.8, 3)).init(linen_params)
    with pytest.raises(ValueError, match=r"'embed' \(layer_decay_rules' embed_pattern\) "
                                         r"matches no parameter.*embed_pattern=None"):
        ox.scale_by_group(ox.layer_decay_rules(0.8, 2)).init({"layers_0": 1.0, "layers_1": 1.0})
    no_embed = ox.layer_decay_rules(0.8, 2, embed_pattern=None)
    ox.scale_by_group(no_embed).init({"layers_0": 1.0, "layers_1": 1.0})
    with pytest.raises(ValueError, match=r"not an integer"):
        ox.scale_by_group(ox.layer_decay_rules(0.8, 2, r"layers_(\w+)")).init({"layers_x": 1.0})


# --- with optax.partition / optax.masked / adamw -----------------------------------


def test_no_decay_group_and_llrd_with_adamw_on_linen(linen_params):
    # optax's adam computes decay**count with an int32 count, which the suite's
    # strict promotion rejects; the library code stays under strict rules.
    with jax.numpy_dtype_promotion("standard"):
        _adamw_partition_check(linen_params)


def _adamw_partition_check(linen_params):
    lr, wd = 1e-2, 0.1
    labels = ox.label_by_path({NO_DECAY: "no_decay"}, default="decay")
    tx = optax.chain(
        optax.partition({"decay": optax.adamw(lr, weight_decay=wd),
                         "no_decay": optax.adam(lr)}, labels),
        ox.scale_by_group(ox.layer_decay_rules(0.5, L)),
    )
    update = jax.jit(tx.update)
    label_of = _by_path(labels(linen_params))
    assert label_of["layers_0/ln1/scale"] == "no_decay" and label_of["head/kernel"] == "decay"
    params = _by_path(linen_params)
    b1, b2, eps = 0.9, 0.999, 1e-8  # optax.adam's defaults
    m = {p: np.zeros_like(x, np.float64) for p, x in params.items()}
    v = {p: np.zeros_like(x, np.float64) for p, x in params.items()}
    state = tx.init(linen_params)
    for t in range(1, 4):
        grads = _random_like(linen_params, 10 + t)
        u, state = update(grads, state, linen_params)
        for p, x in _by_path(u).items():
            g = _by_path(grads)[p].astype(np.float64)
            m[p] = b1 * m[p] + (1 - b1) * g
            v[p] = b2 * v[p] + (1 - b2) * g * g
            step = (m[p] / (1 - b1**t)) / (np.sqrt(v[p] / (1 - b2**t)) + eps)
            if label_of[p] == "decay":
                step = step + wd * params[p]
            # float32 (optax) against float64: eps = 1e-8 makes small |v| sensitive.
            np.testing.assert_allclose(x, -lr * _llrd(p) * step, rtol=1e-3, atol=1e-8, err_msg=p)
    # From a fresh state, zero gradients leave only weight decay: the
    # "no_decay" group does not move.
    u, _ = update(jax.tree.map(jnp.zeros_like, linen_params), tx.init(linen_params), linen_params)
    for p, x in _by_path(u).items():
        want = 0.0 if label_of[p] == "no_decay" else -lr * wd * params[p] * _llrd(p)
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-9, err_msg=p)


def test_masked_with_a_mask_from_tree_paths(linen_params):
    wd = 0.5
    mask = jax.tree.map(lambda p: re.search(NO_DECAY, p) is None, ox.tree_paths(linen_params))
    tx = optax.masked(optax.add_decayed_weights(wd), mask)
    zeros = jax.tree.map(jnp.zeros_like, linen_params)
    u, _ = tx.update(zeros, tx.init(linen_params), linen_params)
    for p, x in _by_path(u).items():
        want = 0.0 if re.search(NO_DECAY, p) else wd * _by_path(linen_params)[p]
        np.testing.assert_allclose(x, want, rtol=1e-6, err_msg=p)
    # Inside optax.masked the rules only see the unmasked leaves.
    inner = optax.masked(ox.scale_by_group({"bias": 0.0}), mask)
    with pytest.raises(ValueError, match=r"'bias' matches no parameter path"):
        inner.init(linen_params)
    inner = optax.masked(ox.scale_by_group({"kernel": 0.5}), mask)
    u, _ = inner.update(linen_params, inner.init(linen_params))
    np.testing.assert_allclose(u["head"]["kernel"], 0.5 * linen_params["head"]["kernel"])
    np.testing.assert_array_equal(u["head"]["bias"], linen_params["head"]["bias"])


def test_nnx_optimizer_with_partition_and_llrd():
    model = _nnx_model()
    lr, wd = 0.1, 0.5
    nnx_layers = r"layers/(\d+)"
    labels = ox.label_by_path({NO_DECAY: "no_decay"}, default="decay")
    tx = optax.chain(
        optax.partition({"decay": optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr)),
                         "no_decay": optax.sgd(lr)}, labels),
        ox.scale_by_group(ox.layer_decay_rules(0.5, L, layer_pattern=nnx_layers)),
    )
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = _by_path(nnx.as_pure(nnx.state(model, nnx.Param)))
    grads = _random_like(nnx.state(model, nnx.Param), 3)
    opt.update(model, grads)
    after, g = _by_path(nnx.as_pure(nnx.state(model, nnx.Param))), _by_path(grads)
    assert "layers/1/norm/scale" in after
    for p in after:
        decay = 0.0 if re.search(NO_DECAY, p) else wd
        want = before[p] - lr * _llrd(p, layer=nnx_layers) * (g[p] + decay * before[p])
        np.testing.assert_allclose(after[p], want, rtol=1e-5, atol=1e-7, err_msg=p)
    assert int(model.calls[...]) == 0  # non-Param state is not touched


def test_label_by_path_errors_and_structure():
    state = nnx.state(_nnx_model(), nnx.Param)
    labels = ox.label_by_path([("bias", "b"), ("kernel|embedding|scale", "w")])(state)
    assert jax.tree.structure(labels) == jax.tree.structure(state)
    assert labels["head"]["bias"].get_value() == "b"
    with pytest.raises(ValueError, match=r"(?s)no rule matches 2 path\(s\).*layers/0/norm/scale"):
        ox.label_by_path({"bias": "b", "kernel|embedding": "w"})(state)
    with pytest.raises(ValueError, match=r"'kernal' matches no parameter path"):
        ox.label_by_path({"kernal": "w"}, default="x")(state)
    ox.label_by_path({"kernal": "w"}, default="x", strict=False)(state)
    with pytest.raises(TypeError, match=r"label must be a str"):
        ox.label_by_path({"bias": 1})
    with pytest.raises(TypeError, match=r"label must be a str"):
        ox.label_by_path({"bias": "b"}, default=0)


@pytest.mark.parametrize(
    "call, err, msg",
    [
        (lambda: ox.scale_by_group({"bias": -0.1}), ValueError,
         r"scale_by_group\(rules\['bias'\]=-0\.1\): rules\['bias'\] must be >= 0"),
        (lambda: ox.scale_by_group({"bias": float("nan")}), ValueError, r"must be finite"),
        (lambda: ox.scale_by_group({}, default=-1.0), ValueError, r"default must be >= 0"),
        (lambda: ox.scale_by_group({"(bias": 1.0}), ValueError,
         r"scale_by_group\(rules\['\(bias'\]='\(bias'\): invalid regular expression"),
        (lambda: ox.scale_by_group({3: 1.0}), TypeError, r"must be a str or re\.Pattern"),
        (lambda: ox.scale_by_group("bias"), TypeError, r"mapping or a sequence"),
        (lambda: ox.scale_by_group([("bias", 1.0, 2.0)]), TypeError, r"\(pattern, value\) pair"),
        (lambda: ox.scale_by_group({"b": "x"}), TypeError, r"must be a number"),
        (lambda: ox.scale_by_group({"b": lambda t: jnp.float32(-1.0)}), ValueError,
         r"rules\['b'\]\(0\) must be >= 0"),
        (lambda: ox.scale_by_group({"b": lambda t: jnp.ones(2)}), ValueError, r"return a scalar"),
        (lambda: ox.scale_by_group({}, strict=1), TypeError, r"strict must be True or False"),
        (lambda: ox.scale_by_group({"b": lambda t: t["x"]}), TypeError,
         r"calling the schedule at step 0 failed"),
        (lambda: ox.layer_decay_rules(0.0, 2), ValueError, r"decay must be > 0"),
        (lambda: ox.layer_decay_rules(1.5, 2), ValueError, r"decay must be <= 1"),
        (lambda: ox.layer_decay_rules(0.5, 0), ValueError, r"num_layers must be >= 1"),
        (lambda: ox.layer_decay_rules(0.5, 2.0), TypeError, r"num_layers must be an integer"),
        (lambda: ox.layer_decay_rules(0.5, 2, r"layers_\d+"), ValueError, r"capturing group"),
        (lambda: ox.layer_decay_rules(0.5, 2, r"layers_(\d+"), ValueError,
         r"layer_pattern=.*invalid regular expression"),
        (lambda: ox.layer_decay_rules(0.5, 2, embed_pattern="[emb"), ValueError,
         r"embed_pattern=.*invalid regular expression"),
        # A model without an embedding: the default embed rule names its fix.
        (lambda: ox.scale_by_group(ox.layer_decay_rules(0.5, 2)).init(_NO_EMBED), ValueError,
         r"^scale_by_group\(strict=True\): rule 'embed' \(layer_decay_rules' embed_pattern\) "
         r"matches no parameter path: for a model without an embedding use "
         r"layer_decay_rules\(\.\.\., embed_pattern=None\)"),
        (lambda: ox.scale_by_group(ox.layer_decay_rules(0.5, 2, embed_pattern="tok")).init(
            _NO_EMBED), ValueError, r"rule 'tok' \(layer_decay_rules' embed_pattern\).*"
         r"embed_pattern=None"),
        (lambda: ox.label_by_path([(p, f"g{i}") for i, (p, _) in enumerate(
            ox.layer_decay_rules(0.5, 2))], default="head")(_NO_EMBED), ValueError,
         r"^label_by_path\(strict=True\): rule 'embed' \(layer_decay_rules' embed_pattern\)"),
        # A rule of the user's own before the layer rules gets no such hint.
        (lambda: ox.scale_by_group([("emb", 0.3)] + ox.layer_decay_rules(
            0.5, 2, embed_pattern=None)).init(_NO_EMBED), ValueError,
         r"rule 'emb' matches no parameter path\. Fix the pattern"),
    ],
)
def test_bad_arguments(call, err, msg):
    with pytest.raises(err, match=msg):
        call()


_NO_EMBED = {"layers_0": {"kernel": jnp.ones(2)}, "layers_1": {"kernel": jnp.ones(2)},
             "head": {"kernel": jnp.ones(2)}}


def test_describe_groups_suggests_embed_pattern_none():
    table = ox.describe_groups(_NO_EMBED, ox.layer_decay_rules(0.5, 2))
    assert table.splitlines()[-1] == (
        "note: rule 'embed' (layer_decay_rules' embed_pattern) matches no parameter path: "
        "for a model without an embedding use layer_decay_rules(..., embed_pattern=None), "
        "else pass the embedding's path pattern as embed_pattern")
    ox.scale_by_group(ox.layer_decay_rules(0.5, 2, embed_pattern=None)).init(_NO_EMBED)


def test_describe_groups(linen_params):
    rules = [("head/bias", optax.linear_schedule(0.3, 1.0, 10))] + ox.layer_decay_rules(0.5, L)
    table = ox.describe_groups(linen_params, rules + [("decoder", 2.0)])
    print(table)
    lines = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert table.splitlines()[0].split() == ["path", "shape", "dtype", "rule", "multiplier"]
    assert lines["embed/embedding"] == [
        "embed/embedding", "(11,", "8)", "float32", "embed", "0.125"]
    assert lines["layers_0/attn/query/kernel"][-1] == "0.25"
    assert lines["layers_1/mlp_in/bias"][-4:] == ["layers_(\\d+)", "==", "1", "0.5"]
    assert lines["head/bias"][-2:] == ["head/bias", "0.3*"]
    assert lines["ln_f/scale"][-2:] == ["(default)", "1"]
    assert "* schedule: value at step 0" in table
    assert "note: rule 'decoder' matches no parameter path" in table
    abstract = ox.describe_groups(jax.eval_shape(lambda: linen_params), rules)
    assert abstract.splitlines()[:-1] == table.splitlines()[:-2]
