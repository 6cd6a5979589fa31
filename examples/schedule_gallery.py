"""Draws every schedule of ``optaxsched.schedules`` on one PNG.

Each panel is titled with a call, names the PyTorch/Keras/timm schedule it
reproduces, and draws that call (solid line) and variants of its arguments
(dashed, dotted; named in the legend). Step t on the x axis is the
update that uses the value.

    python examples/schedule_gallery.py [output.png]   # default: ./schedule_gallery.png
"""

from __future__ import annotations

import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optaxsched import schedules as S  # noqa: E402

# (call, peer, last step, [(legend label, schedule)]); the first line is the titled call.
PANELS = [
    ("constant(1.0)", "", 100, [("", S.constant(1.0))]),
    ("step_decay(1.0, step_size=25, gamma=0.5)", "torch StepLR", 100,
     [("", S.step_decay(1.0, 25, 0.5))]),
    ("multistep_decay(1.0, milestones=[30, 60, 60], gamma=0.5)",
     "torch MultiStepLR (a repeated milestone decays twice)", 100,
     [("", S.multistep_decay(1.0, [30, 60, 60], 0.5))]),
    ("piecewise_constant([25, 50, 75], [1.0, 0.6, 0.3, 0.1])", "Keras PiecewiseConstantDecay",
     100, [("", S.piecewise_constant([25, 50, 75], [1.0, 0.6, 0.3, 0.1]))]),
    ("exponential_decay(1.0, 0.5, decay_steps=20)", "torch ExponentialLR, Keras ExponentialDecay",
     100, [("staircase=False", S.exponential_decay(1.0, 0.5, 20)),
           ("staircase=True", S.exponential_decay(1.0, 0.5, 20, staircase=True)),
           ("end_value=0.2", S.exponential_decay(1.0, 0.5, 20, end_value=0.2))]),
    ("inverse_time_decay(1.0, 0.5, decay_steps=10)", "Keras InverseTimeDecay", 100,
     [("staircase=False", S.inverse_time_decay(1.0, 0.5, 10)),
      ("staircase=True", S.inverse_time_decay(1.0, 0.5, 10, staircase=True))]),
    ("power_decay(1.0, power=0.5, timescale=10.0)", "timm rsqrt/power stable phase", 100,
     [("power=0.5", S.power_decay(1.0, 0.5, 10.0)), ("power=1.0", S.power_decay(1.0, 1.0, 10.0))]),
    ("inverse_sqrt(1.0, warmup_steps=20)", "\"Attention is all you need\"", 100,
     [("", S.inverse_sqrt(1.0, 20))]),
    ("linear(0.1, 1.0, transition_steps=50)", "torch LinearLR", 100,
     [("linear(0.1, 1.0, 50)", S.linear(0.1, 1.0, 50)),
      ("linear(1.0, 0.1, 50)", S.linear(1.0, 0.1, 50))]),
    ("polynomial_decay(1.0, 40, end_value=0.1, power=2.0)", "Keras PolynomialDecay, torch "
     "PolynomialLR", 100,
     [("cycle=False", S.polynomial_decay(1.0, 40, 0.1, 2.0)),
      ("cycle=True", S.polynomial_decay(1.0, 40, 0.1, 2.0, cycle=True))]),
    ("cosine_decay(1.0, 60, end_value=0.1)", "Keras CosineDecay; periodic: torch CosineAnnealingLR",
     100, [("periodic=False", S.cosine_decay(1.0, 60, 0.1)),
           ("periodic=True", S.cosine_decay(1.0, 60, 0.1, periodic=True))]),
    ("cosine_restarts(1.0, 10, period_mult=2.0)",
     "torch CosineAnnealingWarmRestarts, Keras CosineDecayRestarts", 150,
     [("period_mult=2.0", S.cosine_restarts(1.0, 10, 2.0)),
      ("period_mult=1.5, end_value=0.1, amplitude_mult=0.7",
       S.cosine_restarts(1.0, 10, 1.5, 0.1, 0.7))]),
    ("cyclic(0.1, 1.0, step_size_up=10)", "torch CyclicLR", 100,
     [("mode='triangular'", S.cyclic(0.1, 1.0, 10)),
      ("mode='triangular2'", S.cyclic(0.1, 1.0, 10, mode="triangular2")),
      ("step_size_down=20, mode='exp_range', gamma=0.99",
       S.cyclic(0.1, 1.0, 10, 20, mode="exp_range", gamma=0.99))]),
    ("one_cycle(1.0, total_steps=100)", "torch OneCycleLR (held from step 99 on)", 110,
     [("anneal='cos'", S.one_cycle(1.0, 100)),
      ("anneal='linear'", S.one_cycle(1.0, 100, anneal="linear")),
      ("three_phase=True", S.one_cycle(1.0, 100, three_phase=True))]),
    ("wsd(1.0, total_steps=100, warmup_steps=10, decay_steps=30)", "timm WSD, MiniCPM", 110,
     [("decay_shape='1-sqrt'", S.wsd(1.0, 100, 10, 30)),
      ("decay_shape='linear'", S.wsd(1.0, 100, 10, 30, decay_shape="linear")),
      ("decay_shape='cosine'", S.wsd(1.0, 100, 10, 30, decay_shape="cosine"))]),
    ("warmup(cosine_decay(1.0, 80), warmup_steps=20)", "timm warmup_prefix=True", 100,
     [("init_value=0.0", S.warmup(S.cosine_decay(1.0, 80), 20)),
      ("init_value=0.3", S.warmup(S.cosine_decay(1.0, 80), 20, init_value=0.3))]),
    ("join([linear(0.1, 1.0, 20), cosine_decay(1.0, 50), constant(0.3)], boundaries=[20, 70])",
     "torch SequentialLR (each part restarts at its boundary)", 100,
     [("", S.join([S.linear(0.1, 1.0, 20), S.cosine_decay(1.0, 50), S.constant(0.3)], [20, 70]))]),
    ("multiply(cosine_decay(1.0, 100), cyclic(0.5, 1.0, step_size_up=5))", "product", 100,
     [("", S.multiply(S.cosine_decay(1.0, 100), S.cyclic(0.5, 1.0, 5)))]),
]
STYLES = ["-", "--", ":"]


def main(path: str = "schedule_gallery.png") -> str:
    cols = 3
    rows = -(-len(PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (call, peer, n, lines) in zip(axes.flat, PANELS):
        steps = np.arange(n + 1)
        for (label, schedule), style in zip(lines, STYLES):
            ax.plot(steps, np.asarray(schedule(steps)), style, lw=1.6, label=label)
        title = textwrap.fill(call, 58, subsequent_indent="  ")
        ax.set_title(title, fontsize=8.5, family="monospace", loc="left")
        if peer:
            ax.text(0.99, 0.97, peer, transform=ax.transAxes, ha="right", va="top", fontsize=7.5,
                    color="0.35", style="italic")
        ax.set_ylim(0.0, 1.12 + (0.08 + 0.13 * len(lines)) * (len(lines) > 1))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7.5)
        if len(lines) > 1:
            ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.925), framealpha=0.85)
    for ax in axes.flat[len(PANELS):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step (update index)", fontsize=8)
    fig.suptitle("optaxsched.schedules: value at step t is the learning rate of update t",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.abspath(path)


if __name__ == "__main__":
    print(f"wrote {main(*sys.argv[1:2])}")
