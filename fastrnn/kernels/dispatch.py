"""Which kernel path a training, evaluation or generation call takes: decided here, once per shape, by `plan`.

    plan(cell, layers, N, T, H, V, dropout, threads, dtype) -> Plan

A Plan is a small frozen value that the backend passes to the kernels; nothing else chooses a path, and no
process-wide state is read by a kernel. Its fields:

    path       "fused": the one-layer rnn without dropout, the whole step one njit call (lm.py);
               "layers": any other model (gru, lstm, stacked layers, dropout), layer by layer (stack.py).
    loops      the per-step recurrent products (N, H) x (H, G*H) and their gradients as hand loops (True) or
               OpenBLAS calls (False). Hand loops read Whh once a step; OpenBLAS packs all of Whh at every call,
               which costs more than it saves for a few rows.
    tiles      instead of either: the recurrences cut into one block of batch rows per thread, each thread
               stepping its rows through all T steps with register-tile products (tiles.matmul_tiles, Whh read
               in place, Whh.T copied once per call) and its own gate passes, no BLAS call and no exchange
               between the threads inside a layer (the `_split` kernels of rnn.py, lstm.py, gru.py; always the
               layers path), and the products over all positions split into column blocks over the same threads
               with OpenBLAS held to one thread. Always from TILES_ALWAYS rows a thread; from TILES_MIN_ROWS up to
               there chosen by measuring whole training steps both ways (`tiles_faster`); never below.
    positions  the products over all T*N positions (output layer, weight gradients, the input side of upper
               layers): "blas" (OpenBLAS on the plan's threads) or "loops" (hand loops, for a generation step of
               one or two rows on the layers path: 1.07x at a 2-layer lstm H128, 1.13x at H512, measured here).
    threads    the thread count the plan was made for.

Thresholds are the named constants below. The choice that moves most from CPU to CPU, where hand loops stop
beating OpenBLAS for the recurrent products (it depends on the cache sizes and on OpenBLAS's kernels for the CPU),
is measured on the machine: `loops_faster` times both ways at the exact shape, once, and keeps the answer in
memory and in a small cache file per machine (`cache_path`), so that every later run on the machine makes the same
choice (the same numbers from the same seed and thread count) without measuring again. A measurement taken while other processes
kept the cores busy is thrown away (BUSY_CORES) and the constant rule decides for that run; FASTRNN_CALIBRATE=0
turns the measurement off altogether.

Loops, BLAS and tiles round differently, so two plans give results that agree to rounding, not bit for bit; the
plan is fixed for a run. (Tiles give the same bits at any thread count: each element is one chain of fused
multiply-adds whatever rows share its tile.)

A special path stays here only while a benchmark shows it pays on the machine the project runs on. The step for
one to four sequences pipelined over two threads (one the recurrences, the other the output layer and the weight
gradients) earned 1.06-1.22x on a 2-core Zen 3 but 0.88-1.07x on the 2-core Xeon (AVX-512, 2 MiB L2) measured
last, so it moved to benchmarks/lab/ with its tests (`python -m benchmarks.lab.pair_vs_fused` measures it).
"""

import dataclasses
import functools
import hashlib
import json
import os
import statistics
import time

import numpy as np

from fastrnn.kernels.jit import kernel
from fastrnn.kernels.rnn import BLAS, LOOPS, TILES, recurrent_gradient, recurrent_product
from fastrnn.kernels.tiles import no_pack
from fastrnn.params import GATES

