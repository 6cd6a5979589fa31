"""Writes ``plateau_golden.json``: PyTorch ReduceLROnPlateau lr sequences.

Needs ``torch`` and ``numpy`` (not a test dependency; the tests only read the
JSON). Run from anywhere::

    python tests/golden/generate_plateau_golden.py

Every case drives a real ``torch.optim.lr_scheduler.ReduceLROnPlateau`` on a
one-parameter SGD with base lr 1.0, so the lr *is* the scale that
``optaxsched.reduce_on_plateau`` must apply. With ``accumulation_steps=k`` the
scheduler is stepped once per window of k values with the window mean, and
the lr is recorded for every value (the window's last value sees the new lr).

Sequences whose values can be negative are only recorded in ``abs`` mode:
in ``rel`` mode optaxsched is sign-aware on purpose and torch is not. The
values are rounded to float32 first so both sides compare the same numbers.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch

T = 48  # values per sequence


def _f32(xs) -> list[float]:
    return [float(np.float32(x)) for x in xs]


def sequences() -> dict[str, list[float]]:
    rng = np.random.default_rng(20240613)
    t = np.arange(T, dtype=np.float64)
    noise = rng.standard_normal(T)
    dec = 0.5 + 2.0 * np.exp(-t / 12.0) + 0.03 * noise
    with_nan = dec.copy()
    with_nan[[3, 4, 17, 30, 31, 32]] = np.nan
    stairs = np.concatenate([np.full(12, 2.0), np.full(12, 1.5), np.full(12, 1.49999),
                             np.full(12, 0.7)]) + 1e-3 * rng.standard_normal(T)
    return {
        "noisy_decreasing": _f32(dec),
        "flat": _f32(np.ones(T)),
        "rising": _f32(1.0 + 0.02 * t + 0.005 * rng.standard_normal(T)),
        "stairs": _f32(stairs),
        "nan_containing": _f32(with_nan),
        "negative": _f32(-0.5 - 2.0 * (1.0 - np.exp(-t / 10.0)) + 0.05 * noise),
    }


# (factor, patience, cooldown, min_lr, eps, accumulation_steps); the threshold
# depends on the threshold mode (below).
CONFIGS = [
    (0.5, 2, 0, 0.0, 1e-8, 1),
    (0.1, 0, 2, 1e-3, 1e-8, 1),
    (0.3, 1, 1, 0.05, 0.02, 3),
    (0.1, 10, 0, 0.0, 1e-8, 1),  # torch defaults
    (0.1, 0, 0, 0.0, 1e-8, 1),  # runs into the eps floor on a flat loss
    (0.0, 3, 0, 0.01, 1e-8, 2),
]
THRESHOLDS = {"rel": (1e-2, 1e-2, 1e-3, 1e-4, 0.0, 1e-2), "abs": (0.05, 0.0, 0.01, 1e-4, 0.0, 0.1)}


def torch_lrs(values, mode, threshold_mode, threshold, factor, patience, cooldown,
              min_lr, eps, k) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=factor, patience=patience, threshold=threshold,
        threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps)
    lrs, window = [], []
    for v in values:
        window.append(v)
        if len(window) == k:
            sched.step(math.fsum(window) / k if all(map(math.isfinite, window)) else math.nan)
            window = []
        lrs.append(float(opt.param_groups[0]["lr"]))
    return lrs


def record(seqs, lrs_of, *, windows: bool = True) -> list[dict]:
    """One case per (mode, threshold mode, config, sequence) where optaxsched
    and torch agree by design: ``lrs_of(values, mode, threshold_mode,
    threshold, factor, patience, cooldown, min_lr, eps, k)`` runs torch and
    returns the lr of every update; only the changes are kept. ``windows``:
    the configs' ``accumulation_steps`` apply (and are recorded)."""
    cases = []
    for mode, tmode in itertools.product(("min", "max"), ("rel", "abs")):
        for (factor, patience, cooldown, min_lr, eps, k), thr in zip(CONFIGS, THRESHOLDS[tmode]):
            for name, values in seqs.items():
                if tmode == "rel" and min(v for v in values if math.isfinite(v)) < 0:
                    continue  # optaxsched's rel mode is sign-aware on purpose
                lrs = lrs_of(values, mode, tmode, thr, factor, patience, cooldown, min_lr, eps,
                             k if windows else 1)
                changes = [[t, lr] for t, lr in enumerate(lrs) if lr != (lrs[t - 1] if t else 1.0)]
                case = dict(sequence=name, mode=mode, threshold_mode=tmode, threshold=thr,
                            factor=factor, patience=patience, cooldown=cooldown,
                            min_scale=min_lr, eps=eps)
                if windows:
                    case["accumulation_steps"] = k
                cases.append({**case, "changes": changes})
    return cases


def write(filename: str, seqs, cases, **header) -> None:
    """Writes the cases and their value sequences (NaN as null) beside this file."""
    out = {
        "torch_version": torch.__version__.split("+")[0],
        **header,
        "sequences": {k: [None if math.isnan(x) else x for x in v] for k, v in seqs.items()},
        "cases": cases,
    }
    path = Path(__file__).with_name(filename)
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases to {path}")


def main() -> None:
    seqs = sequences()
    write("plateau_golden.json", seqs, record(seqs, torch_lrs), length=T)


if __name__ == "__main__":
    main()
