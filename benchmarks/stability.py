"""Stability suite: does ``explosion_guard`` harm healthy runs, and does it
widen the stable learning-rate range?

Six small pure-JAX problems (``benchmarks/_problems.py``), all offline:

  bigram_lm           transformer LM on a synthetic bigram chain (known floor)
  text_lm             char-level transformer LM on Python standard-library source
  digits_mlp_sgd      MLP on sklearn digits, SGD momentum 0.9, batch 32
  digits_mlp_adam_b4  the same MLP, Adam, batch 4 (noisy small batches)
  digits_vit          small ViT on digits, AdamW, warm-up + cosine
  long_mlp            MLP on digits, Adam, cosine decay, 3,000 steps

Every problem is trained at seven half-decade learning rates (from too small
to clearly unstable) and 2-8 seeds (init and data order; `_problems.SEEDS`).

Arms (``ARMS``: name -> factory of the optimizer from the problem's recipe
``optax.chain(optax.clip_by_global_norm(1.0), opt(schedule))``):

  baseline    the recipe
  skip-only   explosion_guard(recipe, backoff_factor=1.0): skips non-finite
              steps and spikes, never lowers its multiplier
  guard       explosion_guard(recipe) with default arguments
  baseline-ulp  the chaos floor (clean runs only): the recipe after
              optax.scale(1 + 2**-23), which moves each gradient entry by at
              most one ulp. Training is chaotic: any change of a run's float
              operations (a guard that is exactly the identity on healthy
              steps still compiles to a different XLA program) moves the
              final loss by about what this arm moves it

Fault modes (the gradient tree is multiplied before ``tx.update``):

  clean           no faults
  nan             NaN gradient at step steps//2
  nan3            NaN gradient at 25%, 50% and 75% of the run
  grad1e4_early   gradient x 1e4 at step 10 (a spike before any warm-up ends)
  grad1e4         gradient x 1e4 at step steps//2

Runs: for each (problem, arm), one ``jax.jit(jax.vmap(jax.vmap(segment)))``
over (seed, learning rate) is compiled once; ``segment`` is a ``lax.scan``
over a quarter of the steps, and the per-step gradient multipliers (the
faults) are data. Every update is ``tx.update(grads, opt_state, params,
value=loss)``. The clean run is four segments; a fault mode resumes from the
clean run's state at the start of the segment holding its first fault (the
runs agree exactly up to there), which saves a quarter of the work.

Metrics (final loss = held-out loss of the final params, non-finite or above
the loss at init l0 capped at l0; l* = best seed-mean final loss of the clean
runs over all arms and learning rates, common to every arm and mode):

  LR sensitivity   E_lr[min(final, l0) - l*] (Wortsman et al. 2023)
  max stable LR    largest lr whose final loss is <= l* + 0.1 (l0 - l*) for
                   every seed
  NaN runs         runs whose params or final loss are not finite
  no-harm          for every lr up to the baseline's clean max stable LR
                   (the baseline-stable lrs), an arm's relative final-loss
                   difference vs the baseline in %; the worst one must be
                   <= +1% (+0.5% for long_mlp); the mean over those lrs
                   shows a systematic shift, and baseline-ulp's numbers show
                   what chaos alone gives. Also the clean runs' steps
                   with multiplier (``recovery_scale``) < 0.99 and skipped
                   steps at those lrs (false alarms).
  fault cost       relative final-loss change vs the same arm's clean run, at
                   the arm's clean best lr and the worst over the
                   baseline-stable lrs.
  targets          sensitivity <= 1/2 the baseline's; max stable LR >= the
                   baseline's, and >= 3x it; zero NaN runs in every mode; worst
                   fault cost < 2%.

Usage:
  python benchmarks/stability.py                  # full suite (~25 min, 2 CPU cores)
  python benchmarks/stability.py --quick          # smoke test
  python benchmarks/stability.py --problems digits_vit,long_mlp --modes clean,nan \\
      --arms baseline,guard --no-write

Writes ``benchmarks/results/stability_suite.md`` and a plot next to it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
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

import _problems  # noqa: E402
import optaxsched  # noqa: E402

ARMS: dict[str, Callable[[optax.GradientTransformation], optax.GradientTransformation]] = {
    "baseline": lambda recipe: recipe,
    "skip-only": lambda recipe: optaxsched.explosion_guard(recipe, backoff_factor=1.0),
    "guard": lambda recipe: optaxsched.explosion_guard(recipe),
    # The chaos floor: the baseline with every gradient entry moved by at most
    # one ulp (clean runs only). Any change of a run's float operations, a
    # different XLA fusion included, moves the final loss by this much.
    "baseline-ulp": lambda recipe: optax.chain(optax.scale(ULP), recipe),
}
CONTROL = "baseline-ulp"
ULP = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
MODES = ("clean", "nan", "nan3", "grad1e4_early", "grad1e4")
SEGMENTS = 4
GRAD_FAULT = 1e4
LOW_SCALE = 0.99
FAULT_TARGET = 0.02
# Guard counters reported per decision reason (false alarms on clean runs).
REASONS = {
    "norm spike": "guard_norm_spike_steps",
    "loss spike": "guard_loss_spike_steps",
    "restart": "guard_restart_steps",
    "burst cut": "recovery_burst_cuts",
    "trend cut": "recovery_trend_cuts",
}


def fault_multipliers(mode: str, steps: int) -> np.ndarray:
    """Per-step gradient multiplier of a fault mode."""
    gmul = np.ones(steps, np.float32)
    if mode == "nan":
        gmul[steps // 2] = np.nan
    elif mode == "nan3":
        gmul[[steps // 4, steps // 2, 3 * steps // 4]] = np.nan
    elif mode == "grad1e4_early":
        gmul[10] = GRAD_FAULT
    elif mode == "grad1e4":
        gmul[steps // 2] = GRAD_FAULT
    elif mode != "clean":
        raise ValueError(f"unknown mode {mode!r}")
    return gmul


# ---------------------------------------------------------------------- runner


def build_arm(problem: _problems.Problem, arm: str):
    """(init, segment): jit(vmap over seeds (vmap over learning rates (...)))."""

    def make_tx(lr):
        schedule = problem.schedule(lr)
        recipe = optax.chain(optax.clip_by_global_norm(1.0), problem.optimizer(schedule))
        return ARMS[arm](recipe)

    def init_one(lr, key):
        params = problem.init(key)
        return params, make_tx(lr).init(params)

    def segment_one(lr, carry, batches, gmul, consts):
        tx = make_tx(lr)

        def step(carry, xs):
            params, opt_state = carry
            batch, gm = xs
            loss, grads = jax.value_and_grad(problem.loss)(params, batch, consts)
            grads = jax.tree_util.tree_map(lambda g: g * gm, grads)
            updates, opt_state = tx.update(grads, opt_state, params, value=loss)
            params = optax.apply_updates(params, updates)
            scale = optax.tree.get(opt_state, "recovery_scale", None)
            return (params, opt_state), (loss, jnp.float32(1.0) if scale is None else scale)

        return jax.lax.scan(step, carry, (batches, gmul))

    init = jax.vmap(jax.vmap(init_one, in_axes=(0, None)), in_axes=(None, 0))
    seg = jax.vmap(jax.vmap(segment_one, in_axes=(0, 0, None, None, None)),
                   in_axes=(None, 0, 0, None, None))  # fmt: skip
    return jax.jit(init), jax.jit(seg)


def build_evaluate(problem: _problems.Problem):
    """jit(vmap(vmap(evaluate))) over the params of (seed, learning rate)."""
    ev = jax.vmap(jax.vmap(problem.evaluate, in_axes=(0, None, None)), in_axes=(0, None, None))
    return jax.jit(ev)


def _all_finite(params) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x), axis=tuple(range(2, x.ndim))) for x in
              jax.tree_util.tree_leaves(params)]  # fmt: skip
    return jnp.all(jnp.stack(leaves), axis=0)


def _finish(carry, outputs, evaluate, problem, init_loss) -> dict[str, np.ndarray]:
    """Per-run results of one (arm, mode) from the final carry and step outputs."""
    params, opt_state = carry
    final, acc = evaluate(params, problem.eval_data, problem.consts)
    losses = np.concatenate([np.asarray(o[0]) for o in outputs], axis=-1)
    scales = np.concatenate([np.asarray(o[1]) for o in outputs], axis=-1)
    skipped = optax.tree.get(opt_state, "guard_skipped_steps", None)
    final = np.asarray(final)
    reasons = {}
    for reason, field in REASONS.items():
        count = optax.tree.get(opt_state, field, None)
        reasons[reason] = np.zeros(final.shape, int) if count is None else np.asarray(count)
    return dict(
        init=np.asarray(init_loss),
        final=final,
        acc=np.asarray(acc),
        finite=np.asarray(_all_finite(params)) & np.isfinite(final),
        losses=losses,
        scales=scales,
        low_scale=(~(scales >= LOW_SCALE)).sum(-1),
        skipped=np.zeros(final.shape, int) if skipped is None else np.asarray(skipped),
        reasons=reasons,
    )


def run_arm(problem, arm, modes, keys, evaluate) -> tuple[dict, dict]:
    """All modes of one (problem, arm); the fault modes branch off the clean run."""
    if problem.steps % SEGMENTS or problem.steps <= 10:
        raise ValueError(f"{problem.name}: steps must be a multiple of {SEGMENTS} above 10")
    lrs = jnp.asarray(problem.lrs, jnp.float32)
    seg_len = problem.steps // SEGMENTS
    batches = [jnp.asarray(problem.batches[:, i * seg_len : (i + 1) * seg_len])
               for i in range(SEGMENTS)]  # fmt: skip
    init, seg = build_arm(problem, arm)
    t0 = time.perf_counter()
    carry = init(lrs, keys)
    init_loss, _ = evaluate(carry[0], problem.eval_data, problem.consts)
    gmul0 = jnp.ones(seg_len, jnp.float32)
    seg = seg.lower(lrs, carry, batches[0], gmul0, problem.consts).compile()
    times = {"compile": time.perf_counter() - t0}
    raw = {}
    snapshots, outputs = [], []
    for mode in ("clean",) + tuple(m for m in modes if m != "clean"):
        t0 = time.perf_counter()
        gmul = fault_multipliers(mode, problem.steps)
        start = 0 if mode == "clean" else int(np.flatnonzero(gmul != 1.0)[0]) // seg_len
        c, outs = (carry, []) if mode == "clean" else (snapshots[start], outputs[:start])
        for i in range(start, SEGMENTS):
            if mode == "clean":
                snapshots.append(c)
            g = jnp.asarray(gmul[i * seg_len : (i + 1) * seg_len])
            c, out = seg(lrs, c, batches[i], g, problem.consts)
            outs.append(out)
        if mode == "clean":
            outputs = outs
        raw[mode] = _finish(c, outs, evaluate, problem, init_loss)
        times[mode] = time.perf_counter() - t0
        print(f"  [{problem.name}] {arm:10s} {mode:14s} {times[mode]:6.1f} s", flush=True)
    return raw, times


def prepare(problem: _problems.Problem, seeds: list[int]):
    """Device copies of the problem's fixed data, the init keys, the evaluator."""
    problem = dataclasses.replace(
        problem,
        eval_data=jax.tree_util.tree_map(jnp.asarray, problem.eval_data),
        consts=jax.tree_util.tree_map(jnp.asarray, problem.consts),
    )
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    return problem, keys, build_evaluate(problem)


