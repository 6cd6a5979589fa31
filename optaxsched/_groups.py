"""Per-parameter rates by parameter path.

A parameter's *path* is the ``/``-joined keys that lead to it in the params
tree: dict keys, sequence indices and dataclass / Flax struct / NamedTuple
field names, e.g. ``encoder/layers_3/attn/kernel``. Rules are ordered
``(regex, value)`` pairs matched with :func:`re.search`; the first rule whose
pattern occurs in the path wins. All matching is done on Python strings when a
transform is initialised or traced, never inside compiled code.

:func:`optaxsched.tree_paths` shows the path of every parameter; ``telemetry``
names its entries the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxsched import _numerics as nx
from optaxsched._paths import path_str
from optaxsched._rules import (
    LayerIndexPattern,
    Rule,
    check_label,
    check_multiplier,
    compile_pattern,
    compile_rules,
)
from optaxsched._validation import check_bool, check_int, check_number

__all__ = ["ScaleByGroupState", "scale_by_group", "label_by_path", "layer_decay_rules",
           "describe_groups"]

# Most paths a strict-mode error lists before it abbreviates.
_MAX_LISTED = 100
# The name of the group of parameters that no rule matches.
DEFAULT_GROUP = "default"


def _listing(paths: list[str], what: str = "available paths") -> str:
    shown = "\n  ".join(paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    tail = f"\n  ... and {more} more (see optaxsched.tree_paths)" if more > 0 else ""
    return f"{what} ({len(paths)}):\n  {shown}{tail}"


class _Matcher:
    """Assigns each leaf of a tree the index of its winning rule (-1: none).

    Results are cached per tree structure, so eager training loops do not
    rerun the regexes every step.
    """

    def __init__(self, fn: str, rules: tuple[Rule, ...], strict: bool):
        self.fn, self.rules, self.strict = fn, rules, strict
        self._cache: dict[Any, tuple[tuple[str, ...], tuple[int, ...]]] = {}

    def winners(self, paths: list[str]) -> list[int]:
        rules = list(enumerate(self.rules))
        return [next((i for i, r in rules if r.pattern.search(p)), -1) for p in paths]

    def unused(self, paths: list[str], winners: list[int]) -> list[str]:
        """Messages for rules that win no path (unmatched or shadowed)."""
        won = set(winners)
        msgs = []
        for i, r in enumerate(self.rules):
            if i in won:
                continue
            hits = [p for p in paths if r.pattern.search(p)]
            if hits:
                msgs.append(f"rule '{r.text}' only matches paths taken by earlier rules "
                            f"(e.g. {hits[0]!r})")
            elif self._is_embed_rule(i):
                msgs.append(
                    f"rule '{r.text}' (layer_decay_rules' embed_pattern) matches no "
                    f"parameter path: for a model without an embedding use "
                    f"layer_decay_rules(..., embed_pattern=None), else pass the "
                    f"embedding's path pattern as embed_pattern")
            else:
                msgs.append(f"rule '{r.text}' matches no parameter path")
        return msgs

    def _is_embed_rule(self, i: int) -> bool:
        """Whether rule ``i`` is the embedding rule of :func:`layer_decay_rules`.

        The pairs carry no mark (users rebuild them, e.g. into labels), so this
        reads their structure: the rule comes right before the L layer rules
        and, when the multipliers are numbers, it is ``decay**(L + 1)`` with
        ``decay`` the multiplier of block L - 1.
        """
        layers = self.rules[i + 1:]
        first = layers[0].pattern if layers else None
        if not (isinstance(first, LayerIndexPattern) and first.index == 0
                and len(layers) >= first.num_layers):
            return False
        last, value = layers[first.num_layers - 1], self.rules[i].value
        if not isinstance(last.pattern, LayerIndexPattern):
            return False
        if isinstance(last.value, float) and isinstance(value, float):
            return value == last.value ** (first.num_layers + 1)
        return True

    def __call__(self, tree: Any):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        hit = self._cache.get(treedef)
        if hit is None:
            keyed, _ = jax.tree_util.tree_flatten_with_path(tree)
            paths = [path_str(k) for k, _ in keyed]
            winners = self.winners(paths)
            if self.strict:
                msgs = self.unused(paths, winners)
                if msgs:
                    raise ValueError(
                        f"{self.fn}(strict=True): " + "; ".join(msgs) + ". Fix the "
                        "pattern or pass strict=False; " + _listing(paths)
                    )
            if len(self._cache) > 32:
                self._cache.clear()
            hit = self._cache[treedef] = (tuple(paths), tuple(winners))
        return leaves, treedef, hit[0], hit[1]


class ScaleByGroupState(NamedTuple):
    """State of :func:`scale_by_group`.

    Attributes:
      group_count: updates made so far (int32, saturating); schedules in the
        rules are evaluated at this count.
      group_multipliers: the multiplier of each group that holds a parameter
        (float32 scalars keyed by the rule's pattern, ``"default"`` for
        parameters no rule matches), as applied by the most recent update (at
        ``init``: the first update's). :func:`effective_learning_rate` and
        :func:`telemetry` read it.
    """

    group_count: jax.Array
    group_multipliers: dict[str, jax.Array]


def scale_by_group(
    rules: Any, default: Any = 1.0, strict: bool = True
) -> optax.GradientTransformationExtraArgs:
    """Multiplies each parameter's update by the multiplier its path selects.

    For a leaf with path ``p``, the first rule ``(pattern_k, m_k)`` with
    ``re.search(pattern_k, p)`` gives

        u_p ← m_k(t) · u_p        (``default`` when no rule matches),

    where ``m_k`` is a constant or a schedule evaluated at the transform's own
    step count ``t = 0, 1, ...``. This is PyTorch's parameter groups with a
    per-group ``lr`` factor. Non-float leaves pass through untouched; a
    constant multiplier of 0 gives exact zeros (a frozen group stays frozen even
    when its gradient is NaN); half-precision leaves are multiplied in float32
    and rounded once. The regexes run when the transform is initialised or
    traced, on Python strings, never in compiled code. Inside
    ``optax.partition`` / ``optax.masked`` the rules see (and ``strict``
    checks) only that group's parameters.

    Args:
      rules: an ordered mapping ``{pattern: multiplier}`` or a sequence of
        ``(pattern, multiplier)`` pairs; a pattern is a regex string or a
        compiled ``re.Pattern``; a multiplier is a finite number >= 0 or a
        schedule ``step -> scalar`` (its value at step 0 is checked here; later
        values are used as they come, so keep them >= 0). The output of
        :func:`layer_decay_rules` is accepted as is.
      default: multiplier (or schedule) for paths that no rule matches, >= 0.
      strict: raise at ``init`` when a rule wins no parameter (matches nothing,
        or only paths an earlier rule already took), listing the paths; this
        catches typos in patterns.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`ScaleByGroupState`.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> params = {"backbone": {"kernel": jnp.ones(3)}, "head": {"kernel": jnp.ones(3)}}
      >>> tx = optax.chain(optax.sgd(1.0), ox.scale_by_group({"backbone": 0.25}))
      >>> u, _ = tx.update(params, tx.init(params))
      >>> float(u["backbone"]["kernel"][0]), float(u["head"]["kernel"][0])
      (-0.25, -1.0)

    References:
      Howard & Ruder, "Universal Language Model Fine-tuning for Text
      Classification" (discriminative fine-tuning), 2018.
    """
    fn = "scale_by_group"
    compiled = compile_rules(fn, rules, check_multiplier)
    check_multiplier(fn, "default", default)
    check_bool(fn, "strict", strict)
    values = [r.value for r in compiled] + [default]  # index -1 is the default
    matcher = _Matcher(fn, compiled, strict)

    # Each rule's group name in the state; index -1 is the default's.
    default_name = DEFAULT_GROUP
    if any(r.text == DEFAULT_GROUP for r in compiled):
        default_name = f"{DEFAULT_GROUP} (no rule)"
    group_names = [r.text for r in compiled] + [default_name]

    def multipliers_at(count):
        """``k -> rule k's multiplier at count``, each schedule evaluated once."""
        cache: dict[int, Any] = {}

        def multiplier(k):
            if k not in cache:
                m = values[k]
                cache[k] = jnp.asarray(m(count), jnp.float32) if callable(m) else m
            return cache[k]

        return multiplier

    def group_values(winners, multiplier):
        """{group name: float32 multiplier} for the groups that hold a parameter,
        each its own array (never a shared constant, so states can be donated)."""
        names = {group_names[k]: jnp.array(multiplier(k), jnp.float32) for k in set(winners)}
        return dict(sorted(names.items()))  # jax's order for dict keys

    def init_fn(params):
        _, _, _, winners = matcher(params)
        count = nx.scalar(0)
        return ScaleByGroupState(
            group_count=count, group_multipliers=group_values(winners, multipliers_at(count)))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves, treedef, _, winners = matcher(updates)
        count = state.group_count
        multiplier = multipliers_at(count)

        out = []
        for leaf, k in zip(leaves, winners):
            m = multiplier(k) if nx.is_float_leaf(leaf) else 1.0
            if isinstance(m, (int, float)) and m in (0.0, 1.0):
                # Constant 1 costs nothing; constant 0 freezes exactly (no 0 * NaN).
                out.append(leaf if m == 1.0 else jnp.zeros_like(leaf))
            else:
                out.append(nx.scale_leaf(leaf, m))
        new_state = ScaleByGroupState(
            group_count=optax.safe_increment(count),
            group_multipliers=group_values(winners, multiplier),
        )
        return jax.tree_util.tree_unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def label_by_path(
    rules: Any, default: str | None = None, strict: bool = True
) -> Callable[[Any], Any]:
    """Builds ``params -> labels`` for ``optax.partition`` from path patterns.

    Each leaf gets the label of the first rule whose pattern ``re.search``-es
    its path, else ``default``. The labels tree has the structure of the input
    (nnx ``Variable`` boxes included), as ``optax.partition`` requires.

    Args:
      rules: an ordered mapping ``{pattern: label}`` or a sequence of
        ``(pattern, label)`` pairs; patterns are regex strings or compiled
        ``re.Pattern``; labels are strings.
      default: label for unmatched paths; ``None`` makes an unmatched path an
        error that lists it.
      strict: raise when a rule wins no parameter (matches nothing, or only
        paths an earlier rule already took), listing the paths.

    Returns:
      A function from a params (or updates) tree to a tree of label strings.

    Example:
      >>> import jax.numpy as jnp, optax, optaxsched as ox
      >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> labels = ox.label_by_path({r"bias|scale": "no_decay"}, default="decay")
      >>> labels(params)
      {'dense': {'bias': 'no_decay', 'kernel': 'decay'}}
      >>> tx = optax.partition({"decay": optax.adamw(1e-3, weight_decay=0.1),
      ...                       "no_decay": optax.adam(1e-3)}, labels)

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    fn = "label_by_path"
    compiled = compile_rules(fn, rules, check_label)
    if default is not None:
        check_label(fn, "default", default)
    check_bool(fn, "strict", strict)
    matcher = _Matcher(fn, compiled, strict)

    def labels(params: Any) -> Any:
        _, treedef, paths, winners = matcher(params)
        if default is None:
            missing = [p for p, k in zip(paths, winners) if k < 0]
            if missing:
                names = ", ".join(f"'{r.text}'" for r in compiled)
                raise ValueError(
                    f"{fn}(default=None): no rule matches {len(missing)} path(s); add "
                    f"a rule or pass default=...; rules: {names}; "
                    + _listing(missing, "unmatched paths")
                )
        return jax.tree_util.tree_unflatten(
            treedef, [compiled[k].value if k >= 0 else default for k in winners]
        )

    return labels


def layer_decay_rules(
    decay: float,
    num_layers: int,
    layer_pattern: str = r"layers_(\d+)",
    embed_pattern: str | None = r"embed",
) -> list[tuple[Any, float]]:
    """Rules for layer-wise learning-rate decay (LLRD), for :func:`scale_by_group`.

    Parameters get a layer id: 0 for the embedding (paths matching
    ``embed_pattern``, checked first), ``i + 1`` for block ``i`` (the first
    group of ``layer_pattern`` captures ``i``), ``L + 1`` for everything else
    (the head, final norm). The multiplier is

        m(id) = decay^(L + 1 − id),     L = num_layers,

    so the head learns at the full rate, block ``L − 1`` at ``decay``, and the
    embedding at ``decay^(L+1)``. The rest is left to ``scale_by_group``'s
    ``default`` (1.0 = decay^0). With ``strict`` (the default), a model whose
    embedding or some block ``i < L`` is missing is an error at ``init``; a
    path whose layer index is ``>= L`` always is.

    Args:
      decay: per-layer factor, 0 < decay <= 1 (MAE 0.75, ELECTRA 0.8, BEiT 0.65).
      num_layers: number of blocks L, >= 1.
      layer_pattern: regex whose first capturing group is the block index. The
        default fits linen's ``layers_0`` naming; for ``nnx.List`` use
        ``r"layers/(\\d+)"``.
      embed_pattern: regex for the embedding parameters; ``None`` for a model
        without an embedding (with ``strict``, a pattern that matches no
        parameter is an error at ``init`` that suggests ``embed_pattern=None``).

    Returns:
      A list of ``(pattern, multiplier)`` pairs; prepend your own rules to give
      them priority.

    Example:
      >>> import optaxsched as ox
      >>> rules = ox.layer_decay_rules(0.5, num_layers=2)
      >>> [m for _, m in rules]
      [0.125, 0.25, 0.5]
      >>> tx = ox.scale_by_group(rules)

    References:
      Clark et al., "ELECTRA", 2020; Bao et al., "BEiT", 2022; He et al.,
      "Masked Autoencoders Are Scalable Vision Learners", 2022.
    """
    fn = "layer_decay_rules"
    check_number(fn, "decay", decay, gt=0, le=1)
    check_int(fn, "num_layers", num_layers, ge=1)
    decay, num_layers = float(decay), int(num_layers)
    layer_re = compile_pattern(fn, "layer_pattern", layer_pattern)
    if not isinstance(layer_re, re.Pattern) or layer_re.groups < 1:
        raise ValueError(
            f"{fn}(layer_pattern={layer_pattern!r}): layer_pattern must have a "
            f"capturing group for the layer index, e.g. r'layers_(\\d+)'"
        )
    rules: list[tuple[Any, float]] = []
    if embed_pattern is not None:
        compile_pattern(fn, "embed_pattern", embed_pattern)
        rules.append((embed_pattern, decay ** (num_layers + 1)))
    for i in range(num_layers):
        rules.append((LayerIndexPattern(layer_re, i, num_layers), decay ** (num_layers - i)))
    return rules


def describe_groups(params: Any, rules: Any, default: Any = 1.0) -> str:
    """A table of which rule and multiplier every parameter gets.

    Columns: path, shape, dtype, matched rule, multiplier. A schedule shows its
    value at step 0, marked ``*``; non-float leaves show ``-`` (untouched).
    Rules that win no parameter are listed below the table. Works on
    ``jax.ShapeDtypeStruct`` trees (``jax.eval_shape`` output) too.

    Args:
      params: the params tree.
      rules: as for :func:`scale_by_group`.
      default: as for :func:`scale_by_group`.

    Returns:
      The table as a string.

    Example:
      >>> import jax.numpy as jnp, optaxsched as ox
      >>> params = {"embed": {"embedding": jnp.ones((10, 4))},
      ...           "layers_0": {"kernel": jnp.ones((4, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
      >>> print(ox.describe_groups(params, ox.layer_decay_rules(0.5, 1)))
      path             shape    dtype    rule               multiplier
      ---------------  -------  -------  -----------------  ----------
      embed/embedding  (10, 4)  float32  embed              0.25
      head/kernel      (4, 2)   float32  (default)          1
      layers_0/kernel  (4, 4)   float32  layers_(\\d+) == 0  0.5

    References:
      Diagnostic only; see :func:`scale_by_group`.
    """
    fn = "describe_groups"
    compiled = compile_rules(fn, rules, check_multiplier)
    check_multiplier(fn, "default", default)
    matcher = _Matcher(fn, compiled, strict=False)
    leaves, _, paths, winners = matcher(params)
    any_schedule = False
    rows = [("path", "shape", "dtype", "rule", "multiplier")]
    for leaf, path, k in zip(leaves, paths, winners):
        value = compiled[k].value if k >= 0 else default
        rule = compiled[k].text if k >= 0 else "(default)"
        if not nx.is_float_leaf(leaf):
            mult = "-"
        elif callable(value):
            any_schedule = True
            with jax.ensure_compile_time_eval():
                mult = f"{float(value(jnp.zeros((), jnp.int32))):.6g}*"
        else:
            mult = f"{float(value):.6g}"
        dtype = getattr(leaf, "dtype", type(leaf).__name__)
        shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
        rows.append((path or "(root)", str(shape), str(dtype), rule, mult))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any_schedule:
        lines.append("* schedule: value at step 0")
    lines.extend(f"note: {m}" for m in matcher.unused(list(paths), list(winners)))
    return "\n".join(lines)
