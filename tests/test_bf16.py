"""--precision bf16: the bf16 tile products against NumPy, every cell on the bf16 plan against the float32 reference
(with the tolerances bf16 inputs allow), the plan's fallback where the CPU or the shape has no bf16, and training,
resuming and the CLI end to end. Skipped where the CPU lacks AVX512_BF16 (the fallback tests run everywhere)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import kernels as K
from fastrnn import reference as ref
from fastrnn.cli import main
from fastrnn.dropout import make_masks
from fastrnn.kernels import dispatch, tiles
from fastrnn.model import Model
from fastrnn.params import state_size

needs_bf16 = pytest.mark.skipif(not tiles.has_bf16(),
                                reason="the CPU the kernels are compiled for has no AVX512_BF16 (vdpbf16ps)")

# bf16 keeps 8 bits of mantissa: each input of a product is off by up to 2^-9 relative; sums are float32. Measured
# here: products 2-3e-3 of their largest entry, a training step's gradients 2-4e-3; the tolerances below are 4x.
PRODUCT_TOL = 1e-2
STEP_TOL = 2e-2


@needs_bf16
@pytest.mark.parametrize("R,K,M", [(1, 1, 1), (1, 64, 64), (5, 7, 70), (9, 33, 130), (32, 512, 256)])
def test_bf16_products_match_numpy_and_each_row_alone(R, K, M):
    rng = np.random.default_rng(R + K + M)
    a = rng.standard_normal((R, K)).astype(np.float32)
    W = (rng.standard_normal((K, M)) / np.sqrt(K)).astype(np.float32)
    got = np.full((R, M), np.nan, np.float32)
    Wb = tiles.pack_bf16(W)
    tiles.matmul_bf16(got, a, Wb)
    want = a.astype(np.float64) @ W.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=PRODUCT_TOL * np.abs(want).max())
    exact = (tiles_round(a).astype(np.float64) @ tiles_round(W).astype(np.float64))  # the rounded inputs, exactly
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5 * np.abs(want).max())
    alone = np.empty((1, M), np.float32)
    tiles.matmul_bf16(alone, np.ascontiguousarray(a[-1:]), Wb)
    assert np.array_equal(alone[0], got[-1])


def tiles_round(x):
    """x rounded to bf16 (nearest even) and back to float32, in NumPy."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def test_rounding_to_bf16():
    for x, bits in ((1.0, 0x3F80), (-2.0, 0xC000), (np.inf, 0x7F80), (-np.inf, 0xFF80), (0.0, 0),
                    (1.00390625, 0x3F80), (1.01171875, 0x3F82)):  # ties to even: 1 + 2^-8 down, 1 + 3*2^-8 up
        assert tiles.to_bf16(np.float32(x)) == bits, x
    nan = tiles.to_bf16(np.float32(np.nan))
    assert (nan & 0x7F80) == 0x7F80 and (nan & 0x7F) != 0  # still a NaN


@needs_bf16
@pytest.mark.parametrize("cell,L,dropout", [("rnn", 1, 0.0), ("rnn", 2, 0.4), ("lstm", 1, 0.0), ("lstm", 2, 0.4),
                                            ("gru", 1, 0.0), ("gru", 2, 0.4), ("lnlstm", 2, 0.4)])
def test_every_cell_on_the_bf16_plan_matches_the_reference(cell, L, dropout):
    rng = np.random.default_rng(3)
    N, T, V, H = 9, 6, 11, 21
    model = Model(V, H, "float32", cell, L).init(rng, 0.5, "xavier")
    x, y = (rng.integers(0, V, (N, T)).astype(np.int32) for _ in range(2))
    h0 = (0.5 * rng.standard_normal((N, state_size(cell, H, L)))).astype(np.float32)
    masks = make_masks(rng, dropout, L, T, N, H, np.float32)
    plan = K.plan_for(model.P, N, T, masks is not None, 2, precision="bf16")
    assert plan.precision == "bf16" and plan.tiles and "in bf16" in plan.describe()
    views = model.layout.views
    g_ref, g_bf = model.layout.zeros(np.float32), model.layout.zeros(np.float32)
    loss_ref, s_ref = ref.forward_backward(model.P, views(g_ref), x, y, h0, masks)
    loss_bf, s_bf = K.forward_backward(model.P, views(g_bf), x, y, h0, masks, plan=plan)
    assert loss_bf == pytest.approx(loss_ref, rel=STEP_TOL)
    np.testing.assert_allclose(s_bf, s_ref, rtol=0, atol=STEP_TOL * np.abs(s_ref).max())
    for name in model.layout.names:
        want = views(g_ref)[name]
        np.testing.assert_allclose(views(g_bf)[name], want, rtol=0, atol=STEP_TOL * np.abs(want).max(),
                                   err_msg=name)
    assert not np.array_equal(s_bf, K.forward_loss(model.P, x, y, h0, masks,
                                                   plan=dispatch.variant(plan, precision="float32"))[1])


