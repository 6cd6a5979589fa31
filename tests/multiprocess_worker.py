"""One process of ``test_multiprocess.py``'s runs, as a script.

Started by the test, never collected (no ``test_`` prefix). Two modes:

- ``--num-processes 2 --process-id i --port p``: one of two JAX processes
  joined by ``jax.distributed.initialize`` (coordinator on 127.0.0.1:p,
  cross-process CPU collectives through gloo). Each holds ``--devices`` CPU
  devices; params, batch, gradients and the parameter-shaped optimizer state
  are sharded over the devices of *both* processes (one global ``Mesh``,
  ``NamedSharding`` on the leading axis). Each process loads only its own
  rows of every batch (``jax.make_array_from_process_local_data``), as hosts
  do. Process 1's rows carry a NaN at one step, process 1's part of one
  gradient a NaN at another and process 0's part a x1e3 spike at a third, so
  only the *global* loss or gradient norm shows them to the other process.
  Both processes save params and optimizer state with orbax after
  ``SAVE_AT`` steps; at the end the checkpoint is restored into the same
  sharding and the step after it is run again from the restored state.
- ``--num-processes 1``: the reference. The same global arrays in one
  process, on as many devices as the two processes hold together (the same
  partitioned program), then on one device.

Every process writes ``<out>/<tag>.npz``: per step the loss and every
statistic of ``optaxsched.telemetry`` (the fetched replicated scalars), and
the final params gathered to the host. ``<out>/<tag>.json`` holds what the
process checked itself, a list of problems per check, and the steps at which
its own part of the inputs held a fault. The test compares the files. When
the probe finds no cross-process CPU collectives the process writes
``{"no_collectives": reason}`` and exits 0, so that the test can skip.
Progress goes to stderr, which the test shows when a process fails or hangs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optaxsched as ox

STEPS = 20
SAVE_AT = 10  # steps done when the checkpoint is written
NAN_BATCH_AT = 6  # process 1's rows of the batch hold a NaN: the loss is NaN
NAN_GRAD_AT = 9  # process 1's part of layers_0/kernel's gradient holds a NaN
SPIKE_AT = 14  # process 0's part of the same gradient gets +1e3 on one entry
BATCH, IN, HIDDEN, OUT = 32, 8, 16, 4
AXIS = "d"
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.2f} s] {msg}", file=sys.stderr, flush=True)


def make_params() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    return {
        "embed": {"kernel": w(IN, HIDDEN)},
        "layers_0": {"kernel": w(HIDDEN, HIDDEN), "bias": np.zeros(HIDDEN, np.float32)},
        "head": {"kernel": w(HIDDEN, OUT)},
    }


def global_inputs(step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Step ``step``'s global batch and gradient fault, the same in every process
    (each then keeps its own rows)."""
    rng = np.random.default_rng(1000 + step)
    x = rng.standard_normal((BATCH, IN)).astype(np.float32)
    y = np.tanh(2.0 * x[:, :OUT]).astype(np.float32)
    fault = np.zeros((HIDDEN, HIDDEN), np.float32)
    if step == NAN_BATCH_AT:
        x[BATCH - 3, 1] = np.nan  # second half of the rows: process 1's
    if step == NAN_GRAD_AT:
        fault[HIDDEN - 2, 3] = np.nan  # second half: process 1's
    if step == SPIKE_AT:
        fault[1, 5] = 1e3  # first half: process 0's
    return {"x": x, "y": y}, fault


def make_tx() -> optax.GradientTransformationExtraArgs:
    lr = ox.schedules.warmup(ox.schedules.cosine_decay(1e-2, STEPS), 3)
    return ox.explosion_guard(
        optax.chain(
            ox.clip_by_zscore(warmup_steps=5),
            optax.inject_hyperparams(optax.adamw)(learning_rate=lr, weight_decay=1e-4),
            ox.scale_by_group({"embed": 0.5, "layers_0": ox.schedules.linear(1.0, 0.5, STEPS)}),
        )
    )


def loss_fn(params, batch):
    h = jax.numpy.tanh(batch["x"] @ params["embed"]["kernel"])
    h = jax.numpy.tanh(h @ params["layers_0"]["kernel"] + params["layers_0"]["bias"])
    return jax.numpy.mean((h @ params["head"]["kernel"] - batch["y"]) ** 2)


