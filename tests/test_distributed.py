"""Data-parallel training over MPI: K ranks compute what one process computes on the same global batch, their
checkpoints resume on any number of ranks, and every way a job can end (kill -9, Ctrl-C, an error, a launcher
without mpi4py) ends all of it, with one line. Every mpiexec call has a timeout and checks the world size it saw
(the `ranks` a checkpoint records)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastrnn import checkpoint as ckpt_io
from fastrnn.distributed import block, launched_size

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
pytest.importorskip("mpi4py", reason="mpi4py is not installed (the test extra brings it with the mpich wheel)")
if not os.path.exists(MPIEXEC):
    pytest.skip("no mpiexec beside this Python (pip install mpich)", allow_module_level=True)

FASTRNN = [sys.executable, "-m", "fastrnn"]
TIMEOUT = 180


def mpirun(k, *args, timeout=TIMEOUT, check=True):
    """`mpiexec -n k fastrnn ...` (k = 1: plain `fastrnn ...`, no launcher)."""
    cmd = ([MPIEXEC, "-n", str(k)] if k > 1 else []) + FASTRNN + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def trained(k, corpus, run_dir, *options, steps=10, resume=False):
    """Train (or resume) with k ranks; the checkpoint, checked to come from k ranks."""
    args = ["train", corpus, "-o", run_dir, "--max-steps", steps, "-q", *options]
    mpirun(k, *(args + (["--resume"] if resume else ["--force"])))
    ckpt = ckpt_io.load(run_dir)
    assert ckpt.state["ranks"] == k and ckpt.state["step"] == steps
    return ckpt


def relative(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))


SMALL = ["--hidden-size", "12", "--batch-size", "7", "--seq-len", "8", "--threads", "1", "--eval-every", "5"]


def test_blocks_cover_the_batch_in_order():
    for n in (7, 64, 3):
        for size in (1, 2, 3):
            if n < size:
                continue
            spans = [block(n, size, r) for r in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(hi - lo for lo, hi in spans) - min(hi - lo for lo, hi in spans) <= 1
    assert launched_size({}) == 1 and launched_size({"PMI_SIZE": "3"}) == 3
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "2"}) == 2


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "lnlstm"])
def test_ranks_compute_what_one_process_computes(small_corpus, tmp_path, cell):
    """2 and 3 ranks (3 splits 7 streams 3/2/2), 2 layers, dropout, float64: the parameters after 10 steps, the
    optimizer state, the carried state and the val loss equal one process's to rounding."""
    opts = [*SMALL, "--model", cell, "--num-layers", "2", "--dropout", "0.3", "--dtype", "float64"]
    one = trained(1, small_corpus, tmp_path / "k1", *opts)
    for k in (2, 3):
        many = trained(k, small_corpus, tmp_path / f"k{k}", *opts)
        assert relative(one.params, many.params) < 1e-12
        assert relative(one.hidden, many.hidden) < 1e-12
        for name in one.optimizer:
            assert relative(one.optimizer[name], many.optimizer[name]) < 1e-10
        assert many.state["best_val"] == pytest.approx(one.state["best_val"], rel=1e-12)
        assert many.state["rng"] == one.state["rng"]  # the same draws: the masks of the whole batch


def test_float32_ranks_agree_loosely(small_corpus, tmp_path):
    opts = [*SMALL, "--model", "lstm", "--dtype", "float32"]
    one = trained(1, small_corpus, tmp_path / "k1", *opts)
    two = trained(2, small_corpus, tmp_path / "k2", *opts)
    assert relative(one.params, two.params) < 1e-4


def test_checkpoints_resume_on_any_number_of_ranks(small_corpus, tmp_path):
    opts = [*SMALL, "--model", "gru", "--dtype", "float64"]
    straight1 = trained(1, small_corpus, tmp_path / "s1", *opts, steps=10)
    straight2 = trained(2, small_corpus, tmp_path / "s2", *opts, steps=10)
    # written by 2 ranks, resumed on 2: bit for bit the uninterrupted 2-rank run
    trained(2, small_corpus, tmp_path / "a", *opts, steps=5)
    resumed = trained(2, small_corpus, tmp_path / "a", *opts, steps=10, resume=True)
    assert np.array_equal(resumed.params, straight2.params) and np.array_equal(resumed.hidden, straight2.hidden)
    # written by 2 ranks, resumed on 1; written by 1, resumed on 2: the same run to rounding
    trained(2, small_corpus, tmp_path / "b", *opts, steps=5)
    assert relative(trained(1, small_corpus, tmp_path / "b", *opts, steps=10, resume=True).params,
                    straight1.params) < 1e-12
    trained(1, small_corpus, tmp_path / "c", *opts, steps=5)
    assert relative(trained(2, small_corpus, tmp_path / "c", *opts, steps=10, resume=True).params,
                    straight1.params) < 1e-12


def test_rank_zero_alone_writes_and_prints(small_corpus, tmp_path):
    r = mpirun(2, "train", small_corpus, "-o", tmp_path / "run", "--hidden-size", "12", "--batch-size", "6",
               "--seq-len", "8", "--max-steps", "12", "--eval-every", "6", "--log-every", "3")
    assert r.stderr.count("done: step 12") == 1 and r.stderr.count("model rnn") == 1
    assert "2 MPI ranks x 1 thread" in r.stderr  # 2 cores shared by 2 ranks, unless --threads says otherwise
    rows = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [int(row.split('"step": ')[1].split(",")[0]) for row in rows] == [3, 6, 9, 12]
    assert sorted(os.listdir(tmp_path / "run")) == ["best.h5", "checkpoint.h5", "log.jsonl"]


