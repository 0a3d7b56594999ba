"""The speeds of model shapes on this machine, for the choice of a model for a time budget (fastrnn.choose): whole
training steps (the backend's forward_backward) of a freshly initialised model of each shape on random tokens, on
the run's threads and dtype, with the kernel plan the dispatcher's rule gives the shape (without the measurement
a run's plan may take). Each speed is kept in a cache file per machine (choose-<machine>.json in fastrnn.cachedir,
the machine as the kernel plans' cache names it; in each key the shape, vocabulary, dtype, backend and threads); a
timing taken while other processes kept the cores busy is used once, not kept.

A shape is anything with cell, layers, hidden, batch, seq_len and dropout (fastrnn.choose.Shape).
"""

import dataclasses
import os
import statistics
import time

from fastrnn import cachedir

MEASURE_SECONDS = 0.15  # timed steps of a shape: about this long, and at least MEASURE_STEPS
MEASURE_STEPS = 2
LOAD_GUESS = 0.5  # seconds to load a kernel family's compiled code from numba's cache, before one was seen
BUSY_CORES = 0.5  # a timing during which other processes used more cores than this is not kept in the cache


@dataclasses.dataclass
class Measured:
    speeds: dict  # Shape -> chars/s
    seconds: float  # spent timing (0 if every speed came from the cache)
    cached: int  # speeds read from the cache


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
    """The kernel plan a timing steps with: the numba backend's rule (its `plan` without the measurement a run's
    plan_for may take), the reference's one plan."""
    if hasattr(backend, "plan"):
        return backend.plan(model.model, model.num_layers, N, T, model.hidden_size, model.vocab_size, dropout,
                            threads, model.dtype, measure=False)
    return backend.plan_for(model.P, N, T, dropout, threads)


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
            timer=None, on_timing=None):
    """Measured speeds of `shapes` (smallest first): from the cache, else timed (`timer`, default time_shape)
    while `clock` is before `deadline` (the first shape always). worth(shape, speeds so far): False skips a shape
    not worth timing (it cannot fit); None stops there (no larger one can). on_timing(): called once, before
    the first timing (seconds of silence otherwise)."""
    timer = timer or time_shape
    cache = _load_cache()
    speeds, spent, cached, kept = {}, 0.0, 0, {}
    loads = {}  # kernel family -> seconds its first step took (compiling, or loading numba's cache)
    for i, shape in enumerate(shapes):
        key = cache_key(shape, vocab_size, dtype, backend, threads)
        if worth is not None and i > 0:
            verdict = worth(shape, speeds)
            if verdict is None:
                break
            if not verdict:
                continue
        if key in cache:
            speeds[shape], cached = cache[key], cached + 1
            continue
        family = (shape.cell, shape.layers > 1 or shape.dropout)
        guess = loads.get(family, max(loads.values(), default=LOAD_GUESS)) + 2 * MEASURE_SECONDS
        if speeds and clock() + guess > deadline:
            break
        if on_timing is not None:
            on_timing()
            on_timing = None
        busy, t0 = _others_busy(), time.perf_counter()
        speeds[shape] = timer(shape, vocab_size, dtype, backend, threads)
        took = time.perf_counter() - t0
        spent += took
        loads[family] = max(0.0, took - MEASURE_SECONDS)
        if (_others_busy() - busy) / max(took, 1e-9) <= BUSY_CORES:
            kept[key] = speeds[shape]
    if kept:
        _save_cache(kept)
    return Measured(speeds, spent, cached)
