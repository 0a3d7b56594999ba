"""Measuring which candidate plan of a shape is fastest on this machine: the answer dispatch.plan is handed.

    measured(cell, layers, N, T, H, V, dropout, threads, dtype, steps) -> (name, note) or None
    fastest(candidates, budget, steps) -> (name of the fastest plan, {name: seconds per step}, seconds timed)

`steps(p)` gives a function that runs one training step of plan p's shape as p says (the backend's: the
timing here knows nothing of models or kernels). `measured` times the shape's dispatch.candidates once per
machine, bounded to about CALIBRATION_SECONDS per shape, and keeps the name of the fastest in memory and in a
small cache file per machine (`cache_path`), so that every later run on the machine makes the same choice (the
same numbers from the same seed and thread count) without measuring again. A measurement taken while other
processes kept the cores busy is thrown away (BUSY_CORES): None, and the rule decides for that process; so does
FASTRNN_CALIBRATE=0 (`enabled`).

`fastest` runs whole training steps on each candidate's threads: one step each first (after an untimed call,
which also compiles), so that a candidate more than ELIMINATE times slower than the best is dropped at once and
the repeats are sized to about TIMING_SECONDS each; then the survivors in turn, round after round (the same
machine noise for all), REPEATS rounds or as many as fit in `budget` seconds (two at least); the medians decide.
Whole steps, not the products alone: at few rows a thread the products favour tiles, whose per-call costs
(packing Whh, starting the threads for each layer) they leave out.

Each timing follows a pause of SETTLE_SECONDS and one untimed step of the same candidate, as a run of that plan
alone would be: OpenBLAS keeps its idle threads spinning for about 0.1 s after a call, and timed right after a
BLAS plan's steps, a tiles plan (whose threads then compete with them) measured 88.8k chars/s at rnn H512 B64
against 107.8k in a process of its own (lstm 2x128 B50: 80.8k against 117.3k), and lost to BLAS (94.2k, 82.1k)
where alone it wins; with the pause, 100.9k and 121.2k (2-core Xeon, AVX-512).
"""

import functools
import hashlib
import os
import statistics
import time

import numpy as np

from fastrnn import cachedir
from fastrnn.kernels import dispatch
from fastrnn.kernels.pools import threads

REPEATS = 5  # rounds of timings at most; the medians decide
ELIMINATE = 2.0  # a candidate this many times slower than the best in its first step is not timed further
TIMING_SECONDS = 0.02  # about this long per timing (several steps of a small shape, one of a large one)
SETTLE_SECONDS = 0.2  # the pause before each timing (module docstring)
CALIBRATION_SECONDS = 3.0  # the timed rounds of one shape's candidates, after one step of each
CALIBRATE_ENV = "FASTRNN_CALIBRATE"
BUSY_CORES = 0.5  # a measurement during which other processes used more than this many cores is thrown away:
# under load two-thread BLAS slows down far more than hand loops on one thread do (measured here with a
# test suite running beside: loops "won" at N32 H128, 50 us against BLAS's 22 us on idle cores)
LOOK_SECONDS = 0.2  # before measuring, the machine is watched this long: busy already, nothing is measured


def enabled():
    """Whether plans are measured: unless FASTRNN_CALIBRATE=0."""
    return os.environ.get(CALIBRATE_ENV, "1") != "0"


class Stepper:
    """Timed runs of step(), one training step of plan p's shape, on p.threads threads."""

    def __init__(self, p, step):
        self.plan, self.step = p, step
        self.warm = False

    def warm_up(self):
        """One untimed step (the first compiles the plan's kernels, or loads them from numba's cache)."""
        self.seconds(0)

    def seconds(self, reps):
        """Seconds for `reps` steps (one untimed step first, the first time: warm_up)."""
        with threads(self.plan.threads):
            if not self.warm:
                self.step()
                self.warm = True
            if reps == 0:
                return 0.0
            t0 = time.perf_counter()
            for _ in range(reps):
                self.step()
            return time.perf_counter() - t0


def time_step(p, reps, steps):
    """Seconds for `reps` training steps of plan p's shape run as p says (after one untimed step)."""
    return Stepper(p, steps(p)).seconds(reps)


def fastest(candidates, budget, steps):
    """(the name of the fastest of `candidates` {name: Plan}, {name: median seconds per step of those timed
    to the end}, seconds the timing took); see the module docstring. `budget`: seconds for the rounds after the
    first. Every candidate steps once untimed first (compiling where numba's cache does not hold its kernels),
    outside the seconds returned."""
    steppers = {name: Stepper(p, steps(p)) for name, p in candidates.items()}
    for s in steppers.values():
        s.warm_up()
    t0 = time.perf_counter()
    first = {name: settled(s, 1) for name, s in steppers.items()}
    best = min(first.values())
    alive = [name for name in steppers if first[name] <= ELIMINATE * best]
    reps = max(1, min(1000, int(TIMING_SECONDS / max(best, 1e-9))))
    times = {name: [] for name in alive}
    deadline = time.perf_counter() + budget
    for round_ in range(REPEATS):
        if len(alive) == 1 or (round_ >= 2 and time.perf_counter() > deadline):
            break
        for name in alive:
            times[name].append(settled(steppers[name], reps) / reps)
    medians = {name: statistics.median(t) if t else first[name] for name, t in times.items()}
    return min(medians, key=medians.get), medians, time.perf_counter() - t0


