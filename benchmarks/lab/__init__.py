"""Kernel paths taken out of fastrnn because, measured on the project's current machine, they no longer pay; kept
with their tests so that they can be measured again on the next machine (runs from a checkout).

    pair.py, sync.py   the one-layer rnn step for one to four sequences pipelined over two threads
    chooser.py         the faster of two ways that give the same bits (two threads or one), chosen while running
    pair_vs_fused.py   `python -m benchmarks.lab.pair_vs_fused`: the pipelined step against fastrnn's fused one

numba caches a kernel by its own source file: after a change to a helper in fastrnn/kernels that these kernels
inline, clear benchmarks/lab/__pycache__.
"""
