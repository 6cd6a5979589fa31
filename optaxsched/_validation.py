"""Eager argument checks shared by every factory.

Every check names the public function, the argument and the offending value,
e.g. ``clip_by_zscore(z_threshold=-1.0): z_threshold must be > 0``. Checks are
skipped for traced values so factories stay usable under
``optax.inject_hyperparams`` inside ``jax.jit``; concrete ``jax.Array`` values
(what ``inject_hyperparams`` passes at ``init``) are checked like numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_traced",
    "check_number",
    "check_int",
    "check_choice",
    "check_callable",
    "check_bool",
    "check_static",
    "check_int_sequence",
    "check_float_sequence",
    "check_value",
    "scalar_f32",
    "require_value",
]


def is_traced(value: Any) -> bool:
    """True when ``value`` is a JAX tracer (its value is unknown until run time)."""
    return isinstance(value, jax.core.Tracer)


def _prefix(fn: str, name: str, value: Any) -> str:
    return f"{fn}({name}={value!r})"


def _as_float(fn: str, name: str, value: Any) -> float:
    """Converts a Python/NumPy/JAX scalar to float, or raises TypeError."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TypeError(f"{_prefix(fn, name, value)}: {name} must be a number")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        arr = np.asarray(value)
        # _is_real_dtype, not np.issubdtype: bfloat16 (what inject_hyperparams
        # passes for bf16 params) is no NumPy floating type.
        if arr.ndim != 0 or not _is_real_dtype(arr.dtype):
            raise TypeError(f"{_prefix(fn, name, value)}: {name} must be a real scalar")
        return float(arr)
    raise TypeError(
        f"{_prefix(fn, name, value)}: {name} must be a number, got {type(value).__name__}"
    )


def check_number(
    fn: str,
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    allow_none: bool = False,
    finite: bool = True,
) -> None:
    """Checks that ``value`` is a real number within the given bounds.

    Args:
      fn: name of the public function, for the message.
      name: argument name, for the message.
      value: the value passed by the user.
      gt, ge, lt, le: optional strict/non-strict lower and upper bounds.
      allow_none: accept ``None``.
      finite: reject NaN and infinities.

    Raises:
      TypeError: ``value`` is not a real scalar.
      ValueError: ``value`` breaks a bound.
    """
    if value is None and allow_none:
        return
    if is_traced(value):
        return
    x = _as_float(fn, name, value)
    p = _prefix(fn, name, value)
    if finite and not math.isfinite(x):
        raise ValueError(f"{p}: {name} must be finite")
    if math.isnan(x):
        raise ValueError(f"{p}: {name} must not be NaN")
    if gt is not None and not x > gt:
        raise ValueError(f"{p}: {name} must be > {gt:g}")
    if ge is not None and not x >= ge:
        raise ValueError(f"{p}: {name} must be >= {ge:g}")
    if lt is not None and not x < lt:
        raise ValueError(f"{p}: {name} must be < {lt:g}")
    if le is not None and not x <= le:
        raise ValueError(f"{p}: {name} must be <= {le:g}")


def check_int(
    fn: str,
    name: str,
    value: Any,
    *,
    ge: int | None = None,
    gt: int | None = None,
    allow_none: bool = False,
) -> None:
    """Checks that ``value`` is an integer (Python or NumPy/JAX integer scalar)."""
    if value is None and allow_none:
        return
    if is_traced(value):
        return
    p = _prefix(fn, name, value)
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Integral)
        or (
            isinstance(value, (np.ndarray, np.generic, jax.Array))
            and np.asarray(value).ndim == 0
            and np.issubdtype(np.asarray(value).dtype, np.integer)
        )
    ):
        raise TypeError(f"{p}: {name} must be an integer, got {type(value).__name__}")
    x = int(value)
    if ge is not None and not x >= ge:
        raise ValueError(f"{p}: {name} must be >= {ge}")
    if gt is not None and not x > gt:
        raise ValueError(f"{p}: {name} must be > {gt}")