def run_task(prepared, arm: str, modes: list[str]) -> tuple[dict, dict]:
    """One (problem, arm): all its modes, with start/end times for the report."""
    problem, keys, evaluate = prepared
    if arm == CONTROL:
        modes = ["clean"]
    t0 = time.perf_counter()
    raw, times = run_arm(problem, arm, modes, keys, evaluate)
    times.update(start=t0, end=time.perf_counter(), total=time.perf_counter() - t0)
    print(
        f"[{problem.name}] {arm}: compile {times['compile']:.1f} s, total {times['total']:.1f} s",
        flush=True,
    )
    return raw, times


# --------------------------------------------------------------------- metrics


def capped(r: dict, l0: float) -> np.ndarray:
    """(seeds, lrs) final loss, non-finite or above l0 replaced by l0."""
    return np.minimum(np.where(r["finite"], r["final"], l0), l0)


def mode_metrics(r: dict, lrs, l0: float, lstar: float) -> dict:
    c = capped(r, l0)
    per_lr = c.mean(0)
    stable = np.all(c <= lstar + 0.1 * (l0 - lstar), axis=0)
    stable_lrs = [lr for lr, s in zip(lrs, stable) if s]
    i_best = int(np.argmin(per_lr))
    return dict(
        per_lr=per_lr,
        acc=r["acc"].mean(0),
        sens=float(np.mean(per_lr - lstar)),
        max_stable=max(stable_lrs) if stable_lrs else float("nan"),
        nan_runs=int((~r["finite"]).sum()),
        best=float(per_lr[i_best]),
        best_lr=float(lrs[i_best]),
        i_best=i_best,
        nan_per_lr=(~r["finite"]).sum(0),
    )


