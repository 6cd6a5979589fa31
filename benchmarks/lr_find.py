"""How close does ``lr_find`` come to the best learning rate of a full sweep?

Yardstick: every problem of the stability suite (``benchmarks/_problems.py``)
was trained at seven half-decade learning rates, 2-8 seeds each, for its full
schedule; the *best LR* is the one with the lowest mean final held-out loss of
the unguarded baseline on clean data (read from the committed
``benchmarks/results/stability_suite.md``). Here ``lr_find`` runs on the same
problem: the same model and initialization (seed s), the same training
batches of seed s, and the problem's recipe
``chain(clip_by_global_norm(1.0), opt(lr))`` with a constant learning rate in
place of its schedule (a range test measures one rate at a time).

Reported per problem: every rule's suggestion, its distance from the best LR
in decades (log10 of the ratio; the target is within half a decade, a factor
sqrt(10)), the suite's final loss at the grid LR nearest the suggestion
against the best one (what following the suggestion would have cost, to the
grid's resolution), and the compute, counted in gradient evaluations (same
batch size on both sides): lr_find's steps actually run against the sweep's
7 LRs x seeds x steps of the baseline's clean arm.

Settings, none tuned to this suite:

  default      lr_find's defaults (fastai's and Lightning's): 1e-7 .. 10,
               100 steps, beta 0.98, stop at 4x; seeds 0 and 1.
  300 steps    the same with num_steps=300: the smoothing time constant
               1/(1 - beta) = 50 steps spans 4 decades of the default ramp
               and 1.3 of this one. Only 100 and 300 (and, while writing
               this, 200 and 500 on seed 0) were ever run.
  sweep        method="sweep" over the problem's own 7-LR grid, 50 steps per
               LR (a short horizon), seed 0.

The section "Lag of the smoothing" reports a one-off experiment (zero-phase
readings of these runs' raw losses); its numbers are fixed text in LAG_NOTE,
not recomputed here.

Usage:
  python benchmarks/lr_find.py                    # ~4 min on 2 CPU cores
  python benchmarks/lr_find.py --problems digits_mlp_sgd,long_mlp --no-write

Writes ``benchmarks/results/lr_find.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _problems  # noqa: E402
import optaxsched  # noqa: E402
from optaxsched._lr_find_result import DEFAULT_RULE, RULES  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "results", "stability_suite.md")
HALF_DECADE = 0.5
SWEEP_STEPS = 50
# (label, lr_find keyword arguments, seeds)
SETTINGS = (
    ("default", {}, (0, 1)),
    ("300 steps", {"num_steps": 300}, (0, 1)),
)


def parse_suite(path: str) -> dict[str, dict]:
    """Per problem: the LR grid, the baseline's clean final losses and max stable LR."""
    text = open(path, encoding="utf-8").read()
    out = {}
    for section in re.split(r"^## `", text, flags=re.M)[1:]:
        name = section.split("`", 1)[0]
        grid = re.search(r"Learning rates ([^.]+?)\. Loss at init", section)
        rows = re.findall(r"^\| baseline \| clean \| (.+) \|$", section, re.M)
        if not grid or len(rows) < 2:
            continue
        lrs = [float(x) for x in grid.group(1).split(", ")]
        losses = [float(x) for x in rows[0].split(" | ")[: len(lrs)]]
        max_stable = rows[1].split(" | ")[1]
        out[name] = dict(lrs=np.array(lrs), losses=np.array(losses),
                         best_lr=lrs[int(np.argmin(losses))],
                         max_stable=float(max_stable) if max_stable != "none" else math.nan)
    return out


def snap_to_grid(entry: dict, grid) -> None:
    """Replaces the LRs printed with one digit (3e-3) by the grid's exact values
    (10**-2.5), checking that they are the same points."""
    grid = np.asarray(grid, np.float64)
    if len(grid) != len(entry["lrs"]) or np.abs(np.log10(grid / entry["lrs"])).max() > 0.05:
        raise ValueError(f"suite grid {entry['lrs']} does not match the problem's {grid}")
    entry["lrs"] = grid
    entry["best_lr"] = float(grid[int(np.argmin(entry["losses"]))])
    if math.isfinite(entry["max_stable"]):
        entry["max_stable"] = float(grid[int(np.argmin(np.abs(np.log10(
            grid / entry["max_stable"]))))])


