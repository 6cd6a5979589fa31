"""Writes ``metric_plateau_golden.json``: PyTorch ReduceLROnPlateau stepped
once per epoch on an epoch metric, the lr of every update recorded.

Needs ``torch`` and ``numpy`` (not test dependencies; the tests only read the
JSON). Run from this folder::

    python generate_metric_plateau_golden.py

Each case is a training loop with a real ``torch.optim.SGD`` (base lr 1.0, so
the lr *is* the scale ``optaxsched.MetricPlateau`` must apply) and a real
``ReduceLROnPlateau``: ``STEPS_PER_EPOCH`` optimizer steps per epoch, then
``scheduler.step(metric[epoch])``, as a user does with a validation metric.
The lr recorded for update ``t`` is the one that ``optimizer.step()`` used.
The metric sequences and hyperparameter sets are those of
``generate_plateau_golden.py`` (float32-rounded), plus an accuracy-like one.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch
from generate_plateau_golden import CONFIGS, THRESHOLDS, T, _f32, sequences

STEPS_PER_EPOCH = 3


def metric_sequences() -> dict[str, list[float]]:
    rng = np.random.default_rng(7)
    t = np.arange(T, dtype=np.float64)
    # Accuracy that rises, stalls, jumps after what would be a cut, and stalls.
    acc = np.minimum(0.2 + 0.7 * (1 - np.exp(-t / 6.0)), 0.8) + 0.004 * rng.standard_normal(T)
    acc[30:] += 0.05
    return {**sequences(), "accuracy": _f32(acc)}


def torch_epoch_lrs(metrics, mode, threshold_mode, threshold, factor, patience, cooldown,
                    min_lr, eps) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=factor, patience=patience, threshold=threshold,
        threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr, eps=eps)
    lrs = []
    for metric in metrics:
        for _ in range(STEPS_PER_EPOCH):
            opt.zero_grad()
            p.sum().backward()
            lrs.append(float(opt.param_groups[0]["lr"]))
            opt.step()
        sched.step(metric)
    return lrs


def main() -> None:
    seqs = metric_sequences()
    cases = []
    for mode, tmode in itertools.product(("min", "max"), ("rel", "abs")):
        for (factor, patience, cooldown, min_lr, eps, _), thr in zip(CONFIGS, THRESHOLDS[tmode]):
            for name, metrics in seqs.items():
                if tmode == "rel" and min(v for v in metrics if math.isfinite(v)) < 0:
                    continue  # optaxsched's rel mode is sign-aware on purpose
                lrs = torch_epoch_lrs(metrics, mode, tmode, thr, factor, patience, cooldown,
                                      min_lr, eps)
                changes = [[t, lr] for t, lr in enumerate(lrs) if lr != (lrs[t - 1] if t else 1.0)]
                cases.append(dict(
                    sequence=name, mode=mode, threshold_mode=tmode, threshold=thr,
                    factor=factor, patience=patience, cooldown=cooldown, min_scale=min_lr,
                    eps=eps, changes=changes))
    out = {
        "torch_version": torch.__version__.split("+")[0],
        "epochs": T,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "sequences": {k: [None if math.isnan(x) else x for x in v] for k, v in seqs.items()},
        "cases": cases,
    }
    path = Path(__file__).with_name("metric_plateau_golden.json")
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
