"""Training throughput in chars/s: numba kernels vs the NumPy reference vs a seed-style NumPy RNN.

    python -m benchmarks.throughput [--quick] [--json PATH] [--hidden 64,128] [--batch 1,64] [--threads 1,2]
                                    [--dtype float32,float64] [--repeats R] [--models rnn,lstm:2]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

A training step, as in fastrnn/train/run.py, is forward_backward + clip_gradients(clip 5) + adam_update on one (N, T)
minibatch: N*T characters. Contenders:

    numba  fastrnn.kernels (or --numba-module), minibatched
    numpy  fastrnn.reference, minibatched
    seed   benchmarks.seed_style.SeedRNN: the same N*T characters per step, as N sequences of T one after the
           other (min-char-rnn's lossFun + Adagrad per sequence, column vectors, a Python loop over time)

Before timing, one step of the numba backend is checked against the reference from identical parameters and
data (loss, every gradient, the final state and the parameters after clip + Adam), and the seed-style model
against the reference on one sequence; rows record `checked`. The first step (numba JIT compilation, BLAS
start-up) is timed apart as `compile_seconds`; throughput is the median over repeats of the steady state. The
contenders' repeats are interleaved (a, b, c, a, b, c, ...: the same machine noise for all), and each timed repeat
follows an untimed warm-up of the same contender (common.time_interleaved), so that no contender is timed while the
threads of the one before still hold the cores.

GFLOP/s counts the matrix products per character. For the vanilla RNN:

    flops_per_char = 6*H*H + 6*V*H
        forward   h @ Whh (2HH), h @ Why (2HV)
        backward  dz @ Whh.T and dWhh (4HH), dlogits @ Why.T and dWhy (4HV)

and for L layers of a cell with G gate blocks (rnn 1, gru 3, lstm 4):

    flops_per_char = 6*G*H*H*(2L - 1) + 6*V*H
        layer 0: the recurrent product h @ Whh (H, G*H) forward and its two backward products (6GHH); layers
        1..L-1 also the input product (6GHH each); the output layer 6VH

(layer 0's input side is a table lookup; elementwise work is not counted). `--models rnn,gru,lstm,lstm:2` picks
the models (NAME or NAME:LAYERS); the seed-style contender exists for the 1-layer rnn only. `peak_fraction` divides by the sgemm or
dgemm rate of this machine at the row's thread count, measured in the same run on (2048, 2048) products.
"""

import importlib
import itertools
import os
import time
from types import SimpleNamespace

import click
import numpy as np

from benchmarks import common, options
from benchmarks.seed_style import SeedRNN
from fastrnn import cells, reference
from fastrnn.cli.types import Finite
from fastrnn.model import Model
from fastrnn.params import Params

V = 65  # vocabulary (tiny Shakespeare)
SEQ_LEN = 50  # T
CLIP = 5.0
ADAM = dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8)
CONTENDERS = ("numba", "numpy", "seed")
GRID = dict(hidden=[64, 128, 256, 512], batch=[1, 16, 64, 128], dtype=["float32", "float64"], threads=[1, 2])
# the targets: a row key (hidden, batch, dtype, threads) and the numba row's required metrics
TARGETS = [
    dict(name="H512 N64 2thr f32", hidden=512, batch=64, dtype="float32", threads=2,
         checks=[("peak_fraction", 0.80), ("vs_numpy", 1.15), ("vs_seed", 15.0)]),
    dict(name="lstm H512 N64 2thr f32", model="lstm", hidden=512, batch=64, dtype="float32", threads=2,
         checks=[("peak_fraction", 0.80)]),
    dict(name="lstm x2 H512 N64 2thr f32", model="lstm", layers=2, hidden=512, batch=64, dtype="float32",
         threads=2, checks=[("peak_fraction", 0.80)]),
    dict(name="gru H512 N64 2thr f32", model="gru", hidden=512, batch=64, dtype="float32", threads=2,
         checks=[("peak_fraction", 0.80)]),
    dict(name="H128 N1 2thr f32", hidden=128, batch=1, dtype="float32", threads=2, checks=[("vs_numpy", 5.0)]),
    dict(name="H128 N32 2thr f32", hidden=128, batch=32, dtype="float32", threads=2, checks=[("vs_numpy", 1.5)]),
]
API = ("forward_backward", "clip_gradients", "adam_update")  # what a training step calls
CHECK_TOL = {"float32": 2e-3, "float64": 1e-9}  # max |a - b| / max |reference| per array


