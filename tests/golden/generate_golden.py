"""Writes ``schedules_golden.json``: learning-rate sequences recorded from the
real PyTorch, Keras and timm schedulers, which ``tests/test_schedules.py``
compares ``optaxsched.schedules`` against.

This script produced the committed JSON. The tests only read the JSON, so
running them needs none of these libraries. To regenerate it, in a throwaway
virtual environment (not the project's):

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install torch==2.13.0 keras jax timm --no-deps  # plus their deps
    KERAS_BACKEND=jax /tmp/peers/bin/python tests/golden/generate_golden.py

timm's package ``__init__`` imports torchvision; only its scheduler modules are
needed, so they are imported without it. Each entry records the peer call, the
equivalent ``optaxsched.schedules`` call (``spec``: function name and keyword
arguments, nested for ``join``/``warmup``), the steps and the values, where the
value at step t is the lr used by update t.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import types
import warnings
from fractions import Fraction

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import keras  # noqa: E402
import torch  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedules_golden.json")
FAR = [1000, 10**6, 10**9]


def spec(fn, **kwargs):
    return {"fn": fn, "kwargs": kwargs}


def _num(x: float) -> float:
    return float(f"{float(x):.10g}")


# ------------------------------------------------------------------ torch --


def torch_run(make, n, base=0.1):
    """lr of updates 0..n-1: read after construction, then after each step()."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base, momentum=0.9)
    sched = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


