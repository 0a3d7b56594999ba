"""Crash safety: a training process killed with SIGKILL at random moments (mostly while writing checkpoints)
always leaves a loadable checkpoint, and resuming after each kill ends bit for bit where a run that was never
killed ends."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from fastrnn import checkpoint as ckpt_io
from fastrnn.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTS = ["--hidden-size", "32", "--batch-size", "4", "--seq-len", "16", "--checkpoint-every", "1",
        "--eval-every", "0", "--log-every", "1", "--backend", "numpy", "--threads", "1", "--optimizer", "adam",
        "--seed", "7"]
STEPS = 400


def test_sigkill_at_random_moments_then_resume_is_exact(small_corpus, tmp_path):
    reference = tmp_path / "reference"
    train(small_corpus, reference, dict(hidden_size=32, batch_size=4, seq_len=16, checkpoint_every=1, eval_every=0,
                                        log_every=1, backend="numpy", threads=1, optimizer="adam", seed=7,
                                        max_steps=STEPS))
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fastrnn", "train", small_corpus, "-o", str(run_dir), *OPTS,
           "--max-steps", str(STEPS)]
    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        resume = ["--resume"] if (run_dir / "checkpoint.h5").exists() else []
        p = subprocess.Popen(cmd + resume, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for line in p.stderr:
            if line.startswith("step "):
                break
        time.sleep(rng.uniform(0.0, 0.4))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate(timeout=120)
        saved, warning = ckpt_io.load_for_resume(run_dir)  # never fails: a good checkpoint is always there
        assert 1 <= saved.state["step"] <= STEPS
        assert np.all(np.isfinite(saved.params))
    assert kills >= 2
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = ckpt_io.load(reference), ckpt_io.load(run_dir)
    assert b.state["step"] == STEPS
    assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]  # temp files of killed writes are gone
    np.testing.assert_array_equal(a.params, b.params)
    for name in a.optimizer:
        np.testing.assert_array_equal(a.optimizer[name], b.optimizer[name])