def flops_per_char(H, vocab=V, model="rnn", layers=1):
    return 6 * cells.get(model).gates * H * H * (2 * layers - 1) + 6 * vocab * H


def parse_models(text):
    """'rnn,lstm:2' -> [('rnn', 1), ('lstm', 2)]."""
    out = []
    for item in text.split(","):
        name, _, layers = item.strip().partition(":")
        if name not in cells.names():
            raise ValueError(f"unknown model {name!r}; choose from {', '.join(cells.names())}")
        if layers and (not layers.isdigit() or int(layers) < 1):
            raise ValueError(f"layers must be a positive integer, got {item!r}")
        out.append((name, int(layers or 1)))
    return out


def model_label(model, layers):
    return model if layers == 1 else f"{model}:{layers}"


# ---------------------------------------------------------------------------------------------------------------
# one training step per contender


def make_data(N, T, seed=1):
    """x, y: (N, T) int32 random tokens (for the checks)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (N, T), dtype=np.int32), rng.integers(0, V, (N, T), dtype=np.int32)


class BackendStep:
    """Parameters, gradients, Adam state and a carried state for one backend; call it for one training step."""

    def __init__(self, backend, H, N, T, dtype, init_scale=0.01, seed=0, tokens=None, model="rnn", layers=1,
                 precision="float32"):
        self.backend, self.precision = backend, precision
        self.model = Model(V, H, dtype, model, layers).init(np.random.default_rng(seed), init_scale)
        self.g = self.model.layout.zeros(self.model.dtype)  # (P,) flat gradients
        self.G = self.model.layout.views(self.g)
        self.m = self.model.layout.zeros(self.model.dtype)  # (P,) Adam first moment
        self.v = self.model.layout.zeros(self.model.dtype)  # (P,) Adam second moment
        self.h = self.model.zero_state(N)  # (N, S)
        self.batches = common.Batches(N, T, tokens)
        self.t = 0
        self.loss = None
        self.plan = None  # the backend's plan for this shape, made at the first step (as training makes it once)

    def __call__(self):
        b = self.backend
        x, y, new_epoch = self.batches.next()  # (N, T), (N, T)
        if new_epoch:
            self.h[...] = 0
        if self.plan is None and hasattr(b, "plan_for"):  # (a --numba-module from before plans has none)
            self.plan = (b.plan_for(self.model.P, *x.shape) if self.precision == "float32" else
                         b.plan_for(self.model.P, *x.shape, precision=self.precision))
        if self.plan is None:
            self.loss, self.h = b.forward_backward(self.model.P, self.G, x, y, self.h)
        else:
            self.loss, self.h = b.forward_backward(self.model.P, self.G, x, y, self.h, plan=self.plan)
        b.clip_gradients(self.g, CLIP, 0.0)
        self.t += 1
        b.adam_update(self.model.flat, self.g, self.m, self.v, ADAM["lr"], ADAM["beta1"], ADAM["beta2"],
                      ADAM["eps"], self.t)


class SeedStep:
    """N sequences of T characters through SeedRNN.train_step, one after the other, each with its own state."""

    def __init__(self, H, N, T, dtype, tokens=None):
        self.dtype = np.dtype(dtype)
        self.rnn = SeedRNN(V, H, seed=0, dtype=self.dtype)
        self.batches = common.Batches(N, T, tokens)
        self.hs = [np.zeros((H, 1), dtype=self.dtype) for _ in range(N)]  # N x (H, 1)

    def __call__(self):
        x, y, new_epoch = self.batches.next()
        for i, (xi, yi) in enumerate(zip(x.tolist(), y.tolist())):
            if new_epoch:
                self.hs[i][...] = 0
            _, self.hs[i] = self.rnn.train_step(xi, yi, self.hs[i])


# ---------------------------------------------------------------------------------------------------------------
# correctness checks before timing


def _rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check_backend(backend, H, N, T, dtype, model="rnn", layers=1):
    """Max relative error of `backend` vs the reference over one step from identical parameters and data: loss,
    every gradient and hT of forward_backward, then clip_gradients and adam_update on the same flat buffers."""
    scale = 0.5 / np.sqrt(H)  # Whh's spectral radius about 0.5: a stable recurrence, where rounding cannot grow
    a, r = (BackendStep(mod, H, N, T, dtype, init_scale=scale, model=model, layers=layers)
            for mod in (backend, reference))
    rng = np.random.default_rng(3)
    h0 = (rng.standard_normal(a.h.shape) * 0.5).astype(dtype)  # (N, S) a non-zero carried state
    x, y = make_data(N, T)  # (N, T)
    la, ha = backend.forward_backward(a.model.P, a.G, x, y, h0.copy())
    lr, hr = reference.forward_backward(r.model.P, r.G, x, y, h0.copy())
    errs = [abs(la - lr) / max(abs(lr), 1e-30), _rel_err(ha, hr)] + [_rel_err(a.G[k], r.G[k]) for k in r.G]
    # clip + Adam on a synthetic buffer whose gradients are well away from 0 and partly beyond the clip
    size = a.g.size
    g = (rng.standard_normal(size) * 4 + np.sign(rng.standard_normal(size))).astype(dtype)  # (P,)
    bufs = {name: [x.copy(), x.copy()] for name, x in dict(
        p=rng.standard_normal(size), g=g, m=rng.standard_normal(size) * 0.1, v=rng.random(size) * 0.1).items()}
    norms = [mod.clip_gradients(bufs["g"][i], CLIP, 0.0) for i, mod in enumerate((backend, reference))]
    errs.append(abs(norms[0] - norms[1]) / norms[1])
    for i, mod in enumerate((backend, reference)):
        b = {k: v[i].astype(dtype) if k != "g" else v[i] for k, v in bufs.items()}
        mod.adam_update(b["p"], b["g"], b["m"], b["v"], ADAM["lr"], ADAM["beta1"], ADAM["beta2"], ADAM["eps"], 3)
        bufs["p"][i] = b["p"]
    errs += [_rel_err(bufs["g"][0], bufs["g"][1]), _rel_err(bufs["p"][0], bufs["p"][1])]
    return max(errs)


def check_seed(H, T, dtype):
    """Max relative error of SeedRNN.loss_fun (summed loss) vs the reference (mean loss) on one sequence."""
    rnn = SeedRNN(V, H, seed=1, dtype=np.dtype(dtype))
    rng = np.random.default_rng(2)
    for p in rnn.params:
        p[...] = rng.standard_normal(p.shape) * 0.05
    x, y = make_data(1, T)
    h0 = (rng.standard_normal((H, 1)) * 0.2).astype(dtype)  # (H, 1)
    loss, grads, h = rnn.loss_fun(x[0].tolist(), y[0].tolist(), h0)
    P = Params({"Wxh": rnn.Wxh.T.copy(), "Whh": rnn.Whh.T.copy(), "bh": rnn.bh[:, 0].copy(), "Why": rnn.Why.T.copy(),
                "by": rnn.by[:, 0].copy()}, "rnn", 1, H)
    G = {k: np.zeros_like(v) for k, v in P.items()}
    rloss, hT = reference.forward_backward(P, G, x, y, h0.T.copy())
    errs = [abs(loss - rloss * T) / abs(rloss * T), _rel_err(h[:, 0], hT[0])]
    for g, name in zip(grads, ["Wxh", "Whh", "Why", "bh", "by"]):
        expect = G[name].T * T if G[name].ndim == 2 else G[name][:, None] * T
        if np.max(np.abs(expect)) < 5:  # the seed clips at 5; compare only unclipped gradients
            errs.append(_rel_err(g, expect))
    return max(errs)


# ---------------------------------------------------------------------------------------------------------------
# measurement


def measure(contenders, H, N, T, dtype, threads, repeats, min_seconds, model="rnn", layers=1):
    """Rows for one configuration: chars/s of each contender, their timed repeats interleaved.

    contenders: {name: backend module ('numba', 'numpy') or None ('seed')}."""
    common.set_threads(threads)
    steps, rows = {}, {}
    for name, backend in contenders.items():
        if name == "seed" and (model, layers) != ("rnn", 1):
            continue
        row = dict(backend=name, model=model, layers=layers, hidden=H, batch=N, seq_len=T, vocab=V, dtype=dtype, threads=threads)
        if name == "seed":
            steps[name] = SeedStep(H, N, T, dtype)
            err = check_seed(H, T, dtype)
        else:
            steps[name] = BackendStep(backend, H, N, T, dtype, model=model, layers=layers)
            err = check_backend(backend, H, N, T, dtype, model, layers) if backend is not reference else 0.0
        t0 = time.perf_counter()
        steps[name]()  # first step: JIT compilation (numba), BLAS thread start-up
        row.update(first_step_seconds=time.perf_counter() - t0, check_error=err,
                   checked=bool(err <= CHECK_TOL[dtype]))
        rows[name] = row
    counts = {name: min(repeats, 3) if name == "seed" else repeats for name in steps}  # a seed step: seconds
    timings = common.time_interleaved(steps, counts, min_seconds)
    for name, (seconds, calls, samples) in timings.items():
        cps = N * T / seconds
        rows[name].update(chars_per_sec=cps, gflops=cps * flops_per_char(H, V, model, layers) / 1e9, step_ms=seconds * 1e3,
                          compile_seconds=max(0.0, rows[name]["first_step_seconds"] - seconds),
                          repeats=counts[name], steps_per_repeat=calls,
                          spread=(max(samples) - min(samples)) / seconds)
    return list(rows.values())


def add_ratios(rows, peaks):
    """peak_fraction on every row; vs_numpy and vs_seed on numba rows (pairs from the same run)."""
    by_key = {(r["backend"], r["model"], r["layers"], r["hidden"], r["batch"], r["dtype"], r["threads"]): r
              for r in rows}
    for r in rows:
        r["peak_fraction"] = r["gflops"] / peaks[r["dtype"]][str(r["threads"])]
        if r["backend"] == "numba":
            for other in ("numpy", "seed"):
                o = by_key.get((other, r["model"], r["layers"], r["hidden"], r["batch"], r["dtype"], r["threads"]))
                r["vs_" + other] = r["chars_per_sec"] / o["chars_per_sec"] if o else None


def evaluate_targets(rows):
    """[{name, key, checks: [{metric, value, threshold, pass}], pass}] (pass None when the row is missing)."""
    by_key = {(r.get("model", "rnn"), r.get("layers", 1), r["hidden"], r["batch"], r["dtype"], r["threads"]): r
              for r in rows if r["backend"] == "numba"}
    out = []
    for t in TARGETS:
        row = by_key.get(_target_key(t))
        checks = []
        for metric, threshold in t["checks"]:
            value = row.get(metric) if row else None
            checks.append(dict(metric=metric, value=value, threshold=threshold,
                               passed=None if value is None else bool(value >= threshold)))
        ok = None if any(c["passed"] is None for c in checks) else all(c["passed"] for c in checks)
        out.append(dict(name=t["name"], model=t.get("model", "rnn"), layers=t.get("layers", 1), hidden=t["hidden"],
                        batch=t["batch"], dtype=t["dtype"], threads=t["threads"], checks=checks, passed=ok))
    return out


def _target_key(t):
    """A target's row: (model, layers, hidden, batch, dtype, threads)."""
    return (t.get("model", "rnn"), t.get("layers", 1), t["hidden"], t["batch"], t["dtype"], t["threads"])


