"""Learning-rate stability benchmark: baseline Adam vs guarded Adam.

A small pre-LN transformer LM (``benchmarks/_lm.py``) is trained on a synthetic
sparse-bigram corpus whose entropy floor is known, for ``--steps`` steps at
learning rates 1e-3 ... 1 in half-decades, for several seeds. Each arm is one
``jax.jit(jax.vmap(jax.vmap(run)))`` over (seed, learning rate) with a
``lax.scan`` over steps; every arm's ``update`` is called with ``value=loss``.

Arms:
  baseline   optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
  skip-only  explosion_guard(optax.adam(schedule), backoff_factor=1.0, probe_steps=0)
             (skips non-finite steps and spikes, never lowers the scale)
  guard      explosion_guard(optax.adam(schedule))  -- all defaults

Fault-injection modes:
  clean      no faults
  nan        the gradient is NaN at step steps//2
  spike      every 50 steps the batch is uniform random tokens and the loss
             (hence the gradient) is multiplied by 1000
  grad1e4    the gradient is multiplied by 1e4 at step steps//2

Metrics (per arm and mode; final loss = held-out eval loss after the last step):
  LR sensitivity  E_lr[min(final, l0) - l*] (Wortsman et al. 2023), with l*
                  the arm's own best final loss and with a common l* (best
                  over all arms of the mode); NaN counts as l0.
  max stable LR   largest lr whose final loss is <= l* + 0.1 (l0 - l*) for
                  every seed (common l*).
  NaN runs, loss at the best LR, skipped steps, loss spikes (train loss
  above mean + 6 std of the previous 50 steps, injected steps excluded) and,
  for the single-fault modes, the final-loss cost against the clean run.

Usage:
  python benchmarks/stability.py                 # full run, writes results
  python benchmarks/stability.py --quick         # smoke test (~1 min)
  python benchmarks/stability.py --d-model 128 --beta2 0.95 --data-seed 1 \
      --modes clean --out benchmarks/results/stability_variant.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _lm  # noqa: E402
import optaxsched  # noqa: E402

MODES = ("clean", "nan", "spike", "grad1e4")
SPIKE_EVERY = 50
SPIKE_FACTOR = 1000.0
GRAD_FAULT = 1e4


# ------------------------------------------------------------------------ arms


def make_arms(beta2: float) -> dict[str, Callable[[Callable], optax.GradientTransformation]]:
    """name -> factory(learning-rate schedule) -> optimizer."""

    def adam(sched):
        return optax.adam(sched, b2=beta2)

    return {
        "baseline": lambda s: optax.chain(optax.clip_by_global_norm(1.0), adam(s)),
        "skip-only": lambda s: optaxsched.explosion_guard(
            adam(s), backoff_factor=1.0, probe_steps=0
        ),
        "guard": lambda s: optaxsched.explosion_guard(adam(s)),
    }


def make_schedule(kind: str, lr, warmup: int, steps: int) -> Callable:
    """Linear warm-up from 0 over ``warmup`` steps, then constant or cosine to 10%."""

    def sched(t):
        t = jnp.asarray(t, jnp.float32)
        ramp = jnp.minimum((t + 1.0) / warmup, 1.0)
        if kind == "constant":
            return lr * ramp
        frac = jnp.clip((t - warmup) / max(steps - warmup, 1), 0.0, 1.0)
        return lr * ramp * (0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

    return sched


# ---------------------------------------------------------------------- runner


def fault_arrays(mode: str, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step gradient multiplier, loss multiplier and random-batch flag."""
    gmul = np.ones(steps, np.float32)
    lmul = np.ones(steps, np.float32)
    rand = np.zeros(steps, bool)
    if mode == "nan":
        gmul[steps // 2] = np.nan
    elif mode == "grad1e4":
        gmul[steps // 2] = GRAD_FAULT
    elif mode == "spike":
        idx = np.arange(SPIKE_EVERY, steps, SPIKE_EVERY)
        lmul[idx] = SPIKE_FACTOR
        rand[idx] = True
    elif mode != "clean":
        raise ValueError(f"unknown mode {mode!r}")
    return gmul, lmul, rand


def build_runner(factory, cfg: _lm.LMConfig, args, mode: str):
    """jit(vmap over seeds (vmap over learning rates (one training run)))."""
    steps = args.steps
    gmul, lmul, _ = fault_arrays(mode, steps)

    def run(lr, key, data, eval_data):
        sched = make_schedule(args.schedule, lr, args.warmup, steps)
        tx = factory(sched)
        params = _lm.init_params(key, cfg)
        opt_state = tx.init(params)
        init_eval = _lm.loss_fn(params, eval_data, cfg)

        def step(carry, xs):
            params, opt_state = carry
            batch, gm, lm = xs
            loss, grads = jax.value_and_grad(lambda p: lm * _lm.loss_fn(p, batch, cfg))(params)
            grads = jax.tree_util.tree_map(lambda g: g * gm, grads)
            updates, opt_state = tx.update(grads, opt_state, params, value=loss)
            params = optax.apply_updates(params, updates)
            scale = optax.tree.get(opt_state, "recovery_scale", None)
            skipped = optax.tree.get(opt_state, "skipped_steps", None)
            out = (
                loss / lm,
                optax.tree.norm(grads),
                jnp.float32(1.0) if scale is None else scale,
                jnp.int32(0) if skipped is None else skipped,
            )
            return (params, opt_state), out

        (params, _), (losses, gnorms, scales, skipped) = jax.lax.scan(
            step, (params, opt_state), (data, jnp.asarray(gmul), jnp.asarray(lmul))
        )
        final_eval = _lm.loss_fn(params, eval_data, cfg)
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])
        )
        return dict(
            init=init_eval,
            final=final_eval,
            finite=finite,
            losses=losses,
            gnorms=gnorms,
            scales=scales,
            skipped=skipped[-1],
        )

    over_lr = jax.vmap(run, in_axes=(0, None, None, None))
    over_seed = jax.vmap(over_lr, in_axes=(None, 0, 0, None))
    return jax.jit(over_seed)


