"""Writes ``porting_golden.json``: the learning rates of every scheduler in the
porting guide (``docs/porting.md``), recorded from PyTorch, Hugging Face
``transformers``, timm and Keras themselves.

``tests/test_porting.py`` evaluates the optaxsched expression of each row of
the guide's tables and compares it with the row recorded here under the same
id. The tests only read the JSON; to regenerate it, in a throwaway virtual
environment (not the project's):

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/peers/bin/pip install numpy jax keras
    /tmp/peers/bin/pip install --no-deps timm transformers
    /tmp/peers/bin/pip install regex huggingface_hub safetensors tokenizers tqdm typer
    KERAS_BACKEND=jax /tmp/peers/bin/python tests/golden/generate_porting_golden.py

(the last line of installs is what ``transformers.optimization`` needs to
import). timm's package ``__init__`` imports torchvision, so only its
scheduler modules are imported.

Each row's ``peer`` is the exact call that was evaluated (the guide shows the
same text), in a namespace holding the library's schedulers, ``opt`` (an
optimizer with learning rate 0.1) and ``math``. ``values[i]`` is the learning
rate used by update ``i`` (steps ``0 .. n-1``, then the steps in ``far``),
read from the optimizer the way a training loop drives the scheduler
(``stepping`` says how). Plateau rows instead hold the ``metrics`` handed to
the scheduler, one per step, and ``values[i]`` is the learning rate after the
scheduler has seen ``metrics[i]``.
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

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "porting_golden.json")
BASE = 0.1
EPOCHS = 60  # metric sequence length of the plateau rows


def _num(x: float) -> float:
    return float(f"{float(x):.10g}")


def _f32(xs) -> list[float]:
    return [float(np.float32(x)) for x in xs]


def metrics() -> dict[str, list[float]]:
    """A validation loss (falls in steps, noisy) and an accuracy (rises, saturates),
    rounded to float32 so that both sides compare the same numbers."""
    rng = np.random.default_rng(20250321)
    t = np.arange(EPOCHS, dtype=np.float64)
    loss = 0.4 + 1.6 * np.exp(-t / 8.0) + 0.02 * rng.standard_normal(EPOCHS)
    acc = 0.95 - 0.6 * np.exp(-t / 6.0) + 0.004 * rng.standard_normal(EPOCHS)
    return {"loss": _f32(loss), "accuracy": _f32(acc)}


# -------------------------------------------------------------- drivers --


def torch_opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE, momentum=0.9)


def drive_torch(sched, opt, stepping: str, n: int) -> list[float]:
    """lr of updates 0..n-1 under a torch training loop.

    ``update``: ``scheduler.step()`` after every update; ``epoch:k``: after every
    k updates; ``fractional:k``: ``scheduler.step(epoch + i / k)`` after update i
    of each epoch (the loop in torch's CosineAnnealingWarmRestarts docs).
    """
    kind, _, k = stepping.partition(":")
    out = []
    for u in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if kind == "update":
            sched.step()
        elif kind == "epoch" and (u + 1) % int(k) == 0:
            sched.step()
        elif kind == "fractional":
            sched.step(u // int(k) + (u % int(k)) / int(k))
    return out


def drive_torch_plateau(sched, opt, values) -> list[float]:
    out = []
    for v in values:
        opt.step()
        sched.step(v)
        out.append(opt.param_groups[0]["lr"])
    return out


# ---------------------------------------------------------------- rows --

# (id, call, stepping, n) for a torch scheduler; stepping "plateau:<metric>"
# steps it with the named metric sequence instead.
TORCH = [
    ("torch-lambda", "LambdaLR(opt, lr_lambda=lambda epoch: 0.95 ** epoch)", "update", 60),
    ("torch-multiplicative", "MultiplicativeLR(opt, lr_lambda=lambda epoch: 0.95)", "update", 60),
    ("torch-step", "StepLR(opt, step_size=10, gamma=0.5)", "update", 60),
    ("torch-step-per-epoch", "StepLR(opt, step_size=3, gamma=0.5)", "epoch:4", 60),
    ("torch-multistep", "MultiStepLR(opt, milestones=[10, 25, 40], gamma=0.2)", "update", 60),
    ("torch-constant", "ConstantLR(opt, factor=0.25, total_iters=8)", "update", 20),
    ("torch-linear", "LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=10)",
     "update", 20),
    ("torch-exponential", "ExponentialLR(opt, gamma=0.9)", "update", 60),
    ("torch-polynomial", "PolynomialLR(opt, total_iters=40, power=2.0)", "update", 60),
    ("torch-cosine", "CosineAnnealingLR(opt, T_max=30, eta_min=0.001)", "update", 100),
    ("torch-chained", "ChainedScheduler([ConstantLR(opt, factor=0.1, total_iters=2), "
     "ExponentialLR(opt, gamma=0.9)])", "update", 30),
    ("torch-sequential", "SequentialLR(opt, schedulers=[LinearLR(opt, start_factor=0.01, "
     "total_iters=10), CosineAnnealingLR(opt, T_max=50)], milestones=[10])", "update", 60),
    ("torch-cyclic", "CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=10, "
     "step_size_down=15)", "update", 80),
    ("torch-cyclic-triangular2", "CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=8, "
     "mode='triangular2')", "update", 80),
    ("torch-cyclic-exp-range", "CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=8, "
     "mode='exp_range', gamma=0.98)", "update", 80),
    ("torch-one-cycle", "OneCycleLR(opt, max_lr=0.1, total_steps=100)", "update", 100),
    ("torch-one-cycle-linear", "OneCycleLR(opt, max_lr=0.1, total_steps=100, pct_start=0.25, "
     "anneal_strategy='linear', div_factor=10.0, final_div_factor=100.0)", "update", 100),
    ("torch-one-cycle-three-phase", "OneCycleLR(opt, max_lr=0.1, epochs=10, steps_per_epoch=10, "
     "three_phase=True)", "update", 100),
    ("torch-warm-restarts", "CosineAnnealingWarmRestarts(opt, T_0=10, eta_min=0.001)",
     "update", 50),
    ("torch-warm-restarts-mult", "CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2, "
     "eta_min=0.001)", "update", 80),
    ("torch-warm-restarts-fractional", "CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2)",
     "fractional:4", 96),
    ("torch-plateau-min", "ReduceLROnPlateau(opt, mode='min', factor=0.5, patience=3, "
     "threshold=0.01, cooldown=2, min_lr=0.005)", "plateau:loss", EPOCHS),
    ("torch-plateau-max", "ReduceLROnPlateau(opt, mode='max', factor=0.2, patience=2, "
     "threshold=0.002, threshold_mode='abs', min_lr=0.0001)", "plateau:accuracy", EPOCHS),
]

HF = [
    ("hf-constant", "get_constant_schedule(opt)", "update", 20),
    ("hf-constant-warmup", "get_constant_schedule_with_warmup(opt, num_warmup_steps=10)",
     "update", 30),
    ("hf-linear", "get_linear_schedule_with_warmup(opt, num_warmup_steps=10, "
     "num_training_steps=100)", "update", 120),
    ("hf-cosine", "get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, "
     "num_training_steps=100)", "update", 160),
    ("hf-cosine-cycles", "get_cosine_schedule_with_warmup(opt, num_warmup_steps=10, "
     "num_training_steps=100, num_cycles=1.5)", "update", 110),
    ("hf-cosine-hard-restarts", "get_cosine_with_hard_restarts_schedule_with_warmup(opt, "
     "num_warmup_steps=10, num_training_steps=100, num_cycles=3)", "update", 120),
    ("hf-polynomial", "get_polynomial_decay_schedule_with_warmup(opt, num_warmup_steps=10, "
     "num_training_steps=100, lr_end=0.001, power=2.0)", "update", 120),
    ("hf-inverse-sqrt", "get_inverse_sqrt_schedule(opt, num_warmup_steps=10)", "update", 100),
    ("hf-inverse-sqrt-timescale", "get_inverse_sqrt_schedule(opt, num_warmup_steps=10, "
     "timescale=50)", "update", 100),
    ("hf-cosine-min-lr", "get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=10, "
     "num_training_steps=100, min_lr=0.001)", "update", 160),
    ("hf-cosine-min-lr-rate", "get_cosine_with_min_lr_schedule_with_warmup_lr_rate(opt, "
     "num_warmup_steps=10, num_training_steps=100, min_lr_rate=0.01)", "update", 120),
    ("hf-cosine-min-lr-rate-warmup", "get_cosine_with_min_lr_schedule_with_warmup_lr_rate(opt, "
     "num_warmup_steps=10, num_training_steps=100, min_lr_rate=0.01, warmup_lr_rate=0.05)",
     "update", 120),
    ("hf-wsd", "get_wsd_schedule(opt, num_warmup_steps=10, num_decay_steps=20, "
     "num_training_steps=100, min_lr_ratio=0.01)", "update", 120),
    ("hf-wsd-linear", "get_wsd_schedule(opt, num_warmup_steps=10, num_decay_steps=20, "
     "num_training_steps=100, decay_type='linear')", "update", 120),
    ("hf-wsd-1-sqrt", "get_wsd_schedule(opt, num_warmup_steps=10, num_decay_steps=20, "
     "num_stable_steps=70, decay_type='1-sqrt', min_lr_ratio=0.01)", "update", 120),
    ("hf-wsd-cosine-warmup", "get_wsd_schedule(opt, num_warmup_steps=10, num_decay_steps=20, "
     "num_training_steps=100, warmup_type='cosine', min_lr_ratio=0.1)", "update", 120),
    ("hf-wsd-1-sqrt-warmup", "get_wsd_schedule(opt, num_warmup_steps=10, num_decay_steps=20, "
     "num_training_steps=100, warmup_type='1-sqrt')", "update", 120),
    ("hf-plateau", "get_reduce_on_plateau_schedule(opt, factor=0.5, patience=1)",
     "plateau:loss", EPOCHS),
]

# (id, call, stepping, n, far): "update" calls step_update(num_updates) after
# every update; "epoch:k" calls step(epoch + 1) after every k updates;
# "plateau:<metric>" calls step(epoch + 1, metric).
TIMM = [
    ("timm-cosine-prefix", "CosineLRScheduler(opt, t_initial=60, lr_min=0.001, warmup_t=10, "
     "warmup_lr_init=0.0001, warmup_prefix=True, t_in_epochs=False)", "update", 90, [1000]),
    ("timm-cosine-no-prefix", "CosineLRScheduler(opt, t_initial=60, lr_min=0.001, warmup_t=10, "
     "warmup_lr_init=0.0001, warmup_prefix=False, t_in_epochs=False)", "update", 80, [1000]),
    ("timm-cosine-epochs", "CosineLRScheduler(opt, t_initial=10, lr_min=0.001, warmup_t=2, "
     "warmup_lr_init=0.01)", "epoch:5", 70, []),
    ("timm-cosine-cycle-mul", "CosineLRScheduler(opt, t_initial=20, cycle_mul=2.0, "
     "cycle_limit=3, t_in_epochs=False)", "update", 160, [1000]),
    ("timm-cosine-cycle-decay", "CosineLRScheduler(opt, t_initial=20, cycle_decay=0.5, "
     "cycle_limit=4, t_in_epochs=False)", "update", 100, [1000]),
    ("timm-cosine-cycle-decay-lr-min", "CosineLRScheduler(opt, t_initial=20, lr_min=0.001, "
     "cycle_decay=0.5, cycle_limit=3, t_in_epochs=False)", "update", 80, [1000]),
    ("timm-step", "StepLRScheduler(opt, decay_t=15, decay_rate=0.5, warmup_t=5, "
     "warmup_lr_init=0.001, t_in_epochs=False)", "update", 80, [1000]),
    ("timm-multistep", "MultiStepLRScheduler(opt, decay_t=[20, 40], decay_rate=0.5, "
     "t_in_epochs=False)", "update", 60, []),
    ("timm-poly", "PolyLRScheduler(opt, t_initial=50, power=2.0, lr_min=0.001, warmup_t=5, "
     "warmup_lr_init=0.001, t_in_epochs=False)", "update", 70, [1000]),
    ("timm-wsd", "WSDLRScheduler(opt, t_initial=90, decay_t=20, lr_min=0.001, warmup_t=10, "
     "decay_fn='linear', t_in_epochs=False)", "update", 120, [1000]),
    ("timm-plateau", "PlateauLRScheduler(opt, decay_rate=0.5, patience_t=2, lr_min=0.01)",
     "plateau:accuracy", EPOCHS, []),
]

# (id, call, steps): Keras schedules are functions of the optimizer's iteration.
_K_FAR = [1000, 10**5]
KERAS = [
    ("keras-exponential", "ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)", 100, _K_FAR),
    ("keras-exponential-staircase", "ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, "
     "staircase=True)", 100, _K_FAR),
    ("keras-piecewise", "PiecewiseConstantDecay(boundaries=[20, 50], values=[0.1, 0.05, 0.01])",
     70, _K_FAR),
    ("keras-polynomial", "PolynomialDecay(0.1, decay_steps=40, end_learning_rate=0.001, "
     "power=2.0)", 60, _K_FAR),
    ("keras-polynomial-cycle", "PolynomialDecay(0.1, decay_steps=40, end_learning_rate=0.001, "
     "power=2.0, cycle=True)", 130, _K_FAR),
    ("keras-inverse-time", "InverseTimeDecay(0.1, decay_steps=10, decay_rate=0.5)", 100, _K_FAR),
    ("keras-cosine", "CosineDecay(0.1, decay_steps=50, alpha=0.01)", 70, _K_FAR),
    ("keras-cosine-warmup", "CosineDecay(0.0, decay_steps=50, alpha=0.01, warmup_target=0.1, "
     "warmup_steps=10)", 80, _K_FAR),
    ("keras-cosine-restarts", "CosineDecayRestarts(0.1, first_decay_steps=10, t_mul=2.0, "
     "m_mul=0.8, alpha=0.01)", 160, []),
]

# (id, call, stepping): callbacks driven epoch by epoch on a compiled model.
KERAS_CALLBACKS = [
    ("keras-plateau", "ReduceLROnPlateau(monitor='val_loss', factor=0.5, patience=3, "
     "min_delta=0.001, cooldown=2, min_lr=0.005)", "plateau:loss"),
    ("keras-lr-scheduler", "LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** (epoch // 10))",
     "epoch"),
    ("keras-lr-scheduler-chained", "LearningRateScheduler(lambda epoch, lr: lr if epoch < 10 "
     "else lr * math.exp(-0.1))", "epoch"),
]


# ------------------------------------------------------------ recorders --


def _row(call, stepping, values, n=None, far=(), metric=None, seqs=None):
    row = {"peer": call, "stepping": stepping}
    if metric is not None:
        row["metrics"] = seqs[metric]
    else:
        row["n"], row["far"] = n, list(far)
    row["values"] = [_num(v) for v in values]
    return row


def record_torch_like(rows, namespace, seqs):
    out = {}
    for rid, call, stepping, n in rows:
        opt = torch_opt()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = eval(call, dict(namespace, opt=opt, math=math))
            if stepping.startswith("plateau:"):
                metric = stepping.partition(":")[2]
                lrs = drive_torch_plateau(sched, opt, seqs[metric])
                out[rid] = _row(call, "step(metric) once per epoch", lrs, metric=metric,
                                seqs=seqs)
            else:
                lrs = drive_torch(sched, opt, stepping, n)
                out[rid] = _row(call, _describe(stepping), lrs, n=n)
    return out


def _describe(stepping: str) -> str:
    kind, _, k = stepping.partition(":")
    return {"update": "step() after every update",
            "epoch": f"step() once per epoch of {k} updates",
            "fractional": f"step(epoch + i / {k}) after update i of each epoch of {k}"}[kind]


def import_timm_schedulers() -> tuple[str, dict]:
    """timm's scheduler modules without its package __init__ (needs torchvision)."""
    root = os.path.dirname(importlib.util.find_spec("timm").origin)
    for name, path in (("timm", root), ("timm.scheduler", os.path.join(root, "scheduler"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    from timm.scheduler.cosine_lr import CosineLRScheduler
    from timm.scheduler.multistep_lr import MultiStepLRScheduler
    from timm.scheduler.plateau_lr import PlateauLRScheduler
    from timm.scheduler.poly_lr import PolyLRScheduler
    from timm.scheduler.step_lr import StepLRScheduler
    from timm.scheduler.tanh_lr import TanhLRScheduler
    from timm.scheduler.wsd_lr import WSDLRScheduler
    names = dict(CosineLRScheduler=CosineLRScheduler, MultiStepLRScheduler=MultiStepLRScheduler,
                 PlateauLRScheduler=PlateauLRScheduler, PolyLRScheduler=PolyLRScheduler,
                 StepLRScheduler=StepLRScheduler, TanhLRScheduler=TanhLRScheduler,
                 WSDLRScheduler=WSDLRScheduler)
    return importlib.metadata.version("timm"), names


def record_timm(namespace, seqs):
    out = {}
    for rid, call, stepping, n, far in TIMM:
        opt = torch_opt()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched = eval(call, dict(namespace, opt=opt))
        kind, _, k = stepping.partition(":")
        group = opt.param_groups[0]
        if kind == "plateau":
            lrs = []
            for epoch, v in enumerate(seqs[k]):
                sched.step(epoch + 1, v)
                lrs.append(group["lr"])
            out[rid] = _row(call, "step(epoch + 1, metric) after each epoch", lrs, metric=k,
                            seqs=seqs)
            continue
        lrs = []
        for u in range(n):
            lrs.append(group["lr"])
            sched.step_update(u + 1)
            if kind == "epoch" and (u + 1) % int(k) == 0:
                sched.step((u + 1) // int(k))
        for t in far:
            sched.step_update(t)
            lrs.append(group["lr"])
        how = ("step_update(num_updates) after every update" if kind == "update" else
               f"step(epoch + 1) after each epoch of {k} updates (step_update too)")
        out[rid] = _row(call, how, lrs, n=n, far=far)
    return out


def _keras_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def record_keras(seqs):
    out = {}
    names = {k: getattr(keras.optimizers.schedules, k) for k in dir(keras.optimizers.schedules)
             if not k.startswith("_")}
    for rid, call, n, far in KERAS:
        sched = eval(call, dict(names))
        steps = list(range(n)) + list(far)
        out[rid] = _row(call, "schedule(iteration)", [sched(t) for t in steps], n=n, far=far)
    callbacks = dict(ReduceLROnPlateau=keras.callbacks.ReduceLROnPlateau,
                     LearningRateScheduler=keras.callbacks.LearningRateScheduler, math=math)
    for rid, call, stepping in KERAS_CALLBACKS:
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=BASE), loss="mse")
        cb = eval(call, dict(callbacks))
        cb.set_model(model)
        cb.on_train_begin()
        lrs = []
        if stepping.startswith("plateau:"):
            metric = stepping.partition(":")[2]
            for epoch, v in enumerate(seqs[metric]):
                cb.on_epoch_end(epoch, {"val_loss": v})
                lrs.append(_keras_lr(model))
            out[rid] = _row(call, "on_epoch_end(epoch, {'val_loss': metric})", lrs,
                            metric=metric, seqs=seqs)
        else:
            for epoch in range(EPOCHS):
                cb.on_epoch_begin(epoch)
                lrs.append(_keras_lr(model))
            out[rid] = _row(call, "on_epoch_begin(epoch), one update per epoch", lrs, n=EPOCHS)
    return out


def main():
    import transformers
    import transformers.optimization as hf

    seqs = metrics()
    torch_names = {k: getattr(torch.optim.lr_scheduler, k)
                   for k in dir(torch.optim.lr_scheduler) if not k.startswith("_")}
    hf_names = {k: getattr(hf, k) for k in dir(hf) if k.startswith("get_")}
    timm_version, timm_names = import_timm_schedulers()
    rows = {}
    rows.update(record_torch_like(TORCH, torch_names, seqs))
    rows.update(record_torch_like(HF, hf_names, seqs))
    rows.update(record_timm(timm_names, seqs))
    rows.update(record_keras(seqs))
    data = {
        "note": "Generated by tests/golden/generate_porting_golden.py; do not edit by hand.",
        "base_lr": BASE,
        "versions": {"torch": torch.__version__.split("+")[0],
                     "transformers": transformers.__version__, "timm": timm_version,
                     "keras": keras.__version__, "keras_backend": keras.backend.backend()},
        "rows": rows,
    }
    assert all(math.isfinite(v) for r in rows.values() for v in r["values"])
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(rows)} rows to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
