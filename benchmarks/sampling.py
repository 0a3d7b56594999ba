"""Generation speed in chars/s: the numba path vs a plain NumPy sampling loop, on a random hidden-512 model.

    python -m benchmarks.sampling [--json PATH] [--model rnn] [--num-layers 1] [--hidden 512] [--length 2000]
                                  [--threads 1] [--streams 32] [--streams-threads 1,2] [--repeats 3]

Runs from a checkout (benchmarks/ is not part of the installed package); `--help` lists every option.

Contenders (all draw one character at a time from the full softmax, temperature 1, one sequence):

    numba-generate  fastrnn.sample.generate with backend fastrnn.kernels: it runs
                    fastrnn.kernels.sample.sample_chunk, 64 characters (step and draw) per numba call
    numpy-generate  fastrnn.sample.generate with backend fastrnn.reference
    numpy-loop      a plain NumPy loop as a learner writes it: h = tanh(Wxh[tok] + h @ Whh + bh),
                    logits = h @ Why + by, softmax, rng.choice (for lstm and gru, the cell's equations of the
                    README, layer by layer)

Before timing, every contender generates the same 200 characters as numpy-generate from the same seed on a
float64 model (`checked`). The target is the fastest numba path >= 10x the plain NumPy loop.

`numba-streams` rows generate K samples together (fastrnn.sample.generate_many: every weight read once per character
for all the samples one thread runs, the samples split over the threads), at each --streams-threads count; chars/s
counts every sample's characters. The target is K = 32 at >= 10x numba-generate's one stream. These rows also give
the products' GFLOP/s (2 * rows * columns of each matrix a character multiplies) over the sgemm peak measured in
the same run at the same thread count, and `peak_bound_vs_one_stream`: the most that peak allows, over one stream.

`serve-clients` rows: K clients at once (threads of another process), each POSTing one /generate request of the
numba-streams rows' length to a `fastrnn serve` server (fastrnn.serve, in this process, the model written to a
temporary checkpoint, at each --streams-threads count), which generates concurrent requests together; chars/s
counts every client's characters from the first request sent to the last answer read, HTTP included, and
`checked` says each client's text equals the one drawn alone.

Two more rows, `read-once` and `read-split`, are no generators: the rate at which one thread sums, in one pass and one stream, the
weights that every generated character must read (every layer's Whh, the Wxh of the layers above the first, and
Why), for scale; `read-split` the same bytes read in two halves by two threads at once (each half staying in its own
core's cache: what both cores' caches deliver), the bound of one stream, whose `vs_read_split` is reported;
`bytes_per_char` says how many bytes that is.
"""

import importlib
import os
import time

import numba

import click
import numpy as np

from benchmarks import common, options
from fastrnn import cells, reference
from fastrnn.corpus import Vocab
from fastrnn.model import Model
from fastrnn.sample import generate

V = 65
SYMBOLS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's 65
TARGET = 10.0
READ_TARGET = 0.8  # one stream: chars/s as a fraction of read-split (both cores' caches reading the weights)
STREAMS_AT, STREAMS_TARGET = 32, 10.0  # 32 samples together: chars/s over one stream's
CHECK_LENGTH = 200


def numpy_loop(P, vocab, length, rng, dtype):
    """(length,) generated ids by the plain NumPy loop; starts from a newline, as generate() with no prime. The
    rnn, lstm and gru steps are the README's equations as a learner writes them; another cell steps by its NumPy
    reference (fastrnn.cells), one character at a time."""
    cell, L, H = P.cell, P.layers, P.hidden_size
    layers = [tuple(P[k] for k in cell.layer_names(l)) for l in range(L)]  # (Wxh, Whh, bh, ...) per layer
    Why, by = P["Why"], P["by"]
    state = [[np.zeros(H, dtype=dtype) for _ in cell.state] for _ in range(L)]  # h (and c) per layer: (H,) each
    token = int(vocab.encode("\n")[0])
    out = np.empty(length, dtype=np.int32)  # (length,)
    for i in range(length):
        for l, W in enumerate(layers):
            state[l] = _learner_step(cell, W, token if l == 0 else state[l - 1][0], state[l], H)
        logits = (state[-1][0] @ Why + by).astype(np.float64)  # (V,)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        token = out[i] = rng.choice(len(p), p=p)
    return out


