"""A Flax nnx training loop with the whole optaxsched stack.

The same run as ``train_linen.py``, written with ``flax.nnx``: a residual
MLP regresses a fixed random teacher network on synthetic data, with

- a warm-up + cosine learning rate from ``optaxsched.schedules``, injected
  with ``optax.inject_hyperparams`` so that telemetry reports it;
- layer-wise rates (LLRD) by parameter path with ``scale_by_group``; nnx
  paths of a ``nnx.List`` read ``layers/0/kernel``;
- ``MetricPlateau``: torch's ``ReduceLROnPlateau`` stepped at the end of
  each epoch (every ``plateau_window`` steps) on the loss of held-out data;
- ``explosion_guard`` around all of it: a NaN batch (``corrupt_step``) is
  skipped, the optimizer state untouched;
- ``telemetry(optimizer.opt_state)`` returned by the jitted step and logged
  every ``log_every`` steps.

``nnx.Optimizer.update(model, grads, value=loss)`` passes the loss on to the
loss-driven transforms as it is; nothing nnx-specific is needed.

    python examples/train_nnx.py [--steps 600] [--log-every 50] [--corrupt-step 300]
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optaxsched as ox
from optaxsched import schedules

# The telemetry fields printed every ``log_every`` steps, by short name (the
# last path component; the library's field names are unique). The full keys
# depend on where each transform sits, e.g. ``2/metric_plateau_scale``.
LOG_FIELDS = ("learning_rate", "guard_grad_norm", "recovery_scale", "metric_plateau_scale",
              "guard_skipped_steps")


class ResidualMlp(nnx.Module):
    """``embed`` -> ``depth`` residual blocks ``layers[i]`` -> ``head``."""

    def __init__(self, dim: int, width: int, depth: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(dim, width, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.head = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.embed(x)
        for layer in self.layers:
            x = x + layer(nnx.gelu(x))
        return self.head(nnx.gelu(x))


def make_data(key: jax.Array, n: int, dim: int) -> tuple[jax.Array, jax.Array]:
    """``n`` inputs and the targets of a random one-hidden-layer teacher."""
    kx, ka, kb = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, dim), jnp.float32)
    a = jax.random.normal(ka, (dim, 4 * dim), jnp.float32) / np.sqrt(dim)
    b = jax.random.normal(kb, (4 * dim, 1), jnp.float32) / np.sqrt(4 * dim)
    return x, jnp.sin(x @ a) @ b


def make_optimizer(
    steps: int, peak_lr: float, depth: int
) -> tuple[optax.GradientTransformationExtraArgs, list[tuple[Any, float]], ox.MetricPlateau]:
    """The guarded optimizer, its per-group rules (for ``describe_groups``)
    and the plateau rule the loop steps once per epoch."""
    warmup_steps = max(1, steps // 20)
    lr = schedules.warmup(
        schedules.cosine_decay(peak_lr, steps - warmup_steps, end_value=0.1 * peak_lr),
        warmup_steps,
    )
    # LLRD: the head at the full rate, each block below it 0.8x the one above.
    rules = ox.layer_decay_rules(0.8, num_layers=depth, layer_pattern=r"layers/(\d+)")
    # Decides once per epoch, when the loop hands it the validation loss.
    plateau = ox.MetricPlateau(factor=0.5, patience=2)
    inner = optax.chain(
        optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=1e-4),
        ox.scale_by_group(rules),
        plateau,
    )
    # The guard wraps everything so that a skipped step reaches no inner state:
    # a NaN batch leaves Adam's moments and the statistics clean.
    return ox.explosion_guard(inner), rules, plateau


@nnx.jit
def train_step(
    model: ResidualMlp, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One update of ``model`` and ``optimizer`` in place; returns the loss and telemetry."""

    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, value=loss)
    return loss, ox.telemetry(optimizer.opt_state)


@nnx.jit
def val_loss(model: ResidualMlp, x: jax.Array, y: jax.Array) -> jax.Array:
    """The mean squared error on held-out data."""
    return jnp.mean((model(x) - y) ** 2)


def main(
    steps: int = 600,
    batch_size: int = 64,
    dim: int = 16,
    width: int = 64,
    depth: int = 4,
    peak_lr: float = 3e-3,
    log_every: int = 50,
    plateau_window: int = 20,
    corrupt_step: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Trains the model and returns its loss curve and telemetry log.

    Args:
      steps: number of updates, >= 2.
      batch_size: examples per step.
      dim: input dimension.
      width: hidden width.
      depth: number of residual blocks (``layers/0`` ...).
      peak_lr: learning rate after the warm-up.
      log_every: steps between telemetry logs.
      plateau_window: steps per epoch; after each, ``MetricPlateau`` takes the
        loss on held-out data.
      corrupt_step: a step whose batch is made NaN, to show the guard skip
        it; None: no corruption.
      seed: data, initialisation and batch order.
      verbose: print the group table and the logs.

    Returns:
      ``{"losses": [float per step], "logs": [{"step": t, "loss": ..., key:
      value for every telemetry key}, ...]}``.

    Example:
      >>> out = main(steps=20, width=8, depth=1, log_every=10, verbose=False)
      >>> len(out["losses"]), [log["step"] for log in out["logs"]]
      (20, [0, 10, 19])
    """
    key_data, key_init, key_batches = jax.random.split(jax.random.key(seed), 3)
    x_all, y_all = make_data(key_data, 20 * batch_size, dim)
    # The last fifth is held out: the validation loss the plateau rule reads.
    (x_all, x_val), (y_all, y_val) = (jnp.split(a, [16 * batch_size]) for a in (x_all, y_all))
    model = ResidualMlp(dim, width, depth, rngs=nnx.Rngs(key_init))
    tx, rules, plateau = make_optimizer(steps, peak_lr, depth)
    if verbose:
        print(ox.describe_groups(nnx.state(model, nnx.Param), rules))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    losses: list[float] = []
    logs: list[dict[str, float]] = []
    for t in range(steps):
        idx = jax.random.randint(jax.random.fold_in(key_batches, t), (batch_size,), 0,
                                 x_all.shape[0])
        x, y = x_all[idx], y_all[idx]
        if t == corrupt_step:
            x = jnp.full_like(x, jnp.nan)
        loss, stats = train_step(model, optimizer, x, y)
        losses.append(float(loss))
        if (t + 1) % plateau_window == 0:  # end of an epoch: updates the optimizer in place
            plateau.step(optimizer.opt_state, val_loss(model, x_val, y_val))
        if t % log_every == 0 or t == steps - 1:
            # The only host transfer of the statistics: every log_every steps.
            log = {"step": t, "loss": float(loss)}
            log.update({k: float(v) for k, v in stats.items()})
            logs.append(log)
            if verbose:
                shown = {k.rsplit("/", 1)[-1]: v for k, v in log.items()}
                print(f"step {t:5d}  loss {float(loss):.4g}  " + "  ".join(
                    f"{name} {shown[name]:.4g}" for name in LOG_FIELDS))
    return {"losses": losses, "logs": logs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--corrupt-step", type=int, default=300)
    args = parser.parse_args()
    main(steps=args.steps, log_every=args.log_every, corrupt_step=args.corrupt_step)
