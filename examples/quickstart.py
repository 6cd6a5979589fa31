"""Quickstart: the same runs with plain Optax and with optaxsched.

A small next-token model learns a synthetic Markov chain whose best possible
loss is known. Every run uses Adam with a warm-up + cosine schedule and sees
the same batches, in three scenarios:

* a healthy learning rate, no faults: the guard must change nothing, and the
  two curves lie on top of each other;
* the same learning rate with two faults injected on purpose, a NaN gradient
  (a bad batch) and a gradient multiplied by 10,000 (a spike): plain Adam is
  destroyed by the NaN, the guard skips both steps and ends where the clean
  run ends;
* a learning rate far too high, with the same faults: the guard skips the
  faults and cuts its update multiplier when the loss climbs.

plain: ``optax.adam(schedule)``; guarded: ``optaxsched.explosion_guard(
optax.adam(schedule))`` with ``update(..., value=loss)`` (see
``explosion_guard``). It prints progress and a table, and writes
``quickstart.png`` (loss and update multiplier per scenario; skipped steps
marked).

    python examples/quickstart.py [--steps 300] [--lr 1e-2] [--high-lr 1.0] [--out quickstart.png]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optaxsched
from optaxsched import schedules

VOCAB, DIM, SEQ, BATCH = 48, 64, 24, 32


# ----------------------------------------------------------------------- data


def markov_chain(seed: int) -> tuple[np.ndarray, float]:
    """A sparse random transition matrix and its entropy (the loss floor)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(VOCAB, 0.05), size=VOCAB)
    p = np.maximum(p, 1e-12)
    p /= p.sum(1, keepdims=True)
    stationary = np.full(VOCAB, 1.0 / VOCAB)
    for _ in range(200):
        stationary = stationary @ p
    floor = float(stationary @ -(p * np.log(p)).sum(1))
    return p, floor