def state_shardings(abstract_state, params, row, replicated):
    """``row`` for the optimizer state's parameter-shaped leaves (Adam's
    moments: the path ends with a parameter's path, the shape is its shape),
    ``replicated`` for every statistic and counter.

    (``optax.tree_map_params`` would do this from the params' shardings, but
    it calls ``init`` on a placeholder instead of params, which
    ``scale_by_group`` rejects: its state is keyed by the groups the
    parameter paths fall in.)
    """
    shapes = {jax.tree_util.keystr(p): x.shape
              for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        hit = any(key.endswith(k) and leaf.shape == s for k, s in shapes.items())
        return row if hit else replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def local_rows(x: np.ndarray, sharding) -> np.ndarray:
    """The rows of global ``x`` (leading axis) that this process's devices hold."""
    spans = sharding.addressable_devices_indices_map(x.shape).values()
    start = min(i[0].start or 0 for i in spans)
    stop = max(x.shape[0] if i[0].stop is None else i[0].stop for i in spans)
    return x[start:stop]


def replica_problems(tree, what: str) -> list[str]:
    """Replicated leaves whose copies differ between this process's devices."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not x.sharding.is_fully_replicated:
            continue
        copies = {np.asarray(s.data).tobytes() for s in x.addressable_shards}
        if len(copies) != 1:
            out.append(f"{what}{jax.tree_util.keystr(path)}: {len(copies)} different copies")
    return out


def bit_problems(a, b, what: str) -> list[str]:
    """Leaves of ``a`` whose addressable shards differ from ``b``'s in any bit."""
    def bits(tree):
        return [(jax.tree_util.keystr(p) + str(s.index), np.asarray(s.data).tobytes())
                for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
                for s in sorted(x.addressable_shards, key=lambda s: str(s.index))]

    a_bits, b_bits = bits(a), bits(b)
    if [k for k, _ in a_bits] != [k for k, _ in b_bits]:
        return [f"{what}: other leaves or shards"]
    return [f"{what}{k} differs" for (k, x), (_, y) in zip(a_bits, b_bits) if x != y]


class Trainer:
    """Params, optimizer state and one compiled step over a mesh of ``devices``."""

    def __init__(self, devices):
        mesh = Mesh(np.array(devices), (AXIS,))
        self.row, self.rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
        self.tx = tx = make_tx()
        host_params = make_params()
        param_sh = jax.tree.map(lambda _: self.row, host_params)
        # Every process holds the initial values and places its own shards.
        self.params = jax.tree.map(
            lambda x: jax.make_array_from_callback(x.shape, self.row, lambda i: x[i]),
            host_params)
        state_sh = state_shardings(jax.eval_shape(tx.init, self.params), self.params,
                                   self.row, self.rep)
        # jit without out_shardings would leave the whole state on one device.
        self.opt_state = jax.jit(tx.init, out_shardings=state_sh)(self.params)

        def step(params, opt_state, batch, fault):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            grads["layers_0"]["kernel"] = grads["layers_0"]["kernel"] + fault
            # loss is a global scalar: the guard's loss test is global too.
            updates, opt_state = tx.update(grads, opt_state, params, value=loss)
            stats = {"loss": loss, **ox.telemetry(opt_state)}
            return optax.apply_updates(params, updates), opt_state, stats

        self.step = jax.jit(step, out_shardings=(param_sh, state_sh, self.rep))

    def inputs(self, i: int):
        """Step ``i``'s batch and fault as global arrays, from this process's rows."""
        host = global_inputs(i)
        shardings = ({"x": self.row, "y": self.row}, self.row)
        return jax.tree.map(
            lambda x, s: jax.make_array_from_process_local_data(s, local_rows(x, s), x.shape),
            host, shardings)

    def __call__(self, i: int):
        batch, fault = self.inputs(i)
        self.params, self.opt_state, stats = self.step(self.params, self.opt_state, batch, fault)
        return stats


def local_faults(trainer: Trainer) -> list[int]:
    """The steps at which this process's own rows of the inputs hold a fault."""
    out = []
    for i in range(STEPS):
        batch, fault = trainer.inputs(i)
        shards = [s.data for s in batch["x"].addressable_shards + fault.addressable_shards]
        if any(not np.isfinite(x).all() for x in shards) or any(
                np.asarray(s.data).any() for s in fault.addressable_shards):
            out.append(i)
    return out


def train(trainer: Trainer, checkpoint_dir: Path | None):
    """``STEPS`` steps; returns the arrays to compare and the problems found."""
    history: dict[str, list[np.ndarray]] = {}
    problems: dict[str, list[str]] = {"replicas": [], "eager": [], "checkpoint": []}
    mngr = saved = after = None
    for i in range(STEPS):
        if i == SAVE_AT and checkpoint_dir is not None:
            saved = {"params": trainer.params, "opt_state": trainer.opt_state}
            mngr = save(checkpoint_dir, i, saved)
        stats = trainer(i)
        if i == SAVE_AT:
            after = (trainer.params, trainer.opt_state, stats)
        problems["replicas"] += replica_problems(stats, f"step {i} stats")
        for k, v in stats.items():
            history.setdefault(k, []).append(np.asarray(v))  # this process's copy
        if i in (0, SAVE_AT, STEPS - 1):
            log(f"step {i} done")
    problems["replicas"] += replica_problems(trainer.opt_state, "final state")

    # The same reads outside jit, on the global state.
    state = trainer.opt_state
    eager = {**ox.telemetry(state), **{f"effective_learning_rate/{k}": v
                                       for k, v in ox.effective_learning_rate(state).items()}}
    problems["eager"] = [f"{k}: eager {np.asarray(v)} != jitted {history[k][-1]}"
                         for k, v in eager.items()
                         if np.asarray(v).tobytes() != history[k][-1].tobytes()]

    result = {f"stats/{k}": np.stack(v) for k, v in history.items()}
    gathered = multihost_utils.process_allgather(trainer.params, tiled=True)
    result.update({f"params{jax.tree_util.keystr(p)}": np.asarray(x)
                   for p, x in jax.tree_util.tree_flatten_with_path(gathered)[0]})
    if mngr is not None:
        problems["checkpoint"] = check_restore(mngr, saved, after, trainer)
        result["checkpoint_step"] = np.asarray(mngr.latest_step())
        mngr.close()
        log("checkpoint restored, next step compared")
    return result, problems


def save(directory: Path, step: int, tree):
    """Both processes write one orbax checkpoint (each its own shards)."""
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=1))
    mngr.save(step, args=ocp.args.StandardSave(tree))
    return mngr


