"""Cost of ``explosion_guard`` on a training step, as a ratio to plain Adam.

Each arm is one jitted ``update + apply_updates`` with params and optimizer
state donated (``donate_argnums``), as real training loops run. Arms run in
interleaved rounds and we report medians and ratios measured side by side in
this one run (absolute times on shared machines drift). Compile time of each
step is measured too, in its three phases: tracing (Python), lowering to
StableHLO and XLA's compilation (``jit(...).trace(...).lower().compile()``).

The update-only step is the worst case for the compile ratio: Adam alone
compiles to about 34 HLO operations per leaf and almost nothing else, so the
guard's scalar logic (about 615 operations, all in one fused kernel) and its
extra operations per leaf (the norm's reduction, the state selects, the
output select) weigh most; ``compile_cost.py`` takes that apart. The
``floor`` arm (``norm_floor``) does only what the guard cannot avoid -- the
global norm and a multiply of the gradients by a scalar made from it -- and
shows what that alone costs in step and compile time. A second table times
the whole training step -- forward, backward, update -- of a
10.9M-parameter pre-LN transformer LM (``benchmarks/_lm.py``, 65 leaves of 14
shapes), which is what a user compiles.

Run::

    python benchmarks/overhead.py              # CPU: 1M and 10M f32, 10M bf16
    python benchmarks/overhead.py --sizes 100000000 --dtypes float32  # GPU

Writes ``benchmarks/results/overhead_<backend>.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lm  # noqa: E402
import optaxsched as ox  # noqa: E402
from optaxsched import _numerics as nx  # noqa: E402

LEAVES = 64


def make_tree(total: int, dtype, seed: int, leaves: int = LEAVES):
    """``leaves`` leaves of (rows, 1024)-ish shapes adding up to ~``total`` elements."""
    per = max(total // leaves, 1)
    cols = 1024 if per >= 1024 else per
    rows = max(per // cols, 1)
    keys = jax.random.split(jax.random.PRNGKey(seed), leaves)
    return {
        f"layer_{i:02d}": jax.random.normal(k, (rows, cols), jnp.float32).astype(dtype) * 1e-2
        for i, k in enumerate(keys)
    }


def norm_floor(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """The guard's unavoidable work and nothing more: the float32 global norm
    of the gradients, and the gradients times a scalar made from it, before
    ``inner``. No statistics, no frozen state, no output select. Its step time
    is the floor of one extra read of the gradients; its compile time is what
    any transform that needs the global norm first pays."""

    def update(updates, state, params=None, **extra_args):
        del extra_args
        _, finite = nx.global_norm_and_finite(updates)
        scale = jnp.where(finite, 1.0, 0.0)
        updates = jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates)
        return inner.update(updates, state, params)

    return optax.GradientTransformationExtraArgs(inner.init, update)


def arms():
    adam = lambda: optax.adam(1e-3)  # noqa: E731
    return {
        "adam": adam(),
        "floor: norm, then adam": norm_floor(adam()),
        "optax apply_if_finite(clip+adam)": optax.apply_if_finite(
            optax.chain(optax.clip_by_global_norm(1.0), adam()), max_consecutive_errors=100
        ),
        "explosion_guard(adam)": ox.explosion_guard(adam()),
        "explosion_guard(adam, clip)": ox.explosion_guard(adam(), on_spike="clip"),
    }


def make_step(tx):
    def step(params, opt_state, grads, loss):
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step, donate_argnums=(0, 1))


def _compile(jitted, *args, clock=time.perf_counter):
    """Compiled step and the seconds spent in each phase: tracing (Python),
    lowering to StableHLO, and XLA's compilation."""
    t0 = clock()
    traced = jitted.trace(*args)
    t1 = clock()
    lowered = traced.lower()
    t2 = clock()
    compiled = lowered.compile()
    t3 = clock()
    return compiled, (t1 - t0, t2 - t1, t3 - t2)


def _interleaved(compiled: dict, carries: dict, args: tuple, rounds: int, reps: int):
    """Median seconds per call of each compiled step, in interleaved rounds
    (reversed every other round) so drift hits every arm alike."""
    times: dict[str, list[float]] = {name: [] for name in compiled}
    names = list(compiled)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            carry = carries[name]
            t0 = time.perf_counter()
            for _ in range(reps):
                carry = compiled[name](*carry, *args)[:2]
            jax.block_until_ready(carry)
            times[name].append((time.perf_counter() - t0) / reps)
            carries[name] = carry
    return {name: statistics.median(t) for name, t in times.items()}


