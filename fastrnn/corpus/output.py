"""The output of prepare (and of prepare --from-torch-rnn), kept safe: one writer, and no partial file whatever
stops it.

One writer per output: `OutputLock` is an exclusive lock (guards.FileLock) on `.OUTPUT.lock` beside the output,
held while it is written (the OS releases it if the process dies); a second writer is refused, naming the holder's
PID. The temporary files are `.OUTPUT.<pid>.prepare.tmp` and `.OUTPUT.<pid>.stdin.tmp` (`temp_name`);
`prepare_guard` turns SIGINT, SIGTERM and SIGHUP into exceptions, so that every way out removes them (exit 130,
143, 129), and the next prepare in that directory removes those of a process that is gone (kill -9) whose output
no live prepare holds (`remove_stale_temps`).
"""

import contextlib
import os
import re
import signal

from fastrnn.errors import CorpusError
from fastrnn.guards import Busy, FileLock, NoLocks, SignalGuard


class PrepareInterrupted(CorpusError):
    """prepare stopped by SIGINT, SIGTERM or SIGHUP (exit status 128 + the signal's number, as a shell reports it)."""

    def __init__(self, signum, output):
        super().__init__(f"prepare interrupted by {signal.Signals(signum).name}: {output} was not written, and its "
                         f"temporary files were removed")
        self.exit_code = 128 + signum


def temp_name(output, kind):
    """The temporary file of this process for `output`: .OUTPUT.<pid>.<kind>.tmp beside it (kind prepare|stdin)."""
    directory, base = _place(output)
    return os.path.join(directory, f".{base}.{os.getpid()}.{kind}.tmp")


def _place(output):
    """(directory, name) of `output`, the directory with symbolic links resolved, so that every spelling of the
    same output shares one lock and one set of temporary names."""
    directory, base = os.path.split(os.path.abspath(output))
    return os.path.realpath(directory), base


def remove_stale_temps(output):
    """Remove the temporary files that earlier prepares in the output's directory left when they died (SIGKILL, a
    crash): those named by a PID that no longer runs, or by this process's own (reused; it has made none yet).
    Called under the output's lock, so no live prepare of this output on this machine is writing its own; those of
    another output are removed only if its lock is free as well."""
    directory, base = _place(output)
    pattern = re.compile(r"^\.(.+)\.(\d+)\.(prepare|stdin)\.tmp$")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or (int(m.group(2)) != os.getpid() and _pid_alive(int(m.group(2)))):
            continue
        try:
            with contextlib.nullcontext() if m.group(1) == base else OutputLock(os.path.join(directory, m.group(1))):
                os.unlink(os.path.join(directory, name))
        except (CorpusError, OSError):  # another prepare holds that output, or the file went already
            pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's process (or not a PID): keep its files
        return True
    return True


class OutputLock:
    """The exclusive lock (guards.FileLock) on .OUTPUT.lock beside `output`, held while prepare writes it. A second
    prepare of the same output is refused with CorpusError naming the holder's PID."""

    def __init__(self, output):
        self.output = output
        directory, base = _place(output)
        self.path = os.path.join(directory, f".{base}.lock")
        self.lock = FileLock(self.path)

    def __enter__(self):
        try:
            self.lock.acquire()
        except Busy as exc:
            raise CorpusError(f"output {self.output} is being written by another prepare (PID "
                              f"{exc.holder or 'unknown'}); wait for it to finish or stop it") from None
        except NoLocks as exc:
            raise CorpusError(f"cannot lock {self.path} for {self.output}: {exc.reason}") from None
        except OSError as exc:
            raise CorpusError(f"cannot write {self.output}: cannot create its lock file {self.path} "
                              f"({exc.strerror or exc})") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


def prepare_guard(output):
    """prepare's signal guard: SIGINT stops prepare with KeyboardInterrupt (as Python's own handler would), SIGTERM
    and SIGHUP with PrepareInterrupted (their default action would end the process at once, leaving its temporary
    files); raised in the main thread, so that every `finally` on the way out removes its temporary files. Further
    signals are ignored while it cleans up. After `commit()` (the output is complete and about to be renamed into
    place) they are ignored. The previous handlers come back on exit. Outside the main thread nothing is
    installed, nor for a signal this process ignores (nohup, or SIGINT of a background job)."""

    def exception(signum):
        return KeyboardInterrupt() if signum == signal.SIGINT else PrepareInterrupted(signum, output)

    return SignalGuard((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), raise_from=1, exception=exception,
                       then_ignore=True, keep_ignored=True)
