"""Learning-rate range test: :func:`lr_find` and its :class:`LRFindResult`.

Smith's range test as fastai's ``Learner.lr_find`` and Lightning's
``Tuner.lr_find`` run it: train from the given parameters while the learning
rate grows exponentially, one optimizer step per value, record the training
loss, smooth it, stop once it diverges, and read a learning rate off the
curve. Here the whole ramp is one compiled ``lax.scan``; the early stop is
decided in the graph and a ``lax.cond`` skips the remaining steps, so nothing
goes back to the host between steps. ``method="sweep"`` instead trains a short
run at each of several constant learning rates side by side (``vmap``).

Nothing the caller passed is modified: the parameters go into a jitted
function without donation, and the optimizer state is a fresh ``init``.
Results come back as NumPy arrays and Python floats.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optaxsched import _numerics as nx
from optaxsched._lr_find_result import (
    DEFAULT_RULE,
    RULES,
    SWEEP_RULE,
    LRFindResult,
    read_region,
    rule_fns,
)
from optaxsched._validation import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_number,
)

__all__ = ["lr_find"]

_F32 = jnp.float32
_MIN_STEPS = 10  # a shorter ramp leaves no curve to read once its ends are skipped


# ----------------------------------------------------------------- inputs


def _is_inject_state(x: Any) -> bool:
    return isinstance(x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))


def _injected_update(optimizer: optax.GradientTransformation, params: Any):
    """(state, update) for an ``inject_hyperparams`` optimizer: ``update``
    overwrites the one ``learning_rate`` hyperparameter of the state."""
    state = optimizer.init(params)
    nodes = [x for x in jax.tree_util.tree_leaves(state, is_leaf=_is_inject_state)
             if _is_inject_state(x) and "learning_rate" in x.hyperparams]
    where = "lr_find(optimizer=<GradientTransformation>)"
    if len(nodes) != 1:
        raise ValueError(
            f"{where}: the optimizer's state holds {len(nodes)} optax.inject_hyperparams "
            "learning_rate hyperparameters; lr_find needs exactly one to overwrite, e.g. "
            "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), or pass a factory "
            "`lambda lr: optimizer` instead")
    if "learning_rate" in nodes[0].hyperparams_states:
        raise ValueError(
            f"{where}: the injected learning_rate is a schedule, which inject_hyperparams "
            "recomputes at every step (an overwrite would be ignored); inject a constant "
            "learning_rate, or pass a factory `lambda lr: optimizer`")
    tx = optax.with_extra_args_support(optimizer)

    def set_lr(x, lr):
        if not (_is_inject_state(x) and "learning_rate" in x.hyperparams):
            return x
        old = x.hyperparams["learning_rate"]
        return x._replace(hyperparams={**x.hyperparams,
                                       "learning_rate": lr.astype(jnp.asarray(old).dtype)})

    def update(grads, state, params, lr, loss):
        state = jax.tree_util.tree_map(lambda x: set_lr(x, lr), state, is_leaf=_is_inject_state)
        return tx.update(grads, state, params, value=loss)

    return state, update


def _factory_update(factory: Callable[[Any], Any], params: Any, start_lr: float):
    """(state, update) for a factory ``lr -> GradientTransformation``."""
    tx0 = factory(start_lr)
    if not isinstance(tx0, optax.GradientTransformation):
        raise TypeError(
            f"lr_find(optimizer={factory!r}): a factory must return an "
            f"optax.GradientTransformation, got {type(tx0).__name__}")
    lr_dtype = optax.tree_utils.tree_dtype(params, "highest")

    def update(grads, state, params, lr, loss):
        tx = optax.with_extra_args_support(factory(lr.astype(lr_dtype)))
        return tx.update(grads, state, params, value=loss)

    return tx0.init(params), update


def _stack_batches(data: Any, count: int) -> tuple[Any, int]:
    """(stacked batches with a leading axis, how many) from an array or iterable."""
    if isinstance(data, (np.ndarray, jax.Array)):
        if data.ndim == 0 or data.shape[0] == 0:
            raise ValueError(f"lr_find(data=<array {data.shape}>): an array of stacked "
                             "batches needs a non-empty leading axis")
        return jnp.asarray(data[:count]), min(count, data.shape[0])
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise TypeError(
            f"lr_find(data=<{type(data).__name__}>): data must be a batch function "
            "`step -> batch`, an iterable of batches or an array of stacked batches "
            "(for one fixed batch pass [batch])")
    batches = list(itertools.islice(iter(data), count))
    if not batches:
        raise ValueError("lr_find(data=...): data yielded no batch")
    def layout(batch):
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        return str(treedef), [jnp.shape(x) for x in leaves]

    first = layout(batches[0])
    for i, b in enumerate(batches[1:], 1):
        if layout(b) != first:
            raise ValueError(
                f"lr_find(data=...): batch {i} differs in structure or shapes from batch 0; "
                "every batch must have the same (a tuple (x, y) is read as two batches: "
                "pass [(x, y)] for one batch)")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches), len(batches)


def _loss_and_grad(loss_fn: Callable[..., Any], has_aux: bool):
    """value_and_grad of ``loss_fn`` that checks, while tracing, for a real scalar loss."""

    def scalar_loss(params, batch):
        out = loss_fn(params, batch)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"lr_find(has_aux=True): loss_fn must return a pair "
                                f"(loss, aux), got {type(out).__name__}")
            out = out[0]
        if isinstance(out, tuple) and not has_aux:
            raise TypeError("lr_find(loss_fn=...): loss_fn returned a tuple; if it returns "
                            "(loss, aux), pass has_aux=True")
        dtype = getattr(out, "dtype", None)
        if jnp.shape(out) != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"lr_find(loss_fn=...): loss_fn(params, batch) must return a float scalar, "
                f"got shape {jnp.shape(out)} and dtype {dtype}; reduce it, e.g. loss.mean()")
        return out, None

    return jax.value_and_grad(scalar_loss, has_aux=True)


# ------------------------------------------------------------------- runs


def _train_step(grad_fn, update, get_batch, beta: float, threshold: float | None):
    """One step of the test: ``(carry, step, lr) -> (carry, (loss, smoothed))``.

    The carry is ``(params, opt_state, ema, best, stop)``; ``stop`` says the
    smoothed loss left ``threshold`` times its best (sign-aware) or was not finite.
    """

    def step(carry, i, lr, data):
        params, state, avg, best, _ = carry
        (loss, _), grads = grad_fn(params, get_batch(i, data))
        loss = loss.astype(_F32)
        avg = nx.ema(avg, loss, beta)
        smooth = nx.bias_correction(avg, beta, i + 1)
        best = jnp.where(smooth < best, smooth, best)
        ok = jnp.isfinite(smooth)
        if threshold is not None:
            # s > thr * best for a positive best (the peers' test), written so
            # that a negative loss also needs a rise of (thr - 1) * |best|.
            ok &= smooth - best <= (threshold - 1.0) * jnp.abs(best)
        updates, state = update(grads, state, params, lr, loss)
        return (optax.apply_updates(params, updates), state, avg, best, ~ok), (loss, smooth)

    return step


def _initial_carry(params, state):
    return (params, state, jnp.zeros((), _F32), jnp.full((), jnp.inf, _F32),
            jnp.zeros((), jnp.bool_))


def _range_fn(step):
    nan = jnp.full((), jnp.nan, _F32)

    def run(params, state, lrs, data):
        def train(carry, i, lr):
            carry, (loss, smooth) = step(carry, i, lr, data)
            return carry, (loss, smooth, jnp.ones((), jnp.bool_))

        def body(carry, x):
            i, lr = x
            return jax.lax.cond(carry[-1], lambda c: (c, (nan, nan, jnp.zeros((), jnp.bool_))),
                                lambda c: train(c, i, lr), carry)

        steps = jnp.arange(lrs.shape[0], dtype=jnp.int32)
        return jax.lax.scan(body, _initial_carry(params, state), (steps, lrs))[1]

    return jax.jit(run)


def _sweep_fn(step, num_steps: int):
    def run(params, state, lrs, data):
        def one(lr):
            def body(carry, i):
                return step(carry, i, lr, data)

            steps = jnp.arange(num_steps, dtype=jnp.int32)
            return jax.lax.scan(body, _initial_carry(params, state), steps)[1]

        return jax.vmap(one)(lrs)

    return jax.jit(run)


# -------------------------------------------------------------------- api


def _check_args(loss_fn, optimizer, start_lr, end_lr, num_steps, method, num_lrs,
                beta, diverge_threshold, rule, has_aux) -> None:
    fn = "lr_find"
    check_callable(fn, "loss_fn", loss_fn)
    if not (isinstance(optimizer, optax.GradientTransformation) or callable(optimizer)):
        raise TypeError(
            f"lr_find(optimizer={optimizer!r}): optimizer must be a factory "
            "`lr -> optax.GradientTransformation` or an optax.inject_hyperparams optimizer")
    check_bool(fn, "has_aux", has_aux)
    check_choice(fn, "method", method, ("range", "sweep"))
    check_number(fn, "start_lr", start_lr, gt=0.0)
    check_number(fn, "end_lr", end_lr, gt=0.0)
    if not float(start_lr) < float(end_lr):
        raise ValueError(f"lr_find(start_lr={start_lr!r}, end_lr={end_lr!r}): start_lr must "
                         "be < end_lr")
    check_int(fn, "num_steps", num_steps, ge=_MIN_STEPS if method == "range" else 1)
    if method == "range" and num_lrs is not None:
        raise ValueError(f"lr_find(num_lrs={num_lrs!r}): num_lrs sets the runs of "
                         "method='sweep'; the range test has one run of num_steps steps")
    check_int(fn, "num_lrs", num_lrs, ge=2, allow_none=True)
    check_number(fn, "beta", beta, ge=0.0, lt=1.0)
    check_number(fn, "diverge_threshold", diverge_threshold, gt=1.0, allow_none=True)
    if rule is not None:
        check_choice(fn, "rule", rule, (SWEEP_RULE,) if method == "sweep" else RULES)


def lr_find(
    loss_fn: Callable[[Any, Any], Any],
    params: Any,
    optimizer: optax.GradientTransformation | Callable[[Any], optax.GradientTransformation],
    data: Callable[[jax.Array], Any] | Iterable[Any] | np.ndarray | jax.Array,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    method: str = "range",
    num_lrs: int | None = None,
    beta: float = 0.98,
    diverge_threshold: float | None = 4.0,
    rule: str | None = None,
    has_aux: bool = False,
) -> LRFindResult:
    r"""Learning-rate range test: a learning rate read off one short, ramped run.

    ``method="range"`` (fastai's ``lr_find``, Lightning's ``Tuner.lr_find``):
    step :math:`i = 0 \ldots N-1` computes the loss :math:`\ell_i` at the
    current parameters, then updates them with learning rate

    .. math:: \eta_i = \eta_0\,(\eta_1/\eta_0)^{i/(N-1)},

    ``start_lr`` to ``end_lr`` inclusive (fastai's last value is one ratio
    short of ``end_lr``). The loss is smoothed by a bias-corrected EMA,
    :math:`a_i = \beta a_{i-1} + (1-\beta)\ell_i`, :math:`s_i = a_i/(1-\beta^{i+1})`,
    and the test stops after the first step where :math:`s_i` is not finite or
    :math:`s_i - m_i > (\tau - 1)\,|m_i|`, with :math:`m_i = \min_{j\le i} s_j`
    and :math:`\tau` = ``diverge_threshold`` (for a positive minimum that is
    the peers' :math:`s_i > \tau\,m_i`). The ramp is one ``lax.scan`` compiled
    once; after the stop a ``lax.cond`` skips the remaining steps, which are
    reported as NaN. The suggestions read the smoothed curve
    (:meth:`LRFindResult.suggest` gives the rules): ``"minimum"`` (the default:
    a tenth of the rate at the lowest smoothed loss, fastai's), ``"valley"``
    (fastai's default) and ``"steep"`` (Lightning's). The default is the
    rule least moved by the ramp's start and by noise; ``benchmarks/lr_find.py``
    measures all three against full learning-rate sweeps.

    ``method="sweep"``: ``num_lrs`` runs of ``num_steps`` steps, each at one
    constant rate log-spaced from ``start_lr`` to ``end_lr``, all from the
    same parameters and batches, in one ``vmap``; the suggestion is the rate
    whose run ends with the lowest smoothed loss. It costs ``num_lrs`` times
    the steps and holds ``num_lrs`` copies of the parameters and optimizer state.

    The optimizer state is carried through the ramp as in a real run, so
    adaptive optimizers are tested as they will be used. Pass the optimizer
    the training run will use, without an ``explosion_guard`` (which would hide
    the divergence). The optimizer's ``update`` gets ``value=loss``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> loss``, a float scalar (a shape or
        dtype error is raised while tracing); with ``has_aux``, a pair
        ``(loss, aux)`` whose ``aux`` is ignored.
      params: the initial parameters (a pytree of float arrays); not modified.
      optimizer: a factory ``lr -> optax.GradientTransformation`` (called with
        a traced float scalar inside the scan; its state must not depend on
        ``lr``), or an ``optax.inject_hyperparams`` optimizer with one constant
        ``learning_rate``, which is overwritten at every step.
      data: a batch function ``step -> batch`` (jittable; ``step`` is a traced
        int32), an iterable of batches (the first ``num_steps`` are stacked
        on the device, so memory is ``num_steps`` batches; fewer are cycled),
        or an array whose leading axis indexes stacked batches.
      start_lr: first learning rate, > 0.
      end_lr: last learning rate, > ``start_lr``.
      num_steps: range: steps of the ramp, >= 10; sweep: steps per run, >= 1.
      method: ``"range"`` or ``"sweep"``.
      num_lrs: sweep only, runs, >= 2; default two per decade (both ends included).
      beta: EMA smoothing factor of the loss, in [0, 1).
      diverge_threshold: :math:`\tau` > 1, or ``None`` to run the whole ramp
        (a non-finite loss stops it anyway). Range only.
      rule: the rule behind ``suggestion``: one of ``"valley"``, ``"steep"``,
        ``"minimum"`` (range) or ``"best"`` (sweep); default ``"minimum"`` / ``"best"``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``.

    Returns:
      An :class:`LRFindResult`: the learning rates, raw and smoothed losses,
      the steps that ran, every rule's suggestion, and a ``plot`` method. When
      no suggestion can be made (non-finite first loss, too few points before
      divergence, a loss that never fell) ``suggestion`` is ``None`` and
      ``message`` says why.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optaxsched as ox
      >>> kx, ky = jax.random.split(jax.random.PRNGKey(0))
      >>> x = jax.random.normal(kx, (64, 3))
      >>> y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 * jax.random.normal(ky, (64,))
      >>> def loss_fn(w, batch):
      ...     xb, yb = batch
      ...     return jnp.mean((xb @ w - yb) ** 2)
      >>> result = ox.lr_find(loss_fn, jnp.zeros(3), optax.sgd, [(x, y)],
      ...                     start_lr=1e-4, end_lr=100.0)
      >>> result.rule, result.stopped_early
      ('minimum', True)
      >>> # Plain SGD on this quadratic diverges above 2 / (largest curvature).
      >>> bool(result.suggestion < 2 / jnp.linalg.eigvalsh(2 * x.T @ x / 64).max())
      True

    References:
      Smith, "Cyclical learning rates for training neural networks", WACV 2017;
      fastai ``Learner.lr_find`` and ``SuggestionMethod`` (fastai 2.7);
      Lightning ``Tuner.lr_find`` (Lightning 2.x).
    """
    _check_args(loss_fn, optimizer, start_lr, end_lr, num_steps, method, num_lrs,
                beta, diverge_threshold, rule, has_aux)
    start_lr, end_lr, beta = float(start_lr), float(end_lr), float(beta)
    if method == "sweep":
        n = num_lrs if num_lrs is not None else 1 + round(2 * math.log10(end_lr / start_lr))
        lrs = np.geomspace(start_lr, end_lr, max(n, 2))
    else:
        lrs = np.geomspace(start_lr, end_lr, num_steps)
    if isinstance(optimizer, optax.GradientTransformation):
        state, update = _injected_update(optimizer, params)
    else:
        state, update = _factory_update(optimizer, params, start_lr)
    if callable(data) and not isinstance(data, (np.ndarray, jax.Array)):
        batch_fn = data
        stacked: Any = None

        def get_batch(i, stacked):
            return batch_fn(i)
    else:
        stacked, count = _stack_batches(data, num_steps)

        def get_batch(i, stacked):
            return jax.tree_util.tree_map(lambda a: a[i % count], stacked)

    threshold = None if diverge_threshold is None else float(diverge_threshold)
    step = _train_step(_loss_and_grad(loss_fn, has_aux), update, get_batch, beta, threshold)
    lrs32 = jnp.asarray(lrs, _F32)
    if method == "sweep":
        curves, smooth = _sweep_fn(step, num_steps)(params, state, lrs32, stacked)
        curves, smooth = np.asarray(curves), np.asarray(smooth)
        return _sweep_result(lrs, curves, smooth[:, -1], num_steps, beta)
    out = _range_fn(step)(params, state, lrs32, stacked)
    losses, smoothed, ran = (np.asarray(a) for a in out)
    return _range_result(lrs, losses, smoothed, int(ran.sum()), beta, rule or DEFAULT_RULE)


def _first_loss_message(loss: float) -> str:
    return (f"the loss of the first step is not finite ({loss}): check loss_fn, params "
            "and the first batch; no suggestion")


def _range_result(lrs, losses, smoothed, num_run, beta, rule) -> LRFindResult:
    at_start = not np.isfinite(losses[0])
    skip_start, skip_end = len(lrs) // 10, 1
    if at_start:
        region, message = None, _first_loss_message(losses[0])
    else:
        region, message = read_region(lrs, smoothed, num_run, skip_start, skip_end)
    suggestions = {r: (None if region is None else rule_fns[r](*region)) for r in RULES}
    return LRFindResult(
        method="range", lrs=lrs, losses=losses, smoothed=smoothed, num_steps_run=num_run,
        suggestion=suggestions[rule], rule=rule, suggestions=suggestions,
        stopped_early=num_run < len(lrs), diverged_at_start=at_start, message=message,
        curves=None, beta=beta, skip_start=skip_start, skip_end=skip_end)


def _sweep_result(lrs, curves, final, num_steps, beta) -> LRFindResult:
    at_start = not np.isfinite(curves[0, 0])
    ok = np.isfinite(final)
    if at_start:
        message = _first_loss_message(curves[0, 0])
    elif not ok.any():
        message = "every run's loss became non-finite: lower start_lr; no suggestion"
    else:
        message = ""
    best = float(lrs[ok][np.argmin(final[ok])]) if ok.any() and not at_start else None
    return LRFindResult(
        method="sweep", lrs=lrs, losses=curves[:, -1], smoothed=final,
        num_steps_run=num_steps, suggestion=best, rule=SWEEP_RULE,
        suggestions={SWEEP_RULE: best}, stopped_early=False, diverged_at_start=at_start,
        message=message, curves=curves, beta=beta, skip_start=0, skip_end=0)