def setup(name: str, seed: int):
    """(loss_fn, params, factory, batches, sweep gradient evaluations) of one problem."""
    problem = _problems.PROBLEMS[name]([seed], False)
    consts = jax.tree_util.tree_map(jnp.asarray, problem.consts)

    def loss_fn(params, batch):
        return problem.loss(params, batch, consts)

    def factory(lr):
        return optax.chain(optax.clip_by_global_norm(1.0), problem.optimizer(lr))

    sweep_evals = len(problem.lrs) * _problems.SEEDS[name] * problem.steps
    return loss_fn, problem.init(jax.random.PRNGKey(seed)), factory, problem.batches[0], \
        sweep_evals


def decades(lr: float | None, best: float) -> float:
    return math.nan if lr is None else math.log10(lr / best)


def regret(lr: float | None, suite: dict) -> float:
    """Relative final loss at the grid LR nearest ``lr`` vs the best grid LR."""
    if lr is None:
        return math.nan
    i = int(np.argmin(np.abs(np.log10(suite["lrs"] / lr))))
    return suite["losses"][i] / suite["losses"].min() - 1.0


def run(names: list[str], suite: dict) -> tuple[list[dict], float]:
    rows, t_all = [], time.perf_counter()
    for name in names:
        best = suite[name]["best_lr"]
        for label, kwargs, seeds in SETTINGS:
            for seed in seeds:
                loss_fn, params, factory, batches, sweep_evals = setup(name, seed)
                t0 = time.perf_counter()
                res = optaxsched.lr_find(loss_fn, params, factory, batches, **kwargs)
                rows.append(dict(problem=name, setting=label, seed=seed, result=res,
                                 sweep_evals=sweep_evals, seconds=time.perf_counter() - t0,
                                 best=best, off={r: decades(res.suggestions[r], best)
                                                 for r in RULES}))
                print(f"[{name}] {label} seed {seed}: "
                      + ", ".join(f"{r} {_lr(res.suggestions[r])} ({rows[-1]['off'][r]:+.2f})"
                                  for r in RULES)
                      + f"; stopped at step {res.num_steps_run}, {rows[-1]['seconds']:.1f} s",
                      flush=True)
        grid = suite[name]["lrs"]
        loss_fn, params, factory, batches, sweep_evals = setup(name, 0)
        t0 = time.perf_counter()
        res = optaxsched.lr_find(loss_fn, params, factory, batches, method="sweep",
                                 start_lr=grid[0], end_lr=grid[-1], num_lrs=len(grid),
                                 num_steps=SWEEP_STEPS)
        rows.append(dict(problem=name, setting="sweep", seed=0, result=res,
                         sweep_evals=sweep_evals, seconds=time.perf_counter() - t0, best=best,
                         off={"best": decades(res.suggestion, best)}))
        print(f"[{name}] sweep: best {_lr(res.suggestion)} ({rows[-1]['off']['best']:+.2f})",
              flush=True)
    return rows, time.perf_counter() - t_all


# ---------------------------------------------------------------------- report


def _lr(x: float | None) -> str:
    return "none" if x is None or not math.isfinite(x) else f"{x:.2g}"