def sample(p: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` token sequences of length SEQ + 1 (int32)."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(p, 1)
    cdf[:, -1] = 1.0
    out = np.empty((n, SEQ + 1), np.int32)
    out[:, 0] = rng.integers(0, VOCAB, n)
    for t in range(SEQ):
        out[:, t + 1] = (rng.random(n)[:, None] > cdf[out[:, t]]).sum(1)
    return out


# ---------------------------------------------------------------------- model


def init(key: jax.Array) -> dict:
    k = jax.random.split(key, 4)
    return {
        "embed": 0.02 * jax.random.normal(k[0], (VOCAB, DIM)),
        "mlp": {"w1": jax.random.normal(k[1], (DIM, 4 * DIM)) / math.sqrt(DIM),
                "b1": jnp.zeros(4 * DIM),
                "w2": jax.random.normal(k[2], (4 * DIM, DIM)) / math.sqrt(4 * DIM)},
        "ln": {"scale": jnp.ones(DIM), "bias": jnp.zeros(DIM)},
        "head": 0.02 * jax.random.normal(k[3], (DIM, VOCAB)),
    }


def loss_fn(params: dict, seqs: jax.Array) -> jax.Array:
    x = params["embed"][seqs[:, :-1]]
    h = jax.nn.gelu(x @ params["mlp"]["w1"] + params["mlp"]["b1"]) @ params["mlp"]["w2"]
    x = x + h
    mu = x.mean(-1, keepdims=True)
    x = (x - mu) * jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    logits = (x * params["ln"]["scale"] + params["ln"]["bias"]) @ params["head"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, seqs[:, 1:, None], -1).mean()


# ------------------------------------------------------------------- training


REASONS = ("guard_nonfinite_steps", "guard_norm_spike_steps", "guard_loss_spike_steps",
           "guard_restart_steps", "recovery_burst_cuts", "recovery_trend_cuts")


def train(tx: optax.GradientTransformation, data: np.ndarray, faults: dict[int, float],
          name: str, log_every: int) -> dict[str, np.ndarray]:
    """Trains from the same initialisation; returns per-step records."""
    params = init(jax.random.PRNGKey(0))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, gmul):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        grads = jax.tree_util.tree_map(lambda g: g * gmul, grads)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        stats = optaxsched.telemetry(opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads), stats

    rec: dict[str, list] = {"loss": [], "grad_norm": [], "scale": [], "skipped": []}
    t0 = time.perf_counter()
    for t, batch in enumerate(data):
        params, opt_state, loss, gnorm, stats = step(
            params, opt_state, batch, jnp.float32(faults.get(t, 1.0)))
        scale = next((v for k, v in stats.items() if k.endswith("recovery_scale")), 1.0)
        skipped = next((v for k, v in stats.items() if k.endswith("guard_skipped_steps")), 0)
        rec["loss"].append(float(loss))
        rec["grad_norm"].append(float(gnorm))
        rec["scale"].append(float(scale))
        rec["skipped"].append(int(skipped))
        if t % log_every == 0 or t == len(data) - 1:
            print(f"  [{name}] step {t:4d}  loss {float(loss):8.3f}  scale {float(scale):.3f}  "
                  f"skipped {int(skipped)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    # The guard counts each decision by the test that made it.
    reasons = {k.split("/")[-1]: int(v) for k, v in stats.items() if k.split("/")[-1] in REASONS}
    if reasons:
        print(f"  [{name}] decisions: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    leaves = jax.tree_util.tree_leaves(params)
    rec["params_finite"] = bool(all(np.isfinite(x).all() for x in leaves))
    rec["final_params"] = params
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in rec.items()}


def plot(results: dict, faults: dict[int, float], floor: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 5.5), sharex=True,
                             squeeze=False)
    colors = {"plain adam": "tab:red", "optaxsched": "tab:blue"}
    for col, (title, runs) in enumerate(results.items()):
        top, bottom = axes[0][col], axes[1][col]
        for name, r in runs.items():
            steps = np.arange(len(r["loss"]))
            loss = np.where(np.isfinite(r["loss"]), r["loss"], np.nan)
            top.plot(steps, loss, color=colors[name], lw=0.9, label=name,
                     ls="-" if name == "plain adam" else "--")
            if name == "optaxsched":  # plain Adam has no multiplier
                bottom.plot(steps, r["scale"], color=colors[name], lw=1.2)
            skipped_at = steps[np.diff(r["skipped"], prepend=0) > 0]
            if len(skipped_at):
                top.scatter(skipped_at, np.full(len(skipped_at), floor), marker="x",
                            color=colors[name], zorder=3, label=f"{name}: skipped step")
        if "faults" in title:
            for t in faults:
                for ax in (top, bottom):
                    ax.axvline(t, color="gray", lw=0.6, ls=":")
        top.axhline(floor, color="gray", lw=0.8, ls="--")
        top.set_title(title, fontsize=9)
        top.set_yscale("log")
        bottom.set_ylim(0, 1.05)
        bottom.set_xlabel("step")
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("update multiplier\n(optaxsched)")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Plain Adam vs explosion_guard(Adam): dashed blue on solid red means "
                 "the guard changed nothing", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2, help="a healthy peak learning rate")
    ap.add_argument("--high-lr", type=float, default=1.0, help="a far too high one")
    ap.add_argument("--out", default="quickstart.png")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    p, floor = markov_chain(0)
    data = sample(p, args.steps * BATCH, 1).reshape(args.steps, BATCH, SEQ + 1)
    held_out = jnp.asarray(sample(p, 512, 2))
    faults = {int(args.steps * 0.4): 1e4, int(args.steps * 0.7): float("nan")}
    warmup = max(args.steps // 10, 1)
    print(f"Markov chain over {VOCAB} tokens: best possible loss {floor:.3f} nats, "
          f"uniform guess {math.log(VOCAB):.3f}. {args.steps} steps; faults at steps "
          f"{sorted(faults)}.", flush=True)
    scenarios = {
        f"lr {args.lr:g}, clean": (args.lr, {}),
        f"lr {args.lr:g}, faults": (args.lr, faults),
        f"lr {args.high_lr:g} (too high), faults": (args.high_lr, faults),
    }
    log_every = max(args.steps // 4, 1)
    results: dict[str, dict] = {}
    for title, (peak, fts) in scenarios.items():
        print(f"\n{title}", flush=True)
        lr = schedules.warmup(
            schedules.cosine_decay(peak, args.steps - warmup, end_value=0.1 * peak), warmup)
        results[title] = {
            "plain adam": train(optax.adam(lr), data, fts, "plain adam", log_every),
            "optaxsched": train(optaxsched.explosion_guard(optax.adam(lr)), data, fts,
                                "optaxsched", log_every),
        }
    print(f"\n{'scenario':30s} {'run':12s} {'held-out loss':>14s} {'skipped':>8s} "
          f"{'final multiplier':>17s}")
    for title, runs in results.items():
        for name, r in runs.items():
            finite = r["params_finite"]
            held = float(loss_fn(r["final_params"], held_out)) if finite else float("nan")
            r["held_out"] = held
            print(f"{title:30s} {name:12s} {held:14.3f} {int(r['skipped'][-1]):8d} "
                  f"{r['scale'][-1]:17.3g}")
    print(f"(best possible {floor:.3f})")
    if not args.no_plot:
        plot(results, faults, floor, args.out)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