SMALL_ROWS = 2  # at most this many sequences: hand loops for the recurrent products at any H, and for the
# position products of a generation step (T*N rows); OpenBLAS packs the whole weight matrix even for one row
# (measured at H=512, 4H columns: N=1 83 us vs 382 us; N=4 even; N=8 BLAS 1.35x faster)
SMALL_WORK = 1 << 16  # N*H*G*H at or below which the recurrent products use hand loops (the rule without
# measurement, and the centre of the measured band); measured on a 2-core Zen 3 (512 KiB L2): H64 N4 and H128 N1
# loops faster, H128 N32 BLAS faster
MEASURE_BAND = 16  # the choice is measured for work within SMALL_WORK / MEASURE_BAND .. SMALL_WORK * MEASURE_BAND
# (above, BLAS wins by far on every machine measured; below, loops)
# (The fused path's position products once ran on one BLAS thread for one or two sequences of small H: 1.2-1.4x on
# the Zen 3, 0.98-1.01x on the Xeon at H32-H96 N1-N2; dropped.)
TILES_MIN_ROWS = 4  # sequences per thread below which the tiles plan is never taken (one row tile a thread)
TILES_RULE_ROWS = 8  # between TILES_MIN_ROWS and TILES_ALWAYS a thread, tiles from here when not measured
TILES_ALWAYS = 16  # sequences per thread from which the tiles plan is taken without measuring. Measured on the
# 2-core Zen 4 (AVX-512, 1 MiB L2 a core), whole training steps, tiles over the other plan: 2 threads N16 1.18x
# (rnn H128), 1.49x (lstm H128), 1.56x (gru H256); N64 H512 1.05x rnn, 1.31x lstm, 1.22x gru; 1 thread N16
# 1.26-1.46x; but 2 threads lstm H128 N8 0.86x, rnn H128 N4 0.79x (against hand loops)
CALIBRATE_ENV = "FASTRNN_CALIBRATE"
PATHS = ("fused", "layers")
PRECISIONS = ("float32", "bf16")
POSITIONS = ("blas", "loops")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call of a given shape runs (module docstring)."""

    cell: str
    layers: int
    N: int
    T: int
    H: int
    V: int
    dropout: bool
    threads: int
    dtype: str
    path: str
    loops: bool
    positions: str
    measured: bool = False  # whether `loops` (or `tiles`) was measured
    tiles: bool = False
    precision: str = "float32"  # "bf16": the tiles' recurrent products in bf16 with float32 sums (tiles.py)

    @property
    def how(self):
        """The kernels' code for the recurrent products: rnn.TILES, LOOPS or BLAS."""
        return TILES if self.tiles else LOOPS if self.loops else BLAS

    def __post_init__(self):
        if self.path not in PATHS or self.positions not in POSITIONS:
            raise ValueError(f"plan: unknown path {self.path!r} or positions {self.positions!r}")
        fused = self.cell == "rnn" and self.layers == 1 and not self.dropout and not self.tiles
        if (self.path != "layers") != fused:
            raise ValueError(f"plan: path {self.path!r} cannot run {self.cell} x {self.layers} "
                             f"{'with' if self.dropout else 'without'} dropout")
        if self.positions == "loops" and self.path != "layers":
            raise ValueError("plan: hand-loop position products exist on the layers path only")
        if self.precision not in PRECISIONS or (self.precision == "bf16" and not (self.tiles and
                                                                                   self.dtype == "float32")):
            raise ValueError(f"plan: precision {self.precision!r} (bf16 needs the tiles plan and float32)")

    def describe(self):
        """One line for people: 'fused step; recurrent products: hand loops; position products: BLAS; 2 threads'."""
        path = {"fused": "fused step", "layers": "layer by layer"}[self.path]
        rec = ("register tiles" + (" in bf16" if self.precision == "bf16" else "") + ", a block of rows per thread"
               if self.tiles else
               "hand loops" if self.loops else "BLAS")
        pos = {"blas": "BLAS", "loops": "hand loops"}[self.positions]
        return (f"{path}; recurrent products: {rec}; position products: {pos}; {self.threads} "
                f"thread{'s' if self.threads != 1 else ''}{' (chosen by measurement)' if self.measured else ''}")


