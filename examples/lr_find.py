"""Finding a learning rate with ``optaxsched.lr_find``.

An MLP classifies a synthetic data set (noisy Gaussian clusters in 16
dimensions). The range test trains it for 100 steps while Adam's learning
rate grows from 1e-7 to 10, in one compiled scan, and reads a learning rate
off the smoothed loss curve. A second call checks the suggestion the
expensive way, with ``method="sweep"``: short runs at a tenth of it, at it,
and at ten times it, side by side. The curve and the suggestion are drawn to
``--out``.

    python examples/lr_find.py [--steps 100] [--check-steps 300] [--out runs/lr_find/lr_find.png]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import optaxsched

FEATURES, CLASSES, HIDDEN, BATCH = 16, 5, 64, 32


def make_data(n: int = 2048, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Overlapping Gaussian clusters, one per class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, n)
    x = centers[y] + 1.5 * rng.normal(size=(n, FEATURES))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def init_params(key: jax.Array) -> dict:
    k1, k2, k3 = jax.random.split(key, 3)
    sizes = [(FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)]
    return {f"dense_{i}": {"w": jax.random.normal(k, s) / np.sqrt(s[0]), "b": jnp.zeros(s[1])}
            for i, (k, s) in enumerate(zip((k1, k2, k3), sizes))}


def loss_fn(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    for i in range(3):
        x = x @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"]
        if i < 2:
            x = jax.nn.relu(x)
    return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="steps of the range test")
    ap.add_argument("--check-steps", type=int, default=300,
                    help="steps of each run of the check")
    ap.add_argument("--out", default=os.path.join("runs", "lr_find", "lr_find.png"))
    args = ap.parse_args(argv)

    x, y = make_data()
    key = jax.random.PRNGKey(0)

    # A batch function: step (a traced int32) -> batch, drawn on the device.
    def batch_fn(step):
        idx = jax.random.choice(jax.random.fold_in(key, step), len(y), (BATCH,))
        return x[idx], y[idx]

    params = init_params(jax.random.PRNGKey(1))
    result = optaxsched.lr_find(loss_fn, params, optax.adam, batch_fn, num_steps=args.steps)
    print(f"range test: {result.num_steps_run} of {args.steps} steps run"
          + (f", stopped at lr {result.lrs[result.num_steps_run - 1]:.2g}"
             if result.stopped_early else ""))
    for rule, lr in result.suggestions.items():
        mark = "  <- suggestion" if rule == result.rule else ""
        print(f"  {rule:8s} {'none' if lr is None else f'{lr:.2e}'}{mark}")
    if result.suggestion is None:
        print("no suggestion:", result.message)
        return {"result": result, "check": None, "plot": None}

    # The check: constant-rate runs at suggestion / 10, suggestion, 10 x suggestion.
    s = result.suggestion
    check = optaxsched.lr_find(loss_fn, params, optax.adam, batch_fn, method="sweep",
                               start_lr=s / 10, end_lr=s * 10, num_lrs=3,
                               num_steps=args.check_steps)
    print(f"check, smoothed training loss after {args.check_steps} steps:")
    for lr, loss in zip(check.lrs, check.smoothed):
        print(f"  lr {lr:.2e}: {loss:.4f}")

    matplotlib.use("Agg")
    ax = result.plot(rules=list(result.suggestions))
    ax.set_title(f"lr_find: suggestion {s:.2e} ({result.rule})")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    ax.figure.tight_layout()
    ax.figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return {"result": result, "check": check, "plot": args.out}


if __name__ == "__main__":
    main()
