"""Register-tiled products out = a @ W for a few rows, each output element one fused multiply-add chain.

`matmul_tiles(out, a, W)`: out (R, M) = a (R, K) @ W (K, M), float32 or float64, each array's rows contiguous
(any row stride).

The work is cut into tiles of up to 4 rows x 4 vectors (64 float32 columns): a tile keeps its 16 partial sums in
vector registers for the whole of K and reads each 64-byte piece of W once for its 4 rows, so a block of W
columns is loaded from the cache once per 4 rows (rnn.matmul_small, and the four-rows-at-a-time loop this
replaces in sampling, load and store the partial sums for every few k). Rows left over from the blocks of 4 run as
1-row tiles of 8 vectors; the last M % w columns (w = `vector_width`: 16 float32, 8 float64) one at a time.

Every output element is the same chain in every tile shape,

    s = 0;  s = fma(a[r, k], W[k, j], s) for k = 0 .. K-1   (llvm.fma, never reassociated)

so a row computed among many rows has exactly the bits it has alone: the samples of `fastrnn sample --num-samples
K` equal, token for token, the samples drawn one at a time with their seeds (tests/test_sample.py checks it).

The tiles are numba intrinsics that emit the loop in LLVM IR with explicit <VW x float> vectors; LLVM's mem2reg
keeps the partial sums in registers.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fastrnn.kernels.jit import OPTIONS, kernel

VECTOR_BYTES = 64  # one AVX-512 register (on an AVX2 CPU LLVM splits each vector into two)


def vector_width(dtype):
    """Elements of `dtype` in one vector."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _make_tile(R, C, vector=True):
    """An intrinsic tile(out, a, W, r0, c0): out[r0:r0+R, c0:c0+C*w] = a[r0:r0+R, :] @ W[:, c0:c0+C*w], w the
    vector width (vector=True) or 1 (scalar columns, for the last M % w columns)."""

    @intrinsic
    def tile(typingctx, out, a, W, r0, c0):
        arrays = (out, a, W)
        if not all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays):
            return None
        if not (out.dtype == a.dtype == W.dtype and out.dtype in (types.float32, types.float64)):
            return None
        if not (isinstance(r0, types.Integer) and isinstance(c0, types.Integer)):
            return None
        fty = ir.FloatType() if out.dtype == types.float32 else ir.DoubleType()
        size = 4 if out.dtype == types.float32 else 8
        VW = VECTOR_BYTES // size if vector else 1
        vty = ir.VectorType(fty, VW) if vector else fty
        i64 = ir.IntType(64)

        def codegen(context, builder, signature, args):
            out_v, a_v, W_v, r0_v, c0_v = args
            r0_v = context.cast(builder, r0_v, signature.args[3], types.intp)
            c0_v = context.cast(builder, c0_v, signature.args[4], types.intp)
            ary = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], (out_v, a_v, W_v))]
            # row strides in elements (the column stride is one element: see matmul_tiles)
            ldo, lda, ldw = (builder.sdiv(cgutils.unpack_tuple(builder, x.strides, 2)[0], ir.Constant(i64, size))
                             for x in ary)
            K = cgutils.unpack_tuple(builder, ary[1].shape, 2)[1]
            outp, ap, wp = (x.data for x in ary)
            name = f"llvm.fma.{'v%d' % VW if vector else ''}{'f32' if size == 4 else 'f64'}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * VW) if vector else ir.Constant(fty, 0.0)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(C)] for _ in range(R)]
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)
            arow = [builder.gep(ap, [builder.mul(builder.add(r0_v, ir.Constant(i64, r)), lda)]) for r in range(R)]
            wcol = builder.gep(wp, [c0_v])
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                wrow = builder.gep(wcol, [builder.mul(k, ldw)])
                wv = [builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(i64, c * VW)]), vty.as_pointer()),
                                   align=size) for c in range(C)]
                for r in range(R):
                    x = builder.load(builder.gep(arow[r], [k]))
                    if vector:
                        x = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(ir.IntType(32), 0)),
                                                   undef, splat)
                    for c in range(C):
                        builder.store(builder.call(fma, [x, wv[c], builder.load(accs[r][c])]), accs[r][c])
            for r in range(R):
                orow = builder.gep(outp, [builder.add(builder.mul(builder.add(r0_v, ir.Constant(i64, r)), ldo), c0_v)])
                for c in range(C):
                    dst = builder.bitcast(builder.gep(orow, [ir.Constant(i64, c * VW)]), vty.as_pointer())
                    builder.store(builder.load(accs[r][c]), dst, align=size)
            return context.get_dummy_value()

        return types.void(out, a, W, r0, c0), codegen

    return tile


