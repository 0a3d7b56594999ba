"""Register-tiled products out = a @ W for a few rows, each output element one fused multiply-add chain.

`matmul_tiles(out, a, W)`: out (R, M) = a (R, K) @ W (K, M), float32 or float64, each array's rows contiguous
(any row stride). `matmul_packed(out, a, pack(W))`: the same product from W laid out in panels.

The shape of a tile is the target's (isa.py): TILE_ROWS rows x TILE_VECTORS vectors of VECTOR_BYTES, 4 x 3 vectors
of 32 bytes on AVX2, 6 x 4 of 64 bytes on AVX-512, 6 x 4 of 16 bytes on NEON. A tile keeps its partial sums in
vector registers for the whole of K and reads each vector of W once for its rows, so a panel of W is loaded from
the cache once per TILE_ROWS rows. The rows left over from whole tiles run as one tile of fewer rows, the columns
past the last whole panel one vector, then one column, at a time.

Every output element is the same chain in every tile shape,

    s = 0;  s = fma(a[r, k], W[k, j], s) for k = 0 .. K-1   (llvm.fma, never reassociated)

so a row computed among many rows has exactly the bits it has alone: the samples of `fastrnn sample --num-samples
K` equal, token for token, the samples drawn one at a time with their seeds (tests/test_sample.py checks it). On
a target without a fused multiply-add instruction (SSE2) the chain is s = s + a*W, rounded twice at each k
(llvm.fmuladd, which LLVM then never fuses), the same for every tile too; llvm.fma there would be a library call
per element.

The tiles are numba intrinsics that emit the loop in LLVM IR with explicit <VW x float> vectors; LLVM's mem2reg
keeps the partial sums in registers.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from fastrnn.kernels import isa
from fastrnn.kernels.jit import OPTIONS, kernel

TARGET = isa.target()
VECTOR_BYTES = TARGET.vector_bytes
TILE_ROWS, TILE_VECTORS = isa.tile_shape(TARGET)
PANEL_VECTORS = TILE_VECTORS  # a panel of pack() is one tile wide


def vector_width(dtype):
    """Elements of `dtype` in one vector."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _emit_tile(builder, R, C, VW, fty, vector, fma, arow, wcol, ldw, K, outp, ldo, r0, c0, size):
    """The loop of an R x C tile at rows r0.., columns c0.. (see _make_tile)."""
    i64 = ir.IntType(64)
    vty = ir.VectorType(fty, VW) if vector else fty
    zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * VW) if vector else ir.Constant(fty, 0.0)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(C)] for _ in range(R)]
    undef = ir.Constant(vty, ir.Undefined)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), VW), [0] * VW)
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
        orow = builder.gep(outp, [builder.add(builder.mul(builder.add(r0, ir.Constant(i64, r)), ldo), c0)])
        for c in range(C):
            dst = builder.bitcast(builder.gep(orow, [ir.Constant(i64, c * VW)]), vty.as_pointer())
            builder.store(builder.load(accs[r][c]), dst, align=size)


