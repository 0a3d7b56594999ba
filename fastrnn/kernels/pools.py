"""The thread pools the kernels run on: the thread counts of BLAS (NumPy's bundled OpenBLAS, which the kernels
call) and of numba's threading layer. Cheap to import: it loads neither numba nor the kernels until called.

    set_threads(n)      for the rest of the process (benchmarks, tests)
    with threads(n):    ... n threads inside, the counts put back on exit (the backend protocol's `threads`:
                        a training session runs in one; with blas=False numba's count of this thread only)
    with restored():    ... whatever sets them inside, numba's and every BLAS's counts are put back on exit
    thread_count()      numba's count in this thread: what the kernels use
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


@contextlib.contextmanager
def threads(n, blas=True):
    """Numba's threads at n inside (capped as set_threads caps them; None: as they are) and, with blas, every BLAS
    library's too; on exit, as they were. numba's count is per thread: blas=False sets this thread's only (a thread
    that runs kernels for another takes its count). Yields the count used."""
    import numba

    if blas:
        with restored():
            yield thread_count() if n is None else set_threads(n)
        return
    before = numba.get_num_threads()
    try:
        if n is not None:
            numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
        yield numba.get_num_threads()
    finally:
        numba.set_num_threads(before)


def thread_count():
    """The threads numba's kernels use in this thread."""
    import numba

    return numba.get_num_threads()
