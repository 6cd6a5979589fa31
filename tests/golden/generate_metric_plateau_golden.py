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

import numpy as np
import torch
from generate_plateau_golden import T, _f32, record, sequences, write

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
    write("metric_plateau_golden.json", seqs,
          record(seqs, lambda *a: torch_epoch_lrs(*a[:-1]), windows=False),
          epochs=T, steps_per_epoch=STEPS_PER_EPOCH)


if __name__ == "__main__":
    main()
