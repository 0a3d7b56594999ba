"""Peak RSS of training runs as the corpus grows, and numba start-up time cold and with the cache.

    python -m benchmarks.train_memory [--json PATH] [--steps 300] [--interval 0.1] [CORPUS.h5 ...]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

Memory: `fastrnn train` runs as a subprocess on each prepared corpus (default: tiny Shakespeare, prepared here,
plus /tmp/gut.h5 and /tmp/linux.h5 when present: prepare ../shared/data/gutenberg-novels.txt and the 1.2 GB
Linux source corpus to those paths) with the same model and steps, its RSS (with its children's) sampled every
0.1 s by common.sample_rss. Training reads the corpus a minibatch at a time, so the peak should not depend on its
size; the validation pass is capped (--eval-tokens) so that the runs do the same work.

Start-up: the time from launching `fastrnn train` to the end of its first step (import, JIT compilation, first
step), with an empty numba cache directory (cold) and again with the cache it filled (warm).
"""

import os
import subprocess
import sys
import tempfile
import time

import click

from benchmarks import options
from benchmarks.common import machine_info, sample_rss, write_json
from fastrnn.cli.types import Finite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "fastrnn", "data", "tinyshakespeare.txt")
MODEL = ["--hidden-size", "256", "--batch-size", "64", "--seq-len", "50", "--eval-tokens", "200000",
         "--eval-every", "0", "--checkpoint-every", "0", "--log-every", "100", "--quiet"]


def train_cmd(corpus, run_dir, steps):
    return [sys.executable, "-m", "fastrnn", "train", corpus, "-o", run_dir, "--force", "--max-steps", str(steps),
            *MODEL]


def peak_rss(corpus, steps, tmpdir, interval=0.1):
    """(peak RSS in MB, number of samples) of a `fastrnn train` run on `corpus`."""
    status, samples = sample_rss(train_cmd(corpus, os.path.join(tmpdir, "run"), steps), interval)
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


@options.command(help=__doc__.splitlines()[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the installed "
                 "package). CORPORA: prepared CORPUS.h5 files [default: tiny Shakespeare, prepared here, and "
                 "/tmp/gut.h5 and /tmp/linux.h5 when present].")
@click.argument("corpora", nargs=-1, type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@click.option("--steps", type=click.IntRange(min=1), default=300, help="Training steps of each memory run.")
@click.option("--interval", type=Finite(min=0, min_open=True), default=0.1,
              help="Seconds between RSS samples.")
@options.json_output("Write machine, model options, rows and start-up times to this JSON file.")
@options.catch_user_errors
def main(corpora, steps, interval, json_path):
    from fastrnn.corpus import info

    rows, startup = [], {}
    with tempfile.TemporaryDirectory() as tmpdir:
        corpora = list(corpora)
        if not corpora:
            small = os.path.join(tmpdir, "tiny.h5")
            subprocess.run([sys.executable, "-m", "fastrnn", "prepare", SHAKESPEARE, "-o", small], check=True,
                           capture_output=True, cwd=ROOT)
            corpora = [small] + [p for p in ("/tmp/gut.h5", "/tmp/linux.h5") if os.path.exists(p)]
        for corpus in corpora:
            d = info(corpus)
            peak, n = peak_rss(corpus, steps, tmpdir, interval)
            rows.append({"corpus": os.path.basename(corpus), "corpus_tokens": d["total_tokens"],
                         "corpus_file_mb": os.path.getsize(corpus) / 1e6, "vocab_size": d["vocab_size"],
                         "steps": steps, "peak_rss_mb": peak, "samples": n})
            print(f"{rows[-1]['corpus']:12s} {d['total_tokens']:>14,d} tokens  {rows[-1]['corpus_file_mb']:8.1f} MB "
                  f"file  peak RSS {peak:7.1f} MB", flush=True)
        cache = os.path.join(tmpdir, "numba-cache")
        os.makedirs(cache)
        for label in ("cold", "warm"):
            total, first = startup_seconds(corpora[0], tmpdir, cache)
            if total is None:
                raise RuntimeError(f"the start-up run on {corpora[0]} printed no 'first step took' line")
            startup[label] = {"launch_to_first_step_s": total, "first_step_s": first}
            print(f"start-up {label}: {total:.2f} s from launch to the end of the first step "
                  f"(first step {first:.2f} s)", flush=True)
    if json_path:
        write_json(json_path, {"machine": machine_info(), "model": MODEL, "rows": rows, "startup": startup})
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