def make_data(cfg: _lm.LMConfig, args, mode: str):
    p = _lm.bigram_matrix(cfg.vocab, args.alpha, args.data_seed)
    floor = _lm.entropy_floor(p, cfg.seq_len)
    data = np.stack(
        [
            _lm.sample_sequences(
                p, (args.steps, cfg.batch), cfg.seq_len, 1000 * args.data_seed + 17 + s
            )
            for s in args.seeds
        ]
    )
    _, _, rand = fault_arrays(mode, args.steps)
    if rand.any():
        rng = np.random.default_rng(12345)
        data[:, rand] = rng.integers(0, cfg.vocab, size=data[:, rand].shape)
    eval_data = _lm.sample_sequences(
        p, (args.eval_batch,), cfg.seq_len, 1000 * args.data_seed + 999
    )
    return jnp.asarray(data), jnp.asarray(eval_data), floor


def run_arm(factory, cfg, args, mode, data, eval_data) -> dict[str, np.ndarray]:
    runner = build_runner(factory, cfg, args, mode)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in args.seeds])
    lrs = jnp.asarray(args.lrs, jnp.float32)
    out = runner(lrs, keys, data, eval_data)
    return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


# --------------------------------------------------------------------- metrics


def count_spikes(losses: np.ndarray, mode: str, window: int = 50, z: float = 6.0) -> int:
    """Train-loss spikes: loss > mean + z std of the previous ``window`` steps."""
    steps = losses.shape[-1]
    _, _, injected = fault_arrays(mode, steps)
    flat = losses.reshape(-1, steps)
    n = 0
    for row in flat:
        for t in range(window, steps):
            if injected[t]:
                continue
            prev = row[t - window : t]
            prev = prev[np.isfinite(prev)]
            if prev.size < window // 2 or not np.isfinite(row[t]):
                continue
            if row[t] > prev.mean() + z * prev.std():
                n += 1
    return n


