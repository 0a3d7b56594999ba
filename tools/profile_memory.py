"""Sample the RSS of a command (and its children) over time; write a CSV and, with matplotlib, a PNG.

    python -m tools.profile_memory --csv mem.csv --plot mem.png -- fastrnn train corpus.h5 -o runs/x --max-steps 500

Works with any command; the command's own output passes through. Prints the peak RSS at the end.
"""

import argparse
import subprocess
import sys
import time

import psutil


def tree_rss(proc):
    """Resident set size of a process and its descendants, in bytes (0 once it has exited)."""
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def profile(cmd, interval=0.2):
    """Run `cmd`, sampling RSS every `interval` seconds. Returns (exit status, [(seconds, rss_mb), ...])."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    samples = []
    try:
        while child.poll() is None:
            rss = tree_rss(proc)
            if rss:
                samples.append((time.perf_counter() - start, rss / 2**20))
            time.sleep(interval)
    except KeyboardInterrupt:
        child.send_signal(2)
        child.wait()
    return child.returncode, samples


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", default="memory.csv", help="CSV output (seconds,rss_mb)")
    parser.add_argument("--plot", default=None, help="PNG output (needs matplotlib)")
    parser.add_argument("--interval", type=lambda v: float(v) if float(v) > 0 else float("x"), default=0.2,
                        help="seconds between samples (> 0)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("give the command to profile after --")
    status, samples = profile(cmd, args.interval)
    write_csv(args.csv, samples)
    if args.plot:
        write_plot(args.plot, samples, "RSS of: " + " ".join(cmd)[:80])
    peak = max((mb for _, mb in samples), default=0.0)
    print(f"peak RSS {peak:.1f} MB over {len(samples)} samples; CSV {args.csv}"
          + (f", plot {args.plot}" if args.plot else ""), file=sys.stderr)
    return status


if __name__ == "__main__":
    from benchmarks.common import run_cli

    sys.exit(run_cli(main))