def configs(args):
    """(model, layers, hidden, batch, dtype, threads) to run, grouped by thread count."""
    targets = [_target_key(t) for t in TARGETS]
    if args.quick:
        chosen = targets
    else:
        grid = [(m, l, H, N, dt, thr) for (m, l), H, N, dt, thr in
                itertools.product(args.models, args.hidden, args.batch, args.dtype, args.threads)]
        chosen = grid + [t for t in targets if t not in grid and args.targets]
    order = {m: i for i, m in enumerate(args.models)}
    return sorted(set(chosen), key=lambda c: (c[5], c[4], order.get((c[0], c[1]), -1), c[2], c[3]))


TABLE = [("backend", "backend", "s"), ("model", "model", "s"), ("L", "layers", "d"), ("H", "hidden", "d"), ("N", "batch", "d"), ("dtype", "dtype", "s"),
         ("thr", "threads", "d"), ("chars/s", "chars_per_sec", ",.0f"), ("ms/step", "step_ms", ".2f"),
         ("GFLOP/s", "gflops", ".2f"), ("%peak", "peak_fraction", lambda v: f"{100 * v:.1f}"),
         ("x numpy", "vs_numpy", ".2f"), ("x seed", "vs_seed", ".1f"), ("compile s", "compile_seconds", ".2f"),
         ("checked", "checked", lambda v: "yes" if v else "NO")]