def summarize(results: dict[str, dict], lrs, mode: str) -> dict[str, dict]:
    """Metrics of every arm of one mode (common l* = best over arms)."""
    l0 = float(np.mean([r["init"].mean() for r in results.values()]))
    capped = {}
    for name, r in results.items():
        f = np.where(r["finite"] & np.isfinite(r["final"]), r["final"], np.inf)
        capped[name] = np.minimum(f, l0)  # (seeds, lrs)
    best = {n: float(c.mean(0).min()) for n, c in capped.items()}
    common = min(best.values())
    thresh = common + 0.1 * (l0 - common)
    summary = {}
    for name, r in results.items():
        c = capped[name]
        mean = c.mean(0)
        stable = np.all(c <= thresh, axis=0)
        stable_lrs = [lr for lr, s in zip(lrs, stable) if s]
        summary[name] = dict(
            l0=l0,
            sens=float(np.mean(mean - best[name])),
            sens_common=float(np.mean(mean - common)),
            max_stable=max(stable_lrs) if stable_lrs else float("nan"),
            n_stable=int(stable.sum()),
            nan_runs=int((~(r["finite"] & np.isfinite(r["final"]))).sum()),
            best=best[name],
            best_lr=float(lrs[int(np.argmin(mean))]),
            per_lr=mean,
            skipped=float(r["skipped"].mean()),
            spikes=count_spikes(r["losses"], mode),
            min_scale=float(np.nanmin(r["scales"])),
        )
    return summary


def fault_costs(clean: dict, faulty: dict, lrs, clean_summary: dict) -> tuple[float, float]:
    """Relative final-loss cost of a single fault: at the clean best lr, and
    the worst over the lrs that are stable in the clean run."""
    fc = np.where(faulty["finite"], faulty["final"], np.inf).mean(0)
    cc = clean["final"].mean(0)
    rel = (fc - cc) / cc
    i_best = list(lrs).index(clean_summary["best_lr"])
    stable = [i for i, lr in enumerate(lrs) if lr <= clean_summary["max_stable"]]
    worst = float(np.max(rel[stable])) if stable else float("nan")
    return float(rel[i_best]), worst


# ---------------------------------------------------------------------- report


def _fmt_lr(x: float) -> str:
    if not np.isfinite(x):
        return "none"
    return f"{x:.0e}".replace("e-0", "e-").replace("e+00", "")


def markdown(all_summ, costs, lrs, floor, args, timings) -> str:
    lines = [
        "# Stability benchmark",
        "",
        f"Pre-LN transformer LM: {args.layers} layers, d={args.d_model}, {args.heads} heads, "
        f"T={args.seq_len}, B={args.batch}, V={args.vocab}; synthetic bigram data "
        f"(Dirichlet({args.alpha}) rows, data seed {args.data_seed}), entropy floor "
        f"**{floor:.3f}** nats. {args.steps} steps, Adam b2={args.beta2}, "
        f"{args.warmup}-step linear warm-up then {args.schedule}"
        f"{' decay to 10%' if args.schedule == 'cosine' else ''}; "
        f"seeds {','.join(map(str, args.seeds))}; learning rates "
        f"{', '.join(_fmt_lr(x) for x in lrs)}. Final loss = held-out eval loss.",
        "",
        "Arms: `baseline` = `chain(clip_by_global_norm(1.0), adam)`; `skip-only` = "
        "`explosion_guard(adam, backoff_factor=1.0, probe_steps=0)`; `guard` = "
        "`explosion_guard(adam)` "
        "with default arguments; every update gets `value=loss`.",
        "",
    ]
    for mode, summ in all_summ.items():
        lines += [f"## Mode `{mode}`", ""]
        lines += [
            "| arm | LR sensitivity (own l\\*) | LR sensitivity (common l\\*) | max stable LR "
            "| NaN runs | loss at best LR (lr) | skipped steps / run | loss spikes | min scale |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in summ.items():
            lines.append(
                f"| {name} | {s['sens']:.3f} | {s['sens_common']:.3f} | {_fmt_lr(s['max_stable'])} "
                f"| {s['nan_runs']} | {s['best']:.3f} ({_fmt_lr(s['best_lr'])}) "
                f"| {s['skipped']:.1f} | {s['spikes']} | {s['min_scale']:.3g} |"
            )
        lines += [
            "",
            "Final loss (mean over seeds; l0 = {:.3f}):".format(next(iter(summ.values()))["l0"]),
            "",
        ]
        lines.append("| arm | " + " | ".join(_fmt_lr(x) for x in lrs) + " |")
        lines.append("|---|" + "---|" * len(lrs))
        for name, s in summ.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in s["per_lr"]) + " |")
        if mode in costs:
            lines += [
                "",
                "Cost of the single fault vs the clean run (relative final loss):",
                "",
                "| arm | at the clean best LR | worst over clean-stable LRs |",
                "|---|---|---|",
            ]
            for name, (at_best, worst) in costs[mode].items():
                lines.append(f"| {name} | {100 * at_best:+.2f}% | {100 * worst:+.2f}% |")
        lines += ["", f"Wall time: {timings.get(mode, 0):.0f} s.", ""]
    return "\n".join(lines) + "\n"


