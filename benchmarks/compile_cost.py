"""Where ``explosion_guard``'s extra compile time goes on XLA:CPU.

``overhead.py`` reports the guarded step's compile time as a ratio to plain
Adam's. This script takes that ratio apart, so the part that is the guard's
own work can be told from the part that is the backend's fixed price per
operation and per kernel. Four arms: Adam; the *floor* (``overhead.norm_floor``:
the global norm and a scalar multiply of the gradients before Adam, the least
any transform that needs the norm first can do); *bare skip* (``bare_skip``:
the floor plus what skipping a non-finite step needs and nothing else -- the
inner state frozen bitwise, the updates zeroed -- without any statistics or
recovery rule); and the guard.

1. **Fixed cost.** The update + apply step on one 4-element leaf, so that the
   per-leaf work is nil and what remains is the guard's scalar logic
   (statistics, recovery rule, counters) and the freezing machinery.
2. **Per-leaf cost.** The same with 64 leaves of 1M parameters in total: the
   extra over (1) is what every leaf adds (the norm's reduction kernel, the
   state and output selects).
3. **Price of a scalar operation.** A chain of ``n`` scalar ``where/mul/add``
   steps compiled as one kernel, for several ``n``: the slope is what XLA:CPU
   charges for each HLO operation in a fused kernel, which sets a floor under
   any scalar logic of a given size.

Each phase (tracing, lowering, XLA) is the minimum over ``--repeats`` fresh
compiles of fresh functions, in process CPU time, which is steadier than wall
time on a shared machine. The ``kernels`` column counts the fusions of the
compiled module (XLA:CPU compiles identical ones once). Writes
``benchmarks/results/compile_cost_<backend>.md``.

Run::

    python benchmarks/compile_cost.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

import optaxsched as ox  # noqa: E402
from optaxsched import _numerics as nx  # noqa: E402
from optaxsched._freeze import update_with_frozen_state  # noqa: E402


def bare_skip(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Skip non-finite steps the guard's way and do nothing else: the norm,
    the inner state frozen where it is made, a select on the updates."""

    def update(updates, state, params=None, **extra_args):
        del extra_args
        _, finite = nx.global_norm_and_finite(updates)
        skip = ~finite
        updates = jax.tree_util.tree_map(
            lambda g: g * jnp.where(skip, 0.0, 1.0).astype(g.dtype), updates
        )
        inner_updates, new_state = update_with_frozen_state(
            inner.update, skip, updates, state, params, {}
        )
        inner_updates = jax.tree_util.tree_map(
            lambda u: jax.lax.select(skip, jnp.zeros_like(u), u), inner_updates
        )
        return inner_updates, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def _phases(make_jitted, args, repeats):
    """Minimum CPU seconds of (trace, lower, XLA compile) over fresh functions,
    and the number of HLO operations and of kernels of the compiled module."""
    best = [float("inf")] * 3
    for _ in range(repeats):
        compiled, phases = overhead._compile(make_jitted(), *args, clock=time.process_time)
        best = [min(b, t) for b, t in zip(best, phases)]
    return best, _hlo_ops(compiled.as_text()), _kernels(compiled.as_text())


def _hlo_ops(compiled_text: str) -> int:
    """Instructions of an optimized HLO module, parameters left out."""
    return sum(
        1
        for line in compiled_text.splitlines()
        if line.startswith("  ") and " = " in line and "parameter(" not in line
    )


def _kernels(compiled_text: str) -> int:
    """Fusions called from the entry computation of an optimized HLO module."""
    entry = compiled_text[compiled_text.index("\nENTRY") :]
    return sum(1 for line in entry.splitlines() if " fusion(" in line)


FLOOR, BARE, GUARD = "floor: norm, then adam", "bare skip(adam)", "explosion_guard(adam)"
ONE, MANY = "1 leaf of 4", "64 leaves, 1M"