def settled(stepper, reps):
    """stepper.seconds(reps) after a pause of SETTLE_SECONDS and one untimed step (module docstring)."""
    time.sleep(SETTLE_SECONDS)
    stepper.seconds(1)
    return stepper.seconds(reps)


@functools.lru_cache(maxsize=256)
def measured(cell, layers, N, T, H, V, dropout, threads, dtype, steps):
    """(the name of the fastest of the shape's dispatch.candidates on this machine, a note for the plan's
    description), for dispatch.plan: measured once (`fastest`, with `steps`), then read from the cache; None if
    the shape has one way only, or if other processes kept the cores busy meanwhile (this process does not
    measure that shape again). Arguments as dispatch.plan takes them, normalised (dtype a name)."""
    options = dispatch.candidates(dispatch.rule(cell, layers, N, T, H, V, dropout, threads, dtype))
    if len(options) < 2:
        return None
    return choice(options, steps)


def known(cell, layers, N, T, H, V, dropout, threads, dtype):
    """Whether `measured` answers this shape without timing anything: measuring is off, the shape has one way only,
    or its choice is in this machine's cache (arguments as `measured` takes them)."""
    if not enabled():
        return True
    options = dispatch.candidates(dispatch.rule(cell, layers, N, T, H, V, dropout, threads, dtype))
    return len(options) < 2 or _load_cache().get(_key(next(iter(options.values())))) in options


def _key(p):
    return f"plan:{p.cell}:{p.layers}:{p.N}x{p.T}x{p.H}x{p.V}:{int(p.dropout)}:{p.dtype}:{p.threads}"


def choice(options, steps):
    """(the name of the fastest of options {name: Plan} on this machine, a note): from the cache, else measured
    (None if the machine was busy)."""
    key = _key(next(iter(options.values())))
    cache = _load_cache()
    if cache.get(key) in options:
        return cache[key], "measured earlier on this machine"

    def measure():
        best, medians, seconds = fastest(options, CALIBRATION_SECONDS, steps)
        return best, seconds

    answer = _measured(key, measure)
    if answer is None:
        return None
    best, seconds = answer
    return best, f"measured in {seconds:.1f} s"


def _measured(key, measure):
    """measure()'s answer (the chosen name, and anything else), its name cached under `key`, if the machine was
    quiet meanwhile (others_busy below BUSY_CORES); else None, and nothing cached. A machine already busy in the
    LOOK_SECONDS before is not measured at all (a run there would spend seconds on a measurement thrown away)."""
    busy_before = others_busy_seconds()
    time.sleep(LOOK_SECONDS)
    if (others_busy_seconds() - busy_before) / LOOK_SECONDS > BUSY_CORES:
        return None
    busy_before = others_busy_seconds()
    t0 = time.perf_counter()
    answer = measure()
    others = (others_busy_seconds() - busy_before) / max(time.perf_counter() - t0, 1e-9)
    if others > BUSY_CORES:
        return None
    cache = _load_cache()
    cache[key] = answer[0]
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
    """The measured choices of this machine: dispatch-<machine>.json in fastrnn.cachedir, where <machine> hashes the
    CPU model and flags and the NumPy, numba and OpenBLAS versions (another CPU or library measures anew)."""
    return os.path.join(cachedir.root(), f"dispatch-{machine_id()}.json")


@functools.lru_cache(maxsize=1)
def machine_id():
    """A hash of what the measured choices depend on: the CPU (model and flags), NumPy, numba, the BLAS library the
    kernels call and the OpenBLAS core type forced through the environment, if any, the CPU and features the
    kernels are compiled for and the tile shape."""
    import platform

    import numba

    from fastrnn.kernels import blas, tiles

    t = tiles.TARGET
    parts = [platform.machine(), np.__version__, numba.__version__, os.path.basename(blas.LIBRARY or "fallback"),
             os.environ.get("OPENBLAS_CORETYPE", ""), t.cpu, ",".join(sorted(t.features)),
             f"{tiles.TILE_ROWS}x{tiles.TILE_VECTORS}"]
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
        _memory[path] = {k: v for k, v in cachedir.read_json(path).items() if isinstance(v, str)}
    return _memory[path]


def _save_cache(cache):
    """Write the cache atomically (a temporary file renamed); a location that cannot be written is skipped
    (the choices then last for this process)."""
    cachedir.write_json(cache_path(), cache)
