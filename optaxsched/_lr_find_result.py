"""The result of :func:`optaxsched.lr_find`: the curve, the suggestion rules
and the plot.

The rules are host-side NumPy over the smoothed loss curve, written from the
peers' documented rules (fastai's ``SuggestionMethod``, Lightning's
``_LRFinder.suggestion``); :meth:`LRFindResult.suggest` documents each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from optaxsched._validation import check_choice, check_int

# The rules' names and functions are shared with _lr_find, not exported.
__all__ = ["LRFindResult"]

# Suggestion rules of the range test; a sweep has one, the lowest final loss.
RULES = ("valley", "steep", "minimum")
SWEEP_RULE = "best"
# The default reads the minimum of the smoothed curve: "valley" sits a fixed
# fraction along the descent, which starts wherever the ramp starts when the
# loss falls from the first step (an adaptive optimizer moves at any rate), so
# it moves with start_lr; "steep" is the argmin of a derivative, which noise
# (small batches, a recovery after a spike) throws off by decades.
DEFAULT_RULE = "minimum"
MIN_POINTS = 5  # points a suggestion reads, after the skipped ends


# ------------------------------------------------------------------- rules


def _valley(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """fastai's ``valley``: 1/3 + 1/6 of the way along the longest decreasing run."""
    n = len(smoothed)
    # lds[i]: length of the longest strictly decreasing subsequence ending at i.
    lds = np.ones(n, np.int64)
    for i in range(1, n):
        higher = smoothed[:i] > smoothed[i]
        if higher.any():
            lds[i] = lds[:i][higher].max() + 1
    end = int(np.argmax(lds))  # the first index reaching the longest length
    start = end - int(lds[end]) if lds[end] > 1 else 0
    section = (end - start) / 3
    # fastai indexes with start + ...; for a run that begins at point 0 and
    # has two points that gives -1, the *last* learning rate: clamp instead.
    return float(lrs[max(start + int(section) + int(section / 2), 0)])


def _steep(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The learning rate where the smoothed loss falls fastest per unit of log lr."""
    return float(lrs[int(np.argmin(np.gradient(smoothed, np.log(lrs))))])


def _minimum(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """fastai's ``minimum``: a tenth of the learning rate at the lowest smoothed loss."""
    return float(lrs[int(np.argmin(smoothed))]) / 10.0


rule_fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "valley": _valley, "steep": _steep, "minimum": _minimum,
}


def read_region(lrs, smoothed, num_run, skip_start, skip_end):
    """(lrs, smoothed) a range-test rule reads, or (None, reason)."""
    stop = num_run - skip_end
    lr_r, s_r = lrs[skip_start:stop], smoothed[skip_start:stop]
    bad = np.flatnonzero(~np.isfinite(s_r))
    if bad.size:  # cut at the first non-finite value rather than drop it
        lr_r, s_r = lr_r[: bad[0]], s_r[: bad[0]]
    if len(s_r) < MIN_POINTS:
        return None, (
            f"too few points for a suggestion: {num_run} step(s) ran and {len(s_r)} "
            f"finite smoothed loss(es) remain after skipping the first {skip_start} and "
            f"last {skip_end} (at least {MIN_POINTS} are needed); lower start_lr or "
            "raise num_steps")
    if not s_r.min() < s_r[0]:
        return None, (
            "the smoothed loss never fell below its value at the start of the curve: "
            "start_lr may already be too high, or the model does not train; no suggestion")
    return (lr_r, s_r), ""


# ------------------------------------------------------------------ result