def _rows(step_s: dict, compile_s: dict):
    """(arm, ms/step, step / adam, total compile s, compile / adam, phases)."""
    base, base_c = step_s["adam"], sum(compile_s["adam"])
    return [
        (
            name,
            step_s[name] * 1e3,
            step_s[name] / base,
            sum(compile_s[name]),
            sum(compile_s[name]) / base_c,
            compile_s[name],
        )
        for name in step_s
    ]


def _phases(phases) -> str:
    return " / ".join(f"{t:.2f}" for t in phases)


def bench(total: int, dtype, rounds: int, reps: int, leaves: int = LEAVES):
    grads = make_tree(total, dtype, 1, leaves)
    loss = jnp.float32(1.0)
    compiled, carries, compile_s = {}, {}, {}
    for name, tx in arms().items():
        params = make_tree(total, dtype, 0, leaves)
        opt_state = tx.init(params)
        step = make_step(tx)
        compiled[name], compile_s[name] = _compile(step, params, opt_state, grads, loss)
        params, opt_state = compiled[name](params, opt_state, grads, loss)  # warm up
        jax.block_until_ready(params)
        carries[name] = (params, opt_state)
    return _rows(_interleaved(compiled, carries, (grads, loss), rounds, reps), compile_s)


LM = _lm.LMConfig(vocab=256, d_model=384, heads=6, layers=6, seq_len=64, batch=2)


def bench_train_step(rounds: int, reps: int):
    """Forward + backward + update + apply of the transformer LM, donated."""
    cfg = LM
    batch = jax.random.randint(jax.random.PRNGKey(1), (cfg.batch, cfg.seq_len + 1), 0, cfg.vocab)
    compiled, carries, compile_s = {}, {}, {}
    for name, tx in arms().items():

        def step(params, opt_state, batch, tx=tx):
            loss, grads = jax.value_and_grad(_lm.loss_fn)(params, batch, cfg)
            updates, opt_state = tx.update(grads, opt_state, params, value=loss)
            return optax.apply_updates(params, updates), opt_state, loss

        params = _lm.init_params(jax.random.PRNGKey(0), cfg)
        opt_state = tx.init(params)
        compiled[name], compile_s[name] = _compile(
            jax.jit(step, donate_argnums=(0, 1)), params, opt_state, batch
        )
        carries[name] = compiled[name](params, opt_state, batch)[:2]
    n = sum(x.size for x in jax.tree_util.tree_leaves(carries["adam"][0]))
    return n, _rows(_interleaved(compiled, carries, (batch,), rounds, reps), compile_s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    ap.add_argument(
        "--bf16-size",
        type=int,
        default=10_000_000,
        help="also run this size in bfloat16 (0 to skip)",
    )
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--leaves", type=int, default=LEAVES)
    ap.add_argument(
        "--train-rounds", type=int, default=5, help="rounds of the full training step (0 to skip)"
    )
    args = ap.parse_args(argv)

    backend = jax.default_backend()
    configs = [(s, d) for s in args.sizes for d in args.dtypes]
    if args.bf16_size:
        configs.append((args.bf16_size, "bfloat16"))
    lines = [
        f"# explosion_guard overhead ({backend})",
        "",
        f"jax {jax.__version__}, optax {optax.__version__}, "
        f"device: {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} host cores. {args.leaves} leaves, params and state donated, "
        f"median of {args.rounds} interleaved rounds x {args.reps} steps.",
        "",
        "| params | dtype | arm | ms/step | time / adam | compile s | compile / adam "
        "| trace / lower / XLA s |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for size, dtype in configs:
        rows = bench(size, jnp.dtype(dtype), args.rounds, args.reps, args.leaves)
        for name, ms, ratio, csec, cratio, phases in rows:
            line = (
                f"| {size:,} | {dtype} | {name} | {ms:.2f} | {ratio:.2f}x "
                f"| {csec:.2f} | {cratio:.2f}x | {_phases(phases)} |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.train_rounds:
        n, rows = bench_train_step(args.train_rounds, 3)
        lines += [
            "",
            f"Whole training step (forward, backward, update, apply) of a {n:,}-parameter "
            f"pre-LN transformer LM ({LM.layers} layers, d={LM.d_model}, batch {LM.batch}x"
            f"{LM.seq_len}, 65 leaves), params and state donated, median of "
            f"{args.train_rounds} interleaved rounds x 3 steps:",
            "",
            "| arm | ms/step | time / adam | compile s | compile / adam "
            "| trace / lower / XLA s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, ms, ratio, csec, cratio, phases in rows:
            line = (
                f"| {name} | {ms:.1f} | {ratio:.2f}x | {csec:.2f} | {cratio:.2f}x "
                f"| {_phases(phases)} |"
            )
            lines.append(line)
            print(line, flush=True)
    suffix = "" if args.leaves == LEAVES else f"_{args.leaves}leaves"
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).parent / "results" / f"overhead_{backend}{suffix}.md")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
