"""Data-parallel training on one machine, and a model of it on many.

    python -m benchmarks.distributed [--models rnn,lstm] [--hidden 512] [--batch-size 64] [--steps 40]
                                     [--repeats 3] [--json PATH] [--plot PNG]

Runs from a checkout with mpi4py and an mpiexec beside this Python (`pip install -e '.[mpi]'`).

Measured, side by side: `fastrnn train` as 1 rank x 2 threads and as `mpiexec -n 2` ranks x 1 thread, on the same
corpus (../shared/data/gutenberg-novels.txt if it is there, else the bundled tiny Shakespeare) and options, the
runs of the two kinds interleaved `--repeats` times. A run's rate is the median of its progress rows' chars/s
(the first row, with compilation, left out); the 2-rank run's rows also give rank 0's time in the gradient
Allreduce per step, and its share of the step. The machine's sgemm GFLOP/s at 2 threads is measured in the same
run as the yardstick.

Modelled: synchronous data parallelism over K machines, B streams per machine, each step the measured compute time
t_c of one machine (1 rank x 2 threads) plus a ring Allreduce of the P-value gradient,
t_ar = 2 (K - 1) / K x bytes / bandwidth + 2 (K - 1) x latency, with no overlap; efficiency = t_c / (t_c + t_ar).
Links (bandwidth, per-message latency) are parameters; the defaults are 10 Gb/s Ethernet at 30 us and 100 Gb/s
InfiniBand/RoCE at 3 us. The table gives the efficiency for K = 1..64 and the largest K still at >= 90%.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

import click

from benchmarks import common, options
from fastrnn import cells
from fastrnn.params import model_layout

fastrnn_cmd = common.fastrnn_cmd
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
LINKS = "10:30,100:3"  # Gb/s : latency in microseconds
KS = (1, 2, 4, 8, 16, 32, 64)


def parse_links(text):
    """'10:30,100:3' -> [(10.0 Gb/s, 30e-6 s), (100.0, 3e-6)]."""
    links = []
    for item in text.split(","):
        try:
            gbps, us = item.split(":")
            links.append((float(gbps), float(us) * 1e-6))
        except ValueError:
            raise click.BadParameter(f"{item!r} is not GBPS:LATENCY_US") from None
    return links


def ring_allreduce_seconds(nbytes, k, gbps, latency):
    """A ring Allreduce of nbytes over k machines: 2 (k-1)/k of the data through each link, 2 (k-1) messages."""
    if k <= 1:
        return 0.0
    return 2 * (k - 1) / k * nbytes / (gbps * 1e9 / 8) + 2 * (k - 1) * latency


def scaling(compute_s, nbytes, links, ks=KS):
    """Rows of the model: for each link and K, the Allreduce time and the efficiency; and per link the largest K
    (of 1..1024, powers of two) whose efficiency is still >= 0.9."""
    rows, limits = [], {}
    for gbps, latency in links:
        name = f"{gbps:g} Gb/s, {latency * 1e6:g} us"
        for k in ks:
            t = ring_allreduce_seconds(nbytes, k, gbps, latency)
            rows.append({"link": name, "K": k, "allreduce_ms": 1e3 * t, "efficiency": compute_s / (compute_s + t)})
        good = [k for k in (2 ** i for i in range(11))
                if compute_s / (compute_s + ring_allreduce_seconds(nbytes, k, gbps, latency)) >= 0.9]
        limits[name] = max(good) if good else 1
    return rows, limits


def run_rate(corpus_h5, run_dir, ranks, threads, model, hidden, batch, steps, log_every):
    """(median chars/s, median Allreduce ms per step or None, parameters) of one `fastrnn train` run."""
    cmd = fastrnn_cmd("train", corpus_h5, "--output", run_dir, "--force", "--model", model, "--hidden-size",
                      hidden, "--batch-size", batch, "--seq-len", 50, "--max-steps", steps, "--log-every",
                      log_every, "--eval-every", 0, "--sample-every", 0, "--threads", threads, "--quiet")
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd[:6])}... failed: {proc.stderr.strip()[-400:]}")
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()][1:]  # the first row holds compilation
    rows = [r for r in rows if r.get("chars_per_sec")]
    if not rows:
        raise click.ClickException("too few progress rows: raise --steps")
    cps = statistics.median(r["chars_per_sec"] for r in rows)
    ar = statistics.median(r["allreduce_ms"] for r in rows) if ranks > 1 else None
    return cps, ar


def parameters(model, hidden, vocab):
    return model_layout(model, vocab, hidden).size


@options.command()
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text to train on [default: ../shared/data/gutenberg-novels.txt, else tiny Shakespeare].")
@click.option("--models", type=options.CommaList(str, cells.names()), default="rnn,lstm",
              help="Cells to measure.")
@click.option("--hidden", type=click.IntRange(min=1), default=512, help="Hidden size H.")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, help="Streams N (the global batch).")
@click.option("--steps", type=click.IntRange(min=4), default=40, help="Training steps per run.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, help="Interleaved runs of each kind.")
@click.option("--links", default=LINKS, help="Links of the scaling model, GBPS:LATENCY_US, comma-separated.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also draw efficiency against K (needs matplotlib).")
@options.json_output("Write machine, measured rows and the scaling model to this JSON file.")
@options.catch_user_errors
def main(corpus, models, hidden, batch_size, steps, repeats, links, plot_path, json_path):
    if not os.path.exists(MPIEXEC):
        raise click.ClickException(f"no mpiexec beside {sys.executable}: pip install -e '.[mpi]'")
    links = parse_links(links)
    corpus = corpus or common.default_corpus()
    machine = common.machine_info()
    peak = common.measure_peaks([2], dtypes=("float32",))["float32"]["2"]
    log_every = max(1, steps // 8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastrnn-dist-") as tmp:
        corpus_h5 = common.prepare_corpus(corpus, os.path.join(tmp, "corpus.h5"))
        from fastrnn.corpus import open_corpus

        with open_corpus(corpus_h5) as c:
            vocab = c.vocab.size
        for model in models:
            # a short run of each kind first: numba's cache and the kernels' measured plans, not timed
            for ranks, threads in ((1, 2), (2, 1)):
                run_rate(corpus_h5, os.path.join(tmp, "warm"), ranks, threads, model, hidden, batch_size, 4, 1)
            one, two, ars = [], [], []
            for _ in range(repeats):
                print(f"{model} H{hidden} B{batch_size}: 1 rank x 2 threads, then 2 ranks x 1 thread ...",
                      flush=True)
                one.append(run_rate(corpus_h5, os.path.join(tmp, "one"), 1, 2, model, hidden, batch_size, steps,
                                    log_every)[0])
                cps, ar = run_rate(corpus_h5, os.path.join(tmp, "two"), 2, 1, model, hidden, batch_size, steps,
                                   log_every)
                two.append(cps)
                ars.append(ar)
            p = parameters(model, hidden, vocab)
            step_s = batch_size * 50 / statistics.median(two)
            flops = 6 * p * batch_size * 50  # forward 2 flops, backward 4, per parameter per character
            rows.append({"model": model, "hidden": hidden, "batch": batch_size, "parameters": p,
                         "one_rank_chars_per_sec": statistics.median(one),
                         "two_ranks_chars_per_sec": statistics.median(two),
                         "ratio": statistics.median(two) / statistics.median(one),
                         "ratios": [b / a for a, b in zip(one, two)],
                         "allreduce_ms": statistics.median(ars),
                         "allreduce_share": statistics.median(ars) / 1e3 / step_s,
                         "one_rank_step_s": batch_size * 50 / statistics.median(one),
                         "one_rank_pct_of_peak": 100 * flops / (batch_size * 50 / statistics.median(one)) / 1e9
                         / peak})
    print(common.format_table(rows, [("model", "model", "s"), ("H", "hidden", "d"), ("N", "batch", "d"),
                                     ("1x2 chars/s", "one_rank_chars_per_sec", ",.0f"),
                                     ("2x1 chars/s", "two_ranks_chars_per_sec", ",.0f"),
                                     ("2x1 / 1x2", "ratio", ".3f"), ("allreduce ms", "allreduce_ms", ".2f"),
                                     ("share of step", "allreduce_share", ".1%")]))
    models_out = {}
    for row in rows:
        table, limits = scaling(row["one_rank_step_s"], 4 * row["parameters"], links)
        models_out[row["model"]] = {"compute_s": row["one_rank_step_s"], "gradient_bytes": 4 * row["parameters"],
                                    "rows": table, "k_at_90pct": limits}
        print(f"\nscaling model, {row['model']} H{hidden}, B={batch_size} per machine, compute "
              f"{1e3 * row['one_rank_step_s']:.1f} ms/step, gradient {4 * row['parameters'] / 2**20:.1f} MiB:")
        print(common.format_table(table, [("link", "link", "s"), ("K", "K", "d"),
                                          ("allreduce ms", "allreduce_ms", ".2f"),
                                          ("efficiency", "efficiency", ".1%")]))
        for name, k in limits.items():
            print(f"  {name}: efficiency >= 90% up to K = {k}")
    if plot_path:
        _plot(models_out, plot_path)
    if json_path:
        common.write_json(json_path, dict(machine=machine, sgemm_gflops_2_threads=peak,
                                          corpus=os.path.basename(corpus), steps=steps, repeats=repeats, rows=rows,
                                          links=[{"gbps": g, "latency_us": l * 1e6} for g, l in links],
                                          scaling=models_out))
        print(f"wrote {json_path}")


def _plot(models_out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for model, m in models_out.items():
        for link in sorted({r["link"] for r in m["rows"]}):
            pts = [(r["K"], r["efficiency"]) for r in m["rows"] if r["link"] == link]
            ax.semilogx([k for k, _ in pts], [e for _, e in pts], marker="o", base=2, label=f"{model}, {link}")
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="machines K", ylabel="efficiency (modelled)", ylim=(0, 1.02),
           title="Data-parallel efficiency: measured compute, ring Allreduce model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