def _learner_step(cell, W, inp, state, H):
    """One layer's step from `inp` (the token for layer 0, else the layer below's h): the new [h (, c)]."""
    Wxh, Whh, bh = W[:3]
    x = Wxh[inp] if np.ndim(inp) == 0 else inp @ Wxh  # (G*H,)
    h, c = state[0], state[-1]
    if cell.name == "rnn":
        return [np.tanh(x + h @ Whh + bh)]  # (H,)
    if cell.name == "lstm":
        a = x + h @ Whh + bh  # (4H,) gates i, f, o, g
        ifo = 1.0 / (1.0 + np.exp(-a[:3 * H]))
        c = ifo[H:2 * H] * c + ifo[:H] * np.tanh(a[3 * H:])
        return [ifo[2 * H:] * np.tanh(c), c]
    if cell.name == "gru":
        x = x + bh  # (3H,) gates r, z, n
        u = h @ Whh  # (3H,)
        rz = 1.0 / (1.0 + np.exp(-(x[:2 * H] + u[:2 * H])))
        n = np.tanh(x[2 * H:] + rz[:H] * u[2 * H:])
        return [(1.0 - rz[H:]) * n + rz[H:] * h]
    below = np.array([[inp]], dtype=np.int32) if np.ndim(inp) == 0 else inp[None, None]  # (1, 1) or (1, 1, H)
    seqs, _ = cell.forward(below, W, tuple(v[None] for v in state))
    return [seq[-1, 0] for seq in seqs]


def contenders(numba_backend):
    """{name: fn(P, vocab, length, rng, dtype) -> sequence of ids}."""
    out = {}
    if numba_backend is not None:
        out["numba-generate"] = lambda P, vocab, length, rng, dtype: list(
            generate(numba_backend, P, vocab, length=length, rng=rng, dtype=dtype))
    out["numpy-generate"] = lambda P, vocab, length, rng, dtype: list(
        generate(reference, P, vocab, length=length, rng=rng, dtype=dtype))
    out["numpy-loop"] = numpy_loop
    return out


def _sum_all(a, b):
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i]
    for i in range(b.shape[0]):
        s += b[i]
    return s


def weights_per_char(P):
    """The matrices every generated character reads whole: each layer's Whh, the Wxh above layer 0, and Why."""
    names = [P.cell.layer_names(l)[1] for l in range(P.layers)] + [P.cell.layer_names(l)[0] for l in range(1, P.layers)]
    return [P[name] for name in names] + [P["Why"]]


def _sum_passes(a, passes):
    t = 0.0
    for _ in range(passes):
        for i in range(a.shape[0]):
            t += a[i]
    return t


