"""Which kernel path a training, evaluation or generation call takes: decided here, once per shape, by `plan`.

    plan(cell, layers, N, T, H, V, dropout, threads, dtype, measured=None, way=None) -> Plan

A pure decision: from its arguments and, where the candidates were timed, the answer of that measurement handed
to it (`measured`: calibrate.measured, which backend.plan asks); it reads no clock, file or environment. `way`
names the candidate to take instead of deciding (a resumed run's plan, recorded in its checkpoint: Plan.way). A
Plan is a small frozen value that the backend passes to the kernels; nothing else chooses a path, and no
process-wide state is read by a kernel. Its fields:

    path       "fused": the one-layer model of a cell with a whole-step kernel (Cell.fused: the vanilla rnn)
               without dropout, the whole step one njit call (lm.py); "layers": any other model (other cells,
               stacked layers, dropout), layer by layer (stack.py).
    loops      the per-step recurrent products (N, H) x (H, G*H) and their gradients as hand loops (True) or
               OpenBLAS calls (False). Hand loops read Whh once a step; OpenBLAS packs all of Whh at every call,
               which costs more than it saves for a few rows.
    tiles      instead of either: the recurrences cut into one block of batch rows per thread, each thread
               stepping its rows through all T steps with register-tile products (tiles.matmul_packed, the tile
               shaped by the instruction set the kernels are compiled for: isa.py) and its own gate passes, no
               BLAS call and no exchange between the threads inside a layer (the `_split` kernels of rnn.py,
               lstm.py, gru.py; always the layers path), and the products over all positions split into column
               blocks over the same threads with OpenBLAS held to one thread.
    positions  the products over all T*N positions (output layer, weight gradients, the input side of upper
               layers): "blas" (OpenBLAS on the plan's threads) or "loops" (hand loops, for a generation step of
               one or two rows on the layers path).
    threads    the thread count the plan was made for.

Which of the ways is fastest moves from CPU to CPU: on a 2-core Zen 4 (AVX-512) the tiles plan won every H512 row
by 1.05-1.56x; on a 2-core Zen 3 (AVX2, with 4 x 4 tiles of 64-byte vectors that spilled) it lost every one by
1.6-2.4x to BLAS; on a 2-core Xeon (AVX-512) it loses the rnn H512 N64 row and wins the lstm's. So it is measured
on the machine (calibrate.py): every candidate plan of the shape (`candidates`: hand loops, BLAS and tiles, where
each can run) times whole training steps, once per machine, and the name of the fastest is handed to `plan`.
Without an answer (the measurement is off with FASTRNN_CALIBRATE=0, or was thrown away on a busy machine) the rule
below decides: hand loops for a few rows' work, BLAS above, never the tiles (the one way that lost by 2x on a
machine measured). The plan's `describe()` says which it was.

Loops, BLAS and tiles round differently, so two plans give results that agree to rounding, not bit for bit; the
plan is fixed for a run. (Tiles give the same bits at any thread count and any tile shape: each element is one
chain of fused multiply-adds whatever rows share its tile.)

A special path stays here only while a benchmark shows it pays on the machine the project runs on. The step for
one to four sequences pipelined over two threads (one the recurrences, the other the output layer and the weight
gradients) earned 1.06-1.22x on a 2-core Zen 3 but 0.88-1.07x on the 2-core Xeon (AVX-512, 2 MiB L2) measured
last, so it moved to benchmarks/lab/ with its tests (`python -m benchmarks.lab.pair_vs_fused` measures it).
"""

import dataclasses
import functools

import numpy as np

from fastrnn import cells
from fastrnn.kernels.rnn import BLAS, LOOPS, TILES

