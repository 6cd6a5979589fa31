"""Logging optimizer telemetry to TensorBoard and to a CSV file.

A small MLP regresses a random teacher network on synthetic data with a
guarded optimizer:

    explosion_guard(chain(clip_by_zscore(), inject_hyperparams(adamw)(warm-up + cosine)))

The jitted step returns ``optaxsched.telemetry(opt_state)``, a flat dict of
0-d arrays (the guard's counters, ZClip's statistics, the scheduled learning
rate, ...), next to the loss. The loop never reads them between logs: only
every ``log_every`` steps are they fetched to the host, in one transfer, and
written

- to TensorBoard with ``tensorboardX.SummaryWriter.add_scalar``, one tag per
  key (``train/loss``, ``optimizer/<telemetry key>``), and
- to ``telemetry.csv``, one row per logged step, the columns ``step``,
  ``loss`` and every telemetry key.

The CSV header is fixed by the first logged step. Telemetry keys depend only
on how the optimizer is built, so they do not change during a run; should a
key appear later anyway (another optimizer swapped in mid-run), it is still
written to TensorBoard, left out of the CSV with one warning, and a key that
disappears leaves its cells empty.

Values are written as they are: ZClip's ``zclip_threshold`` is +inf during
its warm-up (no clipping yet), ``inf`` in the CSV file, and tensorboardX logs
"NaN or Inf found in input tensor." for it.

``corrupt_step`` makes one batch NaN: the guard skips that step, and the
``guard_skipped_steps`` and ``guard_nonfinite_steps`` columns go from 0 to 1.

Run it (``pip install -e '.[examples]'`` installs tensorboardX)::

    python examples/log_telemetry.py [--steps 500] [--log-every 25] [--logdir DIR]

and look at the curves with TensorBoard (the viewer is a separate package,
not needed to write the logs)::

    pip install tensorboard
    tensorboard --logdir runs/log_telemetry
"""

from __future__ import annotations

import argparse
import csv
import math
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tensorboardX import SummaryWriter

import optaxsched as ox
from optaxsched import schedules

Params = dict[str, dict[str, jax.Array]]


class TelemetryLog:
    """Writes logged steps to a TensorBoard event file and to one CSV file.

    Args:
      logdir: folder for the event file and ``telemetry.csv`` (created).

    Use as a context manager; the files are complete once it exits.
    """

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.logdir / "telemetry.csv"
        self._tb = SummaryWriter(str(self.logdir))
        self._csv_file = open(self.csv_path, "w", newline="")
        self._csv: csv.DictWriter | None = None
        self._warned: set[str] = set()

    def write(self, step: int, values: dict[str, float]) -> None:
        """Logs ``values`` (``"loss"`` and the telemetry keys) at ``step``."""
        for key, value in values.items():
            self._tb.add_scalar(("train/" if key == "loss" else "optimizer/") + key, value,
                                step)
        if self._csv is None:
            # The first row fixes the header: a CSV file cannot grow columns.
            self._csv = csv.DictWriter(self._csv_file, ["step", *values], restval="",
                                       extrasaction="ignore")
            self._csv.writeheader()
        new = set(values) - set(self._csv.fieldnames) - self._warned
        if new:
            warnings.warn(f"keys not in the CSV header, written to TensorBoard only: "
                          f"{sorted(new)}", stacklevel=2)
            self._warned |= new
        self._csv.writerow({"step": step, **values})

    def close(self) -> None:
        self._tb.close()
        self._csv_file.close()

    def __enter__(self) -> TelemetryLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Data and initialisation are NumPy on the host, as a real input pipeline's
# batches are: the jitted step is the only program compiled per run.