def check_restore(mngr, saved, after, trainer: Trainer) -> list[str]:
    """The checkpoint restores bitwise into the same sharding, and the step
    after it, run from the restored state, is bitwise the uninterrupted one."""
    import orbax.checkpoint as ocp

    mngr.wait_until_finished()
    if mngr.latest_step() != SAVE_AT:
        return [f"latest checkpoint step {mngr.latest_step()}, not {SAVE_AT}"]
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), saved)
    restored = mngr.restore(SAVE_AT, args=ocp.args.StandardRestore(abstract))
    problems = []
    if jax.tree.structure(restored) != jax.tree.structure(saved):
        return ["the restored tree has another structure"]
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                            jax.tree.leaves(saved)):
        if a.sharding != b.sharding:
            problems.append(f"restored{jax.tree_util.keystr(path)}: {a.sharding} "
                            f"instead of {b.sharding}")
    problems += bit_problems(restored, saved, "restored")
    again = trainer.step(restored["params"], restored["opt_state"], *trainer.inputs(SAVE_AT))
    return problems + bit_problems(again, after, "step after restore: ")


def probe() -> str | None:
    """None when a jitted sum over the devices of every process works, else why not."""
    try:
        n = jax.device_count()
        mesh = Mesh(np.array(jax.devices()), (AXIS,))
        x = jax.make_array_from_callback(
            (n,), NamedSharding(mesh, P(AXIS)), lambda i: np.arange(n, dtype=np.float32)[i])
        total = float(jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(x))
    except Exception as e:  # the platform's own reason, for the skip message
        return f"{type(e).__name__}: {e}"
    expected = n * (n - 1) / 2
    return None if total == expected else f"a cross-process sum gave {total}, not {expected}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--devices", type=int, required=True, help="CPU devices of this process")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint-dir", type=Path)
    ap.add_argument("--timeout", type=int, default=60, help="coordination timeouts, s")
    args = ap.parse_args()
    multi = args.num_processes > 1
    reason: str | None = None
    tag = f"process{args.process_id}" if multi else "reference"
    if multi:
        address = f"127.0.0.1:{args.port}"
        try:
            # gloo is this setting's default in current jax; set it so that
            # no other default ("none" before 0.5) leaves the processes
            # without cross-process collectives.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception as e:  # a jax without the setting or without gloo
            reason = f"{type(e).__name__}: {e}"
        jax.distributed.initialize(
            coordinator_address=address, coordinator_bind_address=address,
            num_processes=args.num_processes, process_id=args.process_id,
            initialization_timeout=args.timeout, heartbeat_timeout_seconds=args.timeout,
            shutdown_timeout_seconds=args.timeout,
        )
        reason = reason or probe()
        log(f"distributed runtime up; probe: {reason or 'cross-process collectives work'}")
        if reason is not None:
            (args.out / f"{tag}.json").write_text(json.dumps({"no_collectives": reason}))
            return
    assert jax.local_device_count() == args.devices, jax.local_devices()
    assert jax.process_count() == args.num_processes, jax.process_count()

    trainer = Trainer(jax.devices())
    report: dict[str, Any] = {"local_faults": local_faults(trainer),
                              "processes": jax.process_count(), "devices": jax.device_count()}
    result, report["problems"] = train(trainer, args.checkpoint_dir)
    if not multi:
        one, problems = train(Trainer(jax.devices()[:1]), None)
        result.update({f"one_device/{k}": v for k, v in one.items()})
        report["problems"]["one_device_replicas"] = problems["replicas"] + problems["eager"]
    np.savez(args.out / f"{tag}.npz", **result)
    report["seconds"] = time.perf_counter() - _T0
    (args.out / f"{tag}.json").write_text(json.dumps(report))
    log("results written")
    if multi:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