def torch_cases():
    L = torch.optim.lr_scheduler
    cases = [
        ("StepLR(step_size=3, gamma=0.5)", 0.1, 30, lambda o: L.StepLR(o, 3, gamma=0.5),
         spec("step_decay", init_value=0.1, step_size=3, gamma=0.5)),
        ("MultiStepLR(milestones=[12, 3, 7, 7], gamma=0.5)", 1.0, 20,
         lambda o: L.MultiStepLR(o, [12, 3, 7, 7], gamma=0.5),
         spec("multistep_decay", init_value=1.0, milestones=[12, 3, 7, 7], gamma=0.5)),
        ("MultiStepLR(milestones=[4, 0], gamma=0.1)", 1.0, 8,
         lambda o: L.MultiStepLR(o, [4, 0], gamma=0.1),
         spec("multistep_decay", init_value=1.0, milestones=[4, 0], gamma=0.1)),
        ("ExponentialLR(gamma=0.9)", 0.1, 60, lambda o: L.ExponentialLR(o, 0.9),
         spec("exponential_decay", init_value=0.1, decay_rate=0.9)),
        ("LinearLR(start_factor=0.25, end_factor=1.0, total_iters=8)", 0.2, 15,
         lambda o: L.LinearLR(o, 0.25, 1.0, 8),
         spec("linear", init_value=0.05, end_value=0.2, transition_steps=8)),
        ("LinearLR(start_factor=1.0, end_factor=0.1, total_iters=10)", 0.1, 15,
         lambda o: L.LinearLR(o, 1.0, 0.1, 10),
         spec("linear", init_value=0.1, end_value=0.01, transition_steps=10)),
        ("PolynomialLR(total_iters=10, power=2.0)", 0.1, 15,
         lambda o: L.PolynomialLR(o, 10, 2.0),
         spec("polynomial_decay", init_value=0.1, decay_steps=10, end_value=0.0, power=2.0)),
        ("CosineAnnealingLR(T_max=10, eta_min=0.01)", 0.1, 45,
         lambda o: L.CosineAnnealingLR(o, 10, 0.01),
         spec("cosine_decay", init_value=0.1, decay_steps=10, end_value=0.01, periodic=True)),
        ("CosineAnnealingWarmRestarts(T_0=5, T_mult=2, eta_min=0.001)", 0.1, 80,
         lambda o: L.CosineAnnealingWarmRestarts(o, 5, 2, 0.001),
         spec("cosine_restarts", init_value=0.1, first_period=5, period_mult=2.0, end_value=0.001)),
        ("CosineAnnealingWarmRestarts(T_0=7, T_mult=1)", 0.1, 30,
         lambda o: L.CosineAnnealingWarmRestarts(o, 7, 1),
         spec("cosine_restarts", init_value=0.1, first_period=7)),
        ("CosineAnnealingWarmRestarts(T_0=3, T_mult=3, eta_min=0.01)", 0.1, 50,
         lambda o: L.CosineAnnealingWarmRestarts(o, 3, 3, 0.01),
         spec("cosine_restarts", init_value=0.1, first_period=3, period_mult=3.0, end_value=0.01)),
        ("CyclicLR(0.01, 0.1, step_size_up=4, step_size_down=6)", 0.1, 40,
         lambda o: L.CyclicLR(o, 0.01, 0.1, 4, 6, cycle_momentum=False),
         spec("cyclic", base_value=0.01, max_value=0.1, step_size_up=4, step_size_down=6)),
        ("CyclicLR(0.01, 0.1, step_size_up=3, mode='triangular2')", 0.1, 40,
         lambda o: L.CyclicLR(o, 0.01, 0.1, 3, mode="triangular2", cycle_momentum=False),
         spec("cyclic", base_value=0.01, max_value=0.1, step_size_up=3, mode="triangular2")),
        ("CyclicLR(0.01, 0.1, step_size_up=5, step_size_down=3, mode='exp_range', gamma=0.95)",
         0.1, 40,
         lambda o: L.CyclicLR(o, 0.01, 0.1, 5, 3, mode="exp_range", gamma=0.95,
                              cycle_momentum=False),
         spec("cyclic", base_value=0.01, max_value=0.1, step_size_up=5, step_size_down=3,
              mode="exp_range", gamma=0.95)),
        ("OneCycleLR(max_lr=1.0, total_steps=50)", 0.1, 50,
         lambda o: L.OneCycleLR(o, 1.0, total_steps=50, cycle_momentum=False),
         spec("one_cycle", max_value=1.0, total_steps=50)),
        ("OneCycleLR(max_lr=0.5, total_steps=37, pct_start=0.25, anneal_strategy='linear', "
         "div_factor=10, final_div_factor=100)", 0.1, 37,
         lambda o: L.OneCycleLR(o, 0.5, total_steps=37, pct_start=0.25, anneal_strategy="linear",
                                div_factor=10.0, final_div_factor=100.0, cycle_momentum=False),
         spec("one_cycle", max_value=0.5, total_steps=37, pct_start=0.25, anneal="linear",
              div_factor=10.0, final_div_factor=100.0)),
        ("OneCycleLR(max_lr=1.0, total_steps=37, pct_start=0.25, three_phase=True)", 0.1, 37,
         lambda o: L.OneCycleLR(o, 1.0, total_steps=37, pct_start=0.25, three_phase=True,
                                cycle_momentum=False),
         spec("one_cycle", max_value=1.0, total_steps=37, pct_start=0.25, three_phase=True)),
        ("OneCycleLR(max_lr=1.0, total_steps=100, anneal_strategy='linear', three_phase=True)",
         0.1, 100,
         lambda o: L.OneCycleLR(o, 1.0, total_steps=100, anneal_strategy="linear",
                                three_phase=True, cycle_momentum=False),
         spec("one_cycle", max_value=1.0, total_steps=100, anneal="linear", three_phase=True)),
        ("SequentialLR([LinearLR(start_factor=0.1, total_iters=5), ExponentialLR(0.9), "
         "StepLR(3, 0.5)], milestones=[5, 12])", 0.1, 30,
         lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 5), L.ExponentialLR(o, 0.9),
                                      L.StepLR(o, 3, 0.5)], milestones=[5, 12]),
         spec("join", schedules=[
             spec("linear", init_value=0.01, end_value=0.1, transition_steps=5),
             spec("exponential_decay", init_value=0.1, decay_rate=0.9),
             spec("step_decay", init_value=0.1, step_size=3, gamma=0.5)], boundaries=[5, 12])),
    ]
    out = []
    for name, base, n, make, sp in cases:
        out.append({"peer": f"torch {torch.__version__} {name}, base lr {base}", "spec": sp,
                    "steps": list(range(n)), "values": [_num(v) for v in torch_run(make, n, base)]})
    return out


# ------------------------------------------------------------------ keras --


