"""The speeds of model shapes on this machine, for the choice of a model for a time budget (fastrnn.choose): whole
training steps (the backend's forward_backward) of a freshly initialised model of each shape on random tokens, on
the run's threads and dtype, with the kernel plan a run of the shape takes (on the numba backend measured once per
machine and cached, as a run's own). Each speed is kept in a cache file per machine (choose-<machine>.json in
fastrnn.cachedir, the machine as the kernel plans' cache names it; in each key the shape, vocabulary, dtype, backend
and threads); a timing taken while other processes kept the cores busy is used once, not kept.

A shape is anything with cell, layers, hidden, batch, seq_len and dropout (fastrnn.choose.Shape).
"""

import dataclasses
import os
import statistics
import time

from fastrnn import cachedir

MEASURE_SECONDS = 0.15  # timed steps of a shape: about this long, and at least MEASURE_STEPS
MEASURE_STEPS = 2
PLAN_GUESS = 5.0  # seconds of a kernel plan's measurement (calibrate: 4.5-5.7 s a shape on the 2-core Xeon)
LOAD_GUESS = 0.5  # seconds to load a cell's compiled kernels from numba's cache, before one was seen
BUSY_CORES = 0.5  # a timing during which other processes used more cores than this is not kept in the cache


@dataclasses.dataclass
class Measured:
    speeds: dict  # Shape -> chars/s
    seconds: float  # spent timing (0 if every speed came from the cache)
    cached: int  # speeds read from the cache
    load: float = 0.0  # of `seconds`: the first shape's start-up (its kernels compiled or loaded, its plan measured)


def cache_path():
    from fastrnn.kernels.calibrate import machine_id  # (the kernel plans' cache has the same machines)

    return os.path.join(cachedir.root(), f"choose-{machine_id()}.json")


def cache_key(shape, vocab_size, dtype, backend, threads):
    return f"{backend}:{shape.cell}:{shape.layers}x{shape.hidden}:B{shape.batch}:T{shape.seq_len}:" \
           f"V{vocab_size}:{dtype}:{threads}t:{'dropout' if shape.dropout else 'plain'}"


def _load_cache():
    return {k: float(v) for k, v in cachedir.read_json(cache_path()).items() if isinstance(v, (int, float))}


def _save_cache(updates):
    """Add `updates` to the cache file (atomically; a location that cannot be written is skipped)."""
    cache = _load_cache()
    cache.update(updates)
    cachedir.write_json(cache_path(), cache)


def _others_busy():
    """CPU seconds used so far by every other process on the machine."""
    import psutil

    total, mine = psutil.cpu_times(), psutil.Process().cpu_times()
    return sum(total) - total.idle - getattr(total, "iowait", 0.0) - (mine.user + mine.system)


def _plan(backend, model, N, T, dropout, threads):
    """The kernel plan a timing steps with: the one the run would take (plan_for; on the numba backend measured once
    per machine and shape, a few seconds the first time, then cached, so a run of the shape chosen does not measure
    it again)."""
    return backend.plan_for(model.P, N, T, dropout, threads)


def _plan_known(shape, vocab_size, dtype, backend, threads):
    """Whether the shape's kernel plan is known without measuring (plan_for's measurement costs about
    PLAN_GUESS seconds)."""
    if backend != "numba":
        return True
    import numpy as np

    from fastrnn.kernels import calibrate

    return calibrate.known(shape.cell, shape.layers, shape.batch, shape.seq_len, shape.hidden, vocab_size,
                           shape.dropout, threads, np.dtype(dtype).name)