def _make_tile(C, vector=True):
    """An intrinsic tile(out, a, W, r0, c0, n): out[r0:r0+n, c0:c0+C*w] = a[r0:r0+n, :] @ W[:, c0:c0+C*w] for
    1 <= n <= TILE_ROWS rows, w the vector width (vector=True) or 1 (scalar columns, for the last M % w columns).
    One unrolled loop per row count, chosen by a switch on n."""

    @intrinsic
    def tile(typingctx, out, a, W, r0, c0, n):
        arrays = (out, a, W)
        if not all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays):
            return None
        if not (out.dtype == a.dtype == W.dtype and out.dtype in (types.float32, types.float64)):
            return None
        if not all(isinstance(v, types.Integer) for v in (r0, c0, n)):
            return None
        fty = ir.FloatType() if out.dtype == types.float32 else ir.DoubleType()
        size = 4 if out.dtype == types.float32 else 8
        VW = VECTOR_BYTES // size if vector else 1
        vty = ir.VectorType(fty, VW) if vector else fty
        i64 = ir.IntType(64)

        def codegen(context, builder, signature, args):
            out_v, a_v, W_v, r0_v, c0_v, n_v = args
            r0_v, c0_v, n_v = (context.cast(builder, v, t, types.intp)
                               for v, t in zip((r0_v, c0_v, n_v), signature.args[3:]))
            ary = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], (out_v, a_v, W_v))]
            # row strides in elements (the column stride is one element: see matmul_tiles)
            ldo, lda, ldw = (builder.sdiv(cgutils.unpack_tuple(builder, x.strides, 2)[0], ir.Constant(i64, size))
                             for x in ary)
            K = cgutils.unpack_tuple(builder, ary[1].shape, 2)[1]
            outp, ap, wp = (x.data for x in ary)
            kind = "fma" if TARGET.fma else "fmuladd"
            name = f"llvm.{kind}.{'v%d' % VW if vector else ''}{'f32' if size == 4 else 'f64'}"
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)
            arow = [builder.gep(ap, [builder.mul(builder.add(r0_v, ir.Constant(i64, r)), lda)])
                    for r in range(TILE_ROWS)]
            wcol = builder.gep(wp, [c0_v])
            done = builder.append_basic_block("tile.done")
            switch = builder.switch(n_v, done)
            for R in range(1, TILE_ROWS + 1):
                block = builder.append_basic_block(f"tile.rows{R}")
                switch.add_case(ir.Constant(i64, R), block)
                builder.position_at_end(block)
                _emit_tile(builder, R, C, VW, fty, vector, fma, arow[:R], wcol, ldw, K, outp, ldo, r0_v, c0_v,
                           size)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return types.void(out, a, W, r0, c0, n), codegen

    return tile


_tile, _tile1, _scalar = _make_tile(TILE_VECTORS), _make_tile(1), _make_tile(1, vector=False)


def _itemsize(W):
    return W.itemsize


@overload(_itemsize, jit_options=OPTIONS, inline="always")
def _itemsize_overload(W):
    size = W.dtype.bitwidth // 8
    return lambda W: size


@kernel
def _tile_rows(out, a, W, c0, width, R):
    """out[:, c0:c0+width] = a @ W[:, c0:c0+width] for all R rows, width at most one tile's columns: whole tiles
    (TILE_ROWS rows, TILE_VECTORS vectors), then single vectors, then single columns, each as row blocks with one
    block of fewer rows last."""
    vw = VECTOR_BYTES // _itemsize(W)
    for r0 in range(0, R, TILE_ROWS):
        n = min(TILE_ROWS, R - r0)
        if width == TILE_VECTORS * vw:
            _tile(out, a, W, r0, c0, n)
        else:
            wv = width - width % vw
            for c in range(c0, c0 + wv, vw):
                _tile1(out, a, W, r0, c, n)
            for c in range(c0 + wv, c0 + width):
                _scalar(out, a, W, r0, c, n)


