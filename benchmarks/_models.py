"""Small pure-JAX classifiers for the stability suite: an MLP and a tiny ViT.

Used by ``benchmarks/_problems.py``. Parameters are plain dicts of arrays so
that one training run is a function of (learning rate, seed) that
``jax.vmap`` can batch. Both models return logits; ``cross_entropy`` and
``accuracy`` score them against integer labels.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from _lm import _layer_norm

# --------------------------------------------------------------------- scoring


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (nats) of integer ``labels``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, axis=-1) == labels).mean()


# ------------------------------------------------------------------------- MLP


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    """He-normal weights for the ReLU layers, 1/sqrt(fan_in) for the logits."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        gain = 1.0 if i == len(sizes) - 2 else 2.0
        w = math.sqrt(gain / n_in) * jax.random.normal(k, (n_in, n_out), jnp.float32)
        layers.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
    return layers


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


# ------------------------------------------------------------------------- ViT


class ViTConfig(NamedTuple):
    image: int = 8
    patch: int = 2
    d_model: int = 32
    heads: int = 4
    layers: int = 2
    mlp: int = 64
    classes: int = 10

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2


def vit_init(key: jax.Array, cfg: ViTConfig) -> dict[str, Any]:
    """N(0, 0.02) init, residual projections scaled by 1/sqrt(2L) (as ``_lm``)."""
    d, pp = cfg.d_model, cfg.patch * cfg.patch
    std, res_std = 0.02, 0.02 / math.sqrt(2 * cfg.layers)
    keys = iter(jax.random.split(key, 3 + 4 * cfg.layers))

    def normal(shape, s):
        return s * jax.random.normal(next(keys), shape, jnp.float32)

    def ln():
        return {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))}

    params: dict[str, Any] = {
        "patch": {"kernel": normal((pp, d), 1.0 / math.sqrt(pp)), "bias": jnp.zeros((d,))},
        "pos": normal((cfg.tokens, d), std),
        "final_ln": ln(),
        "head": {"kernel": normal((d, cfg.classes), std), "bias": jnp.zeros((cfg.classes,))},
    }
    for i in range(cfg.layers):
        params[f"layers_{i}"] = {
            "ln1": ln(),
            "qkv": normal((d, 3 * d), std),
            "out": normal((d, d), res_std),
            "ln2": ln(),
            "fc1": {"kernel": normal((d, cfg.mlp), std), "bias": jnp.zeros((cfg.mlp,))},
            "fc2": {"kernel": normal((cfg.mlp, d), res_std), "bias": jnp.zeros((d,))},
        }
    return params


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """(B, H, W) -> (B, H/p * W/p, p*p) non-overlapping patches, row-major."""
    b, h, w = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, (h // patch) * (w // patch), patch * patch)


def vit_apply(params: dict[str, Any], images: jax.Array, cfg: ViTConfig) -> jax.Array:
    """Pre-LN ViT logits for (B, H, W) images; mean-pooled tokens, no class token."""
    x = patchify(images, cfg.patch) @ params["patch"]["kernel"] + params["patch"]["bias"]
    x = x + params["pos"]
    b, t, d = x.shape
    dh = d // cfg.heads
    for i in range(cfg.layers):
        lp = params[f"layers_{i}"]
        hdn = _layer_norm(x, lp["ln1"])
        q, k, v = (z.reshape(b, t, cfg.heads, dh) for z in jnp.split(hdn @ lp["qkv"], 3, -1))
        att = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh), axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d) @ lp["out"]
        hdn = jax.nn.gelu(_layer_norm(x, lp["ln2"]) @ lp["fc1"]["kernel"] + lp["fc1"]["bias"])
        x = x + hdn @ lp["fc2"]["kernel"] + lp["fc2"]["bias"]
    pooled = _layer_norm(x, params["final_ln"]).mean(axis=1)
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]
