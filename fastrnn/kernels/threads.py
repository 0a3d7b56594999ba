"""Thread count for BLAS (NumPy's bundled OpenBLAS, which the kernels call) and for numba's threading layer. Cheap
to import: it loads neither numba nor the kernels until set_threads is called."""

_limiter = None  # the threadpoolctl limiter; kept alive so the BLAS limit holds


def set_threads(n):
    """Use n threads (capped at numba's NUMBA_NUM_THREADS) in numba and in every BLAS. Returns the count used."""
    global _limiter
    import numba
    from threadpoolctl import threadpool_limits

    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    _limiter = threadpool_limits(limits=n, user_api="blas")
    return n
