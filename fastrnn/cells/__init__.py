"""The cells a model can be made of, as data: one file per cell (rnn.py, lstm.py, gru.py, lnlstm.py), each declaring its
Cell (base.py: gates, carried state, parameters, init rule, export mapping, NumPy reference pair, numba kernels)
and registering it. A cell defined elsewhere (a test, a notebook) joins with `register(Cell(...))`.

    from fastrnn import cells
    cells.get("lstm").gates      # 4
    cells.names()                # ('rnn', 'lstm', 'gru', 'lnlstm')
"""

from fastrnn.cells.base import Cell, get, names, register, unregister
from fastrnn.cells import rnn, lstm, gru, lnlstm  # noqa: E402,F401 (each registers its cell; the order of names())

__all__ = ["Cell", "get", "names", "register", "unregister"]
