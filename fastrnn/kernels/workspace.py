"""Scratch buffers kept across calls, and the gradient arrays the kernels write: one place for both backends' paths.

Kernels overwrite the gradients they are given (as fastrnn.reference.forward_backward does: it zeroes G and then
adds into it); they write straight into the caller's arrays when those are C-contiguous in the parameters' dtype,
else into temporaries copied back after the call (`Grads`).
"""

from collections import OrderedDict

import numpy as np

MAX_ENTRIES = 8  # workspaces kept (most recently used last): a run needs two (training and evaluation shapes)
_cache = OrderedDict()


def cached(key, build):
    """The workspace for `key` (a tuple of the shapes and dtype it holds), made by build() on first use."""
    ws = _cache.pop(key, None)
    if ws is None:
        if len(_cache) >= MAX_ENTRIES:
            _cache.popitem(last=False)
        ws = build()
    _cache[key] = ws
    return ws


class Grads:
    """The arrays G[name] for `names` as the kernels take them (`direct`), and copy_back() after the call."""

    def __init__(self, G, names, dtype):
        self.outs = [G[k] for k in names]
        self.direct = [g if g.flags.c_contiguous and g.dtype == dtype else np.empty(g.shape, dtype)
                       for g in self.outs]

    def copy_back(self):
        for g, d in zip(self.outs, self.direct):
            if g is not d:
                g[...] = d
