"""The plan chosen, and every candidate plan's speed, under each instruction set this machine can run.

    python -m benchmarks.isa [--quick] [--json FILE] [--targets x86-64,haswell,skylake-avx512,host] [--tiles]
                             [--threads 2] [--repeats 3]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

For each target of fastrnn.kernels.isa.check_targets (generic x86-64 with SSE2 only, haswell with AVX2 and FMA,
skylake-avx512 where the CPU has AVX-512, and the host as it is) a worker process runs with the kernels compiled
for that target (NUMBA_CPU_NAME and explicit NUMBA_CPU_FEATURES, numba's cache of its own) and OpenBLAS on the
kernels of the same instruction set (OPENBLAS_CORETYPE), and:

- measures the sgemm rate at the thread count (the yardstick of that target's rows);
- for each row (the quick set: rnn, gru and lstm at H512 B64, a 2-layer lstm at H512 B64 and at H128 B50, rnn H128
  at B1 and B32; T=50, float32), makes the plan as `fastrnn train` does, measuring its candidates on a cache of
  its own (`chosen`; `measured` false if the machine was too busy and the rule decided), then times every
  candidate plan (hand loops, BLAS, tiles: whole training steps, interleaved, medians of --repeats) in chars/s;
  `slow` marks a row whose chosen plan is more than 5% slower than the fastest candidate;
- times generation: one stream and 32 streams of an rnn H512 (the K-streams path of `sample --num-samples` and
  `serve`, on the target's tiles), chars/s;
- with --tiles, the register tile: the product of a thread's rows (32 x 512 by 512 x 2048, the lstm H512 step) in
  GFLOP/s for the tile isa.tile_shape chooses and its neighbours that fit the registers (FASTRNN_TILE).

JSON: {"machine": ..., "rows": [{"target", "row", "chosen", "measured", "candidates": {PLAN: chars_per_sec}, "slow",
"peak_fraction", ...}, ...], "generation": [...], "tiles": [...], "targets": [...]}.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import click
import numpy as np

from benchmarks import common, options
from fastrnn import cells

ROWS = [  # (name, cell, layers, N, H)
    ("rnn H512 B64", "rnn", 1, 64, 512),
    ("gru H512 B64", "gru", 1, 64, 512),
    ("lstm H512 B64", "lstm", 1, 64, 512),
    ("lstm 2x512 B64", "lstm", 2, 64, 512),
    ("lstm 2x128 B50", "lstm", 2, 50, 128),
    ("rnn H128 B1", "rnn", 1, 1, 128),
    ("rnn H128 B32", "rnn", 1, 32, 128),
]
T, V = 50, 65
SLOW = 0.95  # a chosen plan below this fraction of the fastest candidate is marked slow
def flops_per_char(cell, layers, H):
    return 6 * cells.get(cell).gates * H * H * (2 * layers - 1) + 6 * V * H


def time_candidates(options_, repeats):
    """{name: median seconds per step}: the candidates' whole training steps in turn, `repeats` rounds, each
    timing about 0.3 s (at least one step) after a pause and a step of its own (calibrate.settled: another
    plan's BLAS threads may still spin)."""
    from fastrnn.kernels.backend import training_step
    from fastrnn.kernels.calibrate import Stepper, settled

    steppers = {name: Stepper(p, training_step(p)) for name, p in options_.items()}
    reps = {}
    for name, s in steppers.items():
        s.warm_up()
        reps[name] = max(1, int(0.3 / max(s.seconds(1), 1e-9)))
    times = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, s in steppers.items():
            times[name].append(settled(s, reps[name]) / reps[name])
    return {name: statistics.median(t) for name, t in times.items()}


def generation(threads, repeats, length=500):
    """chars/s of 1 and 32 streams of a random rnn H512 (backend.generate_streams), medians of `repeats`."""
    from fastrnn import kernels as K
    from fastrnn.model import Model

    model = Model(V, 512, "float32", "rnn", 1).init(np.random.default_rng(0), 0.5, "xavier")
    out = []
    for streams in (1, 32):
        h = np.zeros((streams, model.state_size), np.float32)
        logits = np.zeros((streams, V), np.float32)

        def run():
            rngs = [np.random.default_rng(i) for i in range(streams)]
            for _ in K.generate_streams(model.P, h, logits, length, rngs=rngs, threads=threads):
                pass

        run()
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - t0)
        out.append({"streams": streams, "chars_per_sec": streams * length / statistics.median(seconds)})
    return out