def print_targets(targets):
    for t in targets:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[t["passed"]]
        parts = [f"{c['metric']} {c['value']:.3g} >= {c['threshold']:g}" if c["value"] is not None
                 else f"{c['metric']} missing" for c in t["checks"]]
        print(f"{status}  {t['name']}: " + "; ".join(parts))


def _models(ctx, param, value):
    try:
        return parse_models(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). Each row is checked against the reference before it is timed.")
@options.quick("Only the target rows, float32 (about a minute); --hidden, --batch, --dtype, --threads and "
               "--models are ignored.")
@options.json_output("Write machine, peaks, rows, targets and settings to this JSON file.")
@click.option("--models", default="rnn", callback=_models,
              help="Models as NAME or NAME:LAYERS, comma-separated, e.g. rnn,gru,lstm,lstm:2.")
@options.int_list("--hidden", GRID["hidden"], "Hidden sizes H, comma-separated.")
@options.int_list("--batch", GRID["batch"], "Batch sizes N, comma-separated.")
@options.threads(GRID["threads"])
@options.dtype(GRID["dtype"])
@click.option("--seq-len", type=click.IntRange(min=1), default=SEQ_LEN, help="Time steps per minibatch T.")
@click.option("--repeats", type=click.IntRange(min=1), default=None, show_default="7, --quick 5; seed at most 3",
              help="Timed repeats per row; the median is reported.")
