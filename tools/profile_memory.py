"""Sample the RSS of a command (and its children) over time; write a CSV and, with matplotlib, a PNG.

    python -m tools.profile_memory --csv mem.csv --plot mem.png -- fastrnn train corpus.h5 -o runs/x --max-steps 500

Runs from a checkout (tools/ is not part of the installed package). Works with any command; the command's own
output passes through. Prints the peak RSS at the end; the exit status is the command's. The sampling itself is
benchmarks.common.sample_rss (benchmarks.train_memory uses it too).
"""

import sys

import click

from benchmarks import options
from benchmarks.common import sample_rss
from fastrnn.cli.types import Finite


def write_csv(path, samples):
    with open(path, "w") as f:
        f.write("seconds,rss_mb\n")
        for t, mb in samples:
            f.write(f"{t:.3f},{mb:.2f}\n")


def write_plot(path, samples, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.plot([t for t, _ in samples], [mb for _, mb in samples])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (tools/ is not part of the installed "
                 "package). COMMAND: the command to run, after --.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default="memory.csv",
              help="CSV output (seconds,rss_mb).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="PNG output (needs matplotlib).")
@click.option("--interval", type=Finite(min=0, min_open=True), default=0.2,
              help="Seconds between samples.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@options.catch_user_errors
def main(csv_path, plot_path, interval, command):
    cmd = list(command)
    if not cmd:
        raise click.UsageError("give the command to profile after --")
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise click.ClickException("--plot needs matplotlib (pip install 'fastrnn[plot]')") from exc
    status, samples = sample_rss(cmd, interval)
    write_csv(csv_path, samples)
    if plot_path:
        write_plot(plot_path, samples, "RSS of: " + " ".join(cmd)[:80])
    peak = max((mb for _, mb in samples), default=0.0)
    click.echo(f"peak RSS {peak:.1f} MB over {len(samples)} samples; CSV {csv_path}"
               + (f", plot {plot_path}" if plot_path else ""), err=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