def paired(r: dict, ref: dict, l0: float) -> tuple[np.ndarray, np.ndarray]:
    """Per lr: relative difference of the seed-mean final loss of ``r`` vs
    ``ref``, and its standard error from the per-seed paired differences."""
    a, b = capped(r, l0), capped(ref, l0)
    base = b.mean(0)
    n = len(a)
    se = (a - b).std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(a.shape[1], np.nan)
    return (a.mean(0) - base) / base, se / base


def summarize(raw: dict, problem) -> dict:
    """Metrics of one problem: per arm and mode, no-harm, false alarms, fault costs."""
    lrs = problem.lrs
    arms = list(raw)
    ref = "baseline" if "baseline" in raw else arms[0]
    l0 = float(raw[ref]["clean"]["init"].mean())
    lstar = min(float(capped(raw[a]["clean"], l0).mean(0).min()) for a in arms)
    m = {a: {mode: mode_metrics(r, lrs, l0, lstar) for mode, r in raw[a].items()} for a in arms}
    ref_clean = m[ref]["clean"]
    stable_idx = [i for i, lr in enumerate(lrs)
                  if lr <= ref_clean["max_stable"] and ref_clean["nan_per_lr"][i] == 0]  # fmt: skip
    ref_c = capped(raw[ref]["clean"], l0)[:, stable_idx]
    spread = float((ref_c.std(0) / ref_c.mean(0)).mean()) if ref_c.size else float("nan")
    out = dict(l0=l0, lstar=lstar, ref=ref, stable_idx=stable_idx, metrics=m, arms={},
               seed_spread=spread if len(ref_c) > 1 else float("nan"))  # fmt: skip
    for a in arms:
        clean = m[a]["clean"]
        r = raw[a]["clean"]
        rel_base, se = paired(r, raw[ref]["clean"], l0)
        costs = {}
        for mode in raw[a]:
            if mode == "clean":
                continue
            rel, rel_se = paired(raw[a][mode], r, l0)
            i_worst = stable_idx[int(np.argmax(rel[stable_idx]))] if stable_idx else None
            best = (float(rel[clean["i_best"]]), float(rel_se[clean["i_best"]]))
            worst = (float("nan"),) * 2 if i_worst is None else (
                float(rel[i_worst]), float(rel_se[i_worst]))
            costs[mode] = (best, worst)
        out["arms"][a] = dict(
            no_harm=rel_base[stable_idx],
            no_harm_se=se[stable_idx],
            # lrs where the arm made a decision (a skip or a multiplier < 1) on
            # some seed: elsewhere its runs differ from the baseline's only by
            # the float operations of a different program, i.e. by chaos.
            acted=((r["skipped"] > 0) | (r["low_scale"] > 0)).any(0)[stable_idx],
            worst_harm=float(rel_base[stable_idx].max()) if stable_idx else float("nan"),
            mean_harm=float(rel_base[stable_idx].mean()) if stable_idx else float("nan"),
            worst_abs=float(np.abs(rel_base[stable_idx]).max()) if stable_idx else float("nan"),
            low_scale=float(r["low_scale"][:, stable_idx].mean()) if stable_idx else 0.0,
            skipped=float(r["skipped"][:, stable_idx].mean()) if stable_idx else 0.0,
            reasons={k: float(v[:, stable_idx].mean()) if stable_idx else 0.0
                     for k, v in r["reasons"].items()},  # fmt: skip
            costs=costs,
            worst_cost=max((w for _, w in costs.values()), default=(float("nan"),) * 2),
            nan_runs=sum(x["nan_runs"] for x in m[a].values()),
        )
    return out


