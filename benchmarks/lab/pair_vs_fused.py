"""The one-layer rnn's training step pipelined over two threads (benchmarks/lab/pair.py) against fastrnn's fused
step, side by side in one process: a training step is forward_backward + clip + Adam, T=50, float32; the two are
timed in interleaved repeats and the median of the per-repeat ratios is reported. Runs from a checkout.

    python -m benchmarks.lab.pair_vs_fused --shapes 1:128,2:128,1:256 --json pair.json
"""

import statistics
import time

import click
import numpy as np

from benchmarks import common, options
from fastrnn.cli.types import Finite


def parse_shapes(text):
    """'1:128,2:256' -> [(1, 128), (2, 256)] (N:H pairs)."""
    try:
        shapes = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part]
    except ValueError:
        shapes = None
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise click.BadParameter(f"{text!r} is not a list of N:H pairs of positive integers, e.g. 1:128,2:256")
    return shapes


def measure(N, H, repeats, seconds, T=50, V=65):
    """{N, H, fused_us, pair_us, speedup (fused/pair, median of the per-repeat ratios)} for one shape."""
    from benchmarks.lab.pair import PairStep
    from fastrnn import kernels as K
    from fastrnn.model import Model

    model = Model(V, H, "float32").init(np.random.default_rng(0), 0.01)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, V, (N, T)), rng.integers(0, V, (N, T))
    g = model.layout.zeros(np.float32)
    G = model.layout.views(g)
    m, v = model.layout.zeros(np.float32), model.layout.zeros(np.float32)
    plan = K.plan_for(model.P, N, T)
    pair = PairStep()

    def steps(fused, k):
        h = model.zero_state(N)
        t0 = time.perf_counter()
        for t in range(k):
            if fused:
                _, h = K.forward_backward(model.P, G, x, y, h, plan=plan)
            else:
                _, h = pair(model.P, G, x, y, h)
            K.clip_gradients(g, 5.0, 0.0)
            K.adam_update(model.flat, g, m, v, 1e-3, 0.9, 0.999, 1e-8, t + 1)
        return (time.perf_counter() - t0) / k

    steps(True, 3), steps(False, 3)
    k = max(5, int(seconds / steps(True, 3)))
    fused_times, pair_times = [], []
    for _ in range(repeats):
        fused_times.append(steps(True, k))
        pair_times.append(steps(False, k))
    return dict(N=N, H=H, T=T, steps_per_repeat=k, fused_us=statistics.median(fused_times) * 1e6,
                pair_us=statistics.median(pair_times) * 1e6,
                speedup=statistics.median(f / p for f, p in zip(fused_times, pair_times)), plan=plan.describe())


@options.command()
@click.option("--shapes", default="1:96,1:128,2:128,1:256,2:256,1:512", callback=lambda c, p, v: parse_shapes(v),
              help="N:H pairs (sequences per batch : hidden size), comma-separated.")
@options.repeats(9)
@click.option("--seconds", type=Finite(min=0, min_open=True), default=0.1,
              help="About this long per timed repeat of each contender.")
@options.json_output()
@options.catch_user_errors
def main(shapes, repeats, seconds, json_path):
    """Time the two-thread pipelined step against the fused one on 2 threads."""
    threads = common.set_threads(2)
    rows = []
    for N, H in shapes:
        rows.append(measure(N, H, repeats, seconds))
        r = rows[-1]
        click.echo(f"N{N} H{H}: fused {r['fused_us']:.0f} us, pair {r['pair_us']:.0f} us a step, "
                   f"fused/pair {r['speedup']:.2f}x")
    if json_path:
        common.write_json(json_path, dict(machine=common.machine_info(), threads=threads, repeats=repeats,
                                          rows=rows))


if __name__ == "__main__":
    main()
