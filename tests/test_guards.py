"""fastrnn.guards.FileLock, the one file lock (a run directory's, prepare's output's, the corpus cache's): a second
process is refused with the holder's PID, or, with wait=True, waits for the holder and then takes the lock."""

import os
import subprocess
import sys
import time

import pytest

from fastrnn.guards import Busy, FileLock

HOLD = ("import sys, time; from fastrnn.guards import FileLock; lock = FileLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(float(sys.argv[2])); lock.release()")


def holder(path, seconds):
    """A process holding the lock on `path` for `seconds` (returned once it holds it)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_holder_is_refused_with_the_pid_of_the_first(tmp_path):
    path = tmp_path / "x.lock"
    p = holder(path, 30)
    try:
        with pytest.raises(Busy) as info:
            FileLock(path).acquire()
        assert info.value.holder == str(p.pid)
    finally:
        p.kill()
        p.wait()
    with FileLock(path) as lock:  # the OS dropped the killed holder's lock
        assert open(path).read() == f"{os.getpid()}\n" and lock.fd is not None
    assert not path.exists()  # release removes the file


def test_a_waiting_lock_takes_the_lock_once_the_holder_releases_it(tmp_path):
    path = tmp_path / "x.lock"
    p = holder(path, 1.0)
    started = time.monotonic()
    with FileLock(path, wait=True):
        waited = time.monotonic() - started
        assert open(path).read() == f"{os.getpid()}\n"  # the file the holder removed was made anew
    p.wait()
    assert waited > 0.5 and p.returncode == 0
    assert not path.exists()