def targets(s: dict, arm: str) -> dict[str, bool | str]:
    """Pass/fail of one arm against the suite's targets (vs the reference arm);
    "noise" where the fault cost misses 2% by less than two standard errors."""
    ref, mine = s["metrics"][s["ref"]]["clean"], s["metrics"][arm]["clean"]
    ref_lr = ref["max_stable"] if np.isfinite(ref["max_stable"]) else 0.0
    mine_lr = mine["max_stable"] if np.isfinite(mine["max_stable"]) else 0.0
    a = s["arms"][arm]
    return {
        "sensitivity <= 1/2": mine["sens"] <= 0.5 * ref["sens"],
        "max stable LR >= baseline's": mine_lr >= ref_lr and mine_lr > 0,
        "max stable LR >= 3x": mine_lr >= 3.0 * ref_lr and mine_lr > 0,
        "no NaN runs": a["nan_runs"] == 0,
        "fault cost < 2%": bool(a["costs"]) and _within(a["worst_cost"], FAULT_TARGET),
    }


def _within(cost: tuple[float, float], target: float) -> bool | str:
    value, se = cost
    if value < target:
        return True
    return "noise" if value - 2.0 * se < target else False


def _mark(v: bool | str) -> str:
    return "≈" if v == "noise" else ("✓" if v else "✗")