def test_the_plan_falls_back_to_float32_where_bf16_cannot_run(monkeypatch):
    dispatch._plan.cache_clear()
    few = dispatch.plan("lstm", 1, 2, 10, 32, 20, False, 2, "float32", precision="bf16")
    assert few.precision == "float32"  # one sequence a thread, or no AVX512_BF16
    # the other reasons, as a CPU with AVX512_BF16 gives them (the refusal names the first reason that applies,
    # and on a CPU without the instruction that is the CPU: checked below)
    monkeypatch.setattr(tiles, "has_bf16", lambda: True)
    assert "sequences a thread" in dispatch.bf16_refusal(2, 2, "float32")
    assert "float32" in dispatch.bf16_refusal(64, 2, "float64")
    assert dispatch.bf16_refusal(64, 2, "float32") is None
    monkeypatch.setattr(tiles, "has_bf16", lambda: False)
    dispatch._plan.cache_clear()
    p = dispatch.plan("lstm", 1, 64, 10, 32, 20, False, 2, "float32", precision="bf16")
    assert p.precision == "float32" and "in bf16" not in p.describe()
    assert dispatch.bf16_refusal(64, 2, "float32") == "this CPU has no AVX512_BF16"
    dispatch._plan.cache_clear()
    with pytest.raises(ValueError):
        dispatch.Plan("lstm", 1, 4, 5, 8, 7, False, 1, "float32", "layers", False, "blas", precision="bf16")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


SMALL = ["--model", "lstm", "--hidden-size", "32", "--batch-size", "16", "--seq-len", "10", "--threads", "2",
         "--eval-every", "0", "--checkpoint-every", "0", "--log-every", "2"]


def _final(run_dir):
    from fastrnn import checkpoint

    return checkpoint.load(run_dir / "checkpoint.h5")


@needs_bf16
def test_training_in_bf16_resumes_exactly_and_checkpoints_stay_float32(small_corpus, tmp_path):
    straight = run("train", small_corpus, "-o", tmp_path / "a", *SMALL, "--precision", "bf16", "--max-steps", "8")
    assert straight.exit_code == 0, straight.output
    assert "register tiles in bf16" in straight.stderr and "training in float32" not in straight.stderr
    first = run("train", small_corpus, "-o", tmp_path / "b", *SMALL, "--precision", "bf16", "--max-steps", "4")
    assert first.exit_code == 0, first.output
    resumed = run("train", small_corpus, "-o", tmp_path / "b", "--resume", "--max-steps", "8")
    assert resumed.exit_code == 0, resumed.output
    assert "register tiles in bf16" in resumed.stderr  # the checkpoint's precision, without giving it again
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    assert a.config["precision"] == "bf16" and a.params.dtype == np.float32
    assert np.array_equal(a.params, b.params)  # resumed exactly as if it had not stopped
    rows = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    f32 = run("train", small_corpus, "-o", tmp_path / "c", *SMALL, "--max-steps", "8")
    rows32 = [json.loads(line) for line in open(tmp_path / "c" / "log.jsonl")]
    assert rows[-1]["loss"] == pytest.approx(rows32[-1]["loss"], rel=STEP_TOL) and f32.exit_code == 0
    assert not np.array_equal(a.params, _final(tmp_path / "c").params)  # bf16 products did run
    changed = run("train", small_corpus, "-o", tmp_path / "b", "--resume", "--max-steps", "9", "--precision",
                  "float32")
    assert changed.exit_code != 0 and "--precision" in changed.stderr


def test_precision_errors_and_the_float32_fallback(small_corpus, tmp_path, monkeypatch):
    r = run("train", small_corpus, "-o", tmp_path / "x", *SMALL, "--precision", "bf16", "--backend", "numpy",
            "--max-steps", "1")
    assert r.exit_code != 0 and len(r.stderr.strip().splitlines()) == 1 and "--precision bf16" in r.stderr
    monkeypatch.setattr(tiles, "has_bf16", lambda: False)
    dispatch._plan.cache_clear()
    try:
        r = run("train", small_corpus, "-o", tmp_path / "y", *SMALL, "--precision", "bf16", "--max-steps", "2")
    finally:
        dispatch._plan.cache_clear()
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "--precision bf16" in line]
    assert notes == ["--precision bf16: this CPU has no AVX512_BF16; training in float32"]