def read_split_seconds(P, repeats, parts=2):
    """Median seconds for `parts` threads to read the weights_per_char once between them: each thread (numba code
    without the GIL, started once) sums its own part pass after pass, so the part stays in that core's cache."""
    import threading

    summed = numba.njit(fastmath=True, nogil=True)(_sum_passes)
    flat = np.concatenate([W.reshape(-1) for W in weights_per_char(P)])
    chunks = [np.ascontiguousarray(c) for c in np.array_split(flat, parts)]
    passes = 500
    summed(chunks[0], 1)

    def together():
        threads = [threading.Thread(target=summed, args=(c, passes)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    seconds, _, _ = common.time_calls(together, repeats, 0.1)
    return seconds / passes


def read_seconds(P, repeats):
    """Median seconds for one pass of a numba loop over every element of the weights_per_char (their whole
    bytes)."""
    import numba

    summed = numba.njit(fastmath=True)(_sum_all)
    *recurrent, Why = weights_per_char(P)
    a = np.concatenate([W.reshape(-1) for W in recurrent])
    b = Why.reshape(-1)
    summed(a, b)
    passes = 50
    seconds, _, _ = common.time_calls(lambda: [summed(a, b) for _ in range(passes)], repeats, 0.1)
    return seconds / passes


def agreement(a, b):
    """Length of the common prefix of two id sequences."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def make_model(H, dtype, seed=0, cell="rnn", layers=1):
    """A random model whose outputs are not uniform: weights ~ N(0, 1/H) (rnn; Glorot-uniform for lstm and gru,
    the package's auto init), output biases ~ N(0, 1)."""
    model = Model(V, H, dtype, cell, layers).init(np.random.default_rng(seed), 1.0 / np.sqrt(H))
    model.P["by"][...] = np.random.default_rng(seed + 1).standard_normal(V)
    return model


def flops_per_char(P):
    """Multiply-add flops of the products of one generated character: 2 * rows * columns of every matrix in
    weights_per_char (the gathered Wxh row of layer 0 is no product)."""
    return float(sum(2 * W.shape[0] * W.shape[1] for W in weights_per_char(P)))


def streams_rows(P, vocab, numba_backend, streams, length, thread_counts, repeats, check):
    """numba-streams rows: K samples generated together, each `length` characters, at each thread count (checked:
    every sample equals the one drawn alone from its seed, on the float64 model `check`)."""
    from fastrnn.sample import generate_many

    rows = []
    for threads in thread_counts:
        common.set_threads(threads)
        for K in streams:
            def together(model_P, n, dtype, K=K):
                return np.concatenate(list(generate_many(numba_backend, model_P, vocab, count=K, length=n, seed=1,
                                                         dtype=dtype)), axis=1)

            t0 = time.perf_counter()
            got = together(check.P, CHECK_LENGTH, np.float64)
            first = time.perf_counter() - t0
            alone = [list(generate(numba_backend, check.P, vocab, length=CHECK_LENGTH,
                                   rng=np.random.default_rng(1 + i), dtype=np.float64)) for i in range(min(K, 4))]
            checked = all(got[i].tolist() == alone[i] for i in range(len(alone)))
            together(P, 10, P["Why"].dtype)
            seconds, _, _ = common.time_calls(lambda: together(P, length, P["Why"].dtype), repeats, 0.0)
            rows.append(dict(backend="numba-streams", streams=K, threads=threads, length=length,
                             chars_per_sec=K * length / seconds, seconds=seconds, repeats=repeats,
                             first_call_seconds=first, agree=int(checked), checked=checked))
    return rows


CLIENTS = """
import concurrent.futures, http.client, json, sys, time
host, port, K, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def ask(seed):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/generate", body=json.dumps({"length": n, "seed": seed}).encode())
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    if resp.status != 200:
        sys.exit(f"the server answered {resp.status}: {answer.get('error')}")
    return answer["text"]
seconds = []
with concurrent.futures.ThreadPoolExecutor(K) as pool:
    for _ in range(repeats):
        t0 = time.perf_counter()
        texts = list(pool.map(ask, range(1, K + 1)))
        seconds.append(time.perf_counter() - t0)
print(json.dumps(dict(seconds=seconds, texts=texts)))
"""


def serve_rows(model, vocab, clients, length, thread_counts, repeats, check, backend="numba"):
    """serve-clients rows: K concurrent HTTP clients of one server, each asking for `length` characters (seed 1 +
    client), at each K and thread count of the server (checked on the float64 model `check`: every client's text
    as drawn alone)."""
    import json
    import subprocess
    import sys
    import tempfile
    import threading

    from fastrnn import checkpoint as ckpt_io
    from fastrnn import serve
    from fastrnn.config import TrainConfig
    from fastrnn.model import get_backend

    def served(m, K):
        path = os.path.join(tmp, f"{m.dtype}.h5")
        config = TrainConfig(model=m.model, num_layers=m.num_layers, hidden_size=m.hidden_size, dtype=str(m.dtype))
        ckpt_io.save(path, ckpt_io.Checkpoint(config.to_dict(), vocab.to_dict(), m.flat,
                                              {"m": np.zeros_like(m.flat)}, np.zeros((1, 1)), {}))
        generator = serve.Generator(path, backend, max_length=max(length, CHECK_LENGTH), max_pending=K,
                                    max_batch=K)
        server = serve.make_server(generator, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def all_at_once(server, K, n, repeats=1):
        """Each repeat: K clients at once, in another process (as clients are; in this one they would share the
        server's interpreter lock); the median seconds from the first request sent to the last answer read, and
        the texts of the last repeat."""
        host, port = server.server_address[:2]
        proc = subprocess.run([sys.executable, "-c", CLIENTS, host, str(port), str(K), str(n), str(repeats)],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise click.ClickException(f"the serve clients failed: {proc.stderr.strip().splitlines()[-1:]}")
        out = json.loads(proc.stdout)
        return float(np.median(out["seconds"])), out["texts"]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads, K in ((t, K) for t in thread_counts for K in clients):
            common.set_threads(threads)
            server = served(check, K)
            _, got = all_at_once(server, K, CHECK_LENGTH)
            server.shutdown()
            server.server_close()
            alone = [vocab.decode(list(generate(get_backend(backend), check.P, vocab,
                                                length=CHECK_LENGTH, rng=np.random.default_rng(1 + c),
                                                dtype=np.float64))) for c in range(min(K, 4))]
            checked = all(got[c] == alone[c] for c in range(len(alone)))
            server = served(model, K)
            all_at_once(server, K, 10)
            seconds, _ = all_at_once(server, K, length, repeats)
            server.shutdown()
            server.server_close()
            rows.append(dict(backend="serve-clients", streams=K, threads=threads, length=length,
                             chars_per_sec=K * length / seconds, seconds=seconds, repeats=repeats,
                             first_call_seconds=0.0, agree=int(checked), checked=checked))
    return rows


def run(hidden=512, length=2000, threads=1, repeats=3, dtype="float32", numba_module="fastrnn.kernels",
        model="rnn", num_layers=1, streams=(32,), streams_threads=None, serve_clients=(1, 32)):
    """Rows {backend, model, layers, hidden, dtype, threads, length, chars_per_sec, seconds, checked, agree, ...}."""
    cell, layers = model, num_layers
    common.set_threads(threads)
    vocab = Vocab([ord(c) for c in SYMBOLS])
    try:
        numba_backend = importlib.import_module(numba_module)
    except ImportError as exc:
        print(f"cannot import {numba_module} ({exc}); no numba contender")
        numba_backend = None
    fns = contenders(numba_backend)
    check = make_model(hidden, "float64", cell=cell, layers=layers)
    expect = fns["numpy-generate"](check.P, vocab, CHECK_LENGTH, np.random.default_rng(7), np.float64)
    model = make_model(hidden, dtype, cell=cell, layers=layers)
    rows = []
    for name, fn in fns.items():
        t0 = time.perf_counter()
        try:
            got = fn(check.P, vocab, CHECK_LENGTH, np.random.default_rng(7), np.float64)  # also the warm-up
        except TypeError as exc:  # a kernels.sample.generate with another signature
            print(f"skipping {name}: {exc}")
            continue
        first = time.perf_counter() - t0
        fn(model.P, vocab, 10, np.random.default_rng(0), model.dtype)  # compile the dtype's build
        agree = agreement(got, expect)
        seconds, _, samples = common.time_calls(
            lambda: fn(model.P, vocab, length, np.random.default_rng(1), model.dtype), repeats, 0.0)
        rows.append(dict(backend=name, model=cell, layers=layers, hidden=hidden, vocab=V, dtype=dtype, threads=threads,
                         length=length, chars_per_sec=length / seconds, seconds=seconds, repeats=repeats,
                         first_call_seconds=first, agree=agree, checked=agree == CHECK_LENGTH))
    common_fields = dict(model=cell, layers=layers, hidden=hidden, vocab=V, dtype=dtype, threads=threads)
    if numba_backend is not None and streams:
        rows += [dict(common_fields, **r) for r in streams_rows(model.P, vocab, numba_backend, streams, length // 4,
                                                                streams_threads or [threads], repeats, check)]
        if serve_clients:
            backend = "numpy" if numba_module == "fastrnn.reference" else "numba"  # (the server's choices)
            rows += [dict(common_fields, **r) for r in serve_rows(model, vocab, serve_clients, length // 4,
                                                                  streams_threads or [threads], repeats, check,
                                                                  backend)]
        common.set_threads(threads)
    nbytes = int(sum(W.nbytes for W in weights_per_char(model.P)))
    for name, seconds, n in (("read-once", read_seconds(model.P, repeats), 1),
                             ("read-split", read_split_seconds(model.P, repeats), 2)):
        rows.append(dict(common_fields, backend=name, threads=n, length=1, chars_per_sec=1.0 / seconds,
                         seconds=seconds, repeats=repeats, bytes_per_char=nbytes, first_call_seconds=0.0, agree=0,
                         checked=True))
    base = next(r["chars_per_sec"] for r in rows if r["backend"] == "numpy-loop")
    split = next(r["chars_per_sec"] for r in rows if r["backend"] == "read-split")
    single = next((r["chars_per_sec"] for r in rows if r["backend"] == "numba-generate"), None)
    for r in rows:
        r.setdefault("streams", 1)
        r["vs_numpy_loop"] = r["chars_per_sec"] / base
        r["vs_read_split"] = r["chars_per_sec"] / split
        if single:
            r["vs_one_stream"] = r["chars_per_sec"] / single
    flops = flops_per_char(model.P)
    peaks = common.measure_peaks(sorted({r["threads"] for r in rows if r["backend"] == "numba-streams"}),
                                 dtypes=(dtype,))[dtype]
    for r in rows:
        if r["backend"] == "numba-streams":
            r["gflops"] = r["chars_per_sec"] * flops / 1e9
            r["peak_gflops"] = peaks[str(r["threads"])]
            r["pct_of_peak"] = 100.0 * r["gflops"] / r["peak_gflops"]
            if single:  # the most K streams at that peak could give, over one stream
                r["peak_bound_vs_one_stream"] = r["peak_gflops"] * 1e9 / flops / single
    return rows


@options.command(help=__doc__.split("\n\n")[0] + "\n\nRuns from a checkout (benchmarks/ is not part of the "
                 "installed package). Every contender is checked against numpy-generate before it is timed.")
@options.json_output("Write machine, rows and targets to this JSON file.")
@click.option("--model", type=click.Choice(cells.names()), default="rnn", help="The cell of the random model.")
@click.option("--num-layers", type=click.IntRange(min=1), default=1, help="Layers of the random model.")
@click.option("--hidden", type=click.IntRange(min=1), default=512, help="Hidden size H.")
@click.option("--length", type=click.IntRange(min=1), default=2000, help="Characters generated per timed call.")
@options.int_list("--streams", [32], "Sample counts K for the numba-streams rows (K samples generated together), "
                  "comma-separated.")
@options.threads(1)
@options.int_list("--streams-threads", [1, 2], "Thread counts of the numba-streams rows (the K samples split over "
                  "the threads), comma-separated.")
@options.int_list("--serve-clients", [1, 32], "Client counts K of the serve-clients rows (K concurrent requests to "
                  "one server), comma-separated; 0: no such rows.", minimum=0)
@options.repeats(3)
@options.dtype("float32", help="The model's floating-point type.")
@options.numba_module()
@options.catch_user_errors
def main(json_path, model, num_layers, hidden, length, streams, threads, streams_threads, serve_clients, repeats,
         dtype, numba_module):
    machine = common.machine_info()
    rows = run(hidden, length, threads, repeats, dtype, numba_module, model, num_layers, streams, streams_threads,
               [k for k in serve_clients if k > 0])
    default = (model, num_layers) == ("rnn", 1)
    arch = [] if default else [("model", "model", "s"), ("L", "layers", "d")]  # the rnn table stays as it was
    print(common.format_table(rows, [("backend", "backend", "s")] + arch + [
        ("H", "hidden", "d"), ("dtype", "dtype", "s"), ("thr", "threads", "d"), ("K", "streams", "d"),
        ("chars/s", "chars_per_sec", ",.0f"), ("x numpy-loop", "vs_numpy_loop", ".2f"),
        ("x one stream", "vs_one_stream", ".2f"),
        ("x read-split", "vs_read_split", ".2f"), ("GFLOP/s", "gflops", ".1f"), ("% of peak", "pct_of_peak", ".1f"),
        ("first call s", "first_call_seconds", ".2f"), ("checked", "checked", lambda v: "yes" if v else "NO")]))
    numba_rows = [r for r in rows if r["backend"].startswith("numba")]
    best = max(numba_rows, key=lambda r: r["chars_per_sec"]) if numba_rows else None
    what = "" if default else f"{model} L{num_layers} "
    target = dict(name=f"sampling {what}H{hidden}: numba >= {TARGET:g}x plain NumPy loop", threshold=TARGET,
                  backend=best and best["backend"], value=best and best["vs_numpy_loop"],
                  passed=None if best is None else bool(best["vs_numpy_loop"] >= TARGET))
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[target["passed"]]
    bound = next(r for r in rows if r["backend"] == "read-once")
    target["read_once"] = bound["vs_numpy_loop"]
    print(f"{status}  {target['name']}" + (f": {best['backend']} {best['vs_numpy_loop']:.2f}x" if best else "")
          + f" (one pass over the {bound['bytes_per_char'] / 1e6:.2f} MB of weights a character needs, and nothing "
          f"else, runs at {bound['vs_numpy_loop']:.2f}x)")
    targets = [target]
    single = next((r for r in rows if r["backend"] == "numba-generate"), None)
    if single is not None:
        targets.append(dict(name=f"sampling {what}H{hidden}: one stream >= {READ_TARGET:g} of read-split",
                            threshold=READ_TARGET, backend="numba-generate", value=single["vs_read_split"],
                            passed=bool(single["vs_read_split"] >= READ_TARGET)))
    at = [r for r in rows if r["backend"] == "numba-streams" and r["streams"] == STREAMS_AT]
    if at:
        r = max(at, key=lambda r: r["chars_per_sec"])
        targets.append(dict(name=f"sampling {what}H{hidden}: {STREAMS_AT} streams >= {STREAMS_TARGET:g}x one "
                            f"stream", threshold=STREAMS_TARGET, backend="numba-streams", threads=r["threads"],
                            value=r.get("vs_one_stream"), passed=bool(r.get("vs_one_stream", 0) >= STREAMS_TARGET),
                            peak_bound=r.get("peak_bound_vs_one_stream")))
    for t in targets[1:]:
        bound = (f" (at {t['threads']} threads; {STREAMS_AT} streams at the same-run sgemm peak would give "
                 f"{t['peak_bound']:.2f}x)" if t.get("peak_bound") else "")
        print(f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']}: {t['value']:.2f}{bound}")
    if json_path:
        common.write_json(json_path, dict(machine=machine, rows=rows, targets=targets))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
