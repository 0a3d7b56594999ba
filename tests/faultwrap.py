"""Run the fastrnn command line with one simulated fault (no root needed), for tests in subprocesses:

    FAULT=enospc:NAME:N   writes to files opened by open() whose name is NAME fail with ENOSPC once N bytes are
                          written (the bytes that fit are written first, as on a disk that fills up)
    FAULT=eio:NAME:N      reads of files opened by open() whose name is NAME fail with EIO after N bytes
    FAULT=pwrite:N        os.pwrite fails with ENOSPC once N bytes are written (prepare's id writer)
    FAULT=sigint-import:MODULE
                          SIGINT arrives while MODULE is being imported (Ctrl-C during start-up); likewise
    FAULT=sigterm-import:MODULE

    python tests/faultwrap.py train corpus.h5 -o run ...
"""

import builtins
import errno
import os
import signal
import sys

KIND, *ARGS = os.environ.get("FAULT", "none").split(":")


def _error(code):
    return OSError(code, os.strerror(code))


class _Full:
    """A writable file that takes `room` more bytes, then fails with ENOSPC."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            self._f.flush()
            raise _error(errno.ENOSPC)
        self._room -= len(data)
        return self._f.write(data)

    def flush(self):
        return self._f.flush()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _Broken:
    """A readable file whose reads fail with EIO after `good` bytes."""

    def __init__(self, f, good):
        self._f, self._good = f, good

    def _take(self, n):
        if self._good <= 0:
            raise _error(errno.EIO)
        n = self._good if n is None or n < 0 else min(n, self._good)
        self._good -= n
        return n

    def read(self, n=-1):
        return self._f.read(self._take(n))

    def readinto(self, buf):
        view = memoryview(buf).cast("B")
        n = self._take(len(view))
        return self._f.readinto(view[:n])

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


if KIND in ("enospc", "eio"):
    NAME, LIMIT = ARGS[0], int(ARGS[1])
    _open = builtins.open

    def _faulty_open(file, mode="r", *args, **kwargs):
        f = _open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == NAME:
            if KIND == "enospc" and any(c in mode for c in "wax+"):
                return _Full(f, LIMIT)
            if KIND == "eio" and "r" in mode:
                return _Broken(f, LIMIT)
        return f

    builtins.open = _faulty_open
elif KIND == "pwrite":
    _pwrite, _room = os.pwrite, [int(ARGS[0])]

    def _faulty_pwrite(fd, data, offset):
        data = memoryview(data).cast("B")
        if len(data) > _room[0]:
            done = _pwrite(fd, data[: _room[0]], offset) if _room[0] else 0
            _room[0] = 0
            if done:
                return done
            raise _error(errno.ENOSPC)
        _room[0] -= len(data)
        return _pwrite(fd, data, offset)

    os.pwrite = _faulty_pwrite
elif KIND in ("sigint-import", "sigterm-import"):
    class _Interrupter:
        """A meta path finder that sends the signal to this process when MODULE is first imported."""

        def find_spec(self, name, path=None, target=None):
            if name == ARGS[0]:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT if KIND == "sigint-import" else signal.SIGTERM)
            return None

    sys.meta_path.insert(0, _Interrupter())

sys.argv[0] = "fastrnn"
from fastrnn.cli import main  # noqa: E402 (after the fault is in place, as the console script does)

main()
