"""Ordered ``(pattern, value)`` rules over parameter paths: parsing and checks.

Private helpers of :mod:`optaxsched._groups`. A rule set is a mapping or a
sequence of pairs; each pattern is compiled once (a regex string, a compiled
``re.Pattern``, or the layer-index pattern that ``layer_decay_rules`` builds)
and each value is checked eagerly, so a bad rule fails at construction with the
function, the rule and the value in the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optaxsched._validation import check_number, is_traced

__all__ = ["LayerIndexPattern", "Rule", "compile_pattern", "compile_rules",
           "check_multiplier", "check_label"]


class LayerIndexPattern:
    """Matches paths whose layer index (first group of ``regex``) is ``index``;
    an index outside ``[0, num_layers)`` raises, so a wrong ``num_layers``
    cannot go unnoticed."""

    def __init__(self, regex: re.Pattern, index: int, num_layers: int):
        self.regex, self.index, self.num_layers = regex, index, num_layers
        self.pattern = f"{regex.pattern} == {index}"

    def search(self, path: str):
        m = self.regex.search(path)
        if m is None:
            return None
        if not (m.group(1) or "").isdigit():
            raise ValueError(
                f"layer_decay_rules(layer_pattern={self.regex.pattern!r}): the layer "
                f"index {m.group(1)!r} captured in path {path!r} is not an integer"
            )
        found = int(m.group(1))
        if not 0 <= found < self.num_layers:
            raise ValueError(
                f"layer_decay_rules(num_layers={self.num_layers}): path {path!r} has "
                f"layer index {found}, outside 0..{self.num_layers - 1}; pass the "
                f"model's number of layers"
            )
        return m if found == self.index else None

    def __repr__(self) -> str:
        return f"LayerIndex({self.regex.pattern!r}, {self.index})"


class Rule(NamedTuple):
    text: str  # the pattern as the user wrote it, for messages
    pattern: Any  # anything with ``.search(str)``
    value: Any


def compile_pattern(fn: str, name: str, pattern: Any) -> Any:
    if isinstance(pattern, (re.Pattern, LayerIndexPattern)):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(
            f"{fn}({name}={pattern!r}): a pattern must be a str or re.Pattern, "
            f"got {type(pattern).__name__}"
        )
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{fn}({name}={pattern!r}): invalid regular expression: {e}") from None


def compile_rules(fn: str, rules: Any, check_value: Callable[[str, str, Any], None]):
    if isinstance(rules, Mapping):
        items = list(rules.items())
    elif isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
        raise TypeError(
            f"{fn}(rules={rules!r}): rules must be a mapping or a sequence of "
            f"(pattern, value) pairs"
        )
    else:
        items = [tuple(x) if isinstance(x, (tuple, list)) else x for x in rules]
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(
                    f"{fn}(rules=...): every rule must be a (pattern, value) pair, "
                    f"got {item!r}"
                )
    out = []
    for pattern, value in items:
        name = f"rules[{getattr(pattern, 'pattern', pattern)!r}]"
        compiled = compile_pattern(fn, name, pattern)
        check_value(fn, name, value)
        out.append(Rule(compiled.pattern, compiled, value))
    return tuple(out)


def check_multiplier(fn: str, name: str, value: Any) -> None:
    """A multiplier must be a finite number >= 0 or a schedule."""
    if not callable(value):
        check_number(fn, name, value, ge=0)
        return
    # Cheap sanity check of the schedule at step 0; later values are traced
    # and cannot be checked here.
    with jax.ensure_compile_time_eval():
        try:
            v0 = value(jnp.zeros((), jnp.int32))
        except Exception as e:  # report which rule's schedule failed
            raise TypeError(
                f"{fn}({name}={value!r}): calling the schedule at step 0 failed: {e!r}"
            ) from e
    if is_traced(v0):
        return
    if np.ndim(v0) != 0:
        raise ValueError(
            f"{fn}({name}={value!r}): a schedule must return a scalar, "
            f"got shape {np.shape(v0)}"
        )
    check_number(fn, f"{name}(0)", v0, ge=0)


def check_label(fn: str, name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{fn}({name}={value!r}): a label must be a str, got {type(value).__name__}"
        )

