"""GEMM for the kernels: NumPy's bundled OpenBLAS through its CBLAS interface, callable from njit code.

numba's own np.dot calls SciPy's OpenBLAS through its Fortran interface (no beta, contiguous operands only), which
with OPENBLAS_CORETYPE=Haswell (set on some machines) measured up to 2-3x slower than NumPy's build on the small
products of short sequences. `gemm` calls NumPy's `cblas_sgemm`/`cblas_dgemm` (the library the reference uses,
under the same threadpoolctl limits) by a symbol registered with LLVM at import, so cached kernels stay valid across
processes (the address is resolved when the cache is loaded, not baked into the code).

If NumPy's OpenBLAS cannot be found (a NumPy built against another BLAS), the symbols point at a ctypes callback
that computes the same product with NumPy: correct, slower.

    gemm(C, A, trans_a, B, trans_b, alpha, beta):  C = alpha * op(A) @ op(B) + beta * C
    gemm_serial(...): the same on one OpenBLAS thread (split into row blocks below OpenBLAS's threading threshold)
    gemm_on(..., groups): gemm (groups <= 1), or C's columns in `groups` blocks, one per numba thread, each
        block one OpenBLAS call made from that thread (for the tiles plan, which keeps OpenBLAS on one thread
        with `one_thread()` so that its idle workers do not spin against numba's)

A, B, C: 2D arrays of one float dtype with unit stride along rows (row-major; any row stride, so row blocks and
views such as hs[t] work); op(X) = X.T if trans_X else X.
"""

import ctypes
import glob
import os

import contextlib

import llvmlite.binding as ll
import numpy as np
from numba import prange, types
from numba.extending import overload

from fastrnn.kernels.jit import OPTIONS, kernel, parallel_kernel

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_SYMBOLS = {"s": "fastrnn_cblas_sgemm", "d": "fastrnn_cblas_dgemm"}
_CTYPES = {"s": ctypes.c_float, "d": ctypes.c_double}
_keep = []  # ctypes objects whose addresses LLVM holds


def _cfunctype(kind, blasint):
    c = _CTYPES[kind]
    return ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, blasint, blasint, blasint, c,
                            ctypes.c_void_p, blasint, ctypes.c_void_p, blasint, c, ctypes.c_void_p, blasint)