SMALL_ROWS = 2  # a call of at most this many positions (T*N: a generation step of one or two streams): the rule
# takes hand loops for its position products on the layers path (1.07x at a 2-layer lstm H128, 1.13x at H512 on a
# Zen 3), and the measurement times both ways
SMALL_WORK = 1 << 16  # N*H*G*H at or below which the rule (no measurement) takes hand loops for the recurrent
# products, BLAS above: OpenBLAS packs the whole weight matrix at every call, which costs more than it saves for a
# few rows (H512 4H columns, one row: 83 us against 382 us on a Zen 3; H64 N4 and H128 N1 loops faster, H128 N32
# BLAS faster on a Zen 3 and a Xeon)
BF16_ROWS = 4  # sequences a thread from which bf16 products run (tiles.matmul_bf16's tiles are 4 rows high)
PATHS = ("fused", "layers")
PRECISIONS = ("float32", "bf16")
POSITIONS = ("blas", "loops")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call of a given shape runs (module docstring)."""

    cell: str
    layers: int
    N: int
    T: int
    H: int
    V: int
    dropout: bool
    threads: int
    dtype: str
    path: str
    loops: bool
    positions: str
    measured: bool = False  # whether the way was chosen by measuring the candidates (else by `rule`)
    tiles: bool = False
    precision: str = "float32"  # "bf16": the tiles' recurrent products in bf16 with float32 sums (tiles.py)
    note: str = dataclasses.field(default="", compare=False)  # how the measured choice was had, for people
    refused: str = dataclasses.field(default="", compare=False)  # why bf16 products asked for were not granted
    recorded: bool = dataclasses.field(default=False, compare=False)  # taken by name (`way`), not decided here

    @property
    def way(self):
        """This plan's name among its shape's `candidates` ("loops", "blas", "tiles", ...): what a run records in
        its checkpoint, and plan(way=...) makes again."""
        base = rule(self.cell, self.layers, self.N, self.T, self.H, self.V, self.dropout, self.threads, self.dtype)
        return next(name for name, q in candidates(base).items() if _key(q) == _key(self))

    @property
    def how(self):
        """The kernels' code for the recurrent products: rnn.TILES, LOOPS or BLAS."""
        return TILES if self.tiles else LOOPS if self.loops else BLAS

    def __post_init__(self):
        if self.path not in PATHS or self.positions not in POSITIONS:
            raise ValueError(f"plan: unknown path {self.path!r} or positions {self.positions!r}")
        fused = _fused(self.cell, self.layers, self.dropout, self.tiles)
        if (self.path != "layers") != fused:
            raise ValueError(f"plan: path {self.path!r} cannot run {self.cell} x {self.layers} "
                             f"{'with' if self.dropout else 'without'} dropout")
        if self.positions == "loops" and self.path != "layers":
            raise ValueError("plan: hand-loop position products exist on the layers path only")
        if self.precision not in PRECISIONS or (self.precision == "bf16" and not (self.tiles and
                                                                                   self.dtype == "float32")):
            raise ValueError(f"plan: precision {self.precision!r} (bf16 needs the tiles plan and float32)")

    def describe(self):
        """One line for people: 'fused step; recurrent products: hand loops; position products: BLAS; 2 threads'."""
        path = {"fused": "fused step", "layers": "layer by layer"}[self.path]
        rec = ("register tiles" + (" in bf16" if self.precision == "bf16" else "") + ", a block of rows per thread"
               if self.tiles else
               "hand loops" if self.loops else "BLAS")
        pos = {"blas": "BLAS", "loops": "hand loops"}[self.positions]
        how = f" (chosen by measurement: {self.note})" if self.measured and self.note else \
            " (chosen by measurement)" if self.measured else " (the run's, recorded in its checkpoint)" \
            if self.recorded else ""
        return (f"{path}; recurrent products: {rec}; position products: {pos}; {self.threads} "
                f"thread{'s' if self.threads != 1 else ''}{how}")


def _key(p):
    """What tells the candidates of a shape apart: tiles (which keep the rule's `loops`), else hand loops or BLAS,
    and the position products (a bf16 plan is its float32 candidate's way with bf16 products)."""
    return p.tiles, p.tiles or p.loops, p.positions


def _fused(cell, layers, dropout, tiles):
    """Whether a call runs on the fused path: one layer of a cell that has a whole-step kernel, no dropout, no
    tiles."""
    return cells.get(cell).fused and layers == 1 and not dropout and not tiles


def plan(cell, layers, N, T, H, V, dropout, threads, dtype, *, measured=None, precision="float32", way=None):
    """The Plan for a call on N sequences of T steps of a model (cell, layers, H, V), with or without dropout
    masks, on `threads` threads, in `dtype`. measured: None (the `rule` decides), or (the name of the fastest of
    the shape's `candidates`, how that was had), as calibrate.measured answers. precision "bf16": bf16 recurrent
    products (the tiles plan whenever there are BF16_ROWS sequences a thread) where the CPU has AVX512_BF16 and
    the dtype is float32; the plan's `precision` says what was granted ("float32" otherwise, and `refused` why).
    way: the name of the candidate to take (Plan.way of a plan made before; ValueError if the shape has no such
    candidate), neither `measured` nor the rule. The same arguments give the same Plan object."""
    if precision not in PRECISIONS:
        raise ValueError(f"plan: unknown precision {precision!r}")
    measured = None if measured is None else (str(measured[0]), str(measured[1]))
    return _plan(cell, int(layers), int(N), int(T), int(H), int(V), bool(dropout), max(1, int(threads)),
                 np.dtype(dtype).name, measured, precision, None if way is None else str(way))


