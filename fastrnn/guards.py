"""What keeps a command that writes files safe from signals and from a second writer: one signal guard, one lock.

    SignalGuard   SIGINT/SIGTERM (and any others) handled while a block runs, the previous handlers put back after;
                  configured by its users: train's StopFlag (the first signal stops the run at a step, a second
                  interrupts), checkpoint writes' Deferred (signals wait until the file is written) and prepare's
                  (the first signal interrupts, so that its temporary files are removed on the way out)
    FileLock      an exclusive flock on a file with the holder's PID inside: rundir.RunLock (a run directory, for
                  train) and prepare's lock on its output are this lock, refusing a second holder; the corpus cache's
                  (fastrnn.corpus.fromtext: train prepares a text once) is this lock, waiting for the holder
"""

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time

from fastrnn.errors import Interrupted, in_chain

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # a command a signal stopped exits 128 + its number


def no_news(unraisable):
    """The unraisable hook once a command has said how it ended: a finalizer failing on the way out is no news."""


class SignalGuard:
    """`signals` handled while the block runs, in the main thread (elsewhere nothing is installed, as Python runs
    handlers in the main thread only); the previous handlers and sys.unraisablehook come back on exit.

    Each signal is noted in `received`. From the `raise_from`-th on (1: the first, 2: the second; None: never) a
    signal raises exception(signum) in the main thread, unless commit() was called. then_ignore: after the first
    signal every one of `signals` is ignored (SIG_IGN) until the exit. keep_ignored: a signal this process ignores
    (nohup, SIGINT of a background job) is left alone. replay: on exit the signals noted and not raised go to the
    handlers the block had, in order, at most two (a callable handler is called, the default action is taken).

    An exception the guard raised that lands in a finalizer (which Python can only report) is not reported but
    kept: check() and commit() raise it; if the block ends without an exception all the same, its signal goes to
    the handler the block had, as if it came then. A library that turned the guard's exception into another one
    (h5py raises TypeError from a callback a signal interrupted) has it raised again on exit, as it was."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM), *, raise_from=None, exception=Interrupted,
                 then_ignore=False, keep_ignored=False, replay=False):
        self.signals, self.raise_from, self.exception = tuple(signals), raise_from, exception
        self.then_ignore, self.keep_ignored, self.replay = then_ignore, keep_ignored, replay
        self.received = []  # every signal, in order
        self.raised = []  # (signum, exception) of those that raised
        self.committed = False
        self._saved, self._hook = {}, None

    @property
    def signum(self):
        """The first signal received, or None."""
        return self.received[0] if self.received else None

    def _handler(self, signum, frame):
        self.received.append(signum)
        if self.then_ignore:
            for s in self.signals:
                signal.signal(s, signal.SIG_IGN)
        if self.raise_from and len(self.received) >= self.raise_from and not self.committed:
            exc = self.exception(signum)
            self.raised.append((signum, exc))
            raise exc

    def _ours(self, exc):
        return any(exc is mine for _, mine in self.raised)

    def _unraisable(self, unraisable):
        if not self._ours(unraisable.exc_value):
            self._hook(unraisable)

    def check(self):
        """Raise the last exception the guard raised, if any (one a finalizer swallowed: stop now)."""
        if self.raised:
            raise self.raised[-1][1]

    def commit(self):
        """check(), then: signals no longer raise (the work is complete and about to be put in place)."""
        self.check()
        self.committed = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                if not (self.keep_ignored and signal.getsignal(s) is signal.SIG_IGN):
                    self._saved[s] = signal.signal(s, self._handler)
            self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, exc_type, exc, tb):
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        if self._hook is not None:
            sys.unraisablehook = self._hook
        if self.replay:
            raised = [s for s, _ in self.raised]
            for signum in [s for s in self.received if s not in raised][:2]:
                self._deliver(signum)
        if self.raised and exc is None:  # swallowed by a finalizer after the last check
            self._deliver(self.raised[-1][0])
        if exc is not None and self.raised and not self._ours(exc) and in_chain(exc, self._ours):
            raise self.raised[-1][1].with_traceback(None) from None
        return False

    def _deliver(self, signum):
        """The signal to the handler the block had: called if Python's, else sent again (the default action)."""
        handler = self._saved.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, None)
        elif handler != signal.SIG_IGN:
            os.kill(os.getpid(), signum)


class StopFlag(SignalGuard):
    """The training loop's guard: the first SIGINT or SIGTERM is noted (`signum`: the loop finishes its step,
    checkpoints and stops); a second interrupts at once (Interrupted)."""

    def __init__(self):
        super().__init__(raise_from=2)


class Deferred(SignalGuard):
    """SIGINT and SIGTERM wait until the block is done (a file written), then go to the handlers the block had."""

    def __init__(self):
        super().__init__(replay=True)


class Busy(Exception):
    """The lock is held by another process; `holder` is its PID as it wrote it (None if it wrote none in time)."""

    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


class NoLocks(Exception):
    """The file system cannot lock the file; `reason` says why."""

    def __init__(self, exc):
        super().__init__(exc)
        self.reason = exc.strerror or str(exc)


class FileLock:
    """An exclusive flock on `path` (created if missing) for this process, with its PID inside. The OS drops it
    when the process dies, however it dies; release() removes the file while still holding it, so that no one
    locks a removed file and proceeds (one that took the lock on a file removed meanwhile takes it again on the
    new one).

    acquire() raises Busy if another process holds it (with wait=True it waits until the holder releases it
    instead), NoLocks if the file system cannot lock, OSError if the file cannot be created or written."""

    HOLDER_WAIT = 0.2  # seconds a holder is given to write its PID (it writes it just after taking the lock)

    def __init__(self, path, wait=False):
        self.path, self.wait = os.fspath(path), wait
        self.fd = None

    def acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise Busy(holder) from None
            except OSError as exc:
                os.close(fd)
                raise NoLocks(exc) from exc
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we locked it: lock the current one
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # never a lock left held by a failed start
            raise
        self.fd = fd
        return self

    def _holder(self, fd):
        deadline = time.monotonic() + self.HOLDER_WAIT
        while True:
            try:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                return None
            if text.isdigit() or time.monotonic() >= deadline:
                return text if text.isdigit() else None
            time.sleep(0.01)

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding it (see acquire)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