def check_choice(fn: str, name: str, value: Any, choices: Iterable[str]) -> None:
    """Checks that ``value`` is one of the allowed strings."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(
            f"{_prefix(fn, name, value)}: {name} must be one of {choices}, "
            f"got {type(value).__name__}"
        )
    if value not in choices:
        raise ValueError(f"{_prefix(fn, name, value)}: {name} must be one of {choices}")


def check_callable(fn: str, name: str, value: Any) -> None:
    """Checks that ``value`` is callable."""
    if not callable(value):
        raise TypeError(
            f"{_prefix(fn, name, value)}: {name} must be callable, "
            f"got {type(value).__name__}"
        )


def check_static(fn: str, name: str, value: Any, *, sets: str = "the state's shape",
                 hint: str | None = None) -> None:
    """Checks that ``value`` is concrete: it fixes something (``sets``) that a
    traced value cannot. ``hint`` says what to do instead; by default, keep it
    static in ``optax.inject_hyperparams``."""
    if is_traced(value):
        if hint is None:
            hint = f"pass static_args=({name!r},) to optax.inject_hyperparams"
        raise TypeError(
            f"{fn}({name}=<traced>): {name} sets {sets} and must be a concrete Python "
            f"value; {hint}"
        )


def check_bool(fn: str, name: str, value: Any, *, hint: str | None = None) -> None:
    """Checks that ``value`` is ``True`` or ``False`` (a Python or NumPy bool).

    A flag chooses code paths while tracing, so a traced flag is refused
    (``hint``: as for :func:`check_static`).
    """
    check_static(fn, name, value, sets="which code runs", hint=hint)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{_prefix(fn, name, value)}: {name} must be True or False, "
            f"got {type(value).__name__}"
        )


def check_int_sequence(
    fn: str, name: str, value: Any, *, ge: int | None = None
) -> tuple[int, ...]:
    """Checks a sequence of integers and returns it as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{_prefix(fn, name, value)}: {name} must be a sequence of integers")
    out = []
    for i, v in enumerate(value):
        check_int(fn, f"{name}[{i}]", v, ge=ge)
        out.append(int(v))
    return tuple(out)


def check_float_sequence(fn: str, name: str, value: Any) -> tuple[float, ...]:
    """Checks a sequence of finite real numbers and returns it as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{_prefix(fn, name, value)}: {name} must be a sequence of numbers")
    out = []
    for i, v in enumerate(value):
        check_number(fn, f"{name}[{i}]", v)
        out.append(float(v))
    return tuple(out)


def _is_real_dtype(dtype: Any) -> bool:
    # jnp.issubdtype also knows the ml_dtypes floats (bfloat16, float8_*).
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))


def _short_repr(value: Any, limit: int = 60) -> str:
    if is_traced(value):
        return f"<traced {value.dtype}[{','.join(map(str, value.shape))}]>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_value(fn: str, value: Any, *, name: str = "value", what: str = "the loss",
                example: str = "loss") -> Any:
    """Checks the loss passed as ``update(..., value=...)`` (or another real
    scalar argument ``name``: ``what``, e.g. ``example``) and returns it.

    Accepted: a Python ``int``/``float``, or a NumPy/JAX array or scalar
    (traced included: only its dtype is read) of a real -- integer or
    floating -- dtype. A string, a bool, a complex number, a container
    (dict, list, tuple or any other pytree) or an array of another dtype is a
    ``TypeError`` naming ``fn`` and ``name``. The shape is the caller's to
    check.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    arrays = (np.ndarray, np.generic, jax.Array)
    if not isinstance(value, arrays) and hasattr(value, "__jax_array__"):
        value = value.__jax_array__()  # array-likes such as boxed parameters
    dtype = getattr(value, "dtype", None)
    if isinstance(value, arrays) and _is_real_dtype(dtype):
        return value
    if isinstance(value, (str, bytes)):
        got = f"a {type(value).__name__}; convert it with float() if it is a number"
    elif isinstance(value, arrays):
        got = f"an array of dtype {dtype}"
    elif not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value)):
        got = f"a {type(value).__name__}; pass one {example}, not a container of them"
    else:
        got = f"a {type(value).__name__}"
    raise TypeError(
        f"{fn}({name}={_short_repr(value)}): {name} must be {what} as a real scalar: "
        f"pass {name}={example} with {example} a float array of shape () or a Python "
        f"float; got {got}"
    )


def scalar_f32(fn: str, value: Any, *, name: str = "value", what: str = "the loss",
               example: str = "loss") -> jax.Array:
    """``value`` checked by :func:`check_value`, of shape ``()``, as float32.

    A batch of losses instead of their mean is the usual mistake; the message
    says how to reduce it.
    """
    arr = jnp.asarray(check_value(fn, value, name=name, what=what, example=example))
    if arr.shape != ():
        raise ValueError(f"{fn}: {name} must be a scalar, got an array of shape {arr.shape}; "
                         f"pass e.g. {name}={example}.mean()")
    return arr.astype(jnp.float32)


def require_value(fn: str, extra_args: dict[str, Any]) -> Any:
    """Returns ``extra_args["value"]``, checked by :func:`check_value`, or raises
    an error that shows how to pass it."""
    if "value" not in extra_args or extra_args["value"] is None:
        raise TypeError(
            f"{fn} needs the current loss: call "
            f"`opt.update(grads, state, params, value=loss)` (through optax.chain, "
            f"optax.partition, optax.inject_hyperparams and explosion_guard the "
            f"keyword is forwarded; for Flax use "
            f"optaxsched.flax.TrainState.apply_gradients(grads=g, value=loss))"
        )
    return check_value(fn, extra_args["value"])
