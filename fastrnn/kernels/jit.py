"""JIT options for every numba kernel, in one place.

- `cache=True`: compiled code is stored next to the sources (``__pycache__``) and reused by later processes.
- `FASTMATH`: a flag set, never the full ``fastmath=True``: without ``nnan``/``ninf`` the compiler keeps NaN and inf
  semantics (``np.isnan`` works and a NaN in the inputs reaches the loss); ``reassoc`` lets sums vectorize,
  ``contract`` forms FMAs, ``afn`` allows approximate library functions. Not ``nsz`` or ``arcp``: with them beside
  ``reassoc``, the code LLVM made when a process compiled the kernels and the code it loaded from the cache in the
  next process gave different bits (every cell, float32 and float64), so a run's numbers depended on whether its
  kernels were freshly compiled; without them the two agree (tests/test_kernels.py checks it), at 0-6% of a step.
- `error_model='numpy'`: division by zero gives inf/NaN instead of raising (and keeps loops vectorizable).
- `boundscheck=False`, `nogil=True`.

Numba's cache is keyed on the source file of the top-level kernel only, so a change to a helper in another file
of this package (mathfn.py) would not invalidate the kernels that inlined it. `_guard_cache` keeps a fingerprint
of all the package's sources (and of FASTRNN_TILE, which changes the tiles' code) and drops this package's numba
cache files, beside the sources or under NUMBA_CACHE_DIR, when it changes. The CPU the code was compiled for
needs no fingerprint: numba files each compiled kernel under its target's name and features (NUMBA_CPU_NAME,
NUMBA_CPU_FEATURES), and the tiles' shape follows from those (isa.py).
"""

import hashlib
import os

import numba

FASTMATH = {"contract", "afn", "reassoc"}
OPTIONS = dict(cache=True, fastmath=FASTMATH, error_model="numpy", boundscheck=False, nogil=True)
PARALLEL_OPTIONS = dict(OPTIONS, parallel=True)


def kernel(fn):
    """A serial njit kernel with the package's options."""
    return numba.njit(**OPTIONS)(fn)


def parallel_kernel(fn):
    """A parallel (prange) njit kernel with the package's options."""
    return numba.njit(**PARALLEL_OPTIONS)(fn)


def _cache_dir(here):
    """Where numba keeps the cache files of the kernels in `here`: NUMBA_CACHE_DIR's subfolder for it, or the
    __pycache__ beside the sources."""
    from numba.core import caching, config

    if config.CACHE_DIR:
        return os.path.join(config.CACHE_DIR, caching._CacheLocator.get_suitable_cache_subpath(
            os.path.join(here, "jit.py")))
    return os.path.join(here, "__pycache__")


def _guard_cache():
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py"):
            with open(os.path.join(here, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    digest.update(numba.__version__.encode())
    digest.update(os.environ.get("FASTRNN_TILE", "").encode())  # a tile shape other than the target's (isa.py)
    fingerprint = digest.hexdigest()
    cache_dir = _cache_dir(here)
    stamp = os.path.join(cache_dir, "kernels-sources.sha256")
    try:
        with open(stamp) as f:
            if f.read().strip() == fingerprint:
                return
    except OSError:
        pass
    try:
        os.makedirs(cache_dir, exist_ok=True)
        for name in os.listdir(cache_dir):
            if name.endswith((".nbi", ".nbc")):
                try:
                    os.remove(os.path.join(cache_dir, name))
                except OSError:
                    pass
        tmp = stamp + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(fingerprint + "\n")
        os.replace(tmp, stamp)
    except OSError:
        pass  # read-only install: numba falls back to its own cache locator or compiles in memory


_guard_cache()
