"""Pure learning-rate schedules that reproduce PyTorch, Keras and timm exactly.

Each factory checks its arguments and returns ``schedule(step) -> jax.Array``:
a pure function whose value at step ``t`` is the learning rate of update ``t``
(``t = 0, 1, ...``), i.e. torch's lr after ``t`` calls to ``scheduler.step()``
and Keras's ``schedule(t)``. Use it as ``optax.adam(learning_rate=schedule)``.

Steps: a Python int, an integer array of any shape (the result has its shape)
or a traced value under ``jit``/``vmap``/``scan``. Floats are floored, negative
steps read as 0 and steps saturate at 2**31 - 1. The result is float32, finite
for every step (overflow saturates at the largest float32) and never negative
by rounding when the schedule's values are non-negative.

Exactness: floors, ceilings and phase tests are done in int32, so under
``jit`` (where XLA turns ``x / c`` into ``x * (1/c)``) a restart or boundary
can never move by a step; fractions are formed as ``(T - t) / T``, clipped to
[0, 1], and results mix two end values with non-negative weights.
That guarantee is why these are kept next to ``optax.schedules``, whose
step arithmetic is floating point (e.g. a staircase's ``floor(t / n)``) and
which lacks several torch families (``period_mult`` restarts, the
three-phase ``one_cycle``, ``cyclic``'s modes).

Hyperparameters that are values (learning rates, gammas, end values) may be
traced; step counts, boundaries, strings and ``period_mult``/``pct_start``
must be concrete Python values because they shape the computation.

Learning-rate values (``init_value``, ``peak_value``, ``end_value``,
``max_value``, ``base_value``, ``value``, the ``values`` of
``piecewise_constant``) must be finite and >= 0, and combinations whose
values would turn negative later on are refused too: a negative rate makes
``optax.sgd`` and friends climb the loss, which is never what a schedule
means. For gradient ascent on purpose, keep the schedule non-negative and
negate the updates, e.g. ``optax.chain(optax.sgd(lr), optax.scale(-1.0))``.
Traced values cannot be checked and are used as they come.
"""

from optaxsched.schedules._arith import Schedule as Schedule
from optaxsched.schedules._compose import join, multiply, per_epoch, warmup
from optaxsched.schedules._cyclic import cosine_restarts, cyclic, one_cycle, wsd
from optaxsched.schedules._decay import (
    constant,
    cosine_decay,
    exponential_decay,
    inverse_sqrt,
    inverse_time_decay,
    linear,
    multistep_decay,
    piecewise_constant,
    polynomial_decay,
    power_decay,
    step_decay,
)

__all__ = [
    "constant", "step_decay", "multistep_decay", "piecewise_constant", "exponential_decay",
    "inverse_time_decay", "power_decay", "inverse_sqrt", "linear", "polynomial_decay",
    "cosine_decay", "cosine_restarts", "cyclic", "one_cycle", "wsd", "warmup", "join", "multiply",
    "per_epoch",
]

# The factories live in private modules, but optaxsched.schedules.NAME is their
# one public path: it is what their __module__ says, so help(), pickle, autodoc
# (this page's :members:) and tests/test_public_api.py see them here.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
