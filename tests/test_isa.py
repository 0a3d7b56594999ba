"""kernels.isa: the target the kernels are compiled for (numba's own settings), and the register tile it affords;
the tiles' code really is the target's (no ymm register in code compiled for SSE2, no zmm for AVX2)."""

import os
import re
import subprocess
import sys

import pytest

from fastrnn.errors import ConfigError
from fastrnn.kernels import isa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSE2 = ("x86-64", "-avx,-avx2,-fma,-avx512f")
AVX2 = ("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe,+popcnt,+sse4.2,-avx512f")


def test_features_parse_with_the_later_entry_winning():
    assert isa.parse_features("+avx,+avx2,-fma,+fma,-avx2") == {"avx", "fma"}
    assert isa.parse_features("") == frozenset() and isa.parse_features(None) == frozenset()


@pytest.mark.parametrize("arch,features,want", [
    ("x86_64", {"sse2"}, (16, 16, False, "SSE2", (4, 3))),
    ("x86_64", {"avx", "avx2", "fma"}, (32, 16, True, "AVX2+FMA", (4, 3))),
    ("x86_64", {"avx", "avx2", "fma", "avx512f"}, (64, 32, True, "AVX-512", (6, 4))),
    ("x86_64", {"avx", "avx2", "fma", "avx512f", "avx512bf16"}, (64, 32, True, "AVX-512+BF16", (6, 4))),
    ("aarch64", {"neon"}, (16, 32, True, "NEON", (6, 4))),
    ("ppc64le", {"vsx"}, (16, 64, True, "VSX", (8, 4))),
    ("riscv64", set(), (16, 16, False, "scalar", (4, 3))),
])
def test_each_instruction_set_gets_its_vectors_registers_and_tile(arch, features, want):
    t = isa.make_target(arch, "some-cpu", features)
    assert (t.vector_bytes, t.registers, t.fma, t.isa, isa.tile_shape(t, override="")) == want
    rows, vectors = isa.tile_shape(t, override="")
    assert rows * vectors + vectors + 1 <= t.registers  # accumulators, a row of W and the broadcast: all held
    assert t.bf16 == ("avx512bf16" in features)


def test_a_tile_shape_can_be_asked_for_and_a_bad_one_is_refused():
    t = isa.make_target("x86_64", "haswell", {"avx", "avx2", "fma"})
    assert isa.tile_shape(t, override="2x4") == (2, 4)
    for bad in ("9x1", "0x2", "3x5", "three"):
        with pytest.raises(ConfigError, match="FASTRNN_TILE"):
            isa.tile_shape(t, override=bad)


PROBE = """
import re, numpy as np
from fastrnn.kernels import tiles
a, W = np.ones((9, 40), np.float32), np.ones((40, 100), np.float32)
out = np.empty((9, 100), np.float32)
tiles.matmul_packed(out, a, tiles.pack(W))
assert (out == 40).all()
asm = "".join(tiles.matmul_packed.inspect_asm().values())
print(tiles.TARGET.cpu, tiles.TARGET.isa, tiles.TILE_ROWS, tiles.TILE_VECTORS,
      len(re.findall("%zmm", asm)), len(re.findall("%ymm", asm)), len(re.findall("vfmadd", asm)))
"""


def _compile_for(cpu, features, tmp_path):
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_CACHE_DIR=str(tmp_path / cpu))
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    name, kind, rows, vectors, zmm, ymm, fma = r.stdout.split()
    return name, kind, (int(rows), int(vectors)), int(zmm), int(ymm), int(fma)


@pytest.mark.skipif(not re.match(r"x86_64|AMD64", os.uname().machine), reason="x86 targets: this is not an x86 CPU")
def test_the_kernels_follow_numba_cpu_name_and_features(tmp_path):
    """Compiled for generic x86-64 without AVX, the tiles use no ymm register and no FMA instruction; for haswell,
    ymm and FMA and no zmm: the tile is the target's, whatever CPU runs the compiler."""
    assert _compile_for(*SSE2, tmp_path) == ("x86-64", "SSE2", (4, 3), 0, 0, 0)
    name, kind, tile, zmm, ymm, fma = _compile_for(*AVX2, tmp_path)
    assert (name, kind, tile, zmm) == ("haswell", "AVX2+FMA", (4, 3), 0) and ymm > 0 and fma > 0


def test_the_targets_a_cpu_can_run():
    avx2 = {"sse2", "avx", "avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe", "popcnt", "sse4.2"}
    avx512 = avx2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    names = lambda arch, features: [name for name, _ in isa.check_targets(arch, features)]  # noqa: E731
    assert names("x86_64", {"sse2"}) == ["x86-64", "host"]
    assert names("x86_64", avx2) == ["x86-64", "haswell", "host"]
    assert names("x86_64", avx512) == ["x86-64", "haswell", "skylake-avx512", "host"]
    assert names("aarch64", {"neon"}) == ["host"]
    for name, env in isa.check_targets("x86_64", avx512):
        if name != "host":  # explicit features (numba adds the host's otherwise), and BLAS of the same set
            assert env["NUMBA_CPU_FEATURES"] and env["OPENBLAS_CORETYPE"]
            t = isa.make_target("x86_64", env["NUMBA_CPU_NAME"], isa.parse_features(env["NUMBA_CPU_FEATURES"]))
            assert t.isa.startswith({"x86-64": "SSE2", "haswell": "AVX2", "skylake-avx512": "AVX-512"}[name])
            assert not t.bf16


def test_isa_targets_runs_a_command_per_target_and_fails_if_one_fails(tmp_path):
    probe = "import os, sys; print(os.environ['FASTRNN_ISA_TARGET'], os.environ.get('NUMBA_CPU_NAME', '-')); " \
            "sys.exit(os.environ['FASTRNN_ISA_TARGET'] == 'x86-64')"
    r = subprocess.run([sys.executable, "-m", "tools.isa_targets", "--cache-dir", str(tmp_path), "--", sys.executable,
                        "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = r.stdout.split("\n")
    assert lines[-2] == "host -" and r.returncode == (1 if "x86-64 x86-64" in lines else 0), (r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-m", "tools.isa_targets", "--skip", "x86-64", "--cache-dir", str(tmp_path),
                        "--", sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "x86-64" not in r.stdout and "host -" in r.stdout, r.stderr
