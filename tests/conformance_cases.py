"""The registry of public transforms checked by ``test_conformance.py``.

Every public ``GradientTransformation`` factory of the library gets at least
one ``Case`` here. The shared test tree has the paths ``w``, ``b`` and
``layers_0/kernel`` (see ``make_tree``), so path-based rules can match it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

import optaxsched as ox

SHAPES = {"w": (8, 3), "b": (8,), "layers_0": {"kernel": (8, 4)}}


def make_tree(seed: int, dtype=jnp.float32, scale: float = 1.0) -> Any:
    """A small params/gradients tree; every leaf's leading axis is 8 (shardable)."""
    rng = np.random.default_rng(seed)

    def leaf(shape):
        return jnp.asarray(scale * rng.standard_normal(shape), dtype)

    return {
        "w": leaf(SHAPES["w"]),
        "b": leaf(SHAPES["b"]),
        "layers_0": {"kernel": leaf(SHAPES["layers_0"]["kernel"])},
    }


# A gradient sequence with a spike, a NaN and an Inf step, and the matching
# loss values; used by the NaN-safety check.
LOSSES = (2.0, 1.8, 1.9, 1.7, 1.65, 1.6)
BAD_LOSSES = (2.0, float("nan"), float("inf"), 1.7, 1.65, 1.6)


def grad_sequence(n: int, dtype=jnp.float32) -> list[Any]:
    return [make_tree(100 + i, dtype, scale=1.0 + 0.1 * i) for i in range(n)]


def bad_grad_sequence(dtype=jnp.float32) -> list[Any]:
    seq = grad_sequence(6, dtype)
    seq[1] = {**seq[1], "w": seq[1]["w"].at[0, 0].set(jnp.nan)}
    seq[2] = {**seq[2], "b": seq[2]["b"].at[3].set(jnp.inf)}
    seq[3] = make_tree(7, dtype, scale=1e4)
    return seq


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration of a public transform.

    Attributes:
      name: test id.
      factory: the public factory.
      kwargs: arguments for the factory.
      inject: names of numeric hyperparameters that
        ``optax.inject_hyperparams`` should inject (the rest are static).
      needs_value: the transform reads ``value=`` (the loss).
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    inject: tuple[str, ...] = ()
    needs_value: bool = False

    def make(self) -> optax.GradientTransformation:
        return self.factory(**self.kwargs)

    def make_injected(self) -> optax.GradientTransformation:
        static = tuple(k for k in self.kwargs if k not in self.inject)
        return optax.inject_hyperparams(self.factory, static_args=static)(**self.kwargs)


CASES: list[Case] = []


def _add(*cases: Case) -> None:
    CASES.extend(cases)


# Each module appends its cases below, guarded so that a transform still being
# written does not break the others.
# --- _clipping.py ---
if hasattr(ox, "clip_by_ema_ratio"):
    # The shared gradients have global norms of about 7-11 over 4 steps, so
    # these settings make every transform clip or leave warm-up within them.
    _add(
        Case("clip_by_global_norm", ox.clip_by_global_norm, dict(max_norm=8.0),
             inject=("max_norm",)),
        Case("scale_by_grad_norm", ox.scale_by_grad_norm, dict(power=0.5),
             inject=("power", "eps")),
        Case("scale_by_grad_norm_rms", ox.scale_by_grad_norm_rms, dict(decay=0.9),
             inject=("decay", "eps")),
        Case("clip_by_zscore", ox.clip_by_zscore, dict(warmup_steps=2, z_threshold=0.5),
             inject=("z_threshold", "decay")),
        Case("clip_by_zscore_max_norm", ox.clip_by_zscore,
             dict(warmup_steps=3, max_norm=8.0), inject=("max_norm",)),
        Case("clip_by_percentile", ox.clip_by_percentile, dict(percentile=10.0, history=1000),
             inject=("percentile",)),
        Case("clip_by_percentile_wrap", ox.clip_by_percentile,
             dict(percentile=50.0, history=3)),
        Case("clip_by_ema_ratio", ox.clip_by_ema_ratio,
             dict(warmup_steps=2, warmup_max_norm=8.0), inject=("ratio", "decay")),
        Case("clip_by_ema_ratio_global", ox.clip_by_ema_ratio,
             dict(warmup_steps=1, per_tensor=False, ratio=1.01),
             inject=("warmup_max_norm",)),
    )
# --- _guard.py ---
if hasattr(ox, "explosion_guard"):
    # sgd with momentum is a stateful inner optimizer whose code runs under
    # strict dtype promotion (optax.adam does not). The x1e4 step of the bad
    # sequence is a detected spike (the guard tests from the first steps).
    _guard_inner = optax.sgd(0.1, momentum=0.9)
    _add(
        Case("explosion_guard", ox.explosion_guard,
             dict(inner=_guard_inner), inject=("z_threshold", "backoff_factor"),
             needs_value=True),
        Case("explosion_guard_clip_no_value", ox.explosion_guard,
             dict(inner=_guard_inner, on_spike="clip",
                  vanishing_threshold=1e-3), inject=("min_scale",)),
        Case("explosion_guard_none", ox.explosion_guard,
             dict(inner=_guard_inner, on_spike="none", watch_loss=False),
             needs_value=True),
    )
# --- _loss_adaptive.py ---
if hasattr(ox, "reduce_on_plateau"):

    def _inverse_loss(v):
        return 1.0 / (1.0 + jnp.abs(v))

    _add(
        Case("reduce_on_plateau", ox.reduce_on_plateau, {}, inject=("factor", "threshold"),
             needs_value=True),
        Case("reduce_on_plateau_max_abs_accum", ox.reduce_on_plateau,
             dict(factor=0.5, patience=0, threshold=0.01, threshold_mode="abs",
                  mode="max", cooldown=1, min_scale=0.2, accumulation_steps=2),
             inject=("factor", "patience"), needs_value=True),
        Case("scale_by_loss", ox.scale_by_loss, dict(fn=_inverse_loss), needs_value=True),
        Case("bold_driver", ox.bold_driver, dict(increase=1.1, decrease=0.5, max_scale=2.0),
             inject=("increase", "decrease"), needs_value=True),
    )
# --- _plateau.py ---
if hasattr(ox, "MetricPlateau"):

    def _stepped_metric_plateau(factor=0.1, patience=10):
        """A MetricPlateau whose state starts after two flat epochs (scale 0.5),
        so the shared checks see a multiplier other than 1."""
        plateau = ox.MetricPlateau(factor=factor, patience=patience)

        def init(params):
            return plateau.step(plateau.step(plateau.init(params), 1.0), 1.0)

        return optax.GradientTransformationExtraArgs(init, plateau.update)

    _add(Case("metric_plateau", _stepped_metric_plateau, dict(factor=0.5, patience=0),
              inject=("factor",)))
# --- _groups.py ---
if hasattr(ox, "scale_by_group"):

    def _group_warmup(step):
        return jnp.minimum(1.0, (step + 1).astype(jnp.float32) / 4.0)

    _add(
        Case("scale_by_group", ox.scale_by_group,
             dict(rules={"layers_0": 0.5, r"^b$": 0.0}, default=2.0), inject=("default",)),
        Case("scale_by_group_schedule", ox.scale_by_group,
             dict(rules=[(r"^w$", _group_warmup)], default=0.25)),
        Case("scale_by_group_llrd", ox.scale_by_group,
             dict(rules=ox.layer_decay_rules(0.5, 1, embed_pattern=r"^w$"), default=1.0),
             inject=("default",)),
    )
