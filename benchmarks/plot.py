"""Plot training throughput (chars/s) against hidden size from a `benchmarks.throughput --json` file.

    python -m benchmarks.plot results.json [--output throughput.png] [--batch 1,64] [--dtype float32]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

One panel per (dtype, threads); one line per (backend, batch): colour is the batch size, line style the backend.
"""


import click

from benchmarks import common, options

STYLES = {"numba": ("-", "o"), "numpy": ("--", "s"), "seed": (":", "^")}


def panels(rows):
    """{(dtype, threads): {(backend, batch): [(hidden, chars_per_sec), ...] sorted by hidden}}."""
    out = {}
    for r in rows:
        if r.get("chars_per_sec") is None:
            continue
        lines = out.setdefault((r["dtype"], r["threads"]), {})
        lines.setdefault((r["backend"], r["batch"]), []).append((r["hidden"], r["chars_per_sec"]))
    for lines in out.values():
        for points in lines.values():
            points.sort()
    return dict(sorted(out.items()))


def plot(results, output, batches=None, dtypes=None, model="rnn"):
    """Write the PNG. results: the JSON object of benchmarks.throughput; model: NAME or NAME:LAYERS, the rows
    drawn. Returns the number of panels drawn."""
    name, _, layers = model.partition(":")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if (not batches or r["batch"] in batches)
            and (not dtypes or r["dtype"] in dtypes)
            and (r.get("model", "rnn"), r.get("layers", 1)) == (name, int(layers or 1))]
    data = panels(rows)
    if not data:
        raise ValueError("no rows to plot (check --batch and --dtype)")
    all_batches = sorted({r["batch"] for r in rows})
    colours = {b: plt.cm.viridis(i / max(1, len(all_batches) - 1)) for i, b in enumerate(all_batches)}
    fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 4.5), dpi=100, squeeze=False, sharey=True)
    for ax, ((dtype, threads), lines) in zip(axes[0], data.items()):
        for (backend, batch), points in sorted(lines.items()):
            style, marker = STYLES.get(backend, ("-.", "x"))
            ax.plot([h for h, _ in points], [c for _, c in points], linestyle=style, marker=marker,
                    color=colours[batch], label=f"{backend} N={batch}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        hidden = sorted({h for points in lines.values() for h, _ in points})
        ax.set_xticks(hidden, [str(h) for h in hidden])
        ax.set_xlabel("hidden size H")
        ax.set_title(f"{dtype}, {threads} thread{'s' if threads != 1 else ''}")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("training chars/s")
    axes[0][-1].legend(fontsize=7, ncol=2)
    cpu = results.get("machine", {}).get("cpu", "")
    seq = rows[0].get("seq_len", "")
    fig.suptitle(f"Training throughput, {model}, T={seq}, {cpu}")
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    return len(data)


def _model(ctx, param, value):
    name, _, layers = value.partition(":")
    if not name or (layers and (not layers.isdigit() or int(layers) < 1)):
        raise click.BadParameter(f"expected NAME or NAME:LAYERS, got {value!r}")
    return value


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). RESULTS: the output of `python -m benchmarks.throughput --json`.")
@click.argument("results", metavar="RESULTS.json", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="throughput.png", help="The PNG to write.")
@click.option("--batch", type=options.CommaList(int), default=None, show_default="all",
              help="Only these batch sizes, comma-separated.")
@click.option("--dtype", type=options.CommaList(str, options.DTYPES), default=None, show_default="all",
              help="Only these dtypes, comma-separated.")
@click.option("--model", default="rnn", callback=_model, help="The model's rows to draw: NAME or NAME:LAYERS.")
@options.catch_user_errors
def main(results, output, batch, dtype, model):
    data = common.read_results(results, "is it a benchmarks.throughput --json file?")
    n = plot(data, output, batch, dtype, model)
    click.echo(f"wrote {output} ({n} panel{'s' if n != 1 else ''})")


if __name__ == "__main__":
    main()