def make_data(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` inputs and the targets of a random one-hidden-layer teacher."""
    x = rng.standard_normal((n, dim), np.float32)
    a = rng.standard_normal((dim, 4 * dim), np.float32) / math.sqrt(dim)
    b = rng.standard_normal((4 * dim, 1), np.float32) / math.sqrt(4 * dim)
    return x, np.sin(x @ a) @ b


def init_params(rng: np.random.Generator, dim: int, width: int) -> Params:
    """A ``dim -> width -> 1`` MLP, LeCun-normal kernels, zero biases."""
    params = {
        "hidden": {"kernel": rng.standard_normal((dim, width), np.float32) / math.sqrt(dim),
                   "bias": np.zeros(width, np.float32)},
        "out": {"kernel": rng.standard_normal((width, 1), np.float32) / math.sqrt(width),
                "bias": np.zeros(1, np.float32)},
    }
    return jax.tree.map(jnp.asarray, params)


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


def make_optimizer(steps: int, peak_lr: float) -> optax.GradientTransformationExtraArgs:
    """The guarded optimizer; ``inject_hyperparams`` puts the rate in telemetry."""
    warmup_steps = max(1, steps // 10)
    lr = schedules.warmup(
        schedules.cosine_decay(peak_lr, steps - warmup_steps, end_value=0.1 * peak_lr),
        warmup_steps,
    )
    return ox.explosion_guard(optax.chain(
        ox.clip_by_zscore(),
        optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=1e-4),
    ))


def main(
    steps: int = 500,
    log_every: int = 25,
    logdir: str | Path | None = None,
    batch_size: int = 32,
    dim: int = 8,
    width: int = 32,
    peak_lr: float = 1e-2,
    corrupt_step: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains the MLP and logs telemetry every ``log_every`` steps.

    Args:
      steps: number of updates, >= 2.
      log_every: steps between logs, >= 1; the last step is always logged.
      logdir: folder for the TensorBoard event file and ``telemetry.csv``;
        None: a new ``runs/log_telemetry/<date-time>`` (TensorBoard shows
        each subfolder of ``runs/log_telemetry`` as one run; a reused folder
        gets a second event file, which TensorBoard merges into the same run,
        while the CSV file is overwritten).
      batch_size: examples per step.
      dim: input dimension.
      width: hidden width.
      peak_lr: learning rate after the warm-up.
      corrupt_step: a step whose batch is made NaN, to show the guard skip
        it; None: no corruption.
      seed: data, initialisation and batch order.
      verbose: print a line per logged step.

    Returns:
      ``{"rows": [{"step": t, "loss": ..., key: value for every telemetry
      key}, ...], "csv": path of the CSV file, "event_files": [paths of the
      TensorBoard event files]}``: the rows as written.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as logdir:
      ...     out = main(steps=20, log_every=10, logdir=logdir, verbose=False)
      >>> [row["step"] for row in out["rows"]], out["csv"].name, len(out["event_files"])
      ([0, 10, 19], 'telemetry.csv', 1)
    """
    if steps < 2 or log_every < 1:
        raise ValueError(f"main: needs steps >= 2 and log_every >= 1, got steps={steps}, "
                         f"log_every={log_every}")
    if logdir is None:
        logdir = Path("runs/log_telemetry") / time.strftime("%Y%m%d-%H%M%S")
    rng = np.random.default_rng(seed)
    x_all, y_all = make_data(rng, 16 * batch_size, dim)
    params = init_params(rng, dim, width)
    tx = make_optimizer(steps, peak_lr)
    opt_state = jax.jit(tx.init)(params)  # one compiled program, not one per leaf

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        # The statistics are computed here, on device, at no extra cost.
        return optax.apply_updates(params, updates), opt_state, loss, ox.telemetry(opt_state)

    rows: list[dict[str, float]] = []
    with TelemetryLog(logdir) as log:
        for t in range(steps):
            idx = rng.integers(0, x_all.shape[0], batch_size)
            x, y = x_all[idx], y_all[idx]
            if t == corrupt_step:
                x = np.full_like(x, np.nan)
            params, opt_state, loss, stats = train_step(params, opt_state, x, y)
            if t % log_every == 0 or t == steps - 1:
                # The only host transfer: every log_every steps, all at once.
                loss, stats = jax.device_get((loss, stats))
                row = {"loss": float(loss), **{k: float(v) for k, v in stats.items()}}
                log.write(t, row)
                rows.append({"step": t, **row})
                if verbose:
                    short = {k.rsplit("/", 1)[-1]: v for k, v in row.items()}
                    print(f"step {t:5d}  loss {row['loss']:.4g}  lr "
                          f"{short['learning_rate']:.3g}  grad norm "
                          f"{short['guard_grad_norm']:.3g}  skipped "
                          f"{short['guard_skipped_steps']:.0f}")
    if verbose:
        print(f"wrote {len(rows)} rows to {log.csv_path}; tensorboard --logdir {log.logdir}")
    return {"rows": rows, "csv": log.csv_path,
            "event_files": sorted(log.logdir.glob("events.out.tfevents.*"))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--logdir", default=None,
                        help="default: runs/log_telemetry/<date-time>")
    # Not a logged step: the rows around it show the counters move.
    parser.add_argument("--corrupt-step", type=int, default=260)
    args = parser.parse_args()
    main(steps=args.steps, log_every=args.log_every, logdir=args.logdir,
         corrupt_step=args.corrupt_step)
