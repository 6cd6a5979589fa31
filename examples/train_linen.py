"""A Flax linen training loop with the whole optaxsched stack.

A residual MLP regresses a fixed random teacher network on synthetic data.
The optimizer is what a real run would use:

- a warm-up + cosine learning rate from ``optaxsched.schedules``, injected
  with ``optax.inject_hyperparams`` so that telemetry reports it;
- layer-wise rates (LLRD) by parameter path with ``scale_by_group``;
- ``MetricPlateau``: torch's ``ReduceLROnPlateau`` stepped at the end of
  each epoch (every ``plateau_window`` steps) on the loss of held-out data;
- ``explosion_guard`` around all of it: a NaN batch (``corrupt_step``) is
  skipped, the optimizer state untouched;
- ``telemetry(opt_state)`` returned by the jitted step and logged every
  ``log_every`` steps.

``optaxsched.flax.TrainState.apply_gradients(grads=..., value=loss)`` feeds
the loss to the loss-driven transforms. The step donates the train state, as
real training loops do.

    python examples/train_linen.py [--steps 600] [--log-every 50] [--corrupt-step 300]
"""

from __future__ import annotations

import argparse
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optaxsched as ox
from optaxsched import schedules
from optaxsched.flax import TrainState

# The telemetry fields printed every ``log_every`` steps, by short name (the
# last path component; the library's field names are unique). The full keys
# depend on where each transform sits, e.g. ``2/metric_plateau_scale``.
LOG_FIELDS = ("learning_rate", "guard_grad_norm", "recovery_scale", "metric_plateau_scale",
              "guard_skipped_steps")


class ResidualMlp(nn.Module):
    """``embed`` -> ``depth`` residual blocks ``layers_i`` -> ``head``."""

    width: int
    depth: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.width, name="embed")(x)
        for i in range(self.depth):
            x = x + nn.Dense(self.width, name=f"layers_{i}")(nn.gelu(x))
        return nn.Dense(1, name="head")(nn.gelu(x))


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
    rules = ox.layer_decay_rules(0.8, num_layers=depth)
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


def train_step(
    state: TrainState, x: jax.Array, y: jax.Array
) -> tuple[TrainState, jax.Array, dict[str, jax.Array]]:
    """One update; returns the new state, the loss and the telemetry."""

    def loss_fn(params):
        return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state.apply_gradients(grads=grads, value=loss)
    return state, loss, ox.telemetry(state.opt_state)


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
      depth: number of residual blocks (``layers_0`` ...).
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
    model = ResidualMlp(width, depth)
    params = model.init(key_init, x_all[:1])["params"]
    tx, rules, plateau = make_optimizer(steps, peak_lr, depth)
    if verbose:
        print(ox.describe_groups(params, rules))
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    step_fn = jax.jit(train_step, donate_argnums=0)
    val_loss = jax.jit(lambda params: jnp.mean((model.apply({"params": params}, x_val)
                                                 - y_val) ** 2))

    losses: list[float] = []
    logs: list[dict[str, float]] = []
    for t in range(steps):
        idx = jax.random.randint(jax.random.fold_in(key_batches, t), (batch_size,), 0,
                                 x_all.shape[0])
        x, y = x_all[idx], y_all[idx]
        if t == corrupt_step:
            x = jnp.full_like(x, jnp.nan)
        state, loss, stats = step_fn(state, x, y)
        losses.append(float(loss))
        if (t + 1) % plateau_window == 0:  # end of an epoch
            state = state.replace(
                opt_state=plateau.step(state.opt_state, val_loss(state.params)))
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