def _find_numpy_cblas():
    """(library, {kind: symbol name}) of NumPy's bundled OpenBLAS, or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    candidates = sorted(glob.glob(os.path.join(root, "numpy.libs", "*openblas*")))
    candidates += sorted(glob.glob(os.path.join(os.path.dirname(np.__file__), ".dylibs", "*openblas*")))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_cblas_", "64_"), ("cblas_", "64_")):
            if all(hasattr(lib, f"{prefix}{k}gemm{suffix}") for k in "sd"):
                return lib, {k: f"{prefix}{k}gemm{suffix}" for k in "sd"}
    return None


def _numpy_fallback(kind):
    """A CBLAS-compatible gemm written with NumPy (row-major only), as a ctypes callback."""
    dtype = np.float32 if kind == "s" else np.float64
    size = np.dtype(dtype).itemsize

    def view(ptr, rows, cols, ld):
        buf = (ctypes.c_char * (((rows - 1) * ld + cols) * size)).from_address(ptr)
        return np.lib.stride_tricks.as_strided(np.frombuffer(buf, dtype), (rows, cols), (ld * size, size))

    def gemm(order, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
        A = view(a, K, M, lda).T if ta == TRANS else view(a, M, K, lda)
        B = view(b, N, K, ldb).T if tb == TRANS else view(b, K, N, ldb)
        C = view(c, M, N, ldc)
        C[...] = alpha * (A @ B) + (beta * C if beta != 0 else 0)

    return _cfunctype(kind, ctypes.c_int64)(gemm)


LIBRARY = None  # the path of the BLAS library the kernels call (None: the NumPy fallback)
_THREADS = None  # (get, set) of that library's thread count, ctypes functions, or None


def _register():
    global LIBRARY, _THREADS
    found = _find_numpy_cblas()
    LIBRARY = getattr(found[0], "_name", None) if found is not None else None
    if found is not None:
        suffix = "64_" if found[1]["s"].endswith("64_") else ""
        prefix = "scipy_openblas" if found[1]["s"].startswith("scipy_") else "openblas"
        names = (f"{prefix}_get_num_threads{suffix}", f"{prefix}_set_num_threads{suffix}")
        if all(hasattr(found[0], n) for n in names):
            get, put = (getattr(found[0], n) for n in names)
            get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
            _THREADS = (get, put)
    for kind, symbol in _SYMBOLS.items():
        if found is not None:
            fn = getattr(found[0], found[1][kind])
            _keep.append(found[0])
        else:
            fn = _numpy_fallback(kind)
            _keep.append(fn)
        ll.add_symbol(symbol, ctypes.cast(fn, ctypes.c_void_p).value)
    return "numpy-openblas" if found is not None else "numpy-fallback"


PROVIDER = _register()


def _external(kind, float_type):
    i32, i64, ptr = types.int32, types.int64, types.uintp
    return types.ExternalFunction(_SYMBOLS[kind], types.void(i32, i32, i32, i64, i64, i64, float_type, ptr, i64,
                                                              ptr, i64, float_type, ptr, i64))


_sgemm = _external("s", types.float32)
_dgemm = _external("d", types.float64)


def gemm(C, A, trans_a, B, trans_b, alpha, beta):
    """C = alpha * op(A) @ op(B) + beta * C (Python version, for reference; njit code gets the BLAS call)."""
    opa = A.T if trans_a else A
    opb = B.T if trans_b else B
    C[...] = alpha * (opa @ opb) + beta * C


def _sgemm_impl(C, A, trans_a, B, trans_b, alpha, beta):
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    _sgemm(np.int32(ROW_MAJOR), np.int32(TRANS if trans_a else NO_TRANS), np.int32(TRANS if trans_b else NO_TRANS),
           np.int64(M), np.int64(N), np.int64(K), np.float32(alpha), A.ctypes.data, np.int64(max(1, A.strides[0] // 4)),
           B.ctypes.data, np.int64(max(1, B.strides[0] // 4)), np.float32(beta), C.ctypes.data,
           np.int64(max(1, C.strides[0] // 4)))


def _dgemm_impl(C, A, trans_a, B, trans_b, alpha, beta):
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    _dgemm(np.int32(ROW_MAJOR), np.int32(TRANS if trans_a else NO_TRANS), np.int32(TRANS if trans_b else NO_TRANS),
           np.int64(M), np.int64(N), np.int64(K), np.float64(alpha), A.ctypes.data, np.int64(max(1, A.strides[0] // 8)),
           B.ctypes.data, np.int64(max(1, B.strides[0] // 8)), np.float64(beta), C.ctypes.data,
           np.int64(max(1, C.strides[0] // 8)))


@overload(gemm, jit_options=OPTIONS)
def _gemm_overload(C, A, trans_a, B, trans_b, alpha, beta):
    if not all(isinstance(a, types.Array) and a.ndim == 2 for a in (C, A, B)):
        return None
    if C.dtype == A.dtype == B.dtype == types.float32:
        return _sgemm_impl
    if C.dtype == A.dtype == B.dtype == types.float64:
        return _dgemm_impl
    return None


SERIAL_WORK = 4 * 65536  # OpenBLAS runs a gemm on one thread when M*N*K is at most this (its default
# GEMM_MULTITHREAD_THRESHOLD 4 times SMP_THRESHOLD_MIN 65536) and splits bigger ones over its threads


def _gemm_serial(C, A, trans_a, B, trans_b, alpha, beta):
    """gemm on one OpenBLAS thread whatever the thread setting: C = alpha * op(A) @ op(B) + beta * C as blocks of
    rows of C small enough (M*N*K <= SERIAL_WORK each) for OpenBLAS not to split them. Each element's sum over K
    is one call's, so the result does not depend on the thread count. For small products only (every block has
    at least one row)."""
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    blocks = min(max(1, (M * N * K + SERIAL_WORK - 1) // SERIAL_WORK), max(1, M))
    rows = max(1, (M + blocks - 1) // blocks)
    for m0 in range(0, M, rows):
        m1 = min(M, m0 + rows)
        if trans_a:
            gemm(C[m0:m1], A[:, m0:m1], True, B, trans_b, alpha, beta)
        else:
            gemm(C[m0:m1], A[m0:m1], False, B, trans_b, alpha, beta)


gemm_serial = kernel(_gemm_serial)


@contextlib.contextmanager
def one_thread():
    """OpenBLAS on one thread inside the block (the thread count before is restored after): two C calls, no
    library scan (threadpoolctl's context manager takes about a millisecond)."""
    if _THREADS is None:
        yield
        return
    get, put = _THREADS
    before = get()
    put(1)
    try:
        yield
    finally:
        put(before)


@parallel_kernel
def gemm_split(C, A, trans_a, B, trans_b, alpha, beta, groups):
    """gemm as `groups` blocks of C's rows (multiples of 16), one per numba thread, each one OpenBLAS call from that
    thread. Rows, not columns: the output layer's products have V columns (65 for tiny Shakespeare), and
    OpenBLAS runs two blocks of 1,600 x 65 faster than two of 3,200 x 32/33. Measured on a Xeon (2 threads, T*N =
    3,200, H = 512, ms, rows against columns): AVX-512 (OpenBLAS SkylakeX kernels) logits 0.95 / 1.34, dWhy
    1.04 / 1.32, dtop 0.82 / 1.11; haswell target (AVX2, OpenBLAS Haswell kernels) 1.25 / 1.57, 1.41 / 1.63,
    1.16 / 1.53; an lstm H512's 3,200 x 2,048 products alike within 2%."""
    M = C.shape[0]
    groups = max(1, min(groups, (M + 15) // 16))
    for q in prange(groups):
        m0 = 16 * ((q * M) // (16 * groups)) if q > 0 else 0
        m1 = 16 * (((q + 1) * M) // (16 * groups)) if q < groups - 1 else M
        if m1 > m0:
            if trans_a:
                gemm(C[m0:m1], A[:, m0:m1], True, B, trans_b, alpha, beta)
            else:
                gemm(C[m0:m1], A[m0:m1], False, B, trans_b, alpha, beta)


@kernel
def gemm_on(C, A, trans_a, B, trans_b, alpha, beta, groups):
    """gemm (groups <= 1) or gemm_split over `groups` numba threads."""
    if groups > 1:
        gemm_split(C, A, trans_a, B, trans_b, alpha, beta, groups)
    else:
        gemm(C, A, trans_a, B, trans_b, alpha, beta)
