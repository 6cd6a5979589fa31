"""Flax helpers: a linen ``TrainState`` that forwards ``value=loss``.

Importing this module imports flax (an optional dependency:
``pip install optaxsched[flax]``); ``import optaxsched`` alone never does.

For ``flax.nnx`` nothing extra is needed: ``nnx.Optimizer.update(model,
grads, **kwargs)`` passes its keyword arguments to ``tx.update``, so
``optimizer.update(model, grads, value=loss)`` already feeds the loss to
``reduce_on_plateau``, ``bold_driver``, ``scale_by_loss`` and
``explosion_guard``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

try:
    from flax.training import train_state as _train_state
except ImportError as e:  # pragma: no cover - exercised only without flax
    raise ImportError(
        "optaxsched.flax needs flax: pip install 'optaxsched[flax]' (or pip install flax)"
    ) from e

__all__ = ["TrainState"]

# Flax's key for parameters that are overwritten by their "gradient" instead
# of being optimized (fp8 scales and similar); handled exactly as Flax does.
_OWG = getattr(_train_state, "OVERWRITE_WITH_GRADIENT", "_overwrite_with_gradient")


class TrainState(_train_state.TrainState):
    """``flax.training.train_state.TrainState`` whose ``apply_gradients`` takes the loss.

    Identical to Flax's class except that ``apply_gradients`` accepts
    ``value=`` and forwards it to ``tx.update(grads, opt_state, params,
    value=value)``; loss-driven transforms (``reduce_on_plateau``,
    ``bold_driver``, ``scale_by_loss``, ``explosion_guard(watch_loss=True)``)
    need it. Without ``value`` it behaves exactly like the Flax original, so
    plain Optax optimizers keep working. Create it with ``TrainState.create``
    as usual; subclasses may add fields as with Flax.

    Example:
      >>> import jax, jax.numpy as jnp, optax, flax.linen as nn
      >>> import optaxsched as ox
      >>> from optaxsched.flax import TrainState
      >>> model = nn.Dense(1)
      >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
      >>> state = TrainState.create(
      ...     apply_fn=model.apply, params=model.init(jax.random.key(0), x)["params"],
      ...     tx=optax.chain(optax.sgd(0.1), ox.reduce_on_plateau(patience=5)))
      >>> @jax.jit
      ... def train_step(state, x, y):
      ...     def loss_fn(params):
      ...         return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)
      ...     loss, grads = jax.value_and_grad(loss_fn)(state.params)
      ...     return state.apply_gradients(grads=grads, value=loss), loss
      >>> state, loss = train_step(state, x, y)
      >>> int(state.step)
      1

    References:
      Flax, ``flax.training.train_state.TrainState``.
    """

    def apply_gradients(self, *, grads: Any, value: Any = None, **kwargs: Any) -> TrainState:
        """Applies one optimizer step, forwarding ``value`` to ``tx.update``.

        Args:
          grads: gradients with the structure of ``params``.
          value: the scalar loss of this step (``None``: not forwarded).
          **kwargs: other dataclass fields to ``.replace()``, as in Flax.

        Returns:
          A new state with ``step + 1`` and updated ``params`` and ``opt_state``.
        """
        owg = isinstance(grads, Mapping) and _OWG in grads
        grads_opt = grads["params"] if owg else grads
        params_opt = self.params["params"] if owg else self.params
        if value is None:
            updates, opt_state = self.tx.update(grads_opt, self.opt_state, params_opt)
        else:
            updates, opt_state = optax.with_extra_args_support(self.tx).update(
                grads_opt, self.opt_state, params_opt, value=value
            )
        new_params = optax.apply_updates(params_opt, updates)
        if owg:
            new_params = {"params": new_params, _OWG: grads[_OWG]}
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=opt_state, **kwargs
        )
