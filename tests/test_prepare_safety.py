"""`prepare` through real processes: one writer per output, SIGINT/SIGTERM and kill -9 leave nothing behind (or
nothing the next prepare does not remove), and errors about standard input say "stdin"."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = 48 << 20  # bytes: pass 2 takes a few tenths of a second, long enough to be caught in the middle


@pytest.fixture(scope="module")
def big_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.txt"
    block = make_text(1 << 20).encode()
    with open(path, "wb") as f:
        for _ in range(BIG // len(block)):
            f.write(block)
    return path


def start(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "fastrnn", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)


def wait_for(directory, suffix, p, timeout=60):
    """Wait until a file ending in `suffix` appears in `directory` while p runs; its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [n for n in os.listdir(directory) if n.endswith(suffix)]
        if found:
            return found[0]
        assert p.poll() is None, p.communicate()
        time.sleep(0.002)
    raise AssertionError(f"no {suffix} file appeared")


def error_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastrnn: error:"), stderr
    return lines[0]


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_second_pass_leaves_nothing(big_text, tmp_path, sig, status):
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.h5").write_bytes(b"the previous output")
    p = start("prepare", big_text, "-o", out / "c.h5", "-q", "--force")
    tmp = wait_for(out, ".prepare.tmp", p)
    assert tmp == f".c.h5.{p.pid}.prepare.tmp"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == status, err
    assert f"interrupted by {sig.name}" in error_line(err)
    assert os.listdir(out) == ["c.h5"] and (out / "c.h5").read_bytes() == b"the previous output"


def test_signal_while_spooling_stdin_leaves_nothing(tmp_path):
    p = start("prepare", "-", "-o", tmp_path / "s.h5", "-q", stdin=subprocess.PIPE)
    p.stdin.write("some text\n" * 1000)
    p.stdin.flush()
    assert wait_for(tmp_path, ".stdin.tmp", p) == f".s.h5.{p.pid}.stdin.tmp"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert os.listdir(tmp_path) == []


def test_kill_9_leftovers_removed_by_the_next_prepare(big_text, tmp_path):
    p = start("prepare", big_text, "-o", tmp_path / "c.h5", "-q")
    tmp = wait_for(tmp_path, ".prepare.tmp", p)
    p.kill()
    p.communicate(timeout=60)
    assert tmp in os.listdir(tmp_path)  # kill -9 cannot be handled
    # a spool of another output whose prepare is gone, and one of a process that still runs (kept)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = f".other.h5.{int(dead.stdout)}.stdin.tmp"
    alive = f".other.h5.{os.getpid()}.stdin.tmp"
    for name in (stale, alive):
        (tmp_path / name).write_text("spooled")
    (tmp_path / "small.txt").write_text(make_text(5000))
    r = subprocess.run([sys.executable, "-m", "fastrnn", "prepare", tmp_path / "small.txt", "-o", tmp_path / "c.h5"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([alive, "c.h5", "small.txt"])


def test_second_writer_of_the_same_output_refused(tmp_path):
    (tmp_path / "small.txt").write_text(make_text(5000))
    first = start("prepare", "-", "-o", tmp_path / "c.h5", "-q", stdin=subprocess.PIPE)  # holds on while stdin is open
    first.stdin.write("the first writer's text\n" * 1000)
    first.stdin.flush()
    wait_for(tmp_path, ".stdin.tmp", first)
    second = subprocess.run([sys.executable, "-m", "fastrnn", "prepare", tmp_path / "small.txt", "-o",
                             tmp_path / "c.h5", "--force"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert second.returncode == 1
    assert f"being written by another prepare (PID {first.pid})" in error_line(second.stderr)
    _, err = first.communicate(timeout=120)  # closes its stdin: the first writer finishes
    assert first.returncode == 0, err
    assert sorted(os.listdir(tmp_path)) == ["c.h5", "small.txt"]  # the lock file goes with its holder
    from fastrnn.corpus import open_corpus

    with open_corpus(tmp_path / "c.h5") as c:  # the first writer's result, untouched by the second
        assert c.sources[0]["path"] == "<stdin>" and "f" in c.vocab.symbols


def test_stdin_errors_say_stdin(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastrnn", "prepare", "-", "-o", tmp_path / "s.h5"],
                       input=b"good text\n\xff\xfe", capture_output=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1
    line = error_line(r.stderr.decode())
    assert line.startswith("fastrnn: error: stdin is not valid utf-8 text") and "byte offset 10" in line, line
    assert ".tmp" not in line and os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_library_prepare_interrupted_in_its_second_pass(tmp_path, sig):
    """In a program: SIGINT is a KeyboardInterrupt as usual and SIGTERM a PrepareInterrupted (exit status 143 at the
    command line); either way the temporary files are gone and the previous handlers are back."""
    from fastrnn.corpus import prepare
    from fastrnn.corpus.output import PrepareInterrupted

    (tmp_path / "t.txt").write_text(make_text(20_000))
    out = tmp_path / "out"
    out.mkdir()
    seen = []

    def progress(phase, done, total):
        if phase == "write" and not seen:
            seen.append(sorted(os.listdir(out)))
            os.kill(os.getpid(), sig)

    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else PrepareInterrupted) as info:
        prepare([tmp_path / "t.txt"], out / "c.h5", chunk_size=1024, progress=progress)
    if sig == signal.SIGTERM:
        assert info.value.exit_code == 143 and "c.h5 was not written" in str(info.value)
    assert seen == [sorted([".c.h5.lock", f".c.h5.{os.getpid()}.prepare.tmp"])]  # caught in the middle of pass 2
    assert os.listdir(out) == []
    assert signal.getsignal(sig) is before