@kernel
def matmul_tiles(out, a, W):
    """out (R, M) = a (R, K) @ W (K, M); see the module docstring. Each array's elements must be consecutive along
    its rows (any row stride: row blocks and views such as hs[t] work)."""
    R = a.shape[0]
    M = W.shape[1]
    pw = TILE_VECTORS * (VECTOR_BYTES // _itemsize(W))
    for c0 in range(0, M, pw):
        _tile_rows(out, a, W, c0, min(pw, M - c0), R)


@kernel
def pack(W):
    """W (K, M) as panels (ceil(M / PW), K, PW) of PW = TILE_VECTORS vectors' columns each, zeros past M: a tile
    then reads its columns of W as one contiguous run instead of K pieces a whole row of W apart (at a row stride
    of a power of two, 8 KiB for an lstm H512, those pieces fall on the same few cache sets and evict each other)."""
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
    for b in range(Wp.shape[0]):
        c0 = b * pw
        width = min(pw, M - c0)
        _tile_rows(out[:, c0:c0 + width], a, Wp[b], 0, width, R)


# ---------------------------------------------------------------------------------------------------------------
# bf16 products with float32 sums (AVX512_BF16's vdpbf16ps): `--precision bf16`
#
# pack_bf16(W): W (K, M) float32 rounded to bfloat16 (to nearest even) and laid out as panels
# (ceil(M / 64), ceil(K / 2), 64) of uint32, each holding the pair (W[2p, j], W[2p + 1, j]) (low half first),
# zeros past M and past K. matmul_bf16(out, a, Wb) rounds a's rows to bf16 pairs the same way and accumulates
# out = a @ W in float32 vectors with one vdpbf16ps per 16 columns and k-pair: per element the chain
# s = s + a[2p] * W[2p] + a[2p+1] * W[2p+1] over the pairs, each product exact in float32, each pair's sum rounded
# as the instruction does. Inputs carry bf16's 8 bits of mantissa (relative error 2^-9 each); the sums keep
# float32's.


def has_bf16():
    """Whether the kernels are compiled for a CPU with AVX512_BF16 (vdpbf16ps): the host's features, or those
    NUMBA_CPU_FEATURES names (isa.target)."""
    return TARGET.bf16


class _BFloat(ir.Type):
    """LLVM's bfloat, which llvmlite's IR builder does not name."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloat)

    def __hash__(self):
        return hash("bfloat")


BF16_PANEL = 64  # float32 columns of a bf16 panel: 4 vectors of 16


def _make_bf16_tile(R, C):
    """An intrinsic tile(out, a2, Wb, r0, c0): out[r0:r0+R, c0:c0+16C] = a2 @ Wb over all k-pairs, a2 (rows, KP)
    and Wb (KP, >= c0+16C) uint32 bf16 pairs, out float32; each array's rows contiguous."""

    @intrinsic
    def tile(typingctx, out, a2, Wb, r0, c0):
        if not (isinstance(out, types.Array) and out.ndim == 2 and out.dtype == types.float32):
            return None
        if not all(isinstance(t, types.Array) and t.ndim == 2 and t.dtype == types.uint32 for t in (a2, Wb)):
            return None
        i64, i32, f32 = ir.IntType(64), ir.IntType(32), ir.FloatType()
        vf, vi, vb = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(_BFloat(), 32)

        def codegen(context, builder, signature, args):
            out_v, a_v, W_v, r0_v, c0_v = args
            r0_v = context.cast(builder, r0_v, signature.args[3], types.intp)
            c0_v = context.cast(builder, c0_v, signature.args[4], types.intp)
            ary = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], (out_v, a_v, W_v))]
            ldo, lda, ldw = (builder.sdiv(cgutils.unpack_tuple(builder, x.strides, 2)[0], ir.Constant(i64, 4))
                             for x in ary)
            KP = cgutils.unpack_tuple(builder, ary[1].shape, 2)[1]
            outp, ap, wp = (x.data for x in ary)
            dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vb, vb]),
                                                "llvm.x86.avx512bf16.dpbf16ps.512")
            zero = ir.Constant(vf, [ir.Constant(f32, 0.0)] * 16)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(C)] for _ in range(R)]
            undef = ir.Constant(vi, ir.Undefined)
            splat = ir.Constant(vi, [0] * 16)
            arow = [builder.gep(ap, [builder.mul(builder.add(r0_v, ir.Constant(i64, r)), lda)]) for r in range(R)]
            wcol = builder.gep(wp, [c0_v])
            with cgutils.for_range(builder, KP) as loop:
                k = loop.index
                wrow = builder.gep(wcol, [builder.mul(k, ldw)])
                wv = [builder.bitcast(builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(i64, c * 16)]),
                                                                   vi.as_pointer()), align=4), vb)
                      for c in range(C)]
                for r in range(R):
                    x = builder.load(builder.gep(arow[r], [k]))
                    xv = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(i32, 0)), undef, splat)
                    xb = builder.bitcast(xv, vb)
                    for c in range(C):
                        builder.store(builder.call(dp, [builder.load(accs[r][c]), xb, wv[c]]), accs[r][c])
            for r in range(R):
                orow = builder.gep(outp, [builder.add(builder.mul(builder.add(r0_v, ir.Constant(i64, r)), ldo), c0_v)])
                for c in range(C):
                    dst = builder.bitcast(builder.gep(orow, [ir.Constant(i64, c * 16)]), vf.as_pointer())
                    builder.store(builder.load(accs[r][c]), dst, align=4)
            return context.get_dummy_value()

        return types.void(out, a2, Wb, r0, c0), codegen

    return tile


