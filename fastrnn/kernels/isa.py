"""The instruction set the kernels are compiled for, and the register tile it affords.

numba compiles for one CPU: the host's, as LLVM names it, with the host's features, unless NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES name another (without NUMBA_CPU_FEATURES numba adds the host's features to any name). `target()`
reads the same settings numba reads, so the vector width and the register count below are those of the code
numba makes, whether the kernels run on the CPU they were built on or are compiled for another one to be checked:

    x86-64 with AVX-512F           32 vector registers of 64 bytes (16 float32)
    x86-64 with AVX (AVX2, FMA)    16 of 32 bytes (8 float32)
    x86-64, SSE2 only              16 of 16 bytes (4 float32)
    AArch64 (NEON, ASIMD)          32 of 16 bytes
    POWER (VSX)                    64 of 16 bytes
    anything else                  16 of 16 bytes (LLVM splits or scalarizes what it cannot hold)

`tile_shape(target)` turns the register count into the register tile of tiles.py: R rows of `a` by C vectors of W
columns, R*C accumulators that stay in registers for the whole of K, C registers for the row of W read at each k
and one for the broadcast element of `a`, so R*C + C + 1 registers in all. Of the shapes that fit, the one with the
most accumulators, and among those the fewest loads per multiply-add ((R + C) / (R*C)), is taken: 4 x 3 on AVX2 or
SSE2 (12 accumulators, 16 registers), 6 x 4 on AVX-512 or NEON (24 of 32), at most 8 rows and 4 vectors. What the
rule gives was measured against its neighbours with `python -m benchmarks.isa --tiles` (numbers in
docs/benchmarks.md); FASTRNN_TILE=RxC overrides it, for such measurements.
"""

import dataclasses
import functools
import os
import platform

TILE_ENV = "FASTRNN_TILE"
MAX_ROWS, MAX_VECTORS = 8, 4  # a tile is unrolled in full: rows x vectors multiply-adds per k


@dataclasses.dataclass(frozen=True)
class Target:
    """The CPU numba compiles for: LLVM's name, its enabled features, and what the kernels read from them."""

    arch: str  # platform.machine(): x86_64, aarch64, arm64, ppc64le, ...
    cpu: str  # LLVM's CPU name (NUMBA_CPU_NAME, else the host's)
    features: frozenset  # LLVM feature names enabled ("avx2", "fma", "neon", ...)
    vector_bytes: int
    registers: int
    fma: bool  # a fused multiply-add instruction (else llvm.fma would be a library call per element)

    @property
    def bf16(self):
        """AVX512_BF16's vdpbf16ps (tiles.matmul_bf16)."""
        return {"avx512bf16", "avx512f"} <= self.features

    @property
    def isa(self):
        """The vector instruction set, for people: 'AVX-512', 'AVX2+FMA', 'SSE2', 'NEON', ..."""
        f = self.features
        if self.arch in ("x86_64", "AMD64", "i686", "x86"):
            if "avx512f" in f:
                return "AVX-512" + ("+BF16" if self.bf16 else "") + ("+AMX" if "amx-tile" in f else "")
            if "avx2" in f:
                return "AVX2" + ("+FMA" if self.fma else "")
            if "avx" in f:
                return "AVX" + ("+FMA" if self.fma else "")
            return "SSE2"
        if self.arch in ("aarch64", "arm64"):
            return "NEON"
        if self.arch.startswith("ppc64"):
            return "VSX"
        return "scalar"

    def describe(self):
        """'znver3, AVX2+FMA: 16 x 32-byte vector registers'."""
        return f"{self.cpu}, {self.isa}: {self.registers} x {self.vector_bytes}-byte vector registers"


def parse_features(text):
    """LLVM's feature string ('+avx,+avx2,-avx512f,...') as the set of enabled names (a later entry wins)."""
    on = {}
    for item in (text or "").split(","):
        item = item.strip()
        if len(item) > 1 and item[0] in "+-":
            on[item[1:]] = item[0] == "+"
    return frozenset(k for k, v in on.items() if v)


