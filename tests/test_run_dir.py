"""A run directory has one owner and one run's files: a second `fastrnn train` on a running run is refused with
the holder's PID (and a kill -9 releases it), a new run never overwrites an old run's files without --force,
--force leaves one run's files whatever moment it is killed at, and log rows carry the run id of the checkpoint
they belong to."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from fastrnn import checkpoint as ckpt_io
from fastrnn.cli import main
from fastrnn.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTS = ["--hidden-size", "8", "--batch-size", "4", "--seq-len", "10", "--backend", "numpy", "--threads", "1",
        "--eval-every", "0"]
SMALL = dict(hidden_size=8, batch_size=4, seq_len=10, backend="numpy", threads=1, eval_every=0)


def train_cmd(corpus, run_dir, *args):
    return [sys.executable, "-m", "fastrnn", "train", str(corpus), "-o", str(run_dir), *OPTS, *args]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fastrnn", *[str(a) for a in args]], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def one_line_error(r, *fragments):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastrnn: error:"), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def wait_for(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_rows(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def files(run_dir):
    return {name: open(os.path.join(run_dir, name), "rb").read() for name in sorted(os.listdir(run_dir))}


def run_ids(run_dir):
    """The run ids of everything in run_dir: checkpoints (state) and log rows."""
    ids = set()
    for name in os.listdir(run_dir):
        if name.endswith(".h5"):
            ids.add(ckpt_io.load(os.path.join(run_dir, name)).state["run_id"])
    if os.path.exists(os.path.join(run_dir, "log.jsonl")):
        ids.update(row.get("run_id") for row in log_rows(run_dir))
    return ids


def test_a_second_writer_is_refused_with_the_pid_and_kill_9_releases_the_lock(small_corpus, tmp_path):
    run = tmp_path / "r"
    first = subprocess.Popen(train_cmd(small_corpus, run, "--max-steps", "1000000", "--checkpoint-every", "1",
                                       "--log-every", "1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for(lambda: (run / "checkpoint.h5").exists(), "the first run's checkpoint")
        for args in (OPTS + ["--max-steps", "3"], ["--resume"], OPTS + ["--force", "--max-steps", "3"]):
            one_line_error(run_cli("train", small_corpus, "-o", run, *args), f"PID {first.pid}", "in use")
            assert first.poll() is None  # the first run goes on, its files untouched by the refused ones
        owner = ckpt_io.load(run).state["run_id"]
        assert run_ids(run) == {owner}
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    step = ckpt_io.load(run).state["step"]
    r = run_cli("train", small_corpus, "-o", run, "--resume", "--max-steps", step + 3)
    assert r.returncode == 0, r.stderr
    assert ckpt_io.load(run).state["step"] == step + 3
    assert run_ids(run) == {owner}
    steps = [row["step"] for row in log_rows(run)]
    assert steps == sorted(set(steps)) and steps[-1] == step + 3  # no row twice, none of the killed session's past
    assert not (run / ".fastrnn.lock").exists()


def test_a_new_run_never_overwrites_any_file_of_an_old_one(small_corpus, tmp_path):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=3, eval_every=3))
    os.unlink(run / "checkpoint.h5")  # the user keeps best.h5 and the log, deletes the checkpoint to save space
    before = files(run)
    assert set(before) == {"best.h5", "log.jsonl"}
    r = run_cli("train", small_corpus, "-o", run, *OPTS, "--max-steps", "2")
    one_line_error(r, "already holds a run", "best.h5", "log.jsonl", "--force")
    assert files(run) == before
    one_line_error(run_cli("train", small_corpus, "-o", run, "--resume"), "not found")
    assert files(run) == before
    # --force with options that cannot work: refused before the old run is touched
    one_line_error(run_cli("train", small_corpus, "-o", run, *OPTS, "--batch-size", "100000", "--force"), "too few")
    assert files(run) == before


def test_force_killed_before_its_first_checkpoint_leaves_only_the_new_run(small_corpus, tmp_path):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=6, eval_every=3, checkpoint_every=2, keep_checkpoints=3))
    (run / "loss.png").write_bytes(b"the old run's plot")  # as `fastrnn plot RUN_DIR` writes it
    (run / "notes.txt").write_text("mine")  # not the run's: kept
    old = ckpt_io.load(run).state["run_id"]
    p = subprocess.Popen(train_cmd(small_corpus, run, "--force", "--max-steps", "1000000", "--checkpoint-every", "0",
                                   "--log-every", "1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=ROOT)
    try:
        wait_for(lambda: (run / "log.jsonl").exists() and any(row.get("run_id") != old for row in log_rows(run)),
                 "a row of the new run")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert sorted(n for n in os.listdir(run) if not n.startswith(".")) == ["log.jsonl", "notes.txt"]
    (new,) = run_ids(run)
    assert new != old
    one_line_error(run_cli("train", small_corpus, "-o", run, "--resume"), "not found")  # nothing of the old run
    one_line_error(run_cli("train", small_corpus, "-o", run, *OPTS), "already holds a run")


KILLER = """
import os, shutil, signal, sys
from fastrnn import rundir
from fastrnn.cli import main