_bf16_tile44, _bf16_tile14 = _make_bf16_tile(4, 4), _make_bf16_tile(1, 4)


@intrinsic
def _f32_bits(typingctx, x):
    """The bits of a float32 as a uint32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@kernel
def to_bf16(x):
    """The bf16 bits (as uint32, in the low half) of float32 x, rounded to nearest even; NaN stays NaN."""
    b = _f32_bits(x)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (b >> np.uint32(16)) | np.uint32(0x40)
    return (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@kernel
def pack_bf16(W):
    """W (K, M) float32 as bf16 panels (ceil(M / 64), ceil(K / 2), 64) of uint32 pairs (see above)."""
    K, M = W.shape
    KP = (K + 1) // 2
    nb = (M + BF16_PANEL - 1) // BF16_PANEL
    out = np.zeros((nb, KP, BF16_PANEL), np.uint32)
    for b in range(nb):
        c0 = b * BF16_PANEL
        for p in range(KP):
            for j in range(c0, min(M, c0 + BF16_PANEL)):
                lo = to_bf16(W[2 * p, j])
                hi = to_bf16(W[2 * p + 1, j]) if 2 * p + 1 < K else np.uint32(0)
                out[b, p, j - c0] = lo | (hi << np.uint32(16))
    return out


@kernel
def bf16_rows(a2, a):
    """a2 (R, ceil(K / 2)) uint32 = the rows of a (R, K) float32 as bf16 pairs (a zero after an odd K)."""
    R, K = a.shape
    KP = a2.shape[1]
    for r in range(R):
        for p in range(KP):
            lo = to_bf16(a[r, 2 * p])
            hi = to_bf16(a[r, 2 * p + 1]) if 2 * p + 1 < K else np.uint32(0)
            a2[r, p] = lo | (hi << np.uint32(16))


@kernel
def matmul_bf16(out, a, Wb):
    """out (R, M) float32 = a (R, K) float32 @ W, W given as pack_bf16(W) (M = out.shape[1]): bf16 products,
    float32 sums (see above). A row's result does not depend on the other rows."""
    R = a.shape[0]
    M = out.shape[1]
    a2 = np.empty((R, Wb.shape[1]), np.uint32)
    bf16_rows(a2, a)
    R4 = R - R % 4
    tail = np.empty((max(R, 1), BF16_PANEL), np.float32)  # a narrower last panel is computed here, then copied
    for b in range(Wb.shape[0]):
        c0 = b * BF16_PANEL
        width = min(BF16_PANEL, M - c0)
        o = out[:, c0:c0 + width] if width == BF16_PANEL else tail
        panel = Wb[b]
        for r0 in range(0, R4, 4):
            _bf16_tile44(o, a2, panel, r0, 0)
        for r in range(R4, R):
            _bf16_tile14(o, a2, panel, r, 0)
        if width < BF16_PANEL:
            for r in range(R):
                for j in range(width):
                    out[r, c0 + j] = tail[r, j]


def tile_product(out, a, Wp):
    """out = a @ W with W packed: tiles.pack(W) (matmul_packed) or pack_bf16(W) (matmul_bf16), by Wp's type."""
    if Wp.dtype == np.uint32:
        matmul_bf16(out, a, Wp)
    else:
        matmul_packed(out, a, Wp)


@overload(tile_product, jit_options=OPTIONS)
def _tile_product_overload(out, a, Wp):
    if Wp.dtype == types.uint32:
        return lambda out, a, Wp: matmul_bf16(out, a, Wp)
    return lambda out, a, Wp: matmul_packed(out, a, Wp)
