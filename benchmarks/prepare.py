"""Corpus preparation speed and peak memory: `fastrnn prepare` against the naive approach, side by side.

    python -m benchmarks.prepare [FILE ...] [--json PATH] [--repeats R] [--naive-max-mb MB] [--no-naive]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

Each contender runs in its own subprocess (so its peak RSS is its own, read from getrusage at its end):
  fastrnn   fastrnn.corpus.prepare: streaming, two passes in 4 MB chunks (corpus.CHUNK_SIZE) read into one reused
            buffer, UTF-8 validated and counted / mapped by fused numba loops, ids written into the HDF5 splits by a
            background thread, the file fsynced before its rename
  naive     torch-rnn's preprocess.py way: read the whole file, sorted(set(text)), a list comprehension of ids,
            numpy array, HDF5 output
The naive approach needs ~9 bytes of RAM per character (a Python list of ids); on files larger than
--naive-max-mb it runs on that prefix of the file only, and the row says so (its speed is per MB of what it read);
--no-naive leaves it out.
Default files: the bundled tiny Shakespeare, ../shared/data/gutenberg-novels.txt and /tmp/linux-src.txt when
present (build it with ../shared/data/get-large-corpus.sh).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

import click

from benchmarks import options
from benchmarks.common import machine_info, write_json
from fastrnn.cli.types import Finite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
DEFAULT_FILES = [os.path.join(ROOT, "fastrnn", "data", "tinyshakespeare.txt"),
                 os.path.join(SHARED, "gutenberg-novels.txt"), "/tmp/linux-src.txt"]

FASTRNN = """
import json, resource, sys, time
from fastrnn.corpus import prepare
t0 = time.perf_counter()
info = prepare([sys.argv[1]], sys.argv[2], force=True)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tokens": info["total_tokens"], "vocab_size": info["vocab_size"], "bytes_read": int(sys.argv[3])}))
"""

NAIVE = """
import json, resource, sys, time
import h5py, numpy as np
t0 = time.perf_counter()
limit = int(sys.argv[3])
with open(sys.argv[1], "rb") as f:
    text = f.read(limit).decode("utf-8", errors="ignore")
chars = sorted(set(text))
index = {c: i for i, c in enumerate(chars)}
ids = [index[c] for c in text]
arr = np.array(ids, dtype=np.uint8 if len(chars) <= 256 else np.uint16)
with h5py.File(sys.argv[2], "w") as f:
    f["train"] = arr
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tokens": len(ids), "vocab_size": len(chars), "bytes_read": limit}))
"""


def run_one(code, path, out, limit):
    p = subprocess.run([sys.executable, "-c", code, path, out, str(limit)], capture_output=True, text=True,
                       cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"contender failed on {path}: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_file(path, repeats, naive_max_bytes, tmpdir, naive=True):
    size = os.path.getsize(path)
    rows = []
    contenders = [("fastrnn", FASTRNN, size)] + ([("naive", NAIVE, min(size, naive_max_bytes))] if naive else [])
    for name, code, limit in contenders:
        runs = [run_one(code, path, os.path.join(tmpdir, f"{name}.h5"), limit) for _ in range(repeats)]
        seconds = statistics.median(r["seconds"] for r in runs)
        rows.append({"contender": name, "file": os.path.basename(path), "file_mb": size / 1e6,
                     "input_mb": limit / 1e6, "prefix_only": limit < size, "seconds": seconds,
                     "mb_per_sec": limit / 1e6 / seconds, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                     "tokens": runs[0]["tokens"], "vocab_size": runs[0]["vocab_size"], "repeats": repeats})
    return rows


@options.command(help=__doc__.splitlines()[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the installed "
                 "package). FILES: text files [default: tiny Shakespeare, and the Gutenberg novels and Linux source "
                 "when present].")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@options.json_output("Write machine and rows to this JSON file.")
@options.repeats(3, "Runs per contender and file, the median taken (1 for files of 100 MB or more).")
@click.option("--naive-max-mb", type=Finite(min=0, min_open=True), default=200.0,
              help="The naive contender reads at most this many MB of each file (a prefix).")
@click.option("--naive/--no-naive", default=True, help="Time the naive contender too (--no-naive: fastrnn only).")
@options.catch_user_errors
def main(files, json_path, repeats, naive_max_mb, naive):
    files = list(files) or [f for f in DEFAULT_FILES if os.path.exists(f)]
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for path in files:
            runs = repeats if os.path.getsize(path) < 100e6 else 1
            rows.extend(bench_file(path, runs, int(naive_max_mb * 1e6), tmpdir, naive=naive))
    print(f"{'file':24s} {'contender':9s} {'input MB':>9s} {'seconds':>8s} {'MB/s':>8s} {'peak RSS MB':>11s} "
          f"{'tokens':>14s} {'vocab':>6s}")
    for r in rows:
        note = "  (prefix of the file)" if r["prefix_only"] else ""
        print(f"{r['file']:24s} {r['contender']:9s} {r['input_mb']:9.1f} {r['seconds']:8.2f} {r['mb_per_sec']:8.1f} "
              f"{r['peak_rss_mb']:11.1f} {r['tokens']:14,d} {r['vocab_size']:6d}{note}")
    for path in files if naive else []:
        f, n = [r for r in rows if r["file"] == os.path.basename(path)]
        print(f"{f['file']}: fastrnn {f['mb_per_sec'] / n['mb_per_sec']:.1f}x the naive speed, "
              f"{n['peak_rss_mb'] / f['peak_rss_mb']:.1f}x less peak memory")
    if json_path:
        write_json(json_path, {"machine": machine_info(), "rows": rows})
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
