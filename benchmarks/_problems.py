"""The six training problems of the stability suite (``benchmarks/stability.py``).

Every problem is small, pure JAX and offline: the data is synthetic, ships
with scikit-learn, or is Python standard-library source read from the
interpreter's own installation. A :class:`Problem` bundles the model (``init``,
``loss``, ``evaluate``), the optimizer recipe, the learning-rate schedule, the
learning-rate grid and the per-seed batches of every step, so that the
runner can treat all problems alike.

==================  ==========================================================
``bigram_lm``       2-layer pre-LN transformer LM (d=64) on a synthetic sparse
                    bigram chain with a known entropy floor; Adam, 30-step
                    warm-up then constant, 300 steps, batch 16.
``text_lm``         char-level transformer LM (byte vocabulary of 128) on
                    Python standard-library source, split by file; AdamW
                    (wd 0.01), 40-step warm-up + cosine to 10%, 400 steps.
``digits_mlp_sgd``  64-128-128-10 ReLU MLP on sklearn digits; SGD momentum
                    0.9, constant LR, batch 32, 400 steps.
``digits_mlp_adam_b4``  the same MLP with Adam and batches of 4.
``digits_vit``      ViT on digits (2x2 patches, 16 tokens, d=32, 2 layers, 2
                    heads, mean-pooled); AdamW (wd 0.05), 30-step warm-up +
                    cosine to 10%, 500 steps, batch 32.
``long_mlp``        64-64-64-10 ReLU MLP on digits, Adam, cosine decay to 10%
                    from step 0, 3,000 steps, batch 16.
==================  ==========================================================

Learning-rate grids are seven half-decades per problem, from too small
through the best to clearly unstable. Seeds set both the initialization and
the data order; the evaluation set is fixed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import _lm
import _models

# Standard-library modules present in every CPython 3.10+; every fifth one
# (in this sorted order) is held out for evaluation.
STDLIB_FILES = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py",
    "cmd.py", "codecs.py", "contextlib.py", "copy.py", "csv.py",
    "dataclasses.py", "difflib.py", "enum.py", "fnmatch.py", "fractions.py",
    "functools.py", "heapq.py", "pprint.py", "shlex.py", "textwrap.py",
)  # fmt: skip
TEXT_VOCAB = 128


@dataclasses.dataclass(frozen=True)
class Problem:
    """One training problem; ``batches`` has shape (seeds, steps, ...)."""

    name: str
    summary: str
    steps: int
    lrs: tuple[float, ...]
    optimizer: Callable[[optax.Schedule], optax.GradientTransformation]
    schedule: Callable[[Any], optax.Schedule]  # peak lr -> schedule
    init: Callable[[jax.Array], Any]  # key -> params
    loss: Callable[[Any, Any, Any], jax.Array]  # (params, batch, consts) -> loss
    evaluate: Callable[[Any, Any, Any], tuple[jax.Array, jax.Array]]  # -> (loss, acc)
    batches: np.ndarray
    eval_data: Any
    consts: Any = None
    tolerance: float = 0.01  # no-harm tolerance (relative final loss)
    floor: float | None = None  # best achievable loss, when known
    has_accuracy: bool = False
    step_cost: float = 1.0  # rough relative cost of a step (schedules big runs first)


def half_decades(lo_exp: float, n: int = 7) -> tuple[float, ...]:
    return tuple(float(10.0 ** (lo_exp + 0.5 * i)) for i in range(n))


def warmup_cosine(
    lr, steps: int, warmup: int = 0, decay: bool = True, final: float = 0.1
) -> optax.Schedule:
    """Linear warm-up from ~0 over ``warmup`` steps, then constant or cosine to ``final``."""

    def sched(t):
        t = jnp.asarray(t, jnp.float32)
        ramp = jnp.minimum((t + 1.0) / warmup, 1.0) if warmup else 1.0
        if not decay:
            return lr * ramp
        frac = jnp.clip((t - warmup) / max(steps - warmup, 1), 0.0, 1.0)
        return lr * ramp * (final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

    return sched


# ------------------------------------------------------------------------ data


def epoch_batches(n: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """(steps, batch) int32 example indices: reshuffled each epoch, no repeats within one."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[: steps * batch].reshape(steps, batch).astype(np.int32)


