"""bf16 products with float32 accumulation through MKL against float32 sgemm, at the shapes of fastrnn's products.

    python -m benchmarks.mkl_bf16 [--threads 1,2] [--json PATH]

Needs MKL (`pip install mkl`; it is not a dependency of fastrnn): `libmkl_rt` is loaded with ctypes from this
Python's prefix. For each shape, (M, K) x (K, N): MKL's cblas_sgemm, MKL's cblas_gemm_bf16bf16f32 on the same
operands rounded to bf16 (round to nearest even), and NumPy's own float32 matmul (OpenBLAS in the PyPI wheels), their
repeats interleaved; GFLOP/s is 2 M N K over the median time; `bf16 err` is the largest error of the bf16 product
relative to the largest entry of the float32 one. The shapes are an H512 LSTM's and RNN's per-step recurrent
product at N = 64 streams, the LSTM's product over all 50 x 64 positions, and a 2048 square.
"""

import ctypes
import glob
import os
import sys

import click
import numpy as np

from benchmarks import common, options

SHAPES = ((64, 512, 2048, "recurrent lstm H512 N64"), (64, 512, 512, "recurrent rnn H512 N64"),
          (3200, 512, 2048, "positions lstm H512 N64 T50"), (2048, 2048, 2048, "square"))
ROW_MAJOR, NO_TRANS = 101, 111


def load_mkl():
    """libmkl_rt with the two products' signatures, or a ClickException saying how to get it."""
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if not found:
        raise click.ClickException(f"no libmkl_rt in {sys.prefix}/lib: pip install mkl (into this environment)")
    lib = ctypes.CDLL(found[0])
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    for name in ("cblas_sgemm", "cblas_gemm_bf16bf16f32"):
        getattr(lib, name).argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    lib.MKL_Set_Num_Threads.argtypes = [i]
    return lib


def to_bf16(a):
    """(...) uint16 bf16 bit patterns of a float32 array, rounded to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def rows_for(lib, threads, repeats):
    rows = []
    common.set_threads(threads)
    lib.MKL_Set_Num_Threads(threads)
    for m, k, n, what in SHAPES:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)  # (M, K)
        b = rng.standard_normal((k, n), dtype=np.float32)  # (K, N)
        c = np.empty((m, n), dtype=np.float32)  # (M, N)
        ab, bb = to_bf16(a), to_bf16(b)
        ref = a @ b
        lib.cblas_gemm_bf16bf16f32(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, ab.ctypes.data, k, bb.ctypes.data,
                                   n, 0.0, c.ctypes.data, n)
        err = float(np.max(np.abs(c - ref)) / np.max(np.abs(ref)))
        fns = {
            "numpy": lambda: np.matmul(a, b, out=c),
            "mkl_sgemm": lambda: lib.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, a.ctypes.data, k,
                                                 b.ctypes.data, n, 0.0, c.ctypes.data, n),
            "mkl_bf16": lambda: lib.cblas_gemm_bf16bf16f32(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0,
                                                           ab.ctypes.data, k, bb.ctypes.data, n, 0.0,
                                                           c.ctypes.data, n)}
        times = common.time_interleaved(fns, dict.fromkeys(fns, repeats))
        flops = 2.0 * m * n * k
        row = {"threads": threads, "shape": what, "m": m, "k": k, "n": n, "bf16_rel_err": err}
        row.update({f"{name}_gflops": flops / t[0] / 1e9 for name, t in times.items()})
        row["bf16_vs_numpy"] = row["mkl_bf16_gflops"] / row["numpy_gflops"]
        rows.append(row)
    return rows


@options.command()
@options.threads([1, 2])
@options.repeats(5)
@options.json_output("Write the machine and the rows to this JSON file.")
@options.catch_user_errors
def main(threads, repeats, json_path):
    lib = load_mkl()
    rows = [row for t in threads for row in rows_for(lib, t, repeats)]
    print(common.format_table(rows, [("threads", "threads", "d"), ("shape", "shape", "s"),
                                     ("numpy GFLOP/s", "numpy_gflops", ".1f"),
                                     ("MKL sgemm", "mkl_sgemm_gflops", ".1f"), ("MKL bf16", "mkl_bf16_gflops", ".1f"),
                                     ("bf16 / numpy", "bf16_vs_numpy", ".2f"), ("bf16 err", "bf16_rel_err", ".1e")]))
    if json_path:
        common.write_json(json_path, dict(machine=common.machine_info(), rows=rows))
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