def test_an_error_every_rank_meets_is_one_line(small_corpus, tmp_path):
    r = mpirun(3, "train", small_corpus, "-o", tmp_path / "run", "--batch-size", "2", check=False)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "--batch-size 2 is smaller than the 3 ranks" in lines[0]
    r = mpirun(2, "train", tmp_path / "none.h5", "-o", tmp_path / "run", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "none.h5" in r.stderr


def launched_without_mpi4py(rank, args):
    """fastrnn as the `rank` of 2 processes an MPI launcher started, where mpi4py cannot be imported."""
    env = dict(os.environ, PMI_SIZE="2", PMI_RANK=str(rank))
    code = "import sys; sys.modules['mpi4py'] = None; from fastrnn.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_launcher_without_mpi4py_or_of_another_mpi_is_one_line(small_corpus, tmp_path):
    args = ["train", small_corpus, "-o", tmp_path / "run", "--max-steps", "2"]
    r = launched_without_mpi4py(0, args)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert "mpi4py is not installed" in r.stderr and "fastrnn[mpi]" in r.stderr
    r = launched_without_mpi4py(1, args)  # the other process says nothing: one line for the job
    assert r.returncode == 1 and r.stderr == ""
    # an Open MPI launcher's environment, with mpi4py on MPICH: mpi4py sees a world of one
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    r = subprocess.run(FASTRNN + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "mpi4py sees a world of 1" in r.stderr
    assert not (tmp_path / "run").exists()


def test_one_process_never_imports_mpi4py(small_corpus, tmp_path):
    code = ("import sys; from fastrnn.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n")
    r = subprocess.run([sys.executable, "-c", code, "train", small_corpus, "-o", str(tmp_path / "run"),
                        "--max-steps", "2", "-q", "--hidden-size", "8"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


TURNS = """
import json, sys, time
import psutil
from fastrnn.distributed import world

comm = world()
me = psutil.Process()

def work():
    start = time.monotonic()
    time.sleep(0.4)
    if comm.rank == 0 and sys.argv[1] == "fail":
        raise RuntimeError("rank 0 failed")
    return start, time.monotonic()

cpu = sum(me.cpu_times()[:2])
try:
    span = comm.in_turns(work)
except RuntimeError as exc:
    span = str(exc)
with open(f"{sys.argv[2]}/rank{comm.rank}.json", "w") as f:  # (not stdout: mpiexec may interleave the ranks' lines)
    json.dump({"rank": comm.rank, "span": span, "cpu": sum(me.cpu_times()[:2]) - cpu}, f)
"""


@pytest.mark.parametrize("how", ["work", "fail"])
def test_ranks_measure_in_turns_and_wait_asleep(tmp_path, how):
    """The ranks of a machine run in_turns' work one after another (a kernel plan's measurement sees the machine
    quiet), the waiting rank sleeps instead of spinning in a barrier, and an error on one rank is raised there
    after every turn has passed (the other rank is not left waiting)."""
    import json

    script = tmp_path / "turns.py"
    script.write_text(TURNS)
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), how, str(tmp_path)], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    out = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert [o["rank"] for o in out] == [0, 1]
    if how == "fail":
        assert out[0]["span"] == "rank 0 failed" and len(out[1]["span"]) == 2
        return
    (s0, e0), (s1, e1) = out[0]["span"], out[1]["span"]
    assert e0 <= s1 or e1 <= s0, "the ranks' work overlapped"
    assert out[1]["cpu"] < 0.2, f"rank 1 used {out[1]['cpu']:.2f} CPU seconds waiting 0.4 s for its turn"


def start(small_corpus, run_dir):
    """A long 2-rank run that checkpoints every 20 steps, once its first checkpoint is written."""
    proc = subprocess.Popen([MPIEXEC, "-n", "2", *FASTRNN, "train", small_corpus, "-o", str(run_dir),
                             "--hidden-size", "16", "--batch-size", "8", "--seq-len", "10", "--max-steps", "1000000",
                             "--checkpoint-every", "20", "--eval-every", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.h5").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    return proc


def ranks_of(proc):
    import psutil

    # the ranks run `python -m fastrnn` (the launcher's proxy names the checkout's path, which may say fastrnn too)
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if p.cmdline()[1:3] == FASTRNN[1:]]


def test_kill_9_of_one_rank_ends_the_job_and_the_checkpoint_resumes(small_corpus, tmp_path):
    proc = start(small_corpus, tmp_path / "run")
    ranks = ranks_of(proc)
    assert len(ranks) == 2
    killed = time.monotonic()
    ranks[1].kill()
    proc.communicate(timeout=30)
    assert proc.returncode != 0 and time.monotonic() - killed < 15
    step = ckpt_io.load(tmp_path / "run").state["step"]
    assert step % 20 == 0 and step > 0
    mpirun(2, "train", small_corpus, "-o", tmp_path / "run", "--resume", "--max-steps", step + 5, "-q")
    assert ckpt_io.load(tmp_path / "run").state["step"] == step + 5


def test_ctrl_c_on_mpiexec_writes_one_checkpoint_and_exits_130(small_corpus, tmp_path):
    proc = start(small_corpus, tmp_path / "run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("stopped by signal at step") == 1
    step = ckpt_io.load(tmp_path / "run").state["step"]
    mpirun(1, "train", small_corpus, "-o", tmp_path / "run", "--resume", "--max-steps", step + 3, "-q")
    assert ckpt_io.load(tmp_path / "run").state["step"] == step + 3