def make_target(arch, cpu, features):
    """The Target of an architecture, CPU name and enabled feature set (a pure function: tests give any)."""
    f = frozenset(features)
    if arch in ("x86_64", "AMD64", "i686", "x86"):
        if "avx512f" in f:
            vb, regs = 64, 32
        elif "avx" in f:
            vb, regs = 32, 16
        else:
            vb, regs = 16, 16
        fma = "fma" in f or "avx512f" in f
    elif arch in ("aarch64", "arm64"):
        vb, regs, fma = 16, 32, True  # NEON (ASIMD) is part of AArch64; fmla is always there
    elif arch.startswith("ppc64"):
        vb, regs, fma = 16, 64, True  # VSX: 64 registers of 128 bits; xvmaddasp
    else:
        vb, regs, fma = 16, 16, False
    return Target(arch, cpu, f, vb, regs, fma)


@functools.lru_cache(maxsize=1)
def target():
    """The Target numba compiles this process's kernels for (numba's own settings: module docstring)."""
    import llvmlite.binding as ll
    from numba.core import config

    cpu = config.CPU_NAME or ll.get_host_cpu_name()
    if config.CPU_FEATURES is not None:
        features = parse_features(config.CPU_FEATURES)
    else:
        features = frozenset(k for k, v in ll.get_host_cpu_features().items() if v)
    return make_target(platform.machine(), cpu, features)


def tile_shape(t, override=None):
    """(rows, vectors) of the register tile for Target t (module docstring); `override` 'RxC' (FASTRNN_TILE)
    takes precedence when it is well formed and within MAX_ROWS x MAX_VECTORS."""
    override = os.environ.get(TILE_ENV) if override is None else override
    if override:
        try:
            r, c = (int(x) for x in override.lower().split("x"))
        except ValueError:
            r = c = 0
        if 1 <= r <= MAX_ROWS and 1 <= c <= MAX_VECTORS:
            return r, c
        from fastrnn.errors import ConfigError

        raise ConfigError(f"{TILE_ENV}={override!r}: expected ROWSxVECTORS within {MAX_ROWS}x{MAX_VECTORS}")
    fits = [(r, c) for r in range(1, MAX_ROWS + 1) for c in range(1, MAX_VECTORS + 1)
            if r * c + c + 1 <= t.registers]
    return max(fits, key=lambda rc: (rc[0] * rc[1], -(rc[0] + rc[1]) / (rc[0] * rc[1]), rc[1]))


# ---------------------------------------------------------------------------------------------------------------
# targets to compile for on one machine (make test-isa, benchmarks.isa)

# name -> (LLVM CPU name, NUMBA_CPU_FEATURES, features the host needs to run the code, OpenBLAS core type that
# runs the same instruction set). The features are explicit: without NUMBA_CPU_FEATURES numba adds the host's.
CHECK_TARGETS = {
    "x86-64": ("x86-64", "+sse2,-avx,-avx2,-fma,-avx512f", {"sse2"}, "Prescott"),
    "haswell": ("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,+sse4.2,-avx512f",
                {"avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe", "popcnt", "sse4.2"}, "Haswell"),
    "skylake-avx512": ("skylake-avx512", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,+sse4.2,+avx512f,"
                       "+avx512cd,+avx512bw,+avx512dq,+avx512vl,-avx512bf16",
                       {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "fma", "avx2"}, "SkylakeX"),
}


def host_features():
    """The features LLVM sees on this CPU."""
    import llvmlite.binding as ll

    return frozenset(k for k, v in ll.get_host_cpu_features().items() if v)


def check_targets(arch=None, features=None):
    """[(name, environment to compile for it)] of the targets this machine can run: those of CHECK_TARGETS its
    CPU has the features for (x86 only), then "host" (no setting: the host's CPU and features). The environment
    names NUMBA_CPU_NAME, NUMBA_CPU_FEATURES and OPENBLAS_CORETYPE (the BLAS kernels of the same instruction
    set); give each target its own NUMBA_CACHE_DIR."""
    arch = platform.machine() if arch is None else arch
    features = host_features() if features is None else frozenset(features)
    out = []
    if arch in ("x86_64", "AMD64"):
        for name, (cpu, feats, needs, coretype) in CHECK_TARGETS.items():
            if needs <= features:
                out.append((name, {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": feats,
                                   "OPENBLAS_CORETYPE": coretype}))
    out.append(("host", {}))
    return out