def keras_restart_quirks(kw, steps, values):
    """Steps where Keras's float32 ``log`` puts t in the wrong period.

    The period index and position are computed exactly (rationals); a step
    whose Keras value is far from the exact one is recorded, and must be a
    restart step (the documented Keras quirk).
    """
    m, init = Fraction(kw["period_mult"]), kw["init_value"]
    end, amp = kw.get("end_value", 0.0), kw.get("amplitude_mult", 1.0)
    quirks = []
    for t, v in zip(steps, values):
        i, start, period = 0, Fraction(0), Fraction(kw["first_period"])
        while start + period <= t:
            start, period, i = start + period, period * m, i + 1
        f = float((t - start) / period)
        exact = end + amp**i * (init - end) * (1 + math.cos(math.pi * f)) / 2
        if abs(v - exact) > 1e-4 * init:
            assert t == start, (kw, t, v, exact)
            quirks.append(t)
    return quirks


def keras_cases():
    S = keras.optimizers.schedules
    # 163835 and 327670 are exact restarts of P=5 and P=10 with t_mul=2 that
    # Keras's float32 log puts in the previous period.
    steps = list(range(0, 121)) + FAR + [163834, 163835, 163836, 327669, 327670, 327671]
    cases = [
        ("ExponentialDecay(0.1, decay_steps=7, decay_rate=0.5)",
         S.ExponentialDecay(0.1, 7, 0.5),
         spec("exponential_decay", init_value=0.1, decay_rate=0.5, decay_steps=7)),
        ("ExponentialDecay(0.1, decay_steps=7, decay_rate=0.5, staircase=True)",
         S.ExponentialDecay(0.1, 7, 0.5, staircase=True),
         spec("exponential_decay", init_value=0.1, decay_rate=0.5, decay_steps=7, staircase=True)),
        ("InverseTimeDecay(0.1, decay_steps=5, decay_rate=0.5)",
         S.InverseTimeDecay(0.1, 5, 0.5),
         spec("inverse_time_decay", init_value=0.1, decay_rate=0.5, decay_steps=5)),
        ("InverseTimeDecay(0.1, decay_steps=5, decay_rate=0.5, staircase=True)",
         S.InverseTimeDecay(0.1, 5, 0.5, staircase=True),
         spec("inverse_time_decay", init_value=0.1, decay_rate=0.5, decay_steps=5, staircase=True)),
        ("PiecewiseConstantDecay([5, 10, 20], [1.0, 0.5, 0.1, 0.01])",
         S.PiecewiseConstantDecay([5, 10, 20], [1.0, 0.5, 0.1, 0.01]),
         spec("piecewise_constant", boundaries=[5, 10, 20], values=[1.0, 0.5, 0.1, 0.01])),
        ("PolynomialDecay(0.1, decay_steps=10, end_learning_rate=0.001, power=0.5)",
         S.PolynomialDecay(0.1, 10, 0.001, power=0.5),
         spec("polynomial_decay", init_value=0.1, decay_steps=10, end_value=0.001, power=0.5)),
        ("PolynomialDecay(0.1, decay_steps=10, end_learning_rate=0.001, power=2.0, cycle=True)",
         S.PolynomialDecay(0.1, 10, 0.001, power=2.0, cycle=True),
         spec("polynomial_decay", init_value=0.1, decay_steps=10, end_value=0.001, power=2.0,
              cycle=True)),
        ("CosineDecay(0.1, decay_steps=20, alpha=0.1)", S.CosineDecay(0.1, 20, alpha=0.1),
         spec("cosine_decay", init_value=0.1, decay_steps=20, end_value=0.1 * 0.1)),
        ("CosineDecayRestarts(0.1, first_decay_steps=8, t_mul=1.5, m_mul=0.8, alpha=0.05)",
         S.CosineDecayRestarts(0.1, 8, t_mul=1.5, m_mul=0.8, alpha=0.05),
         spec("cosine_restarts", init_value=0.1, first_period=8, period_mult=1.5,
              end_value=0.1 * 0.05, amplitude_mult=0.8)),
        ("CosineDecayRestarts(0.1, first_decay_steps=10, t_mul=1.0, m_mul=0.5)",
         S.CosineDecayRestarts(0.1, 10, t_mul=1.0, m_mul=0.5),
         spec("cosine_restarts", init_value=0.1, first_period=10, amplitude_mult=0.5)),
        ("CosineDecayRestarts(0.1, first_decay_steps=5)", S.CosineDecayRestarts(0.1, 5),
         spec("cosine_restarts", init_value=0.1, first_period=5, period_mult=2.0)),
        ("CosineDecayRestarts(1.0, first_decay_steps=10, t_mul=2.0, alpha=0.1)",
         S.CosineDecayRestarts(1.0, 10, t_mul=2.0, alpha=0.1),
         spec("cosine_restarts", init_value=1.0, first_period=10, period_mult=2.0,
              end_value=0.1)),
    ]
    out = []
    for name, sched, sp in cases:
        values = [_num(sched(t)) for t in steps]
        entry = {"peer": f"keras {keras.__version__} ({keras.backend.backend()}) {name}",
                 "spec": sp, "steps": steps, "values": values}
        if sp["fn"] == "cosine_restarts" and sp["kwargs"].get("period_mult", 1.0) != 1.0:
            entry["quirk_steps"] = keras_restart_quirks(sp["kwargs"], steps, values)
        out.append(entry)
    return out


