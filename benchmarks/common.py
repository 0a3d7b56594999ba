"""Shared helpers of the benchmarks: machine description, thread control, GEMM peaks, timing, output.

Every benchmark reports what it ran on (CPU, cores, library versions, BLAS environment) next to its numbers, and
measures the machine's single- and double-precision GEMM rate in the same run, so that an achieved GFLOP/s can be
read as a fraction of what this machine, at this thread count, can do.
"""

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "fastrnn", "data", "tinyshakespeare.txt")
GUTENBERG = os.path.join(os.path.dirname(ROOT), "shared", "data", "gutenberg-novels.txt")  # ../shared beside the checkout
VOCAB = 65  # symbols in tiny Shakespeare


def fastrnn_cmd(*args):
    """The command line of `fastrnn ARGS...` in this Python."""
    return [sys.executable, "-m", "fastrnn", *[str(a) for a in args]]


def default_corpus():
    """The 11M-character Gutenberg novels where ../shared is beside the checkout, else the bundled tiny Shakespeare."""
    return GUTENBERG if os.path.exists(GUTENBERG) else SHAKESPEARE


def prepare_corpus(text, out):
    """`fastrnn prepare TEXT --output OUT` in a subprocess; a ClickException with its error if it fails."""
    import click

    proc = subprocess.run(fastrnn_cmd("prepare", text, "--output", out), capture_output=True, text=True)
    if proc.returncode != 0:
        raise click.ClickException(f"fastrnn prepare failed: {proc.stderr.strip()}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# machine


def cpu_model():
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags():
    """The SIMD flags that matter for the kernels (avx2, fma, avx512f, ...; asimd: ARM's NEON), from /proc/cpuinfo
    ("flags" on x86, "Features" on ARM)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd")
                            if f in flags]
    except OSError:
        pass
    return []


def machine_info():
    """A JSON-friendly description of the machine and the numerical stack."""
    from importlib.metadata import PackageNotFoundError, version

    import numba

    import llvmlite
    import llvmlite.binding as llvm

    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover
        physical = None
    has_svml = getattr(llvm, "has_svml", None)
    has_svml = has_svml() if callable(has_svml) else has_svml  # a function in older llvmlite, a bool in newer
    try:  # (fastrnn does not need SciPy; recorded where it is installed)
        scipy = version("scipy")
    except PackageNotFoundError:
        scipy = "not installed"
    blas = {}
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:  # pragma: no cover
        pass
    return {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(), "physical_cores": physical,
        "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
        "scipy": scipy, "llvmlite": llvmlite.__version__, "llvmlite_has_svml": has_svml,
        "numba_svml": bool(getattr(numba.core.config, "USING_SVML", False)), "blas": blas,
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_"))},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ---------------------------------------------------------------------------------------------------------------
# threads


_limits = None  # the threadpoolctl limiter in force, kept alive


def set_threads(n):
    """Use n threads for numba kernels and BLAS. Returns n.

    fastrnn.kernels.pools.set_threads when the kernels provide it, else threadpoolctl + numba.set_num_threads.
    """
    global _limits
    try:
        from fastrnn.kernels.pools import set_threads as kernels_set_threads
    except ImportError:
        kernels_set_threads = None
    if kernels_set_threads is not None:
        kernels_set_threads(n)
        return n
    import numba
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(limits=n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n


# ---------------------------------------------------------------------------------------------------------------
# timing


def _calls_per_repeat(fn, min_seconds):
    """How many calls of fn() make a repeat of about min_seconds, from the median of a few probe calls (one probe
    alone can be an outlier: e.g. the first call after another contender's threads held the cores)."""
    probes = []
    start = time.perf_counter()
    while len(probes) < 3 or (len(probes) < 9 and time.perf_counter() - start < 0.2 * min_seconds):
        t0 = time.perf_counter()
        fn()
        probes.append(time.perf_counter() - t0)
    return max(1, int(min_seconds / max(statistics.median(probes), 1e-9)))


def _timed(fn, k):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def time_calls(fn, repeats, min_seconds=0.05):
    """Median seconds per call of fn() over `repeats` timed repeats.

    Each repeat runs fn() k times with k chosen (from one probe call) so a repeat lasts about min_seconds, which
    keeps microsecond-sized calls measurable. Returns (median seconds per call, calls per repeat, [per-call
    seconds of each repeat]).
    """
    k = _calls_per_repeat(fn, min_seconds)
    per_call = [_timed(fn, k) for _ in range(repeats)]
    return statistics.median(per_call), k, per_call


def time_interleaved(fns, repeats, min_seconds=0.05, warmup=0.1):
    """time_calls for several functions at once, their repeats taken in turn (a, b, c, a, b, c, ...).

    On a shared or throttled machine the speed changes over time; interleaving exposes every contender to the
    same conditions, so ratios between them stay meaningful. Each timed repeat follows an untimed warm-up of the
    same function for about `warmup` seconds: a contender must not be timed while the threads of the one before
    still hold the cores (OpenBLAS keeps its idle workers spinning for ~0.1 s after a call). fns: {name: fn};
    repeats: {name: int}. Returns {name: (median seconds per call, calls per repeat, [per-call seconds of each
    repeat])}.
    """
    ks = {name: _calls_per_repeat(fn, min_seconds) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                if warmup > 0:
                    _timed(fn, max(1, int(ks[name] * warmup / min_seconds)) if min_seconds > 0 else 1)
                samples[name].append(_timed(fn, ks[name]))
    return {name: (statistics.median(s), ks[name], s) for name, s in samples.items()}


def gemm_gflops(dtype, n=2048, repeats=5):
    """Median GFLOP/s of an (n, n) @ (n, n) product in `dtype` at the current thread setting (2 n^3 flops)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)  # (n, n)
    b = rng.standard_normal((n, n)).astype(dtype)  # (n, n)
    c = np.empty((n, n), dtype=dtype)  # (n, n)
    np.matmul(a, b, out=c)  # warm-up: BLAS thread start, page faults
    seconds, _, _ = time_calls(lambda: np.matmul(a, b, out=c), repeats, min_seconds=0.0)
    return 2.0 * n**3 / seconds / 1e9


def measure_peaks(threads_list, dtypes=("float32", "float64"), n=2048, repeats=5):
    """{dtype: {str(threads): GFLOP/s}}: sgemm and dgemm peaks at each thread count."""
    peaks = {dt: {} for dt in dtypes}
    for threads in threads_list:
        set_threads(threads)
        for dt in dtypes:
            peaks[dt][str(threads)] = gemm_gflops(dt, n, repeats)
    return peaks


# ---------------------------------------------------------------------------------------------------------------
# data


@functools.lru_cache(maxsize=1)
def text_tokens():
    """(M,) int32 ids of the bundled tiny Shakespeare (V = 65 symbols, sorted), or random ids if it is missing.

    Real text gives the work of a real run; a model trained over and over on one random batch instead drives its
    softmax to extreme values (the seed-style model's loss even overflows), which is not what is being measured."""
    try:
        with open(SHAKESPEARE, encoding="utf-8") as f:
            codes = np.frombuffer(f.read().encode("utf-32-le"), dtype="<u4")  # (M,)
    except OSError:
        return np.random.default_rng(0).integers(0, VOCAB, 1_000_000, dtype=np.int32)
    _, ids = np.unique(codes, return_inverse=True)  # the 65 symbols of tiny Shakespeare, sorted
    return (ids % VOCAB).astype(np.int32)  # (M,) (the modulo only guards against an edited file)


class Batches:
    """All the minibatches of one epoch, as the training loop's batch stream makes them: N contiguous streams,
    minibatch i holds characters [i*T, (i+1)*T) of each. Precomputed, so that fetching is not timed.

    xs, ys: (B, N, T) int32, B minibatches. next() returns (x, y, new_epoch) cycling over the epoch."""

    def __init__(self, N, T, tokens=None):
        tokens = text_tokens() if tokens is None else tokens
        S = (len(tokens) - 1) // N  # stream length
        B = max(1, S // T)
        if S < T:
            raise ValueError(f"{len(tokens)} tokens are too few for a batch of {N} x {T}")
        streams = np.stack([tokens[i * S: i * S + B * T + 1] for i in range(N)])  # (N, B*T + 1)
        self.xs = np.ascontiguousarray(streams[:, :-1].reshape(N, B, T).transpose(1, 0, 2))  # (B, N, T)
        self.ys = np.ascontiguousarray(streams[:, 1:].reshape(N, B, T).transpose(1, 0, 2))  # (B, N, T)
        self.i = 0

    def next(self):
        i = self.i
        self.i = (i + 1) % len(self.xs)
        return self.xs[i], self.ys[i], i == 0


# ---------------------------------------------------------------------------------------------------------------
# output


def format_table(rows, columns):
    """A plain-text table. columns: list of (header, key, format spec or callable)."""
    cells = []
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key)
            if value is None:
                line.append("-")
            elif callable(fmt):
                line.append(fmt(value))
            else:
                line.append(format(value, fmt))
        cells.append(line)
    headers = [h for h, _, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(out)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def read_results(path, what):
    """The JSON object of a benchmark's result file, which must hold a list of rows; a file that is not JSON or
    has no rows is a click error naming it (`what`: the kind of file expected, for the message)."""
    import click

    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise click.ClickException(f"{path} has no rows ({what})")
    return data


def write_json(path, data):
    """Write `data` (numpy scalars allowed, non-finite floats become null) as indented JSON."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(data), f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------------------
# memory


def tree_rss(proc):
    """Resident set size of a psutil.Process and its descendants, in bytes (0 once it has exited)."""
    import psutil

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


def sample_rss(cmd, interval=0.2, **popen):
    """Run `cmd`, sampling the RSS of it and its children every `interval` seconds.

    Returns (exit status, [(seconds since start, rss_mb), ...]). popen: more subprocess.Popen arguments."""
    import subprocess

    import psutil

    start = time.perf_counter()
    child = subprocess.Popen(cmd, **popen)
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
