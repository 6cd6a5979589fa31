"""README.md's API tour runs as written.

Every ```python block of the "API tour" section is executed, in order, in one
namespace (a block may use names from earlier blocks), so the README cannot
drift from the library. The blocks are user code: they run under JAX's default
dtype and rank promotion rather than the suite's strict settings.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import jax
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _tour() -> str:
    """The text of the "## API tour" section, up to the next level-2 heading."""
    text = README.read_text(encoding="utf-8")
    start = re.search(r"^## API tour[ \t]*$", text, re.M)
    assert start, "README.md has no '## API tour' section"
    end = re.search(r"^## ", text[start.end():], re.M)
    return text[start.end(): start.end() + end.start() if end else len(text)]


def _blocks() -> list[tuple[str, str]]:
    """(heading, code) for every python block of the tour, in order."""
    tour, out = _tour(), []
    for m in _BLOCK.finditer(tour):
        headings = re.findall(r"^###+ (.+)$", tour[: m.start()], re.M)
        out.append((headings[-1] if headings else "API tour", m.group(1)))
    return out


def test_tour_covers_the_documented_features():
    code = "\n".join(c for _, c in _blocks())
    # Issue contracts: clipping transforms, a Flax step with reduce_on_plateau,
    # LLRD plus a no-weight-decay group on a Flax model.
    for name in ["schedules.", "clip_by_global_norm", "scale_by_grad_norm(",
                 "scale_by_grad_norm_rms", "clip_by_zscore", "clip_by_percentile",
                 "clip_by_ema_ratio", "reduce_on_plateau", "TrainState",
                 "apply_gradients(grads=grads, value=loss)", "nnx.Optimizer",
                 "layer_decay_rules", "label_by_path", "optax.partition",
                 "scale_by_group", "describe_groups", "explosion_guard(",
                 "value=loss", "telemetry(opt_state)"]:
        assert name in code, f"README's API tour no longer shows {name}"


def test_tour_blocks_run_in_order():
    blocks = _blocks()
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "readme_tour"}
    out = io.StringIO()
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"), \
            contextlib.redirect_stdout(out):
        for i, (heading, code) in enumerate(blocks):
            try:
                exec(compile(code, f"README.md[{heading} #{i}]", "exec"), namespace)
            except Exception as e:  # name the block that broke
                pytest.fail(f"README API tour block {i} under '{heading}' raised "
                            f"{type(e).__name__}: {e}\n---\n{code}")
    printed = out.getvalue()
    # The comments next to the prints say what the reader should see.
    assert "rule 'layer_0' matches no parameter path" in printed
    assert "layers_(\\d+) == 3" in printed and "embed/embedding" in printed
    assert "100.0" in printed and "True" in printed  # the ZClip spike was clipped