def tile_gflops(repeats, R=32, K=512, M=2048):
    """GFLOP/s of tiles.matmul_packed for R rows of a (K, M) product (one thread), median of `repeats` timings."""
    from fastrnn.kernels import tiles

    rng = np.random.default_rng(0)
    a = rng.standard_normal((R, K)).astype(np.float32)
    W = rng.standard_normal((K, M)).astype(np.float32)
    out, Wp = np.empty((R, M), np.float32), tiles.pack(W)
    tiles.matmul_packed(out, a, Wp)
    seconds, _, _ = common.time_calls(lambda: tiles.matmul_packed(out, a, Wp), repeats, min_seconds=0.05)
    return {"tile": f"{tiles.TILE_ROWS}x{tiles.TILE_VECTORS}", "shape": [R, K, M],
            "gflops": 2 * R * K * M / seconds / 1e9}


def worker(threads, repeats, rows, what):
    """The measurements of one target, in this process (its environment names the target): a JSON object."""
    from fastrnn.kernels import backend, dispatch, tiles

    if what == "tiles":
        return tile_gflops(repeats)
    common.set_threads(threads)
    peak = common.gemm_gflops("float32")
    out = {"target": tiles.TARGET.describe(), "tile": f"{tiles.TILE_ROWS}x{tiles.TILE_VECTORS}",
           "sgemm_gflops": peak, "rows": [], "generation": generation(threads, repeats)}
    for name, cell, layers, N, H in ROWS:
        if name not in rows:
            continue
        t0 = time.perf_counter()
        p = backend.plan(cell, layers, N, T, H, V, False, threads, "float32", measure=True)
        choose_seconds = time.perf_counter() - t0
        seconds = time_candidates(dispatch.candidates(dispatch.rule(cell, layers, N, T, H, V, False, threads,
                                                                    "float32")), repeats)
        cps = {k: N * T / v for k, v in seconds.items()}
        chosen = "tiles" if p.tiles else "loops" if p.loops else "blas"
        best = max(cps.values())
        out["rows"].append({
            "row": name, "chosen": chosen, "measured": p.measured, "plan": p.describe(),
            "choose_seconds": choose_seconds, "candidates": cps, "chosen_vs_best": cps[chosen] / best,
            "slow": cps[chosen] < SLOW * best, "peak_fraction": {k: v * flops_per_char(cell, layers, H) / 1e9 / peak
                                                                for k, v in cps.items()}})
    return out


def run_target(name, settings, args, what="plans", tile=None):
    """Run the worker for one target in a subprocess; its JSON result (a ClickException if it fails)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES",
                                                          "OPENBLAS_CORETYPE", "FASTRNN_TILE")}
    env.update(settings)
    cache = os.path.join(args["cache_dir"], name + (f"-{tile}" if tile else ""))
    env.update(NUMBA_CACHE_DIR=cache, FASTRNN_CACHE_DIR=tempfile.mkdtemp(prefix="fastrnn-isa-plans-"),
               FASTRNN_CALIBRATE="1", FASTRNN_ISA_TARGET=name)
    if tile:
        env["FASTRNN_TILE"] = tile
    cmd = [sys.executable, "-m", "benchmarks.isa", "--worker", what, "--threads", str(args["threads"]),
           "--repeats", str(args["repeats"]), "--rows", ",".join(args["rows"])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=common.ROOT)
    if proc.returncode != 0:
        raise click.ClickException(f"target {name}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def neighbours(rows, vectors, registers, most=5):
    """The tile (rows x vectors) and the shapes with nearly as many accumulators (two thirds at least) that fit
    `registers` (isa.tile_shape's count), fewest loads per multiply-add first, `most` in all."""
    from fastrnn.kernels import isa

    fits = [(r, c) for r in range(1, isa.MAX_ROWS + 1) for c in range(1, isa.MAX_VECTORS + 1)
            if r * c + c + 1 <= registers and 3 * r * c >= 2 * rows * vectors and (r, c) != (rows, vectors)]
    return [(rows, vectors)] + sorted(fits, key=lambda rc: ((rc[0] + rc[1]) / (rc[0] * rc[1]), -rc[1]))[:most - 1]


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package).")
@options.quick("Three timed rounds per row (without: five), the usual rows.")
@options.json_output("Write machine, rows and targets to this JSON file.")
@click.option("--targets", default=None, help="Comma-separated target names (default: every one this CPU runs).")
@click.option("--tiles", is_flag=True, help="Also time the register tile against its neighbours per target.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Threads of every row.")
@click.option("--repeats", type=click.IntRange(min=1), default=None, show_default="3 with --quick, else 5",
              help="Timed rounds per row.")
