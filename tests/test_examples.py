"""The training-loop examples run at tiny sizes: the loss falls, the guard
skips the corrupted step and the telemetry log has the expected fields."""

from __future__ import annotations

import ast
import csv
import doctest
import importlib.metadata
import importlib.util
import math
import struct
import sys
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"

# optax.adamw needs standard dtype promotion (see conftest.py).
pytestmark = pytest.mark.usefixtures("standard_promotion")


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["train_linen", "train_nnx"])
def test_training_loop_example(name, capsys):
    example = _load(name)
    out = example.main(steps=40, batch_size=32, width=16, depth=2, peak_lr=1e-2,
                       log_every=10, plateau_window=4, corrupt_step=7)
    losses = out["losses"]
    assert len(losses) == 40
    # The corrupted batch gives a NaN loss; the guard skips that step, so the
    # run goes on and every other loss is finite.
    assert math.isnan(losses[7])
    assert all(math.isfinite(v) for i, v in enumerate(losses) if i != 7)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])

    logs = out["logs"]
    assert [log["step"] for log in logs] == [0, 10, 20, 30, 39]
    last = logs[-1]
    short = {k.rsplit("/", 1)[-1]: v for k, v in last.items()}
    assert set(example.LOG_FIELDS) <= set(short)
    assert short["guard_skipped_steps"] == 1
    assert last["0/hyperparams/learning_rate"] > 0
    assert "2/metric_plateau_scale" in last
    # Stepped once per 4-step epoch; step 39's telemetry predates its epoch's end.
    assert last["2/metric_plateau_steps"] == 40 // 4 - 1
    assert any(k.startswith("1/group_multipliers/") for k in last)  # scale_by_group
    assert last["effective_learning_rate/embed"] < last["effective_learning_rate/default"]

    printed = capsys.readouterr().out
    assert "layers" in printed and "guard_skipped_steps" in printed


@pytest.mark.parametrize("name", ["train_linen", "train_nnx"])
def test_docstring_examples_run(name):
    result = doctest.testmod(_load(name))
    assert result.attempted and not result.failed


def test_quickstart_guard_survives_where_plain_adam_dies(tmp_path, capsys):
    quickstart = _load("quickstart")
    out_png = tmp_path / "quickstart.png"
    # The example is user code written with NumPy broadcasting; the library
    # calls inside it still run under the strict dtype promotion of conftest.
    with jax.numpy_rank_promotion("allow"):
        results = quickstart.main(["--steps", "150", "--out", str(out_png)])
    clean, faults, high = results.values()
    # Healthy and clean: the guard changes nothing.
    assert clean["optaxsched"]["skipped"][-1] == 0
    assert np.all(clean["optaxsched"]["scale"] == 1.0)
    np.testing.assert_allclose(clean["optaxsched"]["loss"], clean["plain adam"]["loss"],
                               rtol=1e-4)
    # Faults: plain Adam is destroyed, the guard skips the two faulty steps
    # and ends within 2% of the clean run.
    assert not faults["plain adam"]["params_finite"]
    assert faults["optaxsched"]["params_finite"]
    assert faults["optaxsched"]["skipped"][-1] == 2
    assert faults["optaxsched"]["held_out"] < 1.02 * clean["optaxsched"]["held_out"]
    # Too high a learning rate: the guarded run survives and learns.
    assert high["optaxsched"]["params_finite"]
    assert high["optaxsched"]["held_out"] < 0.8 * high["optaxsched"]["loss"][0]
    assert out_png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "[optaxsched] step" in printed


def test_lr_find_example_suggests_checks_and_draws(tmp_path, capsys):
    example = _load("lr_find")
    out_png = tmp_path / "lr_find.png"
    with jax.numpy_rank_promotion("allow"):  # user code: bias broadcasting
        out = example.main(["--steps", "60", "--check-steps", "20", "--out", str(out_png)])
    result, check = out["result"], out["check"]
    assert result.suggestion is not None and result.rule == "minimum"
    np.testing.assert_allclose(check.lrs, result.suggestion * np.array([0.1, 1.0, 10.0]))
    assert out_png.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "<- suggestion" in printed and "check, smoothed training loss" in printed


# ------------------------------------------------------- telemetry logging


