"""Scratch measurements for the numba kernels against fastrnn.reference (side by side, same process and threads).

One training step = forward_backward + clip_gradients + adam_update, float32, seq 50, vocab 65. Reports chars/s
(N*T / median seconds per step), GFLOP/s at 6*H*H + 6*V*H FLOPs per char, and the fraction of the sgemm peak
(best of 7 2048^3 float32 numpy matmuls in the same process). Usage:

    OPENBLAS_CORETYPE=Haswell python3 -m benchmarks.kernel_scratch [--threads 2] [--repeats 15] [--json PATH] [N:H ...]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.
"""

import os
import time

import click
import numpy as np

from benchmarks import options
from benchmarks.common import machine_info, write_json
from fastrnn import kernels, reference
from fastrnn.kernels.pools import set_threads
from fastrnn.params import model_layout

DEFAULT_SETTINGS = ["64:512", "1:128", "32:128"]


def sgemm_peak(n=2048, reps=7):
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.dot(a, b, out=c)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.dot(a, b, out=c)
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(ts) / 1e9  # best of reps: the peak


class Trainer:
    def __init__(self, backend, N, H, V=65, T=50, seed=0):
        rng = np.random.default_rng(seed)
        self.b, self.N, self.T = backend, N, T
        self.layout = model_layout("rnn", V, H)
        self.flat = self.layout.init(rng, np.float32, 0.01)
        self.P = self.layout.views(self.flat)
        self.g = self.layout.zeros(np.float32)
        self.G = self.layout.views(self.g)
        self.m, self.v = self.layout.zeros(np.float32), self.layout.zeros(np.float32)
        self.x = rng.integers(0, V, (N, T)).astype(np.int32)
        self.y = rng.integers(0, V, (N, T)).astype(np.int32)
        self.h = np.zeros((N, H), np.float32)
        self.t = 0

    def step(self):
        self.t += 1
        loss, self.h = self.b.forward_backward(self.P, self.G, self.x, self.y, self.h)
        self.b.clip_gradients(self.g, 5.0, 0.0)
        self.b.adam_update(self.flat, self.g, self.m, self.v, 2e-3, 0.9, 0.999, 1e-8, self.t)
        return loss


def measure(N, H, reps, V=65, T=50):
    trainers = {"reference": Trainer(reference, N, H), "numba": Trainer(kernels, N, H)}
    losses = {name: [tr.step() for _ in range(3)] for name, tr in trainers.items()}
    assert np.allclose(losses["reference"], losses["numba"], rtol=1e-4), losses
    inner = max(1, int(0.05 * 50 * 64 * 512 / (N * T * H)))  # steps per timing sample
    times = {name: [] for name in trainers}
    for _ in range(reps):  # interleaved, to share the machine's noise
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                tr.step()
            times[name].append((time.perf_counter() - t0) / inner)
    flops = N * T * (6 * H * H + 6 * V * H)
    return {name: (N * T / np.median(ts), flops / np.median(ts) / 1e9) for name, ts in times.items()}


def _settings(ctx, param, value):
    out = []
    for item in value or DEFAULT_SETTINGS:
        N, _, H = item.partition(":")
        if not (N.isdigit() and H.isdigit() and int(N) > 0 and int(H) > 0):
            raise click.BadParameter(f"expected N:H with positive integers, got {item!r}")
        out.append((int(N), int(H)))
    return out


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). SETTINGS: N:H pairs (batch:hidden)  [default: " + " ".join(DEFAULT_SETTINGS)
                 + "]")
@click.argument("settings", nargs=-1, callback=_settings, metavar="[N:H]...")
@options.threads(2)
@click.option("--repeats", "--reps", type=click.IntRange(min=1), default=15,
              help="Timed samples per contender (interleaved); the median is reported.")
@options.json_output("Write the sgemm peak and the rows to this JSON file.")
@options.catch_user_errors
def main(settings, threads, repeats, json_path):
    threads = set_threads(threads)
    peak = sgemm_peak()
    print(f"threads {threads}  OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}  sgemm peak {peak:.1f} GFLOP/s")
    rows = []
    for N, H in settings:
        r = measure(N, H, repeats)
        (rc, rg), (kc, kg) = r["reference"], r["numba"]
        rows.append(dict(batch=N, hidden=H, threads=threads, reference_chars_per_sec=rc, reference_gflops=rg,
                         numba_chars_per_sec=kc, numba_gflops=kg, peak_fraction=kg / peak, speedup=kc / rc))
        print(f"N={N:3d} H={H:4d}  reference {rc:10.0f} chars/s {rg:6.1f} GF/s | numba {kc:10.0f} chars/s "
              f"{kg:6.1f} GF/s ({kg / peak:5.1%} of peak) | speedup {kc / rc:5.2f}x")
    if json_path:
        write_json(json_path, dict(machine=machine_info(), sgemm_peak=peak, rows=rows))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
