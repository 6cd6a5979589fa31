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

Each public name has one import path: ``optaxsched.NAME``,
``optaxsched.schedules.NAME`` or ``optaxsched.flax.NAME`` (flax is imported only
by the last). The modules named with a leading underscore are private.
"""

from importlib import metadata as _metadata

from optaxsched import schedules
from optaxsched._adaptive_clipping import (
    ClipByEmaRatioState,
    ClipByPercentileState,
    ClipByZscoreState,
    clip_by_ema_ratio,
    clip_by_percentile,
    clip_by_zscore,
)
from optaxsched._clipping import (
    ClipByGlobalNormState,
    ScaleByGradNormRmsState,
    ScaleByGradNormState,
    clip_by_global_norm,
    scale_by_grad_norm,
    scale_by_grad_norm_rms,
)
from optaxsched._groups import (
    ScaleByGroupState,
    describe_groups,
    label_by_path,
    layer_decay_rules,
    scale_by_group,
)
from optaxsched._guard import ExplosionGuardState, explosion_guard
from optaxsched._loss_adaptive import (
    BoldDriverState,
    ReduceOnPlateauState,
    ScaleByLossState,
    bold_driver,
    reduce_on_plateau,
    scale_by_loss,
)
from optaxsched._lr_find import lr_find
from optaxsched._lr_find_result import LRFindResult
from optaxsched._paths import tree_paths
from optaxsched._plateau import MetricPlateau, MetricPlateauState
from optaxsched._telemetry import effective_learning_rate, telemetry

try:
    __version__ = _metadata.version("optaxsched")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "schedules",
    # Gradient-norm-adaptive scaling and clipping.
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
    # Explosion detection and recovery.
    "explosion_guard",
    "ExplosionGuardState",
    # Loss- and metric-adaptive scaling.
    "reduce_on_plateau",
    "bold_driver",
    "scale_by_loss",
    "ReduceOnPlateauState",
    "BoldDriverState",
    "ScaleByLossState",
    "MetricPlateau",
    "MetricPlateauState",
    # Per-parameter rates by parameter path.
    "scale_by_group",
    "ScaleByGroupState",
    "label_by_path",
    "layer_decay_rules",
    "describe_groups",
    "tree_paths",
    # Reading statistics out of optimizer states.
    "telemetry",
    "effective_learning_rate",
    # Learning-rate range test.
    "lr_find",
    "LRFindResult",
]