@click.option("--rows", default=",".join(r[0] for r in ROWS), show_default=True, help="Comma-separated row names.")
@click.option("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "fastrnn", "numba-isa"),
              show_default=True, help="numba's cache of each target goes to DIR/<target>.")
@click.option("--worker", "worker_kind", type=click.Choice(["plans", "tiles"]), default=None, hidden=True)
def main(quick, json_path, targets, tiles, threads, repeats, rows, cache_dir, worker_kind):
    from fastrnn.kernels import isa

    repeats = repeats or (3 if quick else 5)
    rows = [r.strip() for r in rows.split(",") if r.strip()]
    unknown = set(rows) - {r[0] for r in ROWS}
    if unknown:
        raise click.BadParameter(f"unknown rows {sorted(unknown)}; choose among {[r[0] for r in ROWS]}")
    if worker_kind:
        click.echo(json.dumps(common._jsonable(worker(threads, repeats, rows, worker_kind))))
        return
    available = isa.check_targets()
    if targets:
        wanted = [t.strip() for t in targets.split(",") if t.strip()]
        names = [n for n, _ in available]
        missing = [t for t in wanted if t not in names]
        if missing:
            raise click.BadParameter(f"{', '.join(missing)}: not runnable on this CPU (it runs {', '.join(names)})")
        available = [(n, s) for n, s in available if n in wanted]
    args = dict(threads=threads, repeats=repeats, rows=rows, cache_dir=cache_dir)
    result = {"machine": common.machine_info(), "threads": threads, "repeats": repeats, "targets": [],
              "rows": [], "generation": [], "tiles": []}
    for name, settings in available:
        click.echo(f"target {name} ...", err=True)
        data = run_target(name, settings, args)
        result["targets"].append({"target": name, "compiled_for": data["target"], "tile": data["tile"],
                                  "sgemm_gflops": data["sgemm_gflops"], "settings": settings})
        for row in data["rows"]:
            result["rows"].append(dict(row, target=name))
            cands = "  ".join(f"{k} {v / 1e3:.1f}k" for k, v in row["candidates"].items())
            click.echo(f"  {row['row']:16s} chosen {row['chosen']:5s}{'' if row['measured'] else ' (rule)'}"
                       f"{' SLOW' if row['slow'] else ''}   {cands} chars/s", err=True)
        for g in data["generation"]:
            result["generation"].append(dict(g, target=name))
        if tiles:
            t = isa.make_target(os.uname().machine, "", isa.parse_features(settings.get("NUMBA_CPU_FEATURES"))
                                ) if settings else isa.target()
            rule = isa.tile_shape(t, override="")
            for r, c in neighbours(*rule, t.registers):
                g = run_target(name, settings, args, what="tiles", tile=f"{r}x{c}")
                result["tiles"].append(dict(g, target=name, rule=f"{rule[0]}x{rule[1]}"))
                click.echo(f"  tile {r}x{c}{' (rule)' if (r, c) == rule else ''}: {g['gflops']:.1f} GFLOP/s",
                           err=True)
    if json_path:
        common.write_json(json_path, result)
    slow = [f"{r['target']} {r['row']}" for r in result["rows"] if r["slow"]]
    click.echo(f"{len(result['rows'])} rows; chosen plan more than 5% slower than the fastest: "
               f"{', '.join(slow) if slow else 'none'}", err=True)


if __name__ == "__main__":
    main()