def plan(cell, layers, N, T, H, V, dropout, threads, dtype, *, measure=None, precision="float32"):
    """The Plan for a call on N sequences of T steps of a model (cell, layers, H, V), with or without dropout
    masks, on `threads` threads, in `dtype`. measure: measure the loops-or-BLAS choice where it is close (None:
    unless FASTRNN_CALIBRATE=0). precision "bf16": bf16 recurrent products (the tiles plan whenever there are
    TILES_MIN_ROWS sequences a thread) where the CPU has AVX512_BF16 and the dtype is float32; the plan's
    `precision` says what was granted ("float32" otherwise: bf16_refusal says why). The same arguments give the
    same Plan object."""
    if measure is None:
        measure = os.environ.get(CALIBRATE_ENV, "1") != "0"
    if precision not in PRECISIONS:
        raise ValueError(f"plan: unknown precision {precision!r}")
    return _plan(cell, int(layers), int(N), int(T), int(H), int(V), bool(dropout), max(1, int(threads)),
                 np.dtype(dtype).name, bool(measure), precision)


def bf16_refusal(N, threads, dtype):
    """Why a bf16 plan cannot be had for this call (a sentence), or None if it can."""
    from fastrnn.kernels.tiles import has_bf16

    if not has_bf16():
        return "this CPU has no AVX512_BF16"
    if np.dtype(dtype).name != "float32":
        return f"bf16 products need --dtype float32, not {np.dtype(dtype).name}"
    if N < TILES_MIN_ROWS * max(1, int(threads)):
        return (f"bf16 products need {TILES_MIN_ROWS} sequences a thread, and this call has {N} on "
                f"{threads} thread{'s' if threads != 1 else ''}")
    return None


@functools.lru_cache(maxsize=256)
def _plan(cell, layers, N, T, H, V, dropout, threads, dtype, measure, precision="float32"):
    G = GATES[cell]
    work = N * H * G * H
    measured = False
    if N <= SMALL_ROWS:
        loops = True
    else:
        loops = None
        if measure and SMALL_WORK // MEASURE_BAND < work <= SMALL_WORK * MEASURE_BAND:
            loops = loops_faster(N, H, G, dtype, threads)
            measured = loops is not None
        if loops is None:
            loops = work <= SMALL_WORK
    tiles = False
    per_thread = N / threads
    if per_thread >= TILES_ALWAYS:
        tiles = True
    elif per_thread >= TILES_MIN_ROWS and T * N > SMALL_ROWS:
        tiles = tiles_faster(cell, layers, N, T, H, V, dropout, threads, dtype, loops) if measure else None
        measured = measured or tiles is not None
        if tiles is None:
            tiles = per_thread >= TILES_RULE_ROWS
    if precision == "bf16":
        if bf16_refusal(N, threads, dtype) is None:
            tiles = True
        else:
            precision = "float32"
    fused = cell == "rnn" and layers == 1 and not dropout and not tiles
    if not fused:
        path = "layers"
        positions = "loops" if T * N <= SMALL_ROWS else "blas"
    else:
        positions, path = "blas", "fused"
    return Plan(cell, layers, N, T, H, V, dropout, threads, dtype, path, loops, positions, measured, tiles,
                precision)


# ---------------------------------------------------------------------------------------------------------------
# measuring the loops-or-BLAS choice

REPEATS = 5  # interleaved timings of each way; the medians decide
TARGET_FLOPS = 1e9  # about this much work per timing (~10 ms: the whole measurement of a shape takes 0.1-0.3 s,
# long enough for the busy check below to see other processes), whatever the shape


@kernel
def _products(out, rec, h, W, d, loops, reps):
    """reps x (one step's forward product and its gradient): out = h @ W, rec = d @ W.T."""
    for _ in range(reps):
        recurrent_product(out, h, W, loops, no_pack(W))
        recurrent_gradient(rec, d, W, loops, no_pack(W))


