"""The run directory of `fastrnn train`: one owner at a time, and one run's files.

- `RunLock`: an exclusive lock (guards.FileLock: `fcntl.flock`) on RUN_DIR/.fastrnn.lock, held for the whole
  session of a run (the OS releases it when the process dies, even by kill -9). A second writer is refused with
  the holder's PID.
- `prepare`: the directory made and checked before a session writes.
- `run_files`: the files a run writes; a directory holding any of them holds a run.
- `discard_run`: --force's removal of an old run. It first creates RUN_DIR/.fastrnn-discarded (one atomic
  mkdir: from then on the old run is gone), moves the old run's files into it and removes it. The new run writes
  nothing before that directory is gone, and the next session finishes a removal a kill interrupted
  (`finish_discard`), so a kill at any moment leaves the files of one run only.
"""

import errno
import os
import re
import shutil

from fastrnn.checkpoint import fsync_dir, remove_stale_temps
from fastrnn.errors import ConfigError, FileError, os_reason
from fastrnn.guards import Busy, FileLock, NoLocks

LOCK_NAME = ".fastrnn.lock"
DISCARD_NAME = ".fastrnn-discarded"
_RUN_FILE = re.compile(r"^(checkpoint\.h5|best\.h5|last-good\.h5|log\.jsonl|checkpoint-\d+\.h5)$")
_DERIVED_FILE = {"loss.png"}  # `fastrnn plot RUN_DIR`'s default output: goes with the run it plots
_TEMP_FILE = re.compile(r"^(\.checkpoint-.*\.h5\.tmp|(log\.jsonl|last-good\.h5|checkpoint-\d+\.h5)\.tmp)$")


def prepare(run_dir):
    """Before a session writes: the run directory, made if missing, writable, and without the temporary files of a
    checkpoint a kill interrupted."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:  # read-only, under a regular file, in /proc, ...
        raise FileError(f"cannot create run directory {run_dir}: {os_reason(exc)}") from exc
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"run directory {run_dir} is not writable")
    remove_stale_temps(run_dir)


def run_files(run_dir):
    """The names of the files of a run in `run_dir` (checkpoints, best.h5, log.jsonl), sorted."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(n for n in names if _RUN_FILE.match(n))


def discard_run(run_dir):
    """Remove the run in `run_dir` (its files, temporary files and loss.png plot), atomically as seen by later
    sessions."""
    trash = os.path.join(run_dir, DISCARD_NAME)
    try:
        names = [n for n in os.listdir(run_dir) if _RUN_FILE.match(n) or _TEMP_FILE.match(n) or n in _DERIVED_FILE]
        if not names and not os.path.isdir(trash):
            return
        os.makedirs(trash, exist_ok=True)
        fsync_dir(run_dir)  # the commit: the old run is gone once this directory exists
        for name in names:
            os.replace(os.path.join(run_dir, name), os.path.join(trash, name))
        fsync_dir(run_dir)
        shutil.rmtree(trash)
    except OSError as exc:
        raise ConfigError(f"cannot remove the old run in {run_dir}: {exc.strerror or exc}") from exc


def finish_discard(run_dir):
    """Complete a --force removal that a kill interrupted (every run file left is the old run's)."""
    if os.path.isdir(os.path.join(run_dir, DISCARD_NAME)):
        discard_run(run_dir)


class RunLock:
    """An exclusive lock on a run directory for one process (creates the directory if needed): a guards.FileLock on
    RUN_DIR/.fastrnn.lock.

    release() removes the lock file, and the directories this lock created if they are empty."""

    def __init__(self, run_dir):
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_NAME)
        self.created = []  # the directories made for the run, innermost first
        self.lock = FileLock(self.path)
        path = os.path.abspath(self.run_dir)
        while not os.path.isdir(path) and os.path.dirname(path) != path:
            self.created.append(path)
            path = os.path.dirname(path)
        what = "create"
        try:
            os.makedirs(self.run_dir, exist_ok=True)  # exist_ok: another process may be creating it too
            what = "use"
            self.lock.acquire()
        except Busy as exc:
            self._rmdir()
            who = f"PID {exc.holder}" if exc.holder else "another process"
            raise ConfigError(f"{self.run_dir} is in use by another fastrnn train ({who}); wait for it to "
                              f"finish or stop it first") from None
        except NoLocks as exc:  # a filesystem without locks: refuse rather than risk two writers
            self._rmdir()
            raise ConfigError(f"cannot lock run directory {self.run_dir}: {exc.reason}") from exc
        except OSError as exc:
            self._rmdir()
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ConfigError(f"run directory {self.run_dir} is not writable") from exc
            raise ConfigError(f"cannot {what} run directory {self.run_dir}: {exc.strerror or exc}") from exc

    def release(self):
        if self.lock.fd is None:
            return
        self.lock.release()
        self._rmdir()

    def _rmdir(self):
        for path in self.created:
            try:
                os.rmdir(path)  # only if still empty
            except OSError:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
