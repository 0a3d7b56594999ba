"""Generation speed in chars/s: the numba path vs a plain NumPy sampling loop, on a random hidden-512 model.

    python -m benchmarks.sampling [--json PATH] [--hidden 512] [--length 2000] [--threads 1] [--repeats 3]

Contenders (all draw one character at a time from the full softmax, temperature 1, one sequence):

    numba-loop      fastrnn.kernels.sample.generate, if the kernels ever provide one (they do not at present:
                    the row is then absent)
    numba-generate  fastrnn.sample.generate with backend fastrnn.kernels: for a 1-layer rnn it runs
                    fastrnn.kernels.sample.sample_chunk, 64 characters (step and draw) per numba call
    numpy-generate  fastrnn.sample.generate with backend fastrnn.reference
    numpy-loop      a plain NumPy loop as a learner writes it: h = tanh(Wxh[tok] + h @ Whh + bh),
                    logits = h @ Why + by, softmax, rng.choice

Before timing, every contender generates the same 200 characters as numpy-generate from the same seed on a
float64 model (`checked`). The target is the fastest numba path >= 10x the plain NumPy loop.

One more row, `read-bound`, is no generator: it is the rate at which one thread can merely read, once, the weights
that every generated character needs (Whh and Why, each element summed by a numba loop); no float32 generator
that reads them once per character can beat it. Its `vs_numpy_loop` is the largest ratio this machine allows.
"""

import argparse
import importlib
import inspect
import time

import numpy as np

from benchmarks import common
from fastrnn import reference
from fastrnn.corpus import Vocab
from fastrnn.model import Model
from fastrnn.sample import generate

V = 65
SYMBOLS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's 65
TARGET = 10.0
CHECK_LENGTH = 200


def numpy_loop(P, vocab, length, rng, dtype):
    """(length,) generated ids by the plain NumPy loop; starts from a newline, as generate() with no prime."""
    Wxh, Whh, bh, Why, by = (P[k] for k in ("Wxh", "Whh", "bh", "Why", "by"))
    h = np.zeros(Whh.shape[0], dtype=dtype)  # (H,)
    token = int(vocab.encode("\n")[0])
    out = np.empty(length, dtype=np.int32)  # (length,)
    for i in range(length):
        h = np.tanh(Wxh[token] + h @ Whh + bh)  # (H,)
        logits = (h @ Why + by).astype(np.float64)  # (V,)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        token = out[i] = rng.choice(len(p), p=p)
    return out


def kernels_sampler():
    """fastrnn.kernels.sample.generate if the kernels provide a numba generation loop, else None."""
    try:
        module = importlib.import_module("fastrnn.kernels.sample")
    except ImportError:
        return None
    return getattr(module, "generate", None)


def contenders(numba_backend):
    """{name: fn(P, vocab, length, rng, dtype) -> sequence of ids}."""
    out = {}
    loop = kernels_sampler()
    if loop is not None:  # generate(P, vocab, ...) or, like fastrnn.sample.generate, generate(backend, P, ...)
        first = next(iter(inspect.signature(loop).parameters), "")
        lead = (numba_backend,) if first == "backend" else ()
        out["numba-loop"] = lambda P, vocab, length, rng, dtype: list(
            loop(*lead, P, vocab, length=length, rng=rng, dtype=dtype))
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


def read_seconds(P, repeats):
    """Median seconds for one pass of a numba loop over every element of Whh and Why (their whole bytes)."""
    import numba

    summed = numba.njit(fastmath=True)(_sum_all)
    a, b = P["Whh"].reshape(-1), P["Why"].reshape(-1)
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


def make_model(H, dtype, seed=0):
    """A random model whose outputs are not uniform: weights ~ N(0, 1/H), output biases ~ N(0, 1)."""
    model = Model(V, H, dtype).init(np.random.default_rng(seed), 1.0 / np.sqrt(H))
    model.P["by"][...] = np.random.default_rng(seed + 1).standard_normal(V)
    return model


def run(hidden=512, length=2000, threads=1, repeats=3, dtype="float32", numba_module="fastrnn.kernels"):
    """Rows {backend, hidden, dtype, threads, length, chars_per_sec, seconds, checked, agree, ...}."""
    common.set_threads(threads)
    vocab = Vocab([ord(c) for c in SYMBOLS])
    try:
        numba_backend = importlib.import_module(numba_module)
    except ImportError as exc:
        print(f"cannot import {numba_module} ({exc}); no numba contender")
        numba_backend = None
    fns = contenders(numba_backend)
    check = make_model(hidden, "float64")
    expect = fns["numpy-generate"](check.P, vocab, CHECK_LENGTH, np.random.default_rng(7), np.float64)
    model = make_model(hidden, dtype)
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
        rows.append(dict(backend=name, model="rnn", hidden=hidden, vocab=V, dtype=dtype, threads=threads,
                         length=length, chars_per_sec=length / seconds, seconds=seconds, repeats=repeats,
                         first_call_seconds=first, agree=agree, checked=agree == CHECK_LENGTH))
    seconds = read_seconds(model.P, repeats)
    rows.append(dict(backend="read-bound", model="rnn", hidden=hidden, vocab=V, dtype=dtype, threads=1,
                     length=1, chars_per_sec=1.0 / seconds, seconds=seconds, repeats=repeats,
                     bytes_per_char=int(model.P["Whh"].nbytes + model.P["Why"].nbytes),
                     first_call_seconds=0.0, agree=0, checked=True))
    base = next(r["chars_per_sec"] for r in rows if r["backend"] == "numpy-loop")
    for r in rows:
        r["vs_numpy_loop"] = r["chars_per_sec"] / base
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write machine and rows to this JSON file")
    p.add_argument("--hidden", type=common.positive_int, default=512)
    p.add_argument("--length", type=common.positive_int, default=2000, help="characters generated per timed call")
    p.add_argument("--threads", type=common.positive_int, default=1)
    p.add_argument("--repeats", type=common.positive_int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--numba-module", default="fastrnn.kernels")
    args = p.parse_args(argv)
    machine = common.machine_info()
    rows = run(args.hidden, args.length, args.threads, args.repeats, args.dtype, args.numba_module)
    print(common.format_table(rows, [
        ("backend", "backend", "s"), ("H", "hidden", "d"), ("dtype", "dtype", "s"), ("thr", "threads", "d"),
        ("chars/s", "chars_per_sec", ",.0f"), ("x numpy-loop", "vs_numpy_loop", ".2f"),
        ("first call s", "first_call_seconds", ".2f"), ("checked", "checked", lambda v: "yes" if v else "NO")]))
    numba_rows = [r for r in rows if r["backend"].startswith("numba")]
    best = max(numba_rows, key=lambda r: r["chars_per_sec"]) if numba_rows else None
    target = dict(name=f"sampling H{args.hidden}: numba >= {TARGET:g}x plain NumPy loop", threshold=TARGET,
                  backend=best and best["backend"], value=best and best["vs_numpy_loop"],
                  passed=None if best is None else bool(best["vs_numpy_loop"] >= TARGET))
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[target["passed"]]
    bound = next(r for r in rows if r["backend"] == "read-bound")
    target["read_bound"] = bound["vs_numpy_loop"]
    print(f"{status}  {target['name']}" + (f": {best['backend']} {best['vs_numpy_loop']:.2f}x" if best else "")
          + f" (reading the {bound['bytes_per_char'] / 1e6:.2f} MB of weights once per character, alone, would be "
          f"{bound['vs_numpy_loop']:.2f}x)")
    if args.json:
        common.write_json(args.json, dict(machine=machine, rows=rows, targets=[target]))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(common.run_cli(main))