def _read_event_file(path: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar in a TensorBoard event file.

    The file is a TFRecord stream: per record a uint64 length, its masked
    CRC32C, the serialized ``Event`` proto and the data's masked CRC32C.
    Both checksums are verified, so a truncated or corrupt file fails here.
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    data, pos, scalars = path.read_bytes(), 0, {}
    while pos < len(data):
        header = data[pos: pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8: pos + 12])
        assert header_crc == masked_crc32c(header), f"bad length checksum at byte {pos}"
        payload = data[pos + 12: pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length: pos + 16 + length])
        assert payload_crc == masked_crc32c(payload), f"bad record checksum at byte {pos}"
        pos += 16 + length
        event = Event.FromString(payload)
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_log_telemetry_writes_csv_and_tensorboard(tmp_path):
    example = _load("log_telemetry")
    # User code written with NumPy broadcasting (bias + activations).
    with jax.numpy_rank_promotion("allow"):
        out = example.main(steps=30, log_every=10, logdir=tmp_path / "run", corrupt_step=15,
                           verbose=False)
    rows = out["rows"]
    assert [row["step"] for row in rows] == [0, 10, 20, 29]

    with open(out["csv"], newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        cells = list(reader)
    assert header[:2] == ["step", "loss"] and len(set(header)) == len(header)
    # Telemetry keys looked up by their last path component, which survives
    # a change of prefix (the library's field names are unique; optax's
    # ``count`` is not, and is not looked up).
    def col(name: str) -> list[float]:
        [key] = [k for k in header if k.rsplit("/", 1)[-1] == name]
        return [parsed[key] for parsed in table]

    assert len(cells) == len(rows)
    table = [dict(zip(header, map(float, line))) for line in cells]
    for row, parsed in zip(rows, table):
        assert parsed == row  # the CSV holds exactly what main returned
    # Every cell is a finite number but ZClip's threshold, +inf during its
    # 25-step warm-up (no clipping yet), as clip_by_zscore documents.
    assert col("zclip_threshold")[:3] == [math.inf] * 3
    assert all(math.isfinite(v) for parsed in table for k, v in parsed.items()
               if parsed["step"] == 29 or not k.endswith("/zclip_threshold")), table

    # The NaN batch at step 15 is skipped: the counters move between the
    # logs at steps 10 and 20, every step is counted, and the loss falls.
    assert col("guard_skipped_steps") == [0, 0, 1, 1]
    assert col("guard_nonfinite_steps") == [0, 0, 1, 1]
    assert col("guard_steps") == [1, 11, 21, 30]
    assert col("recovery_scale") == [1, 1, 1, 1]
    assert col("loss")[-1] < 0.5 * col("loss")[0]
    # Each row's learning rate is the one its step used. The skipped step
    # reached no inner state, so from then on the schedule is one step behind
    # the step number: it counts accepted updates.
    assert col("guard_accepted_steps") == [1, 11, 20, 29]
    schedule = example.schedules.warmup(
        example.schedules.cosine_decay(1e-2, 27, end_value=1e-3), 3)
    np.testing.assert_allclose(col("learning_rate"),
                               [float(schedule(t)) for t in (0, 10, 19, 28)], rtol=1e-6)

    [event_file] = out["event_files"]
    scalars = _read_event_file(event_file)
    assert set(scalars) == {"train/loss"} | {f"optimizer/{k}" for k in header[2:]}
    for name in header[1:]:
        tag = "train/loss" if name == "loss" else f"optimizer/{name}"
        assert sorted(scalars[tag]) == [0, 10, 20, 29], tag
        # Event files store float32.
        np.testing.assert_allclose([scalars[tag][t] for t in (0, 10, 20, 29)],
                                   np.float32([row[name] for row in rows]), rtol=0, atol=0)


def test_log_telemetry_csv_keeps_its_header(tmp_path):
    example = _load("log_telemetry")
    with example.TelemetryLog(tmp_path) as log:
        log.write(0, {"loss": 1.0, "a/count": 1.0})
        with pytest.warns(UserWarning, match="'b/new'"):
            log.write(1, {"loss": 0.5, "a/count": 2.0, "b/new": 3.0})
        log.write(2, {"loss": 0.25})
    with open(log.csv_path, newline="") as f:
        assert list(csv.reader(f)) == [["step", "loss", "a/count"], ["0", "1.0", "1.0"],
                                       ["1", "0.5", "2.0"], ["2", "0.25", ""]]
    [event_file] = tmp_path.glob("events.out.tfevents.*")
    assert _read_event_file(event_file)["optimizer/b/new"] == {1: 3.0}


def test_log_telemetry_docstring_example_runs():
    with jax.numpy_rank_promotion("allow"):
        result = doctest.testmod(_load("log_telemetry"))
    assert result.attempted and not result.failed


# --------------------------------------------------- the examples extra


_STDLIB_OR_OURS = set(sys.stdlib_module_names) | {"__future__", "optaxsched"}
# Import names whose distribution is named differently, for packages that are
# not installed (installed ones are looked up in their metadata).
_DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "PyYAML",
                 "cv2": "opencv-python", "skimage": "scikit-image"}


def _third_party_imports() -> dict[str, set[str]]:
    """``{top-level module: {example files importing it}}`` over examples/*.py."""
    local = {p.stem for p in EXAMPLES.glob("*.py")}
    found: dict[str, set[str]] = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top not in _STDLIB_OR_OURS and top not in local:
                    found.setdefault(top, set()).add(path.name)
    return found


def _examples_requirements() -> set[str]:
    """Canonical names of the core dependencies plus the examples extra."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata instead
        reqs = [Requirement(r) for r in importlib.metadata.requires("optaxsched") or []]
        declared = [r for r in reqs
                    if r.marker is None or r.marker.evaluate({"extra": "examples"})]
    else:
        project = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())["project"]
        declared = [Requirement(r) for r in
                    project["dependencies"] + project["optional-dependencies"]["examples"]]
    return {canonicalize_name(r.name) for r in declared}


def test_examples_extra_installs_every_example_import():
    from packaging.utils import canonicalize_name

    imports = _third_party_imports()
    # The walk sees the examples' imports (a parser that found nothing would
    # pass the check below vacuously).
    assert {"jax", "optax", "numpy", "flax", "matplotlib", "tensorboardX"} <= set(imports)
    installed = importlib.metadata.packages_distributions()
    provided = _examples_requirements()
    missing = {}
    for module, files in imports.items():
        dists = installed.get(module) or [_DISTRIBUTION.get(module, module)]
        if not {canonicalize_name(d) for d in dists} & provided:
            missing[module] = sorted(files)
    assert not missing, (f"pyproject.toml's examples extra (or the core dependencies) "
                         f"lacks the distribution of {missing}")
