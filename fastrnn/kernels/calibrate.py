"""Timing the candidate plans of a shape on this machine: what dispatch.plan's measured choice rests on.

    fastest(candidates, budget) -> (name of the fastest plan, {name: seconds per step}, seconds timed)

Each candidate (a dispatch.Plan) runs whole training steps (forward_backward) of a random model of its shape on
its threads: one step each first (after an untimed call, which also compiles), so that a candidate more than
ELIMINATE times slower than the best is dropped at once and the repeats are sized to about TIMING_SECONDS each;
then the survivors in turn, round after round (the same machine noise for all), REPEATS rounds or as many as fit
in `budget` seconds (two at least); the medians decide. Whole steps, not the products alone: at few rows a thread
the products favour tiles, whose per-call costs (packing Whh, starting the threads for each layer) they leave out.

Each timing follows a pause of SETTLE_SECONDS and one untimed step of the same candidate, as a run of that plan
alone would be: OpenBLAS keeps its idle threads spinning for about 0.1 s after a call, and timed right after a
BLAS plan's steps, a tiles plan (whose threads then compete with them) measured 88.8k chars/s at rnn H512 B64
against 107.8k in a process of its own (lstm 2x128 B50: 80.8k against 117.3k), and lost to BLAS (94.2k, 82.1k)
where alone it wins; with the pause, 100.9k and 121.2k (2-core Xeon, AVX-512).
"""

import statistics
import time

import numpy as np

REPEATS = 5  # rounds of timings at most; the medians decide
ELIMINATE = 2.0  # a candidate this many times slower than the best in its first step is not timed further
TIMING_SECONDS = 0.02  # about this long per timing (several steps of a small shape, one of a large one)
SETTLE_SECONDS = 0.2  # the pause before each timing (module docstring)


class Stepper:
    """Training steps of a random model of plan p's shape, run as p says on p.threads threads."""

    def __init__(self, p):
        from fastrnn.dropout import make_masks
        from fastrnn.model import Model

        rng = np.random.default_rng(0)
        self.plan = p
        self.model = Model(p.V, p.H, p.dtype, p.cell, p.layers).init(rng, 0.5, "xavier")
        self.x, self.y = (rng.integers(0, p.V, size=(p.N, p.T)).astype(np.int32) for _ in range(2))
        self.h0 = np.zeros((p.N, self.model.state_size), p.dtype)
        self.masks = make_masks(rng, 0.5 if p.dropout else 0.0, p.layers, p.T, p.N, p.H, p.dtype)
        self.G = self.model.layout.views(self.model.layout.zeros(p.dtype))
        self.warm = False

    def warm_up(self):
        """One untimed step (the first compiles the plan's kernels, or loads them from numba's cache)."""
        self.seconds(0)

    def seconds(self, reps):
        """Seconds for `reps` steps (one untimed step first, the first time: warm_up)."""
        import numba
        from threadpoolctl import threadpool_limits

        from fastrnn import kernels as K

        p = self.plan
        before = numba.get_num_threads()
        with threadpool_limits(limits=p.threads, user_api="blas"):
            numba.set_num_threads(min(p.threads, numba.config.NUMBA_NUM_THREADS))
            try:
                if not self.warm:
                    K.forward_backward(self.model.P, self.G, self.x, self.y, self.h0, self.masks, plan=p)
                    self.warm = True
                if reps == 0:
                    return 0.0
                t0 = time.perf_counter()
                for _ in range(reps):
                    K.forward_backward(self.model.P, self.G, self.x, self.y, self.h0, self.masks, plan=p)
                return time.perf_counter() - t0
            finally:
                numba.set_num_threads(before)


def time_step(p, reps):
    """Seconds for `reps` training steps of plan p's shape run as p says (after one untimed step)."""
    return Stepper(p).seconds(reps)


def fastest(candidates, budget):
    """(the name of the fastest of `candidates` {name: Plan}, {name: median seconds per step of those timed
    to the end}, seconds the timing took); see the module docstring. `budget`: seconds for the rounds after the
    first. Every candidate steps once untimed first (compiling where numba's cache does not hold its kernels),
    outside the seconds returned."""
    steppers = {name: Stepper(p) for name, p in candidates.items()}
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