@click.option("--min-seconds", type=Finite(min=0), default=None, show_default="0.5, --quick 0.3",
              help="Minimum length of one timed repeat, in seconds.")
@click.option("--contenders", type=options.CommaList(str, CONTENDERS), default=",".join(CONTENDERS),
              help="Contenders to time, comma-separated.")
@click.option("--peak-size", type=click.IntRange(min=1), default=2048,
              help="n of the (n, n) GEMM that measures the sgemm and dgemm peaks.")
@click.option("--targets/--no-targets", default=True, help="Add the target rows to the grid.")
@options.numba_module()
def main(quick, json_path, models, hidden, batch, threads, dtype, seq_len, repeats, min_seconds, contenders,
         peak_size, targets, numba_module):
    args = SimpleNamespace(quick=quick, json=json_path, models=models, hidden=hidden, batch=batch, threads=threads,
                           dtype=dtype, seq_len=seq_len, contenders=contenders, peak_size=peak_size,
                           targets=targets, numba_module=numba_module,
                           repeats=repeats or (5 if quick else 7),
                           min_seconds=min_seconds if min_seconds is not None else (0.3 if quick else 0.5))
    with options.user_errors():
        run(args)


def load_numba(module):
    """(backend module or None, seconds to import it and load or compile every kernel of its API)."""
    t0 = time.perf_counter()
    try:
        backend = importlib.import_module(module)
        for name in API:  # fastrnn.kernels loads its kernels on first use of these names
            getattr(backend, name)
    except ImportError as exc:
        print(f"cannot import {module} ({exc}); skipping the numba contender")
        return None, None
    return backend, time.perf_counter() - t0


