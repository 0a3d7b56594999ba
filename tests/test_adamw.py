"""--optimizer adamw (a trial): decoupled weight decay on the weight matrices, the numba kernel against the NumPy
reference, the reference against the update written out, and the option wired like every other."""

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn import checkpoint as ckpt_io
from fastrnn.cli import main
from fastrnn.config import TrainConfig
from fastrnn.errors import ConfigError
from fastrnn.model import get_backend
from fastrnn.optim import Optimizer, adamw_update
from fastrnn.params import Layout, model_shapes

HYPER = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.3)


def layout():
    return Layout(model_shapes("lstm", 11, 6, 2))  # weight matrices and biases interleaved


def spans(lay):
    opt = Optimizer(TrainConfig(optimizer="adamw"), lay, np.float64, None)
    return opt.bounds, opt.decays


def problem(dtype, seed=0):
    lay = layout()
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(lay.size).astype(dtype)
    state = [np.abs(rng.standard_normal(lay.size)).astype(dtype) * 0.01 for _ in range(2)]
    grads = [(rng.standard_normal(lay.size) * 0.1).astype(dtype) for _ in range(4)]
    return lay, p, state, grads


def test_the_reference_is_the_update_written_out():
    """adamw_update: weights w <- w (1 - lr wd) - lr m^/(sqrt(v^) + eps), biases without the decay (float64)."""
    lay, p, (m, v), grads = problem(np.float64)
    bounds, decays = spans(lay)
    weight = np.zeros(lay.size, bool)
    for a, b, shape in lay.offsets.values():
        weight[a:b] = len(shape) >= 2
    assert weight.any() and not weight.all() and decays.sum() == sum(len(s) >= 2 for _, s in lay.shapes)
    want, wm, wv = p.copy(), m.copy(), v.copy()
    for t, g in enumerate(grads, 1):
        adamw_update(p, g, m, v, bounds, decays, t=t, **HYPER)
        lr, b1, b2, eps, wd = (HYPER[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
        wm, wv = b1 * wm + (1 - b1) * g, b2 * wv + (1 - b2) * g * g
        step = lr * (wm / (1 - b1 ** t)) / (np.sqrt(wv / (1 - b2 ** t)) + eps)
        want = np.where(weight, want * (1 - lr * wd), want) - step
    np.testing.assert_allclose(p, want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(m, wm, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_kernel_matches_the_reference(dtype):
    """The numba kernel (kernels/optim.py, through Optimizer with --backend numba) against the NumPy reference
    (--backend numpy): float64 to rounding, float32 to 1e-5."""
    lay, p, state, grads = problem(dtype)
    runs = {}
    for backend in ("numba", "numpy"):
        config = TrainConfig(optimizer="adamw", backend=backend, **{k: v for k, v in HYPER.items()})
        opt = Optimizer(config, lay, dtype, get_backend(backend))
        opt.state["m"][...], opt.state["v"][...] = state
        q = p.copy()
        for g in grads:
            opt.update(q, g.copy(), HYPER["lr"])
        runs[backend] = (q, opt.state["m"], opt.state["v"])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for got, want in zip(runs["numba"], runs["numpy"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_without_decay_it_is_adam_bit_for_bit(backend):
    lay, p, state, grads = problem(np.float32, seed=3)
    out = []
    for name, extra in (("adam", {}), ("adamw", dict(weight_decay=0.0))):
        config = TrainConfig(optimizer=name, backend=backend, **extra)
        opt = Optimizer(config, lay, np.float32, get_backend(backend))
        opt.state["m"][...], opt.state["v"][...] = state
        q = p.copy()
        for g in grads:
            opt.update(q, g.copy(), 0.01)
        out.append(q.tobytes())
    assert out[0] == out[1]


def test_biases_are_not_decayed_and_a_bare_size_decays_everything():
    lay = layout()
    bounds, decays = spans(lay)
    assert bounds[0] == 0 and bounds[-1] == lay.size and len(decays) == len(lay.shapes)
    assert [bool(d) for d in decays] == [len(shape) >= 2 for _, shape in lay.shapes]
    opt = Optimizer(TrainConfig(optimizer="adamw"), 40, np.float32, None)
    assert opt.bounds.tolist() == [0, 40] and opt.decays.tolist() == [True]
    p = np.ones(lay.size)
    adamw_update(p, np.zeros(lay.size), np.zeros(lay.size), np.zeros(lay.size), bounds, decays, 0.5, 0.9, 0.999,
                 1e-8, 0.2, 1)
    for a, b, shape in lay.offsets.values():
        assert (p[a:b] == (0.9 if len(shape) >= 2 else 1.0)).all()


def test_adamw_trains_resumes_exactly_and_its_option_is_refused_elsewhere(small_corpus, tmp_path):
    small = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "10", "--eval-every", "0", "--threads", "1",
             "--optimizer", "adamw", "--weight-decay", "0.1"]
    run = lambda out, *args: CliRunner().invoke(main, ["train", small_corpus, "-o", tmp_path / out, *small, *args])  # noqa
    assert run("whole", "--max-steps", "6").exit_code == 0
    assert run("split", "--max-steps", "3").exit_code == 0
    assert run("split", "--max-steps", "6", "--resume").exit_code == 0
    whole, split = ckpt_io.load(tmp_path / "whole"), ckpt_io.load(tmp_path / "split")
    assert whole.config["optimizer"] == "adamw" and whole.config["weight_decay"] == 0.1
    assert whole.params.tobytes() == split.params.tobytes()
    assert all(whole.optimizer[k].tobytes() == split.optimizer[k].tobytes() for k in ("m", "v"))
    r = CliRunner().invoke(main, ["train", small_corpus, "-o", tmp_path / "x", "--weight-decay", "0.1"])
    assert r.exit_code == 1 and "--weight-decay has no effect with --optimizer adam (it applies to adamw)" in r.stderr
    with pytest.raises(ConfigError, match="--weight-decay has no effect with --optimizer sgd"):
        TrainConfig(optimizer="sgd", weight_decay=0.1).validate()
    with pytest.raises(ConfigError, match="--weight-decay must be >= 0"):
        TrainConfig(optimizer="adamw", weight_decay=-1).validate()