point, real_replace, real_rmtree, moves = sys.argv[1], os.replace, shutil.rmtree, [0]

def replace(a, b):
    if point == "move-%d" % moves[0]:
        os.kill(os.getpid(), signal.SIGKILL)
    moves[0] += 1
    real_replace(a, b)

def rmtree(path, *args, **kwargs):
    if point == "rmtree":
        os.kill(os.getpid(), signal.SIGKILL)
    real_rmtree(path, *args, **kwargs)

rundir.os.replace, rundir.shutil.rmtree = replace, rmtree
sys.argv = ["fastrnn", "train"] + sys.argv[2:]
main()
"""


@pytest.mark.parametrize("point", ["move-2", "rmtree"])
def test_kill_9_while_force_removes_the_old_run(small_corpus, tmp_path, point):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=4, eval_every=2, checkpoint_every=2, keep_checkpoints=2))
    old = ckpt_io.load(run).state["run_id"]
    assert len(os.listdir(run)) >= 4
    p = subprocess.run([sys.executable, "-c", KILLER, point, str(small_corpus), "-o", str(run), *OPTS,
                        "--force", "--max-steps", "3"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    # the old run is gone for every later session: resume finds nothing, a new run needs no --force
    one_line_error(run_cli("train", small_corpus, "-o", run, "--resume"), "not found")
    r = run_cli("train", small_corpus, "-o", run, *OPTS, "--max-steps", "3")
    assert r.returncode == 0, r.stderr
    (new,) = run_ids(run)
    assert new != old
    assert sorted(os.listdir(run)) == ["best.h5", "checkpoint.h5", "log.jsonl"]


def test_log_rows_carry_the_run_id_and_resume_drops_rows_of_other_runs(small_corpus, tmp_path):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=4, log_every=1))
    run_id = ckpt_io.load(run).state["run_id"]
    assert len(run_id) >= 8 and [row["run_id"] for row in log_rows(run)] == [run_id] * 4
    with open(run / "log.jsonl", "a") as f:  # rows another run left (one with another id, one from before ids)
        f.write(json.dumps({"run_id": "0123456789abcdef", "step": 5, "loss": 9.0}) + "\n")
        f.write(json.dumps({"step": 2, "loss": 9.0}) + "\n")
    r = CliRunner().invoke(main, ["train", small_corpus, "-o", str(run), "--resume", "--max-steps", "6"])
    assert r.exit_code == 0, r.output
    assert "dropped 2 row(s)" in r.stderr
    rows = log_rows(run)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6] and {row["run_id"] for row in rows} == {run_id}
    assert ckpt_io.load(run).state["run_id"] == run_id
    # a new run gets a new id
    train(small_corpus, run, dict(SMALL, max_steps=1), force=True)
    assert run_ids(run) - {run_id} == run_ids(run)


def test_the_lock_goes_with_the_session_whatever_ends_it(small_corpus, tmp_path):
    from fastrnn import rundir
    from fastrnn.errors import ConfigError, CorpusError, DivergenceError

    run = tmp_path / "a" / "b" / "r"
    with pytest.raises(CorpusError):
        train(tmp_path / "missing.h5", run, dict(SMALL, max_steps=1))
    assert not (tmp_path / "a").exists()  # the directories made for the failed start are gone
    with pytest.raises(DivergenceError):
        train(small_corpus, run, dict(SMALL, max_steps=3, optimizer="sgd", lr=1e38))
    train(small_corpus, run, dict(SMALL, max_steps=1), force=True)  # not refused: the lock was released
    assert not (run / rundir.LOCK_NAME).exists()
    with rundir.RunLock(run):  # held in this process: a train() here is refused too, and changes nothing
        before = files(run)
        with pytest.raises(ConfigError, match=f"PID {os.getpid()}"):
            train(small_corpus, run, {"max_steps": 2}, resume=True)
        assert {k: v for k, v in files(run).items() if k != rundir.LOCK_NAME} == \
            {k: v for k, v in before.items() if k != rundir.LOCK_NAME}


def test_a_run_from_before_run_ids_keeps_its_rows_and_gets_an_id(small_corpus, tmp_path):
    run = tmp_path / "r"
    train(small_corpus, run, dict(SMALL, max_steps=3, log_every=1))
    ckpt = ckpt_io.load(run)  # make it as an older fastrnn wrote it: no run id anywhere
    del ckpt.state["run_id"]
    ckpt_io.save(run / "checkpoint.h5", ckpt)
    rows = [{k: v for k, v in row.items() if k != "run_id"} for row in log_rows(run)]
    (run / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    messages = []
    train(small_corpus, run, {"max_steps": 5}, resume=True,
          on_event=lambda kind, data: messages.append(data["text"]) if kind == "message" else None)
    assert not [m for m in messages if "dropped" in m]
    run_id = ckpt_io.load(run).state["run_id"]
    assert run_id and [row["step"] for row in log_rows(run)] == [1, 2, 3, 4, 5]
    assert [row.get("run_id") for row in log_rows(run)] == [None] * 3 + [run_id] * 2