def bf16_refusal(N, threads, dtype):
    """Why a bf16 plan cannot be had for this call (a sentence), or None if it can."""
    from fastrnn.kernels.tiles import has_bf16

    if not has_bf16():
        return "this CPU has no AVX512_BF16"
    if np.dtype(dtype).name != "float32":
        return f"bf16 products need --dtype float32, not {np.dtype(dtype).name}"
    if N < BF16_ROWS * max(1, int(threads)):
        return (f"bf16 products need {BF16_ROWS} sequences a thread, and this call has {N} on "
                f"{threads} thread{'s' if threads != 1 else ''}")
    return None


@functools.lru_cache(maxsize=256)
def _plan(cell, layers, N, T, H, V, dropout, threads, dtype, measured, precision="float32", way=None):
    p = rule(cell, layers, N, T, H, V, dropout, threads, dtype)
    name = way if way is not None else None if measured is None else measured[0]
    if name is not None:
        options = candidates(p)
        if name not in options:
            raise ValueError(f"plan: {name!r} is not a way this shape can run ({', '.join(options)})")
        p = dataclasses.replace(options[name], recorded=True) if way is not None else \
            dataclasses.replace(options[name], measured=True, note=measured[1])
    if precision == "bf16":
        why = bf16_refusal(N, threads, dtype)
        p = dataclasses.replace(p, refused=why) if why else \
            dataclasses.replace(variant(p, tiles=True), precision="bf16", measured=False, note="")
    return p


def rule(cell, layers, N, T, H, V, dropout, threads, dtype):
    """The plan without measurement (module docstring): hand loops for the recurrent products at or below
    SMALL_WORK (and for one or two sequences), BLAS above; no tiles."""
    loops = N <= SMALL_ROWS or N * H * cells.get(cell).gates * H <= SMALL_WORK
    fused = _fused(cell, layers, dropout, False)
    positions = "loops" if not fused and T * N <= SMALL_ROWS else "blas"
    return Plan(cell, layers, N, T, H, V, dropout, threads, dtype, "fused" if fused else "layers", loops,
                positions)


def candidates(p):
    """{name: Plan}: the ways plan p's shape can run: "loops", "blas", "tiles" (recurrent products by hand loops,
    BLAS or register tiles with a block of rows a thread); for a call of at most SMALL_ROWS positions (a
    generation step) on the layers path also each with its position products the other way ("loops, blas
    positions", ...)."""
    out = {"loops": variant(p, loops=True, tiles=False), "blas": variant(p, loops=False, tiles=False),
           "tiles": variant(p, tiles=True)}
    if p.T * p.N <= SMALL_ROWS:
        for name, q in list(out.items()):
            if q.path == "layers":
                other = "blas" if q.positions == "loops" else "loops"
                out[f"{name}, {other} positions"] = variant(q, positions=other)
    return out


def variant(p, *, loops=None, positions=None, tiles=None, precision=None):
    """The plan p with the recurrent products as hand loops or BLAS (`loops`) or tiles (`tiles`), and/or the
    position products done another way (`positions`; hand-loop position products exist on the layers path
    only): for tests and benchmarks that compare the ways. The path follows: tiles run layer by layer, the
    one-layer rnn without dropout and without tiles fused."""
    if tiles is None:  # asking for loops or BLAS means not tiles
        tiles = p.tiles if loops is None else False
    loops = p.loops if loops is None else bool(loops)
    tiles = bool(tiles)
    fused = _fused(p.cell, p.layers, p.dropout, tiles)
    path = "fused" if fused else "layers"
    positions = p.positions if positions is None else positions
    if path != "layers" and positions == "loops":
        positions = "blas"
    precision = p.precision if precision is None else precision
    if not tiles:
        precision = "float32"
    return dataclasses.replace(p, loops=loops, positions=positions, measured=False, tiles=tiles, path=path,
                               precision=precision)