def _off(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" + ("" if abs(x) <= HALF_DECADE + 1e-9 else " ✗")


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def _hits(rows: list[dict], rule: str) -> tuple[int, int, float]:
    offs = [r["off"][rule] for r in rows]
    finite = [abs(x) for x in offs if math.isfinite(x)]
    hits = sum(x <= HALF_DECADE + 1e-9 for x in finite)
    return hits, len(offs), float(np.median(finite)) if finite else math.nan


def headline(rows: list[dict], suite: dict) -> list[str]:
    lines = [
        f"| problem | best LR (sweep) | max stable LR | suggested (`{DEFAULT_RULE}`) | decades off "
        "| final loss at the nearest grid LR vs best | steps run | compute / sweep "
        "| other rules: " + ", ".join(r for r in RULES if r != DEFAULT_RULE) + " |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["setting"] != "default" or r["seed"] != 0:
            continue
        res, s = r["result"], suite[r["problem"]]
        others = ", ".join(f"{_lr(res.suggestions[k])} ({_off(r['off'][k])})"
                           for k in RULES if k != DEFAULT_RULE)
        lines.append(
            f"| {r['problem']} | {_lr(r['best'])} | {_lr(s['max_stable'])} | "
            f"{_lr(res.suggestion)} | {_off(r['off'][DEFAULT_RULE])} | "
            f"{_pct(regret(res.suggestion, s))} | {res.num_steps_run} | "
            f"{100 * res.num_gradient_evaluations / r['sweep_evals']:.2f}% | {others} |")
    return lines


def per_setting(rows: list[dict], suite: dict) -> list[str]:
    lines = ["| setting | seed | problem | " + " | ".join(RULES) + " | steps run "
             "| compute / sweep |", "|---" * (len(RULES) + 5) + "|"]
    for r in rows:
        if r["setting"] == "sweep":
            continue
        res = r["result"]
        cells = " | ".join(f"{_lr(res.suggestions[k])} ({_off(r['off'][k])})" for k in RULES)
        lines.append(f"| {r['setting']} | {r['seed']} | {r['problem']} | {cells} | "
                     f"{res.num_steps_run} | "
                     f"{100 * res.num_gradient_evaluations / r['sweep_evals']:.2f}% |")
    return lines


def hit_table(rows: list[dict]) -> list[str]:
    lines = ["| setting | seed | " + " | ".join(f"{k}: within ½ decade / median \\|off\\|"
                                              for k in RULES) + " |",
             "|---" * (len(RULES) + 2) + "|"]
    for label, _, seeds in SETTINGS:
        for seed in seeds:
            sel = [r for r in rows if r["setting"] == label and r["seed"] == seed]
            cells = []
            for k in RULES:
                hits, n, med = _hits(sel, k)
                cells.append(f"{hits}/{n} / {med:.2f}")
            lines.append(f"| {label} | {seed} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(rows: list[dict], suite: dict) -> list[str]:
    lines = [f"| problem | best LR (full runs) | best LR after {SWEEP_STEPS} steps "
             "| decades off | compute / sweep |", "|---|---|---|---|---|"]
    for r in rows:
        if r["setting"] != "sweep":
            continue
        res = r["result"]
        lines.append(f"| {r['problem']} | {_lr(r['best'])} | {_lr(res.suggestion)} | "
                     f"{_off(r['off']['best'])} | "
                     f"{100 * res.num_gradient_evaluations / r['sweep_evals']:.1f}% |")
    return lines


def reading(rows: list[dict]) -> list[str]:
    """What the tables say, with the numbers taken from them."""
    def hits(label, rule):
        counts = [_hits([r for r in rows if r["setting"] == label and r["seed"] == s], rule)[0]
                  for s in (0, 1)]
        return " and ".join(map(str, counts))

    def fraction(label):
        return 100 * max(r["result"].num_gradient_evaluations / r["sweep_evals"]
                         for r in rows if r["setting"] == label)

    def worst(label, rule):
        offs = [r["off"][rule] for r in rows if r["setting"] == label]
        i = int(np.nanargmax(np.abs(offs)))
        sel = [r for r in rows if r["setting"] == label][i]
        return f"{offs[i]:+.2f} ({sel['problem']}, seed {sel['seed']})"

    sweep = [r for r in rows if r["setting"] == "sweep"]
    n = len(sweep)
    sweep_hits = sum(abs(r["off"]["best"]) <= HALF_DECADE + 1e-9 for r in sweep)
    exact = sum(abs(r["off"]["best"]) < 1e-6 for r in sweep)
    step_high = sum(abs(r["off"]["best"] - HALF_DECADE) < 1e-6 for r in sweep)
    most = max((r["result"].num_gradient_evaluations / r["sweep_evals"] for r in sweep),
               default=math.nan)
    met = [k for k in RULES if all(
        _hits([r for r in rows if r["setting"] == "default" and r["seed"] == sd], k)[0]
        >= n - 1 for sd in (0, 1))]
    verdict = (f"the target ({n - 1} of {n}) is met at the defaults by "
               + ", ".join(f"`{k}`" for k in met) + "." if met else
               f"**the target ({n - 1} of {n}) is missed at the defaults by every rule.**")
    return [
        "## Reading",
        "",
        f"- At the defaults (100 steps over 8 decades) `minimum` is within half a decade on "
        f"{hits('default', 'minimum')} of {n} problems (seeds 0 and 1), `steep` on "
        f"{hits('default', 'steep')}, `valley` on {hits('default', 'valley')}: {verdict} "
        f"Worst misses: `minimum` {worst('default', 'minimum')}, `steep` "
        f"{worst('default', 'steep')}, `valley` {worst('default', 'valley')} decades.",
        f"- With 300 steps `steep` is within half a decade on {hits('300 steps', 'steep')}, "
        f"`minimum` on {hits('300 steps', 'minimum')}, `valley` on "
        f"{hits('300 steps', 'valley')}, at at most {fraction('300 steps'):.1f}% "
        "of the sweep's compute. The smoothing's time constant, 1/(1 - beta) = 50 steps, "
        "spans 4 decades of the default ramp and 1.3 decades of this one.",
        f"- `method=\"sweep\"` over the suite's own grid, 50 steps per LR, is within half a "
        f"decade on {sweep_hits} of {n} ({exact} on the best grid point, {step_high} one grid "
        f"step, half a decade, high) at at most {100 * most:.1f}% of the full sweep's "
        "compute; where it misses, it is high: a short run favours a higher rate than the "
        "full schedule.",
        "- On the full suite, `valley` (fastai's default) is low wherever the loss falls from "
        "the ramp's first steps (the LMs, the SGD MLP, the ViT): it sits a fixed fraction "
        "along the longest descent, which then starts where the ramp starts, so it moves "
        "with `start_lr`. "
        "`steep` is the argmin of a derivative: where the smoothed loss hardly falls before "
        "the divergence (100 steps at 12.5 per decade train little; long_mlp's falls from "
        "2.4 to 2.1), a brief dip between loss spikes far past the best rate wins (long_mlp: "
        "8.3 and 2.3 for Adam). `minimum` (the default) reads "
        "the lowest point of the smoothed curve; its largest miss is the text LM, whose "
        "smoothed minimum comes at 0.3, two decades past its best rate (a tenth of it is "
        "still one decade high). The 50-step sweep finds that best grid point, so the short "
        "horizon alone does not explain the miss. Most of it is the smoothing's lag: the "
        "lightly smoothed raw curve (seed 0) has its minimum 0.75 decade past the best rate, the "
        "causal EMA 1.3 decades further (see \"Lag of the smoothing\" below).",
        "- Missing high costs more than missing low where the best LR is also the largest "
        "stable one (the batch-4 MLP, the ViT): see the final-loss column.",
        "- Tuning disclosed: lr_find's defaults are fastai's and Lightning's and were not "
        "changed. The default rule was `valley` when this script first ran and was switched "
        "to `minimum` for the mechanisms above. Besides the two settings here, 200 and 500 "
        "steps were run once on seed 0 while writing (not regenerated by this script): "
        "`steep` 4 and 4 of 6, `minimum` 4 and 6 of 6. Zero-phase (lag-free) readings of "
        "the same runs were tried once and not adopted (\"Lag of the smoothing\" below).",
    ]


# A one-off experiment on the raw losses of these runs (seeds 0 and 1, 100 and
# 300 steps), re-read with other smoothings by a throwaway script (not kept); its
# numbers are written here so that regeneration keeps them. The library was not
# changed.
LAG_NOTE = [
    "## Lag of the smoothing (one-off experiment, not adopted)",
    "",
    "The rules read a causal EMA (beta 0.98: mean lag 49 steps, 4.0 decades of the "
    "default ramp, 1.3 of the 300-step one). Measured on the raw losses of the runs above "
    "(both seeds, both step counts, all 24 curves): the EMA's minimum lies **0.56 to 1.54 "
    "decades (median 0.75) past** the minimum of the lightly smoothed raw curve (two-sided "
    "exponential kernel beta^|i-j|, beta 0.8, about 18 effective points); its steepest "
    "point moves by -2.2 to +2.7 decades, with no consistent sign. The raw curve's own "
    "minimum lies -0.31 to +0.98 decades (median +0.43) from the best LR, so `minimum`'s "
    "tenth partly cancels the lag rather than measuring a margin below the minimum.",
    "",
    "Zero-phase readings were tried at the same noise reduction as the EMA (99 effective "
    "points: a forward-backward exponential kernel, beta 0.960 per side, normalised over "
    "the steps that ran; a centred 99-step window), keeping the causal EMA for the early "
    "stop. Removing the lag does move the minimum back onto the raw curve's (within -0.37 "
    "to +0.05 decades at 300 steps once the diverging losses at the end, up to 300x the "
    "minimum, are clipped at 4x so they do not leak backwards), but the suggestions get "
    "worse for every rule, seed and length: problems within half a decade / median "
    "|decades off| (none: no suggestion, the smoothed curve never falls below its start):",
    "",
    "| reading | steps | seed | valley | steep | minimum |",
    "|---|---|---|---|---|---|",
    "| causal EMA (the library's) | 100 | 0 | 2/6 / 0.87 | 2/6 / 0.71 | 3/6 / 0.41 |",
    "| causal EMA (the library's) | 100 | 1 | 2/6 / 0.60 | 3/6 / 0.51 | 4/6 / 0.34 |",
    "| causal EMA (the library's) | 300 | 0 | 2/6 / 0.64 | 6/6 / 0.19 | 4/6 / 0.31 |",
    "| causal EMA (the library's) | 300 | 1 | 2/6 / 0.72 | 5/6 / 0.23 | 5/6 / 0.29 |",
    "| forward-backward, 99 points | 100 | 0 | 0/6 (5 none) | 0/6 (5 none) | 0/6 (5 none) |",
    "| forward-backward, 99 points | 100 | 1 | 0/6 (6 none) | 0/6 (6 none) | 0/6 (6 none) |",
    "| forward-backward, 99 points | 300 | 0 | 0/6 / 1.82 | 1/6 / 0.69 | 1/6 / 0.90 |",
    "| forward-backward, 99 points | 300 | 1 | 0/6 / 1.82 | 1/6 / 0.75 | 1/6 / 0.93 |",
    "| the same, losses clipped at 4x | 100 | 0 | 0/6 (3 none) | 0/6 (3 none) "
    "| 0/6 (3 none) |",
    "| the same, losses clipped at 4x | 100 | 1 | 0/6 (4 none) | 0/6 (4 none) "
    "| 0/6 (4 none) |",
    "| the same, losses clipped at 4x | 300 | 0 | 0/6 / 1.66 | 4/6 / 0.49 | 1/6 / 0.56 |",
    "| the same, losses clipped at 4x | 300 | 1 | 0/6 / 1.69 | 3/6 / 0.51 | 1/6 / 0.62 |",
    "| centred window, 99 steps | 100 | 0 | 0/6 / 3.17 | 0/6 / 3.25 | 0/6 / 3.72 |",
    "| centred window, 99 steps | 100 | 1 | 0/6 / 3.33 | 0/6 / 3.41 | 0/6 / 3.79 |",
    "| centred window, 99 steps | 300 | 0 | 0/6 / 1.62 | 0/6 / 1.14 | 1/6 / 0.88 |",
    "| centred window, 99 steps | 300 | 1 | 0/6 / 1.64 | 1/6 / 0.92 | 2/6 / 0.84 |",
    "| light (18 points, two-sided) | 100 | 0 | 0/6 / 1.60 | 2/6 / 1.11 | 3/6 / 0.63 |",
    "| light (18 points, two-sided) | 100 | 1 | 0/6 / 1.56 | 4/6 / 0.24 | 1/6 / 0.61 |",
    "| light (18 points, two-sided) | 300 | 0 | 1/6 / 1.19 | 1/6 / 1.22 | 2/6 / 0.54 |",
    "| light (18 points, two-sided) | 300 | 1 | 0/6 / 1.33 | 1/6 / 1.39 | 2/6 / 0.58 |",
    "",
    "Why: (1) at 100 steps a symmetric kernel with the EMA's noise reduction spans the "
    "whole curve, so there is nothing left to read (the causal EMA gets its resolution by "
    "trading it for lag); (2) a two-sided kernel pulls the diverging losses of the last "
    "steps backwards over the minimum; (3) with those removed, the lag-free minimum is "
    "the raw one, and a tenth of it is low (median -0.6 decades at 300 steps) because the "
    "rules' constants (`minimum`'s tenth) come from fastai, which reads the same lagged "
    "curve. Re-fitting those constants to this suite would be tuning on the "
    "yardstick, so the suggestions keep reading the causal EMA, as fastai and Lightning do.",
]

def markdown(rows: list[dict], suite: dict, wall: float) -> str:
    default = [r for r in rows if r["setting"] == "default" and r["seed"] == 0]
    hits, n, _ = _hits(default, DEFAULT_RULE)
    worst = max((r["result"].num_gradient_evaluations / r["sweep_evals"] for r in default),
                default=math.nan)
    lines = [
        "# lr_find against full learning-rate sweeps",
        "",
        f"Generated by `python benchmarks/lr_find.py` (JAX {jax.__version__}, optax "
        f"{optax.__version__}, NumPy {np.__version__}, Python {platform.python_version()}, "
        f"{jax.devices()[0].platform.upper()}, {os.cpu_count()} cores); wall time "
        f"{wall / 60:.1f} min. Best LRs from `benchmarks/results/stability_suite.md` "
        "(baseline arm, clean data, mean over 2-8 seeds of the full schedule). The "
        "problems, settings and measures are described in the script's docstring. "
        "Decades off = log10(suggested / best); ✗ marks more than half a decade (the "
        "target; the sweep's own grid is half-decades, so the best LR is known to about "
        "±0.25 decade).",
        "",
        f"## Default settings, seed 0, default rule `{DEFAULT_RULE}`",
        "",
        f"Within half a decade of the best LR on **{hits} of {n}** problems (target: 5 of "
        f"6), at most {100 * worst:.2f}% of the sweep's compute (target: under 10%).",
        "",
        *headline(rows, suite),
        "",
        *reading(rows),
        "",
        *LAG_NOTE,
        "",
        "## Every rule, both settings, two seeds",
        "",
        "Problems within half a decade of the best LR, and the median distance in decades:",
        "",
        *hit_table(rows),
        "",
        *per_setting(rows, suite),
        "",
        f"## `method=\"sweep\"`: {SWEEP_STEPS} steps at each LR of the problem's grid, seed 0",
        "",
        *sweep_table(rows, suite),
        "",
        "## Wall time per call (compile included)",
        "",
        "| problem | setting | seed | seconds |",
        "|---|---|---|---|",
        *(f"| {r['problem']} | {r['setting']} | {r['seed']} | {r['seconds']:.1f} |"
          for r in rows),
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default=",".join(_problems.PROBLEMS))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "lr_find.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    suite = parse_suite(SUITE)
    names = args.problems.split(",")
    for name in names:
        if name not in suite:
            ap.error(f"no baseline results for {name!r} in {SUITE}")
        snap_to_grid(suite[name], _problems.PROBLEMS[name]([0], True).lrs)
    rows, wall = run(names, suite)
    text = markdown(rows, suite, wall)
    print(text)
    if not args.no_write:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
