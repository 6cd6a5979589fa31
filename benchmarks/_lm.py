"""A tiny pre-LN transformer language model and a synthetic bigram corpus.

Used by ``benchmarks/stability.py``. Pure JAX (no Flax) so one training run is
a plain function of (learning rate, seed) that ``jax.vmap`` can batch.

The corpus is a first-order Markov chain over ``vocab`` tokens whose transition
rows are drawn from a sparse Dirichlet(``alpha``) distribution. The best
possible next-token loss is then known exactly: the expected entropy of the
transition row of the current token, averaged over the positions of a
sequence that starts from a uniformly drawn token.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LMConfig(NamedTuple):
    vocab: int = 64
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    seq_len: int = 32
    batch: int = 16


# --------------------------------------------------------------------------- data


def bigram_matrix(vocab: int, alpha: float, data_seed: int) -> np.ndarray:
    """Row-stochastic transition matrix with Dirichlet(alpha) rows."""
    rng = np.random.default_rng(data_seed)
    p = rng.dirichlet(np.full(vocab, alpha), size=vocab)
    # Dirichlet draws with tiny alpha can underflow to exact zeros; keep every
    # row a proper distribution.
    p = np.maximum(p, 1e-12)
    return p / p.sum(axis=1, keepdims=True)


def entropy_floor(p: np.ndarray, seq_len: int) -> float:
    """Exact expected next-token cross-entropy of the true model (nats)."""
    row_h = -(p * np.log(p)).sum(axis=1)
    dist = np.full(p.shape[0], 1.0 / p.shape[0])
    total = 0.0
    for _ in range(seq_len):
        total += float(dist @ row_h)
        dist = dist @ p
    return total / seq_len


def sample_sequences(p: np.ndarray, shape: tuple[int, ...], seq_len: int, seed: int) -> np.ndarray:
    """int32 token sequences of length ``seq_len + 1`` drawn from the chain."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    cdf = np.cumsum(p, axis=1)
    cdf[:, -1] = 1.0
    out = np.empty((n, seq_len + 1), np.int32)
    out[:, 0] = rng.integers(0, p.shape[0], size=n)
    for t in range(seq_len):
        u = rng.random(n)
        rows = cdf[out[:, t]]
        out[:, t + 1] = (u[:, None] > rows).sum(axis=1)
    return out.reshape(*shape, seq_len + 1)


# -------------------------------------------------------------------------- model


def init_params(key: jax.Array, cfg: LMConfig) -> dict[str, Any]:
    """GPT-2 style init: N(0, 0.02), residual projections scaled by 1/sqrt(2L)."""
    d, v, h = cfg.d_model, cfg.vocab, 4 * cfg.d_model
    std, res_std = 0.02, 0.02 / math.sqrt(2 * cfg.layers)
    keys = iter(jax.random.split(key, 3 + 4 * cfg.layers))

    def normal(shape, s):
        return s * jax.random.normal(next(keys), shape, jnp.float32)

    params: dict[str, Any] = {
        "embed": normal((v, d), std),
        "pos": normal((cfg.seq_len, d), std),
        "final_ln": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
        "head": normal((d, v), std),
    }
    for i in range(cfg.layers):
        params[f"layers_{i}"] = {
            "ln1": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
            "qkv": normal((d, 3 * d), std),
            "out": normal((d, d), res_std),
            "ln2": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
            "fc1": {"kernel": normal((d, h), std), "bias": jnp.zeros((h,))},
            "fc2": {"kernel": normal((h, d), res_std), "bias": jnp.zeros((d,))},
        }
    return params


def _layer_norm(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def logits_fn(params, tokens, cfg: LMConfig):
    """Causal LM logits for int tokens of shape (B, T)."""
    b, t = tokens.shape
    dh = cfg.d_model // cfg.heads
    x = params["embed"][tokens] + params["pos"][:t]
    mask = jnp.tril(jnp.ones((t, t), bool))
    for i in range(cfg.layers):
        lp = params[f"layers_{i}"]
        hdn = _layer_norm(x, lp["ln1"])
        q, k, v = jnp.split(hdn @ lp["qkv"], 3, axis=-1)
        q, k, v = (z.reshape(b, t, cfg.heads, dh) for z in (q, k, v))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
        att = jax.nn.softmax(jnp.where(mask, att, -1e30), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, cfg.d_model)
        x = x + o @ lp["out"]
        hdn = _layer_norm(x, lp["ln2"])
        hdn = jax.nn.gelu(hdn @ lp["fc1"]["kernel"] + lp["fc1"]["bias"])
        x = x + hdn @ lp["fc2"]["kernel"] + lp["fc2"]["bias"]
    return _layer_norm(x, params["final_ln"]) @ params["head"]


def loss_fn(params, seqs, cfg: LMConfig):
    """Mean next-token cross-entropy (nats) of sequences of length T + 1."""
    logits = logits_fn(params, seqs[:, :-1], cfg)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1)
    return nll.mean()