_tile44, _tile41, _tile18, _tile14, _tile11 = (_make_tile(4, 4), _make_tile(4, 1), _make_tile(1, 8), _make_tile(1, 4),
                                               _make_tile(1, 1))
_scalar4, _scalar1 = _make_tile(4, 1, vector=False), _make_tile(1, 1, vector=False)


def _itemsize(W):
    return W.itemsize


@overload(_itemsize, jit_options=OPTIONS, inline="always")
def _itemsize_overload(W):
    size = W.dtype.bitwidth // 8
    return lambda W: size


@kernel
def matmul_tiles(out, a, W):
    """out (R, M) = a (R, K) @ W (K, M); see the module docstring. Each array's elements must be consecutive along
    its rows (any row stride: row blocks and views such as hs[t] work)."""
    R = a.shape[0]
    M = W.shape[1]
    vw = VECTOR_BYTES // _itemsize(W)
    MV = M - M % vw  # columns in whole vectors; the rest one at a time
    R4 = R - R % 4
    for c0 in range(0, MV, 4 * vw):
        if c0 + 4 * vw <= MV:
            for r0 in range(0, R4, 4):
                _tile44(out, a, W, r0, c0)
        else:
            for c in range(c0, MV, vw):
                for r0 in range(0, R4, 4):
                    _tile41(out, a, W, r0, c)
    for c in range(MV, M):
        for r0 in range(0, R4, 4):
            _scalar4(out, a, W, r0, c)
    for r in range(R4, R):
        c0 = 0
        while c0 + 8 * vw <= MV:
            _tile18(out, a, W, r, c0)
            c0 += 8 * vw
        while c0 < MV:
            _tile11(out, a, W, r, c0)
            c0 += vw
        for c in range(MV, M):
            _scalar1(out, a, W, r, c)


PANEL_VECTORS = 4  # a panel of pack() is this many vectors wide: the width of the 4 x 4 tile


@kernel
def pack(W):
    """W (K, M) as panels (ceil(M / PW), K, PW) of PW = 4 vectors' columns each, zeros past M: a tile then reads
    its columns of W as one contiguous run instead of K pieces a whole row of W apart (at a row stride of a
    power of two, 8 KiB for an lstm H512, those pieces fall on the same few cache sets and evict each other)."""
    K, M = W.shape
    pw = PANEL_VECTORS * (VECTOR_BYTES // _itemsize(W))
    nb = (M + pw - 1) // pw
    out = np.zeros((nb, K, pw), W.dtype)
    for b in range(nb):
        c0 = b * pw
        c1 = min(M, c0 + pw)
        for k in range(K):
            for j in range(c0, c1):
                out[b, k, j - c0] = W[k, j]
    return out


@kernel
def no_pack(W):
    """An empty array of pack(W)'s type (for callers whose products are not tiles)."""
    return np.zeros((0, 0, 0), W.dtype)


@kernel
def matmul_packed(out, a, Wp):
    """out (R, M) = a (R, K) @ W (K, M), W given as pack(W) (M = out.shape[1]); the same bits as matmul_tiles."""
    R = a.shape[0]
    M = out.shape[1]
    pw = Wp.shape[2]
    vw = VECTOR_BYTES // _itemsize(Wp)
    R4 = R - R % 4
    for b in range(Wp.shape[0]):
        c0 = b * pw
        width = min(pw, M - c0)
        panel = Wp[b]
        o = out[:, c0:c0 + width]
        if width == pw:
            for r0 in range(0, R4, 4):
                _tile44(o, a, panel, r0, 0)
            for r in range(R4, R):
                _tile14(o, a, panel, r, 0)
        else:
            wv = width - width % vw
            for c in range(0, wv, vw):
                for r0 in range(0, R4, 4):
                    _tile41(o, a, panel, r0, c)
                for r in range(R4, R):
                    _tile11(o, a, panel, r, c)
            for c in range(wv, width):
                for r0 in range(0, R4, 4):
                    _scalar4(o, a, panel, r0, c)
                for r in range(R4, R):
                    _scalar1(o, a, panel, r, c)
