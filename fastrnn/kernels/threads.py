"""Thread count for BLAS (NumPy's bundled OpenBLAS, which the kernels call) and for numba's threading layer. Cheap
to import: it loads neither numba nor the kernels until set_threads is called.

    set_threads(n)      for the rest of the process (the command line: one run a process)
    with restored():    ... whatever sets them inside, numba's and every BLAS's counts are put back on exit
                        (the Python API: CharRNN(threads=1).fit(...) leaves a notebook's threads as they were)
"""

import contextlib

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


@contextlib.contextmanager
def restored():
    """Put numba's thread count and every BLAS library's back as they were on entry, on exit."""
    global _limiter
    import numba
    from threadpoolctl import threadpool_limits

    before, limiter = numba.get_num_threads(), _limiter
    original = threadpool_limits(limits=None)  # changes nothing; remembers every library's count
    try:
        yield
    finally:
        original.restore_original_limits()
        numba.set_num_threads(before)
        _limiter = limiter