def time_shape(shape, vocab_size, dtype, backend_name, threads, seconds=MEASURE_SECONDS):
    """Chars/s of training steps (forward_backward) of a fresh model of `shape` on random tokens: one untimed step
    (it compiles or loads the kernels), then steps for about `seconds` (MEASURE_STEPS at least); the median."""
    import numpy as np

    from fastrnn.dropout import make_masks
    from fastrnn.model import Model, get_backend

    backend = get_backend(backend_name)
    rng = np.random.default_rng(0)
    model = Model(vocab_size, shape.hidden, dtype, shape.cell, shape.layers).init(rng, 0.01, "xavier")
    N, T = shape.batch, shape.seq_len
    G = model.layout.views(model.layout.zeros(model.dtype))
    x, y = (rng.integers(0, vocab_size, size=(N, T)).astype(np.int32) for _ in range(2))  # (N, T)
    h = model.zero_state(N)  # (N, S)
    masks = make_masks(rng, 0.5 if shape.dropout else 0.0, shape.layers, T, N, shape.hidden, model.dtype)
    plan = _plan(backend, model, N, T, shape.dropout, threads)
    backend.forward_backward(model.P, G, x, y, h, masks, plan=plan)
    times, start = [], time.perf_counter()
    while len(times) < MEASURE_STEPS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        backend.forward_backward(model.P, G, x, y, h, masks, plan=plan)
        times.append(time.perf_counter() - t0)
    return N * T / max(statistics.median(times), 1e-9)


def measure(shapes, vocab_size, dtype, backend, threads, deadline, *, worth=None, clock=time.perf_counter,
            timer=None, on_timing=None, known=_plan_known):
    """Measured speeds of `shapes` (in the order given): from the cache, else timed (`timer`, default time_shape) while
    `clock` is before `deadline` (the first shape worth timing always). The first shape of the first cell timed
    (its kernels compiled, or loaded from numba's cache: about 25 s for the lnlstm's on a fresh install here, under
    a second from the cache; and its kernel plan measured, if this machine has not: about 5 s) moves the deadline
    on by as long as it took beyond its timed steps: that is the start-up a run of that shape pays in its first
    step anyway (and then does not). Another shape is timed only if a guess of its time ends before the
    deadline: one step of the last shape of its cell (the first shape's start-up for a cell not yet loaded), its
    timed steps, and PLAN_GUESS if its plan is not `known`. worth(shape, speeds so far): False skips a shape not
    worth timing (it cannot fit); None stops there (no later one can). on_timing(): called once, before the
    first timing (seconds of silence otherwise)."""
    timer = timer or time_shape
    cache = _load_cache()
    speeds, spent, cached, kept = {}, 0.0, 0, {}
    first_load, last = {}, {}  # cell -> its first shape's seconds beyond the timed steps; cell -> its last one step
    for shape in shapes:
        key = cache_key(shape, vocab_size, dtype, backend, threads)
        if worth is not None:
            verdict = worth(shape, speeds)
            if verdict is None:
                break
            if not verdict:
                continue
        if key in cache:
            speeds[shape], cached = cache[key], cached + 1
            continue
        grace = next(iter(first_load.values()), 0.0)
        guess = last.get(shape.cell, max(first_load.values(), default=LOAD_GUESS)) + 2 * MEASURE_SECONDS + \
            (0.0 if known(shape, vocab_size, dtype, backend, threads) else PLAN_GUESS)
        if speeds and clock() + guess > deadline + grace:
            break
        if on_timing is not None:
            on_timing()
            on_timing = None
        busy, t0 = _others_busy(), clock()
        speeds[shape] = timer(shape, vocab_size, dtype, backend, threads)
        took = clock() - t0
        spent += took
        first_load.setdefault(shape.cell, max(0.0, took - MEASURE_SECONDS))  # its kernels' start-up, its plan
        last[shape.cell] = shape.batch * shape.seq_len / max(speeds[shape], 1e-9)  # one step, its kernels loaded
        if (_others_busy() - busy) / max(took, 1e-9) <= BUSY_CORES:
            kept[key] = speeds[shape]
    if kept:
        _save_cache(kept)
    return Measured(speeds, spent, cached, next(iter(first_load.values()), 0.0))
