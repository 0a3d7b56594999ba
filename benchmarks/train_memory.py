"""Peak RSS of training runs as the corpus grows, and numba start-up time cold and with the cache.

    python -m benchmarks.train_memory [--json PATH] [--steps 300] [CORPUS.h5 ...]

Memory: `fastrnn train` runs as a subprocess on each prepared corpus (default: tiny Shakespeare, prepared here,
plus /tmp/gut.h5 and /tmp/linux.h5 when present: prepare ../shared/data/gutenberg-novels.txt and the 1.2 GB
Linux source corpus to those paths) with the same model and steps, its RSS sampled every 0.1 s by
tools.profile_memory. Training maps the corpus, so the peak should not depend on the corpus size; the validation
pass is capped (--eval-tokens) so that the runs do the same work.

Start-up: the time from launching `fastrnn train` to the end of its first step (import, JIT compilation, first
step), with an empty numba cache directory (cold) and again with the cache it filled (warm).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine_info
from tools.profile_memory import profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "fastrnn", "data", "tinyshakespeare.txt")
MODEL = ["--hidden-size", "256", "--batch-size", "64", "--seq-len", "50", "--eval-tokens", "200000",
         "--eval-every", "0", "--checkpoint-every", "0", "--log-every", "100", "--quiet"]


def train_cmd(corpus, run_dir, steps):
    return [sys.executable, "-m", "fastrnn", "train", corpus, "-o", run_dir, "--force", "--max-steps", str(steps),
            *MODEL]


def peak_rss(corpus, steps, tmpdir):
    status, samples = profile(train_cmd(corpus, os.path.join(tmpdir, "run"), steps), interval=0.1)
    if status != 0:
        raise RuntimeError(f"training on {corpus} failed with status {status}")
    return max(mb for _, mb in samples), len(samples)


def startup_seconds(corpus, tmpdir, cache_dir):
    """Seconds from launch to the 'first step took' line, with NUMBA_CACHE_DIR=cache_dir."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    cmd = train_cmd(corpus, os.path.join(tmpdir, "startup"), 2)
    cmd.remove("--quiet")
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    seconds = first_step = None
    for line in p.stderr:
        if line.startswith("first step took"):
            seconds = time.perf_counter() - start
            first_step = float(line.split()[3])
    p.wait()
    return seconds, first_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpora", nargs="*")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows, startup = [], {}
    with tempfile.TemporaryDirectory() as tmpdir:
        corpora = args.corpora
        if not corpora:
            small = os.path.join(tmpdir, "tiny.h5")
            subprocess.run([sys.executable, "-m", "fastrnn", "prepare", SHAKESPEARE, "-o", small], check=True,
                           capture_output=True, cwd=ROOT)
            corpora = [small] + [p for p in ("/tmp/gut.h5", "/tmp/linux.h5") if os.path.exists(p)]
        for corpus in corpora:
            from fastrnn.corpus import info

            d = info(corpus)
            peak, n = peak_rss(corpus, args.steps, tmpdir)
            rows.append({"corpus": os.path.basename(corpus), "corpus_tokens": d["total_tokens"],
                         "corpus_file_mb": os.path.getsize(corpus) / 1e6, "vocab_size": d["vocab_size"],
                         "steps": args.steps, "peak_rss_mb": peak, "samples": n})
            print(f"{rows[-1]['corpus']:12s} {d['total_tokens']:>14,d} tokens  {rows[-1]['corpus_file_mb']:8.1f} MB "
                  f"file  peak RSS {peak:7.1f} MB", flush=True)
        cache = os.path.join(tmpdir, "numba-cache")
        os.makedirs(cache)
        for label in ("cold", "warm"):
            total, first = startup_seconds(corpora[0], tmpdir, cache)
            startup[label] = {"launch_to_first_step_s": total, "first_step_s": first}
            print(f"start-up {label}: {total:.2f} s from launch to the end of the first step "
                  f"(first step {first:.2f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "model": MODEL, "rows": rows, "startup": startup}, f, indent=1)


if __name__ == "__main__":
    main()