@functools.cache
def digits_split(n_test: int = 400):
    """sklearn digits scaled to [0, 1]; a fixed random train/test split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x = (x[perm] / 16.0).astype(np.float32)
    y = y[perm].astype(np.int32)
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def stdlib_bytes() -> tuple[np.ndarray, np.ndarray]:
    """Byte ids (>= 128 mapped to 0) of the training and evaluation files."""
    root = os.path.dirname(os.__file__)
    train, held_out = [], []
    for i, name in enumerate(STDLIB_FILES):
        path = os.path.join(root, name)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            ids = np.frombuffer(f.read(), np.uint8).astype(np.int32)
        ids[ids >= TEXT_VOCAB] = 0
        (held_out if i % 5 == 4 else train).append(ids)
    if len(train) < 8 or len(held_out) < 2:
        raise FileNotFoundError(f"too few standard-library sources found in {root}")
    return np.concatenate(train), np.concatenate(held_out)


def text_windows(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    return stream[starts[..., None] + np.arange(length)]


# -------------------------------------------------------------------- problems


def _lm_evaluate(cfg: _lm.LMConfig):
    def evaluate(params, seqs, consts):
        del consts
        logits = _lm.logits_fn(params, seqs[:, :-1], cfg)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1).mean()
        return nll, (jnp.argmax(logits, -1) == seqs[:, 1:]).mean()

    return evaluate


def bigram_lm(seeds: list[int], quick: bool) -> Problem:
    cfg = _lm.LMConfig(vocab=64, d_model=64, heads=4, layers=2, seq_len=32, batch=16)
    steps = 100 if quick else 300
    p = _lm.bigram_matrix(cfg.vocab, 0.05, 0)
    batches = np.stack(
        [_lm.sample_sequences(p, (steps, cfg.batch), cfg.seq_len, 17 + s) for s in seeds]
    )
    return Problem(
        name="bigram_lm",
        summary="2-layer pre-LN transformer LM (d=64, 4 heads, T=32, V=64) on a synthetic "
        "sparse-bigram chain (Dirichlet(0.05) rows); Adam b2=0.999, 30-step linear warm-up "
        f"then constant; {steps} steps, batch 16; eval 128 held-out sequences",
        steps=steps,
        lrs=half_decades(-3),
        optimizer=lambda s: optax.adam(s, b2=0.999),
        schedule=lambda lr: warmup_cosine(lr, steps, warmup=30, decay=False),
        init=lambda key: _lm.init_params(key, cfg),
        loss=lambda params, seqs, consts: _lm.loss_fn(params, seqs, cfg),
        evaluate=_lm_evaluate(cfg),
        batches=batches,
        eval_data=_lm.sample_sequences(p, (128,), cfg.seq_len, 999),
        floor=_lm.entropy_floor(p, cfg.seq_len),
        step_cost=8.0,
    )


def text_lm(seeds: list[int], quick: bool) -> Problem:
    cfg = _lm.LMConfig(vocab=TEXT_VOCAB, d_model=64, heads=4, layers=2, seq_len=32, batch=16)
    steps = 100 if quick else 400
    train, held_out = stdlib_bytes()
    span = cfg.seq_len + 1
    batches = np.stack(
        [
            text_windows(
                train,
                np.random.default_rng(100 + s).integers(0, len(train) - span, (steps, cfg.batch)),
                span,
            )
            for s in seeds
        ]
    )
    eval_starts = np.linspace(0, len(held_out) - span, 256).astype(np.int64)
    return Problem(
        name="text_lm",
        summary=f"char-level pre-LN transformer LM (d={cfg.d_model}, 2 layers, 4 heads, T=32, "
        f"byte vocabulary {TEXT_VOCAB}) on {len(STDLIB_FILES)} Python standard-library "
        f"sources ({len(train) // 1000} kB train, {len(held_out) // 1000} kB held-out files); "
        f"AdamW wd 0.01, 40-step warm-up + cosine to 10%; {steps} steps, batch 16; "
        "eval 256 held-out windows",
        steps=steps,
        lrs=half_decades(-4),
        optimizer=lambda s: optax.adamw(s, weight_decay=0.01),
        schedule=lambda lr: warmup_cosine(lr, steps, warmup=40),
        init=lambda key: _lm.init_params(key, cfg),
        loss=lambda params, seqs, consts: _lm.loss_fn(params, seqs, cfg),
        evaluate=_lm_evaluate(cfg),
        batches=batches,
        eval_data=text_windows(held_out, eval_starts, span),
        step_cost=9.0,
    )


def _classifier(apply: Callable, reshape: Callable = lambda x: x):
    """(loss, evaluate) of a classifier whose batch is indices into consts=(x, y)."""

    def loss(params, idx, consts):
        x, y = consts
        return _models.cross_entropy(apply(params, reshape(x[idx])), y[idx])

    def evaluate(params, data, consts):
        del consts
        x, y = data
        logits = apply(params, reshape(x))
        return _models.cross_entropy(logits, y), _models.accuracy(logits, y)

    return loss, evaluate


def _digits(name, seeds, *, steps, batch, apply, reshape=lambda x: x, **fields) -> Problem:
    """A classifier on sklearn digits: batches are index draws reshuffled each
    epoch (per seed), the evaluation set is the fixed test split."""
    (xtr, ytr), (xte, yte) = digits_split()
    loss, evaluate = _classifier(apply, reshape)
    return Problem(
        name=name,
        steps=steps,
        loss=loss,
        evaluate=evaluate,
        batches=np.stack([epoch_batches(len(ytr), steps, batch, 100 + s) for s in seeds]),
        eval_data=(xte, yte),
        consts=(xtr, ytr),
        has_accuracy=True,
        **fields,
    )


def _digits_mlp(name, seeds, *, sizes, steps, batch, lrs, optimizer, schedule, summary):
    (_, ytr), (_, yte) = digits_split()
    return _digits(
        name, seeds, steps=steps, batch=batch, apply=_models.mlp_apply,
        summary=f"{'-'.join(map(str, sizes))} ReLU MLP on sklearn digits ({len(ytr)} train / "
        f"{len(yte)} test); {summary}; {steps} steps, batch {batch}",
        lrs=lrs, optimizer=optimizer, schedule=schedule,
        init=lambda key: _models.mlp_init(key, sizes),
    )  # fmt: skip


def digits_mlp_sgd(seeds: list[int], quick: bool) -> Problem:
    steps = 100 if quick else 400
    return _digits_mlp(
        "digits_mlp_sgd", seeds, sizes=(64, 128, 128, 10), steps=steps, batch=32,
        lrs=half_decades(-3), optimizer=lambda s: optax.sgd(s, momentum=0.9),
        schedule=lambda lr: warmup_cosine(lr, steps, decay=False),
        summary="SGD momentum 0.9, constant LR",
    )  # fmt: skip


def digits_mlp_adam_b4(seeds: list[int], quick: bool) -> Problem:
    steps = 100 if quick else 400
    return _digits_mlp(
        "digits_mlp_adam_b4", seeds, sizes=(64, 128, 128, 10), steps=steps, batch=4,
        lrs=half_decades(-4), optimizer=optax.adam,
        schedule=lambda lr: warmup_cosine(lr, steps, decay=False),
        summary="Adam, constant LR",
    )  # fmt: skip


def long_mlp(seeds: list[int], quick: bool) -> Problem:
    steps = 600 if quick else 3000
    problem = _digits_mlp(
        "long_mlp", seeds, sizes=(64, 64, 64, 10), steps=steps, batch=16,
        lrs=half_decades(-3.5), optimizer=optax.adam,
        schedule=lambda lr: warmup_cosine(lr, steps),
        summary="Adam, cosine decay to 10% from step 0 (no warm-up)",
    )  # fmt: skip
    return dataclasses.replace(problem, tolerance=0.005)


def digits_vit(seeds: list[int], quick: bool) -> Problem:
    cfg = _models.ViTConfig(heads=2)
    steps, batch = (100 if quick else 500), 32
    return _digits(
        "digits_vit", seeds, steps=steps, batch=batch,
        apply=lambda params, x: _models.vit_apply(params, x, cfg),
        reshape=lambda x: x.reshape(-1, 8, 8),
        summary=f"ViT on sklearn digits (8x8, {cfg.patch}x{cfg.patch} patches = {cfg.tokens} "
        f"tokens, d={cfg.d_model}, {cfg.layers} pre-LN layers, {cfg.heads} heads, MLP "
        f"{cfg.mlp}, mean-pooled); AdamW wd 0.05, 30-step warm-up + cosine to 10%; "
        f"{steps} steps, batch {batch}",
        lrs=half_decades(-3.5),
        optimizer=lambda s: optax.adamw(s, weight_decay=0.05),
        schedule=lambda lr: warmup_cosine(lr, steps, warmup=30),
        init=lambda key: _models.vit_init(key, cfg),
        step_cost=4.5,
    )


# Seeds per problem: more where runs are cheap, since a run's final loss moves
# by several percent under any change of its float operations (the suite's
# chaos-floor arm measures how much) and only the mean over seeds settles.
SEEDS = {
    "bigram_lm": 2,
    "text_lm": 2,
    "digits_mlp_sgd": 8,
    "digits_mlp_adam_b4": 8,
    "digits_vit": 8,
    "long_mlp": 8,
}

PROBLEMS: dict[str, Callable[[list[int], bool], Problem]] = {
    "bigram_lm": bigram_lm,
    "text_lm": text_lm,
    "digits_mlp_sgd": digits_mlp_sgd,
    "digits_mlp_adam_b4": digits_mlp_adam_b4,
    "digits_vit": digits_vit,
    "long_mlp": long_mlp,
}