def time_products(N, H, G, dtype, threads, loops, reps):
    """Seconds for `reps` forward and backward recurrent products at (N, H) x (H, G*H) on `threads` BLAS
    threads, hand loops or BLAS (one untimed call first)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    h = rng.standard_normal((N, H)).astype(dtype)  # (N, H)
    W = (0.1 * rng.standard_normal((H, G * H))).astype(dtype)  # (H, G*H)
    d = rng.standard_normal((N, G * H)).astype(dtype)  # (N, G*H)
    out, rec = np.empty((N, G * H), dtype), np.empty((N, H), dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        _products(out, rec, h, W, d, loops, 1)
        t0 = time.perf_counter()
        _products(out, rec, h, W, d, loops, reps)
        return time.perf_counter() - t0


def loops_faster(N, H, G, dtype, threads):
    """Whether hand loops beat OpenBLAS for the recurrent products at this shape on this machine: measured once
    (REPEATS interleaved timings of each, medians compared), then read from the cache. None if other processes
    kept the cores busy while it was measured (nothing is cached then; the caller uses its rule)."""
    key = f"{N}x{H}x{G}:{dtype}:{threads}"
    cache = _load_cache()
    if key in cache:
        return bool(cache[key])
    reps = max(4, min(4000, int(TARGET_FLOPS / (4 * N * H * G * H))))

    def measure():
        times = {True: [], False: []}
        for _ in range(REPEATS):
            for loops in (True, False):
                times[loops].append(time_products(N, H, G, dtype, threads, loops, reps))
        return statistics.median(times[True]) <= statistics.median(times[False])

    return _measured(key, measure)


def time_step(p, reps):
    """Seconds for `reps` training steps (forward_backward) of a random model of plan p's shape run as p says, on
    p.threads threads (after one untimed call, which also compiles)."""
    import numba
    from threadpoolctl import threadpool_limits

    from fastrnn import kernels as K
    from fastrnn.dropout import make_masks
    from fastrnn.model import Model

    rng = np.random.default_rng(0)
    model = Model(p.V, p.H, p.dtype, p.cell, p.layers).init(rng, 0.5, "xavier")
    x, y = (rng.integers(0, p.V, size=(p.N, p.T)).astype(np.int32) for _ in range(2))
    h0 = np.zeros((p.N, model.state_size), p.dtype)
    masks = make_masks(rng, 0.5 if p.dropout else 0.0, p.layers, p.T, p.N, p.H, p.dtype)
    G = model.layout.views(model.layout.zeros(p.dtype))
    before = numba.get_num_threads()
    with threadpool_limits(limits=p.threads, user_api="blas"):
        numba.set_num_threads(min(p.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            K.forward_backward(model.P, G, x, y, h0, masks, plan=p)
            t0 = time.perf_counter()
            for _ in range(reps):
                K.forward_backward(model.P, G, x, y, h0, masks, plan=p)
            return time.perf_counter() - t0
        finally:
            numba.set_num_threads(before)


def tiles_faster(cell, layers, N, T, H, V, dropout, threads, dtype, loops):
    """Whether the tiles plan beats the other (hand loops or BLAS as `loops`, fused or layer by layer) for whole
    training steps at this shape on `threads` threads (time_step, both plans interleaved REPEATS times, medians
    compared): measured once, then read from the cache; None if the cores were busy. (The per-step products
    alone mislead here: at few rows a thread they favour tiles, whose per-call costs, packing Whh and starting
    the threads for each layer, they leave out.)"""
    key = f"tiles:{cell}:{layers}:{N}x{T}x{H}x{V}:{int(dropout)}:{dtype}:{threads}"
    cache = _load_cache()
    if key in cache:
        return bool(cache[key])
    fused = cell == "rnn" and layers == 1 and not dropout
    other = Plan(cell, layers, N, T, H, V, dropout, threads, dtype, "fused" if fused else "layers", loops, "blas")
    plans = {True: dataclasses.replace(other, path="layers", tiles=True), False: other}
    reps = max(1, min(50, int(TARGET_FLOPS / (6 * N * T * H * GATES[cell] * H * layers))))

    def measure():
        times = {True: [], False: []}
        for _ in range(REPEATS):
            for tiles, p in plans.items():
                times[tiles].append(time_step(p, reps))
        return statistics.median(times[True]) < statistics.median(times[False])

    return _measured(key, measure)


BUSY_CORES = 0.5  # a measurement during which other processes used more than this many cores is thrown away:
# under load two-thread BLAS slows down far more than hand loops on one thread do (measured here with a
# test suite running beside: loops "won" at N32 H128, 50 us against BLAS's 22 us on idle cores)


def _measured(key, measure):
    """measure()'s answer, cached under `key`, if the machine was quiet meanwhile (others_busy below BUSY_CORES);
    else None, and nothing cached."""
    busy_before = others_busy_seconds()
    t0 = time.perf_counter()
    answer = measure()
    others = (others_busy_seconds() - busy_before) / max(time.perf_counter() - t0, 1e-9)
    if others > BUSY_CORES:
        return None
    cache = _load_cache()
    cache[key] = answer
    _save_cache(cache)
    return answer


def others_busy_seconds():
    """CPU seconds used so far by every other process on the machine (all cores, busy time less this process's)."""
    import psutil

    total = psutil.cpu_times()
    busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
    mine = psutil.Process().cpu_times()
    return busy - (mine.user + mine.system)


def cache_path():
    """The measured choices of this machine: $FASTRNN_CACHE_DIR, else $XDG_CACHE_HOME/fastrnn or ~/.cache/fastrnn,
    /dispatch-<machine>.json, where <machine> hashes the CPU model and flags and the NumPy, numba and OpenBLAS
    versions (another CPU or library measures anew)."""
    root = os.environ.get("FASTRNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastrnn")
    return os.path.join(root, f"dispatch-{machine_id()}.json")


@functools.lru_cache(maxsize=1)
def machine_id():
    """A hash of what the measured choices depend on: the CPU (model and flags), NumPy, numba, the BLAS library the
    kernels call and the OpenBLAS core type forced through the environment, if any."""
    import platform

    import numba

    from fastrnn.kernels import blas

    parts = [platform.machine(), np.__version__, numba.__version__, os.path.basename(blas.LIBRARY or "fallback"),
             os.environ.get("OPENBLAS_CORETYPE", "")]
    try:
        with open("/proc/cpuinfo") as f:
            parts += [line for line in f if line.startswith(("model name", "flags"))][:2]
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_memory = {}  # path -> the cache's contents (measured choices), this process's copy


def _load_cache():
    path = cache_path()
    if path not in _memory:
        try:
            with open(path) as f:
                data = json.load(f)
            _memory[path] = {k: bool(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _memory[path] = {}
    return _memory[path]


def _save_cache(cache):
    """Write the cache atomically (a temporary file renamed); a location that cannot be written is skipped
    (the choices then last for this process)."""
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def variant(p, *, loops=None, positions=None, tiles=None, precision=None):
    """The plan p with the recurrent products as hand loops or BLAS (`loops`) or tiles (`tiles`), and/or the
    position products done another way (`positions`; hand-loop position products exist on the layers path
    only): for tests and benchmarks that compare the ways. The path follows: tiles run layer by layer, the
    one-layer rnn without dropout and without tiles fused."""
    if tiles is None:  # asking for loops or BLAS means not tiles
        tiles = p.tiles if loops is None else False
    loops = p.loops if loops is None else bool(loops)
    tiles = bool(tiles)
    fused = p.cell == "rnn" and p.layers == 1 and not p.dropout and not tiles
    path = "fused" if fused else "layers"
    positions = p.positions if positions is None else positions
    if path != "layers" and positions == "loops":
        positions = "blas"
    precision = p.precision if precision is None else precision
    if not tiles:
        precision = "float32"
    return dataclasses.replace(p, loops=loops, positions=positions, measured=False, tiles=tiles, path=path,
                               precision=precision)