def run(args):
    machine = common.machine_info()
    print(f"{machine['cpu']}, {machine['logical_cores']} cores; numpy {machine['numpy']}, numba "
          f"{machine['numba']}, scipy {machine['scipy']}; svml {machine['llvmlite_has_svml']}")
    start, load_start = time.perf_counter(), os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} before starting; other processes share the CPU and "
              f"the numbers will be noisy (contenders are interleaved, so ratios suffer less)")
    numba_backend, import_seconds = load_numba(args.numba_module)
    known = {"numba": numba_backend, "numpy": reference, "seed": None}
    contenders = {name: known[name] for name in args.contenders if name != "numba" or numba_backend is not None}
    todo = configs(args)
    thread_counts = sorted({c[5] for c in todo})
    peaks_start = common.measure_peaks(thread_counts, n=args.peak_size)
    rows = []
    for model, layers, H, N, dtype, threads in todo:
        new = measure(contenders, H, N, args.seq_len, dtype, threads, args.repeats, args.min_seconds, model, layers)
        rows += new
        print(f"  {model_label(model, layers)} H{H} N{N} {dtype} {threads}thr: " + ", ".join(
            f"{r['backend']} {r['chars_per_sec']:,.0f}" for r in new) + " chars/s", flush=True)
    peaks_end = common.measure_peaks(thread_counts, n=args.peak_size)
    # the machine's peak: the better of the measurements before and after the rows (contention only slows down)
    peaks = {dt: {k: max(v, peaks_end[dt][k]) for k, v in by.items()} for dt, by in peaks_start.items()}
    add_ratios(rows, peaks)
    targets = evaluate_targets(rows)
    print()
    print(common.format_table(rows, TABLE))
    for dt, by_threads in peaks.items():
        print(f"{'sgemm' if dt == 'float32' else 'dgemm'} peak: " +
              ", ".join(f"{v:.1f} GFLOP/s at {k} thr" for k, v in by_threads.items()))
    print(f"throughput = N*T chars per step / median step time; a step is forward_backward + clip + adam (seed: N "
          f"sequences of T through SeedRNN.train_step, lossFun + Adagrad); GFLOP/s with flops_per_char = "
          f"6*G*H*H*(2L-1) + 6*V*H (V={V}; G = 1 rnn, 3 gru, 4 lstm); compile s = first step minus a steady one; " + (
              f"{args.numba_module} imported and its kernels loaded in {import_seconds:.2f} s" if numba_backend
              else "no numba contender"))
    print_targets(targets)
    load_end = os.getloadavg()
    noisy = [r for r in rows if r["spread"] > 0.5]
    if noisy:
        print(f"warning: {len(noisy)} of {len(rows)} rows have repeats more than 50% apart (`spread` in the JSON); "
              f"the machine was busy, rerun when it is idle")
    print(f"total {time.perf_counter() - start:.0f} s; load average {load_start[0]:.2f} at start, "
          f"{load_end[0]:.2f} at end")
    if args.json:
        machine.update(loadavg_start=load_start, loadavg_end=load_end)
        common.write_json(args.json, dict(
            machine=machine, peaks=peaks, peaks_start=peaks_start, peaks_end=peaks_end, rows=rows, targets=targets,
            settings=dict(seq_len=args.seq_len, vocab=V, repeats=args.repeats, min_seconds=args.min_seconds,
                          quick=args.quick, numba_module=args.numba_module, import_seconds=import_seconds,
                          flops_per_char="6*G*H*H*(2L-1) + 6*V*H, G = 1 rnn, 3 gru, 4 lstm", step="forward_backward + clip_gradients(5) + adam_update",
                          seed_step="N x SeedRNN.train_step on T chars (lossFun + Adagrad)",
                          data="tiny Shakespeare, N contiguous streams, carried state")))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