def plot(all_summ, lrs, floor, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    modes = list(all_summ)
    fig, axes = plt.subplots(
        1, len(modes), figsize=(3.2 * len(modes), 2.8), sharey=True, squeeze=False
    )
    for ax, mode in zip(axes[0], modes):
        for name, s in all_summ[mode].items():
            ax.plot(lrs, s["per_lr"], marker="o", ms=3, label=name)
        ax.axhline(floor, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(mode, fontsize=9)
        ax.set_xlabel("peak learning rate", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("final eval loss", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument(
        "--alpha", type=float, default=0.05, help="Dirichlet concentration of the bigram rows"
    )
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument(
        "--seeds", type=str, default="0,1", help="comma-separated init/data-order seeds"
    )
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--eval-batch", type=int, default=128)
    ap.add_argument("--modes", type=str, default=",".join(MODES))
    ap.add_argument("--arms", type=str, default=None, help="comma-separated subset of the arms")
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 100 steps, 1 seed, 4 lrs, clean+nan"
    )
    ap.add_argument(
        "--out",
        type=str,
        default=None,
        help="markdown path (default benchmarks/results/stability.md)",
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.modes = args.modes.split(",")
    args.lrs = [10.0 ** (-3 + 0.5 * i) for i in range(7)]
    if args.quick:
        args.steps, args.seeds, args.modes = 100, args.seeds[:1], ["clean", "nan"]
        args.lrs = [1e-3, 1e-2, 1e-1, 1.0]
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = _lm.LMConfig(args.vocab, args.d_model, args.heads, args.layers, args.seq_len, args.batch)
    arms = make_arms(args.beta2)
    if args.arms:
        arms = {k: arms[k] for k in args.arms.split(",")}
    all_summ, raw, costs, timings = {}, {}, {}, {}
    floor = None
    for mode in args.modes:
        data, eval_data, floor = make_data(cfg, args, mode)
        if mode == args.modes[0]:
            print(f"entropy floor {floor:.4f} nats, ln V = {math.log(args.vocab):.4f}", flush=True)
        t0 = time.perf_counter()
        raw[mode] = {}
        for name, factory in arms.items():
            t1 = time.perf_counter()
            raw[mode][name] = run_arm(factory, cfg, args, mode, data, eval_data)
            print(f"  [{mode}] {name}: {time.perf_counter() - t1:.1f} s", flush=True)
        timings[mode] = time.perf_counter() - t0
        all_summ[mode] = summarize(raw[mode], args.lrs, mode)
        for name, s in all_summ[mode].items():
            print(
                f"[{mode}] {name:10s} sens {s['sens']:.3f} (common {s['sens_common']:.3f}) "
                f"max-stable {_fmt_lr(s['max_stable'])} nan {s['nan_runs']} best {s['best']:.3f}"
                f"@{_fmt_lr(s['best_lr'])} skipped {s['skipped']:.1f} spikes {s['spikes']} | "
                + " ".join(f"{v:.3f}" for v in s["per_lr"]),
                flush=True,
            )
        if mode in ("nan", "grad1e4") and "clean" in raw:
            costs[mode] = {
                n: fault_costs(raw["clean"][n], raw[mode][n], args.lrs, all_summ["clean"][n])
                for n in arms
            }
            for n, (b, w) in costs[mode].items():
                print(
                    f"[{mode}] {n:10s} fault cost at best lr {100 * b:+.2f}%, "
                    f"worst stable {100 * w:+.2f}%"
                )
    if not args.no_write:
        out = args.out or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "stability.md"
        )
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(markdown(all_summ, costs, args.lrs, floor, args, timings))
        plot(all_summ, args.lrs, floor, os.path.splitext(out)[0] + ".png")
        print(f"wrote {out}")
    return all_summ, raw


if __name__ == "__main__":
    main()
