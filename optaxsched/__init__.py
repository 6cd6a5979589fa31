"""optaxsched: learning-rate schedules and Optax transforms that keep training stable.

- ``optaxsched.schedules``: pure schedules that reproduce PyTorch/Keras/timm.
- Gradient-norm-adaptive scaling and clipping (``clip_by_zscore`` and friends).
- ``explosion_guard``: NaN/spike detection with skip and recovery.
- Loss-adaptive scaling (``reduce_on_plateau``, ``bold_driver``, ``scale_by_loss``), and
  ``MetricPlateau``, torch's ``ReduceLROnPlateau`` stepped on an epoch's metric.
- Per-parameter rates by parameter path (``scale_by_group``, ``label_by_path``).
- ``telemetry``: every statistic of any optimizer state as a flat dict.

Every transform is an ``optax.GradientTransformationExtraArgs``: chain it with
``optax.chain`` and pass ``value=loss`` to ``update`` where a transform reads it.
"""

from optaxsched import schedules

__version__ = "0.1.0"
__all__ = ["schedules"]

# Each module's public names are imported and listed once, in its own block.
# --- clipping ---
from optaxsched.clipping import (
    ClipByEmaRatioState,
    ClipByGlobalNormState,
    ClipByPercentileState,
    ClipByZscoreState,
    ScaleByGradNormRmsState,
    ScaleByGradNormState,
    clip_by_ema_ratio,
    clip_by_global_norm,
    clip_by_percentile,
    clip_by_zscore,
    scale_by_grad_norm,
    scale_by_grad_norm_rms,
)

__all__ += [
    "clip_by_global_norm",
    "scale_by_grad_norm",
    "scale_by_grad_norm_rms",
    "clip_by_zscore",
    "clip_by_percentile",
    "clip_by_ema_ratio",
    "ClipByGlobalNormState",
    "ScaleByGradNormState",
    "ScaleByGradNormRmsState",
    "ClipByZscoreState",
    "ClipByPercentileState",
    "ClipByEmaRatioState",
]
# --- guard ---
from optaxsched.guard import ExplosionGuardState, explosion_guard

__all__ += ["explosion_guard", "ExplosionGuardState"]
# --- loss_adaptive ---
from optaxsched.loss_adaptive import (
    BoldDriverState,
    ReduceOnPlateauState,
    ScaleByLossState,
    bold_driver,
    reduce_on_plateau,
    scale_by_loss,
)

__all__ += [
    "BoldDriverState",
    "ReduceOnPlateauState",
    "ScaleByLossState",
    "bold_driver",
    "reduce_on_plateau",
    "scale_by_loss",
]
# --- plateau stepped on a metric ---
from optaxsched._plateau import MetricPlateau, MetricPlateauState

__all__ += ["MetricPlateau", "MetricPlateauState"]
# --- groups ---
from optaxsched.groups import (
    ScaleByGroupState,
    describe_groups,
    label_by_path,
    layer_decay_rules,
    scale_by_group,
    tree_paths,
)

__all__ += ["scale_by_group", "ScaleByGroupState", "label_by_path",
            "layer_decay_rules", "describe_groups", "tree_paths"]
# --- telemetry ---
from optaxsched.telemetry import effective_learning_rate, telemetry

__all__ += ["telemetry", "effective_learning_rate"]