@dataclasses.dataclass(frozen=True, eq=False)
class LRFindResult:
    """What :func:`lr_find` measured and suggests.

    Attributes:
      method: ``"range"`` or ``"sweep"``.
      lrs: float64 learning rates, shape ``(n,)``: the ramp's value at each step
        (range), or the constant rate of each run (sweep).
      losses: float32 training loss, shape ``(n,)``: at each step, computed
        before that step's update (range; NaN for steps that did not run); or
        at the last step of each run (sweep).
      smoothed: float32 bias-corrected EMA of the losses (range); or its value
        at the last step of each run (sweep). NaN once a loss was not finite.
      num_steps_run: steps that ran (range: the stop step included; sweep:
        steps per run).
      suggestion: the learning rate of the rule ``rule``, or ``None`` when no
        suggestion can be made (then ``message`` says why).
      rule: the rule behind ``suggestion``.
      suggestions: every rule's suggestion (range: ``"valley"``, ``"steep"``,
        ``"minimum"``; sweep: ``"best"``), ``None`` where it cannot be made.
      stopped_early: the range test stopped before its last step because the
        smoothed loss diverged or was not finite.
      diverged_at_start: the loss of the very first step was not finite.
      message: why there is no suggestion, or ``""``.
      curves: sweep only, float32 ``(n, num_steps)``: every run's losses.
      beta: the smoothing factor used.
      skip_start, skip_end: points of the range curve the rules skip.

    Example:
      >>> import jax.numpy as jnp, numpy as np, optax, optaxsched as ox
      >>> x = jnp.linspace(-1.0, 1.0, 8)
      >>> def loss_fn(w, batch):  # least squares, curvature 2 * mean(x**2) = 0.86
      ...     return jnp.mean((w * x - jnp.sin(3 * x)) ** 2)
      >>> result = ox.lr_find(loss_fn, jnp.zeros(()), optax.sgd, [None],
      ...                     start_lr=1e-3, end_lr=100.0, num_steps=40)
      >>> n = result.num_steps_run
      >>> result.stopped_early, bool(np.isnan(result.losses[n:]).all())
      (True, True)
      >>> result.suggestion == result.suggestions["minimum"] == result.suggest("minimum")
      True
      >>> bool(result.suggest("steep", skip_start=0) < 2 / 0.86)  # SGD diverges above
      True
    """

    method: str
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    num_steps_run: int
    suggestion: float | None
    rule: str
    suggestions: Mapping[str, float | None]
    stopped_early: bool
    diverged_at_start: bool
    message: str
    curves: np.ndarray | None
    beta: float
    skip_start: int
    skip_end: int

    @property
    def num_gradient_evaluations(self) -> int:
        """Loss-and-gradient evaluations the test cost (sweep: all runs)."""
        return self.num_steps_run * (len(self.lrs) if self.method == "sweep" else 1)

    def suggest(self, rule: str, *, skip_start: int | None = None,
                skip_end: int | None = None) -> float | None:
        r"""The suggestion of ``rule``, optionally reading another part of the curve.

        Range-test rules read the smoothed loss :math:`s_i` at learning rates
        :math:`\eta_i` over the steps that ran, less the first ``skip_start``
        and the last ``skip_end`` points, cut at the first non-finite value:

        - ``"minimum"`` (the default here; fastai's): :math:`\eta_{\arg\min s} / 10`.
        - ``"valley"`` (fastai's default): the longest strictly decreasing
          subsequence of :math:`s` ends at :math:`e` with length :math:`L`;
          with :math:`a = e - L` and :math:`d = (e - a)/3`, the suggestion is
          :math:`\eta_{a + \lfloor d\rfloor + \lfloor d/2\rfloor}` (index clamped at 0).
        - ``"steep"``: :math:`\eta_{\arg\min_i \partial s/\partial \log\eta}` with
          central differences (``np.gradient``). For the exponential ramp this
          is Lightning's rule of the 1.x releases (gradient per step); current
          Lightning differentiates by :math:`\eta` itself, which weights the
          smallest rates by :math:`1/\eta`, and fastai's ``steep`` takes forward
          differences and the left end of the steepest segment.

        A sweep has one rule, ``"best"``: the rate whose run ends with the lowest
        finite smoothed loss.

        Returns:
          The learning rate, or ``None`` when fewer than 5 finite points remain
          or the smoothed loss never fell below its first value there.
        """
        rules = (SWEEP_RULE,) if self.method == "sweep" else RULES
        check_choice(f"{type(self).__name__}.suggest", "rule", rule, rules)
        if self.method == "sweep":
            ok = np.isfinite(self.smoothed)
            return float(self.lrs[ok][np.argmin(self.smoothed[ok])]) if ok.any() else None
        skip_start = self.skip_start if skip_start is None else skip_start
        skip_end = self.skip_end if skip_end is None else skip_end
        for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
            check_int(f"{type(self).__name__}.suggest", name, value, ge=0)
        region, _ = read_region(self.lrs, self.smoothed, self.num_steps_run,
                                 skip_start, skip_end)
        return None if region is None else rule_fns[rule](*region)

    def plot(self, ax: Any = None, *, rules: Iterable[str] | None = None,
             raw: bool = True) -> Any:
        """Draws the loss against the learning rate (log axis) with suggestions marked.

        Needs matplotlib (the ``examples`` extra), imported only here.

        Args:
          ax: a matplotlib ``Axes`` to draw on; ``None`` makes a new figure.
          rules: suggestions to mark; default only ``self.rule``'s.
          raw: also draw the raw losses behind the smoothed curve (range).

        Returns:
          The ``Axes``.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "LRFindResult.plot needs matplotlib: pip install 'optaxsched[examples]' "
                "(or matplotlib itself)") from e
        if ax is None:
            ax = plt.subplots(figsize=(5.0, 3.5))[1]
        n = self.num_steps_run if self.method == "range" else len(self.lrs)
        lrs, smoothed, losses = self.lrs[:n], self.smoothed[:n], self.losses[:n]
        if self.method == "range":
            if raw:
                ax.plot(lrs, losses, color="0.7", lw=0.8, label="loss")
            ax.plot(lrs, smoothed, color="C0", label=f"smoothed (beta={self.beta:g})")
        else:
            ax.plot(lrs, smoothed, color="C0", marker="o", ms=3,
                    label=f"smoothed loss after {self.num_steps_run} steps")
        shown = np.concatenate([smoothed, losses if raw else smoothed])
        ok, ok_s = np.isfinite(shown), np.isfinite(smoothed)
        if ok_s.any():  # raw losses of diverging steps would squash the curve
            lo, hi = shown[ok].min(), smoothed[ok_s].max()
            pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
            ax.set_ylim(lo - pad, hi + pad)
        others = iter(("C1", "C2", "C4", "C5"))  # C3 is red too
        for rule in (self.rule,) if rules is None else tuple(rules):
            lr = self.suggestions.get(rule)
            if lr is None or not ok_s.any():
                continue
            y = np.interp(np.log(lr), np.log(lrs[ok_s]), smoothed[ok_s])
            color = "red" if rule == self.rule else next(others, "k")
            ax.axvline(lr, color=color, lw=0.8, ls="--")
            ax.plot([lr], [y], "o", color=color, label=f"{rule}: {lr:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        if self.suggestion is None and self.message:
            ax.set_title("no suggestion: " + self.message.split(":")[0], fontsize=8)
        ax.legend(fontsize=8)
        return ax