def guard_phases(repeats):
    rows = []
    for label, params, grads in [
        (ONE, {"w": jnp.ones(4)}, {"w": jnp.ones(4)}),
        (
            MANY,
            overhead.make_tree(1_000_000, jnp.float32, 0, overhead.LEAVES),
            overhead.make_tree(1_000_000, jnp.float32, 1, overhead.LEAVES),
        ),
    ]:
        for arm, tx in [
            ("adam", optax.adam(1e-3)),
            (FLOOR, overhead.norm_floor(optax.adam(1e-3))),
            (BARE, bare_skip(optax.adam(1e-3))),
            (GUARD, ox.explosion_guard(optax.adam(1e-3))),
        ]:
            args = (params, tx.init(params), grads, jnp.float32(1.0))
            phases, n_ops, n_kernels = _phases(
                lambda tx=tx: overhead.make_step(tx), args, repeats
            )
            rows.append((label, arm, n_ops, n_kernels, phases))
    return rows


def scalar_chain_phases(lengths, repeats):
    """XLA compile seconds of one fused kernel of ``n`` scalar steps."""
    x = jnp.arange(4, dtype=jnp.float32)

    def make(n):
        def make_jitted():
            def chain(a, b):
                y = a[0] + b[0]
                for i in range(n):
                    y = jnp.where(y > i, y * 1.0001 + 0.5, y - 0.25)
                return a, y

            return jax.jit(chain)

        return make_jitted

    rows = []
    for n in lengths:
        (_, _, xla_s), n_ops, _ = _phases(make(n), (x, x), repeats)
        rows.append((n, n_ops, xla_s))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    backend = jax.default_backend()
    lines = [
        f"# explosion_guard compile cost ({backend})",
        "",
        f"jax {jax.__version__}, optax {optax.__version__}, device: "
        f"{jax.devices()[0].device_kind}. Minimum process CPU seconds over "
        f"{args.repeats} fresh compiles (all threads; XLA compiles kernels in "
        "parallel, so wall time is lower).",
        "",
        "| step | arm | HLO ops | kernels | trace s | lower s | XLA s | total s "
        "| total / adam |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals = {}
    for label, arm, n_ops, n_kernels, (tr, lo, xla) in guard_phases(args.repeats):
        totals[label, arm] = tr + lo + xla
        line = (
            f"| {label} | {arm} | {n_ops} | {n_kernels} | {tr:.3f} | {lo:.3f} | {xla:.3f} "
            f"| {tr + lo + xla:.3f} | {totals[label, arm] / totals[label, 'adam']:.2f}x |"
        )
        lines.append(line)
        print(line, flush=True)

    def per_leaf(arm):
        return (totals[MANY, arm] - totals[ONE, arm]) / (overhead.LEAVES - 1)

    lines.append("")
    for arm in (FLOOR, BARE, GUARD):
        lines.append(
            f"- {arm}: fixed cost {totals[ONE, arm] - totals[ONE, 'adam']:.3f} s, "
            f"extra cost per leaf {(per_leaf(arm) - per_leaf('adam')) * 1e3:.2f} ms "
            f"(Adam's own: {per_leaf('adam') * 1e3:.2f} ms per leaf)."
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "One fused kernel of n scalar steps (compare, multiply, add, subtract, select):",
        "",
        "| n | HLO ops in the compiled module | XLA s |",
        "|---:|---:|---:|",
    ]
    chain = scalar_chain_phases([1, 50, 100, 200], args.repeats)
    for n, n_ops, xla in chain:
        line = f"| {n} | {n_ops} | {xla:.3f} |"
        lines.append(line)
        print(line, flush=True)
    (_, ops0, s0), (_, ops1, s1) = chain[0], chain[-1]
    per_op = (s1 - s0) / max(ops1 - ops0, 1)
    lines += ["", f"Slope: {per_op * 1e3:.3f} ms of XLA compile per scalar HLO operation."]
    print(lines[-1])
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).parent / "results" / f"compile_cost_{backend}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