# ------------------------------------------------------------------- timm --


def import_timm_schedulers():
    """timm's scheduler modules without its package __init__ (needs torchvision)."""
    root = os.path.dirname(importlib.util.find_spec("timm").origin)
    for name, path in (("timm", root), ("timm.scheduler", os.path.join(root, "scheduler"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    from timm.scheduler.cosine_lr import CosineLRScheduler
    from timm.scheduler.wsd_lr import WSDLRScheduler
    return importlib.metadata.version("timm"), CosineLRScheduler, WSDLRScheduler


def timm_cases():
    version, Cosine, WSD = import_timm_schedulers()

    def opt(base):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)

    def wsd_case(shape, warm, decay, total=100):
        return (f"WSDLRScheduler(t_initial={total - warm}, decay_t={decay}, lr_min=0.001, "
                f"warmup_t={warm}, decay_fn='{shape}')",
                WSD(opt(0.1), total - warm, decay, lr_min=0.001, warmup_t=warm, decay_fn=shape,
                    t_in_epochs=False),
                spec("wsd", peak_value=0.1, total_steps=total, warmup_steps=warm,
                     decay_steps=decay, end_value=0.001, decay_shape=shape),
                list(range(total + 20)))

    long = list(range(301)) + [1000, 10**5]
    cases = [
        wsd_case("1-sqrt", 10, 20), wsd_case("linear", 10, 30), wsd_case("cosine", 0, 25),
        wsd_case("linear", 5, 95),
        ("WSDLRScheduler(t_initial=10**6, decay_t=1, stable_fn='rsqrt', warmup_t=50)",
         WSD(opt(0.5), 10**6, 1, stable_fn="rsqrt", warmup_t=50, t_in_epochs=False),
         spec("inverse_sqrt", peak_value=0.5, warmup_steps=50), long),
        ("WSDLRScheduler(t_initial=10**6, decay_t=1, stable_fn='power', stable_timescale=20.0, "
         "stable_power=0.7)",
         WSD(opt(0.1), 10**6, 1, stable_fn="power", stable_timescale=20.0, stable_power=0.7,
             t_in_epochs=False),
         spec("power_decay", init_value=0.1, power=0.7, timescale=20.0), long),
        ("CosineLRScheduler(t_initial=50, lr_min=0.002, warmup_t=8, warmup_lr_init=0.001, "
         "warmup_prefix=True)",
         Cosine(opt(0.1), 50, lr_min=0.002, warmup_t=8, warmup_lr_init=0.001, warmup_prefix=True,
                t_in_epochs=False),
         spec("warmup", schedule=spec("cosine_decay", init_value=0.1, decay_steps=50,
                                      end_value=0.002), warmup_steps=8, init_value=0.001),
         list(range(80))),
    ]
    out = []
    for name, sched, sp, steps in cases:
        out.append({"peer": f"timm {version} {name}, base lr {sched.base_values[0]}",
                    "spec": sp, "steps": steps,
                    "values": [_num(sched._get_lr(t)[0]) for t in steps]})
    return out


def main():
    data = {"note": "Generated by tests/golden/generate_golden.py; do not edit by hand.",
            "cases": torch_cases() + keras_cases() + timm_cases()}
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(data['cases'])} cases to {OUT} ({os.path.getsize(OUT)} bytes)")
    assert all(math.isfinite(v) for c in data["cases"] for v in c["values"])


if __name__ == "__main__":
    main()