# ---------------------------------------------------------------------- report


def _lr(x: float) -> str:
    if not np.isfinite(x):
        return "none"
    return f"{x:.0e}".replace("e-0", "e-").replace("e+00", "").replace("e+0", "e")


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:+.2f}%"


def verdict(a: dict, tol: float) -> str:
    """PASS within the tolerance; PASS (chaos) when every excess is at an lr
    where the arm made no decision on any seed; "within noise" when an
    excess at an lr where it acted is within two standard errors of the
    seed-paired difference; else FAIL."""
    if a["worst_harm"] <= tol:
        return "PASS"
    acted = [(h, se) for h, se, act in zip(a["no_harm"], a["no_harm_se"], a["acted"]) if act]
    if all(h <= tol for h, _ in acted):
        return "PASS (chaos)"
    if all(h - 2.0 * se <= tol for h, se in acted):
        return "within noise"
    return "**FAIL**"


def _guarded(arms) -> list[str]:
    return [a for a in arms if a not in ("baseline", CONTROL)]


def summary_table(results: dict, arms: list[str]) -> list[str]:
    guarded = _guarded(arms)
    main = [a for a in arms if a != CONTROL]
    head = ["problem", "seeds", "no-harm tol"]
    head += [f"no-harm worst / mean {a}" for a in guarded] + ["no-harm " + " / ".join(guarded)]
    if CONTROL in arms:
        head += ["chaos floor worst / mean"]
    head += [f"sens ratio {a}/base" for a in guarded]
    head += ["max stable LR " + " / ".join(main), "NaN runs " + " / ".join(main)]
    head += ["worst fault cost " + " / ".join(main)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, (problem, s, _) in results.items():
        if s["ref"] != "baseline":
            continue
        m, a = s["metrics"], s["arms"]
        base_sens = m["baseline"]["clean"]["sens"]
        verdicts = [verdict(a[g], problem.tolerance) for g in guarded]
        row = [name, str(len(problem.batches)), f"+{100 * problem.tolerance:.1f}%"]
        row += [f"{_pct(a[g]['worst_harm'])} / {_pct(a[g]['mean_harm'])}" for g in guarded]
        row += [" / ".join(verdicts)]
        if CONTROL in arms:
            row += [f"±{_pct(a[CONTROL]['worst_abs']).lstrip('+')} / "
                    f"{_pct(a[CONTROL]['mean_harm'])}"]
        row += [f"{m[g]['clean']['sens'] / max(base_sens, 1e-12):.2f}" for g in guarded]
        row += [" / ".join(_lr(m[x]["clean"]["max_stable"]) for x in main)]
        row += [" / ".join(str(a[x]["nan_runs"]) for x in main)]
        row += [" / ".join(_pct(a[x]["worst_cost"][0]) for x in main)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def targets_table(results: dict) -> list[str]:
    rows, names = [], []
    for name, (_, s, _) in results.items():
        for arm in _guarded(s["arms"]):
            t = targets(s, arm)
            names = list(t)
            rows.append(f"| {name} | {arm} | " + " | ".join(_mark(v) for v in t.values()))
    if not rows:
        return []
    head = "| problem | arm | " + " | ".join(names) + " |"
    title = "Targets (vs the baseline; ≈: misses by less than two standard errors):"
    return [title, "", head, "|---" * (len(names) + 2) + "|"] + [r + " |" for r in rows]


def _loss_table(s: dict, problem) -> list[str]:
    lines = ["| arm | mode | " + " | ".join(_lr(x) for x in problem.lrs) + " | NaN runs |",
             "|---" * (len(problem.lrs) + 3) + "|"]  # fmt: skip
    for arm, mm in s["metrics"].items():
        for mode, x in mm.items():
            cells = " | ".join(f"{v:.4f}" for v in x["per_lr"])
            lines.append(f"| {arm} | {mode} | {cells} | {x['nan_runs']} |")
            if problem.has_accuracy:
                acc = " | ".join(f"{100 * v:.1f}%" for v in x["acc"])
                lines.append(f"| | test accuracy | {acc} | |")
    return lines


def _metrics_table(s: dict, problem) -> list[str]:
    lines = ["| arm | mode | LR sensitivity | max stable LR | NaN runs | best loss (lr) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for arm, mm in s["metrics"].items():
        for mode, x in mm.items():
            lines.append(
                f"| {arm} | {mode} | {x['sens']:.4f} | {_lr(x['max_stable'])} | "
                f"{x['nan_runs']} | {x['best']:.4f} ({_lr(x['best_lr'])}) |"
            )
    return lines


def _no_harm_table(s: dict, problem) -> list[str]:
    idx = s["stable_idx"]
    lrs = [problem.lrs[i] for i in idx]
    lines = [
        f"No-harm vs `{s['ref']}` (clean; relative final-loss difference at the "
        f"{s['ref']}-stable LRs; tolerance +{100 * problem.tolerance:.1f}%; for scale, the "
        f"{s['ref']}'s seed-to-seed spread (std/mean) there is "
        f"{_pct(s['seed_spread']).lstrip('+')}; "
        "\\* marks an lr where the arm skipped a step or lowered its multiplier on some "
        "seed; ± is the standard error of the seed-paired difference; PASS (chaos): every "
        "excess is at an lr where the arm made no decision at all; within noise: every "
        "excess where it acted is within two standard errors):",
        "",
        "| arm | " + " | ".join(_lr(x) for x in lrs) + " | worst | mean | verdict "
        "| steps with multiplier < 0.99 / run | skipped steps / run | "
        + " | ".join(f"{k} / run" for k in REASONS) + " |",
        "|---" * (len(lrs) + 6 + len(REASONS)) + "|",
    ]
    for arm, a in s["arms"].items():
        if arm == s["ref"]:
            continue
        text = "chaos floor" if arm == CONTROL else verdict(a, problem.tolerance)
        cells = " | ".join(
            f"{_pct(v)} ±{100 * se:.1f}" + ("\\*" if acted else "")
            for v, se, acted in zip(a["no_harm"], a["no_harm_se"], a["acted"])
        )
        lines.append(
            f"| {arm} | {cells} | {_pct(a['worst_harm'])} | {_pct(a['mean_harm'])} | {text} "
            f"| {a['low_scale']:.1f} | {a['skipped']:.1f} | "
            + " | ".join(f"{a['reasons'][k]:.1f}" for k in REASONS) + " |"
        )
    return lines


def _cost_table(s: dict) -> list[str]:
    arms = {k: a for k, a in s["arms"].items() if k != CONTROL}
    modes = [m for m in next(iter(arms.values()))["costs"]] if arms else []
    if not modes:
        return []
    lines = [
        "Fault cost vs the same arm's clean run (at its clean best LR / worst over the "
        "baseline-stable LRs, ± the standard error of the seed-paired difference; "
        "diverged runs count as l0):",
        "",
        "| arm | " + " | ".join(modes) + " |",
        "|---" * (len(modes) + 1) + "|",
    ]
    for arm, a in arms.items():
        cells = " | ".join(
            f"{_pct(b[0])} ±{100 * b[1]:.1f} / {_pct(w[0])} ±{100 * w[1]:.1f}"
            for b, w in a["costs"].values()
        )
        lines.append(f"| {arm} | {cells} |")
    return lines


def problem_section(problem, s: dict, times: dict) -> list[str]:
    floor = f" Entropy floor {problem.floor:.3f} nats." if problem.floor is not None else ""
    lines = [
        f"## `{problem.name}`",
        "",
        f"{problem.summary}. Learning rates {', '.join(_lr(x) for x in problem.lrs)}. "
        f"Loss at init l0 = {s['l0']:.4f}, l\\* = {s['lstar']:.4f}.{floor}",
        "",
        "Final held-out loss (mean over seeds; diverged runs count as l0):",
        "",
        *_loss_table(s, problem),
        "",
        *_metrics_table(s, problem),
        "",
        *_no_harm_table(s, problem),
        "",
        *_cost_table(s),
        "",
    ]
    for arm in _guarded(s["arms"]):
        t = targets(s, arm)
        marks = ", ".join(f"{k} {_mark(v)}" for k, v in t.items())
        lines.append(f"Targets `{arm}`: {marks}.  ")
    wall = ", ".join(
        f"{arm} {t['total']:.0f} s (compile {t['compile']:.0f} s)" for arm, t in times.items()
    )
    return lines + ["", f"Wall time: {wall}.", ""]


def markdown(results: dict, args, arms: list[str], wall: float) -> str:
    lines = [
        "# Stability suite",
        "",
        "Generated by `python benchmarks/stability.py"
        + (" --quick" if args.quick else "")
        + f"` (JAX {jax.__version__}, optax {optax.__version__}, "
        f"{jax.devices()[0].platform.upper()}, {os.cpu_count()} cores). "
        f"Arms: {', '.join(f'`{a}`' for a in arms)}; modes: {', '.join(args.modes)}; "
        "seeds per problem in the summary. The problems, arms, fault modes and "
        "metrics are described in the module docstring of `benchmarks/stability.py`. "
        f"Total wall time {wall / 60:.1f} min.",
        "",
        "## Summary",
        "",
        *summary_table(results, arms),
        "",
        *targets_table(results),
        "",
    ]
    for problem, s, times in results.values():
        lines += problem_section(problem, s, times)
    return "\n".join(lines + wall_table(results, args.workers)) + "\n"


def wall_table(results: dict, workers: int) -> list[str]:
    """Seconds per (problem, arm): compile (with init and eval) and each mode."""
    modes = [m for m in MODES if any(m in t for _, _, ts in results.values() for t in ts.values())]
    lines = [
        "## Wall times",
        "",
        f"Seconds per (problem, arm) task, {workers} tasks running side by side; a fault "
        "mode resumes from the clean run at the segment of its first fault.",
        "",
        "| problem | arm | compile | " + " | ".join(modes) + " | total |",
        "|---" * (len(modes) + 4) + "|",
    ]
    for name, (_, _, ts) in results.items():
        for arm, t in ts.items():
            cells = " | ".join(f"{t[m]:.0f}" if m in t else "" for m in modes)
            lines.append(f"| {name} | {arm} | {t['compile']:.0f} | {cells} | {t['total']:.0f} |")
    return lines


def plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    n = len(results)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, (name, (problem, s, _)) in zip(axes.flat, results.items()):
        for arm, mm in s["metrics"].items():
            ax.plot(problem.lrs, mm["clean"]["per_lr"], marker="o", ms=3, label=arm)
        ax.axhline(s["lstar"], color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("peak learning rate", fontsize=8)
        ax.set_ylabel("final held-out loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--problems", type=str, default=",".join(_problems.PROBLEMS))
    ap.add_argument(
        "--modes", type=str, default=None,
        help=f"default {','.join(MODES)}; clean always runs (the other modes branch off it)",
    )  # fmt: skip
    ap.add_argument("--arms", type=str, default=",".join(ARMS))
    ap.add_argument(
        "--seeds", type=str, default=None,
        help="init/data-order seeds (default: per problem, _problems.SEEDS)",
    )  # fmt: skip
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: ~1/4 of the steps, 1 seed, 3 lrs, modes clean,nan",
    )
    ap.add_argument(
        "--out", type=str, default=None, help="default benchmarks/results/stability_suite.md"
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--workers", type=int, default=min(os.cpu_count() or 1, 4),
        help="(problem, arm) tasks run side by side (default: cores, at most 4)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    args.problems = args.problems.split(",")
    args.arms = args.arms.split(",")
    args.seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    for kind, names, known in (("problem", args.problems, _problems.PROBLEMS),
                               ("arm", args.arms, ARMS)):  # fmt: skip
        for n in names:
            if n not in known:
                ap.error(f"unknown {kind} {n!r}; choose from {', '.join(known)}")
    if args.quick:
        args.seeds = (args.seeds or [0])[:1]
    args.modes = (args.modes or ("clean,nan" if args.quick else ",".join(MODES))).split(",")
    for mode in args.modes:
        if mode not in MODES:
            ap.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return args


def report_line(name: str, s: dict) -> None:
    for arm, a in s["arms"].items():
        clean = s["metrics"][arm]["clean"]
        print(
            f"[{name}] {arm:10s} clean " + " ".join(f"{v:.4f}" for v in clean["per_lr"])
            + f" | sens {clean['sens']:.4f} max-stable {_lr(clean['max_stable'])} "
            f"no-harm worst {_pct(a['worst_harm'])} NaN {a['nan_runs']} worst fault "
            f"{_pct(a['worst_cost'][0])} low-scale {a['low_scale']:.1f} skipped {a['skipped']:.1f} "
            + " ".join(f"{k}={v:.1f}" for k, v in a["reasons"].items()),
            flush=True,
        )  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    prepared = {}
    for name in args.problems:
        seeds = args.seeds or list(range(_problems.SEEDS[name]))
        problem = _problems.PROBLEMS[name](seeds, args.quick)
        if args.quick:
            lrs = problem.lrs
            problem = dataclasses.replace(problem, lrs=(lrs[0], lrs[3], lrs[-1]))
        print(f"== {name}: {problem.steps} steps, lrs {[_lr(x) for x in problem.lrs]}", flush=True)
        prepared[name] = prepare(problem, seeds)
    # Each run is one single-threaded XLA program on CPU: run (problem, arm)
    # tasks side by side, the most expensive first.
    order = sorted(prepared, key=lambda n: -prepared[n][0].steps * prepared[n][0].step_cost)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        futures = {(n, a): pool.submit(run_task, prepared[n], a, args.modes)
                   for n in order for a in args.arms}  # fmt: skip
        for name in args.problems:
            done = {a: futures[name, a].result() for a in args.arms}
            problem = prepared[name][0]
            s = summarize({a: r for a, (r, _) in done.items()}, problem)
            results[name] = (problem, s, {a: t for a, (_, t) in done.items()})
            report_line(name, s)
    wall = time.perf_counter() - t_start
    print(f"total {wall:.1f} s")
    if not args.no_write:
        out = args.out or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "results", "stability_suite.md"
        )
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(markdown(results, args, args.arms, wall))
        plot(results, os.path.splitext(out)[0] + ".png")
        print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
