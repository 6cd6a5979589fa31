"""The recovery rule of ``explosion_guard``: how the update scale falls and regrows.

Multiplicative decrease on each event, multiplicative increase on healthy steps:

    s <- max(min_scale, s * backoff_factor)   on an event (skip or spike)
    s <- min(1, s * growth_factor)            on a healthy step
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["RecoveryState", "recovery_init", "recovery_step"]


class RecoveryState(NamedTuple):
    """State of the recovery rule.

    Attributes:
      recovery_scale: the multiplier applied to the inner updates, in [min_scale, 1].
    """

    recovery_scale: jax.Array


def recovery_init(params: Any) -> RecoveryState:
    """Starts at full scale."""
    del params
    return RecoveryState(recovery_scale=jnp.ones((), jnp.float32))


def recovery_step(
    state: RecoveryState,
    *,
    grad_norm: jax.Array,
    grad_finite: jax.Array,
    loss: jax.Array,
    loss_finite: jax.Array,
    has_loss: bool,
    event: jax.Array,
    backoff_factor: Any,
    growth_factor: Any,
    min_scale: Any,
) -> tuple[jax.Array, RecoveryState]:
    """Returns the multiplier for this step's update and the next state."""
    del grad_norm, grad_finite, loss, loss_finite, has_loss
    s = state.recovery_scale
    down = jnp.maximum(s * jnp.asarray(backoff_factor, jnp.float32),
                       jnp.asarray(min_scale, jnp.float32))
    up = jnp.minimum(s * jnp.asarray(growth_factor, jnp.float32), 1.0)
    new = jnp.where(event, down, up)
    return new, RecoveryState(recovery_scale=new)
