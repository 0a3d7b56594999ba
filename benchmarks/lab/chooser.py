"""The faster of two ways of doing the same work with the same bits, chosen while running (for pair.py: its two
threads, or its two roles in turn on one thread)."""

import statistics

PROBE_EVERY, MAX_PROBE_EVERY = 64, 4096  # the way not in use is timed again after this many calls (doubling,
KEEP = 5  # up to the max, each time it loses), over KEEP calls; the faster median of the last KEEP calls is used
HOPELESS = 20  # a probe call this many times slower than the way in use ends the probe at once


class TimingChooser:
    """The faster of two ways (True, False) of doing the same work with the same bits (the pair path on two
    threads or in its one-thread order: with another busy process on a 2-core machine a two-thread step took
    16-18 ms against 0.2-0.3 ms on one thread). The faster of the two over their last KEEP timed calls (median) is
    used. The other is tried again, for KEEP calls in a row (its first call after a pause wakes its threads and
    is slow), after PROBE_EVERY calls, and after twice as many each time it loses (up to MAX_PROBE_EVERY), so that
    a slow probe costs little; a probe call HOPELESS times slower than the way in use ends the probe at once. A
    way's first call (compilation, thread start) is not timed."""

    def __init__(self):
        self.times = {True: [], False: []}  # seconds of the latest calls, by way
        self.started = {True: False, False: False}
        self.calls = 0
        self.interval = self.next_probe = PROBE_EVERY
        self.probe = None  # while probing: (way, calls left, the other way's median)

    def _best(self):
        return statistics.median(self.times[True]) <= statistics.median(self.times[False])

    def choose(self):
        """The way for the next call."""
        self.calls += 1
        for way in (True, False):
            if not self.times[way]:
                return way
        if self.probe is None and self.calls >= self.next_probe:
            other = not self._best()
            self.probe = (other, KEEP, statistics.median(self.times[not other]))
        return self.probe[0] if self.probe is not None else self._best()

    def record(self, way, seconds):
        """The time of the call just made the way choose() returned."""
        if not self.started[way]:
            self.started[way] = True
            return
        recent = self.times[way]
        recent.append(seconds)
        del recent[:-KEEP]
        if self.probe is not None:
            probing, left, rival = self.probe
            hopeless = seconds > HOPELESS * rival  # e.g. the cores are taken: stop at once
            self.probe = (probing, left - 1, rival) if left > 1 and not hopeless else None
            if self.probe is None:
                won = not hopeless and statistics.median(recent) < rival
                self.interval = PROBE_EVERY if won else min(2 * self.interval, MAX_PROBE_EVERY)
                self.next_probe = self.calls + self.interval


def variant(p, *, loops=None, positions=None):
    """The plan p with the recurrent products as hand loops or BLAS (`loops`) and/or the position products done
    another way (`positions`), and its path adjusted to fit (the pair path needs hand loops; hand-loop position
    products exist on the layers path only): for tests and benchmarks that compare the ways."""
    loops = p.loops if loops is None else bool(loops)
    positions = p.positions if positions is None else positions
    path = "fused" if p.path == "pair" and not loops else p.path
    if path != "layers" and positions == "loops":
        positions = "blas"
    return dataclasses.replace(p, loops=loops, positions=positions, path=path, measured=False)
