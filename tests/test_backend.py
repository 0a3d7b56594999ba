"""The backend protocol (fastrnn.backend.Backend): both backends offer it, and `threads(n)` puts back on exit what
it set."""

import inspect

import numba
import pytest
from threadpoolctl import threadpool_info

from conftest import make_text
from fastrnn import kernels, reference
from fastrnn.backend import Backend
from fastrnn.model import get_backend

PROTOCOL = [name for name, value in vars(Backend).items() if inspect.isfunction(value) and not name.startswith("_")]


def blas():
    return {p["filepath"]: p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_each_backend_offers_the_protocol(name):
    backend = get_backend(name)
    assert len(PROTOCOL) >= 16
    for function in PROTOCOL:
        wanted = list(inspect.signature(getattr(Backend, function)).parameters.values())[1:]  # (self)
        got = list(inspect.signature(getattr(backend, function)).parameters.values())
        assert [(p.name, p.default) for p in got[:len(wanted)]] == [(p.name, p.default) for p in wanted], function
        assert all(p.default is not inspect.Parameter.empty for p in got[len(wanted):]), function


def test_the_kernels_threads_are_put_back():
    numba.set_num_threads(2)
    before = blas()
    with kernels.threads(1) as n:
        assert n == 1 and numba.get_num_threads() == kernels.thread_count() == 1
        assert set(blas().values()) == {1}
    assert numba.get_num_threads() == 2 and blas() == before
    with kernels.threads(1, blas=False) as n:  # numba's count of this thread only (a serving thread's)
        assert n == 1 and numba.get_num_threads() == 1 and blas() == before
    assert numba.get_num_threads() == 2
    with kernels.threads(None) as n:
        assert n == 2
    with pytest.raises(ZeroDivisionError):
        with kernels.threads(1):
            1 / 0
    assert numba.get_num_threads() == 2 and blas() == before


def test_the_numpy_backends_threads_are_blas_only():
    numba.set_num_threads(2)
    before = blas()
    with reference.threads(1) as n:
        assert n == 1 and set(blas().values()) == {1} and numba.get_num_threads() == 2
    assert blas() == before and reference.thread_count() is None


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_training_session_runs_on_its_threads_and_puts_them_back(tmp_path, backend):
    from fastrnn.corpus import prepare
    from fastrnn.train import train

    src = tmp_path / "t.txt"
    src.write_text(make_text(3000))
    prepare([str(src)], str(tmp_path / "c.h5"))
    numba.set_num_threads(2)
    before, seen = blas(), []
    summary = train(str(tmp_path / "c.h5"), tmp_path / "r", dict(hidden_size=8, batch_size=2, seq_len=8, threads=1,
                                                               max_steps=2, eval_every=0, backend=backend),
                    on_event=lambda kind, data: seen.append(set(blas().values())) if kind == "log" else None)
    assert summary["step"] == 2 and seen and all(s == {1} for s in seen)
    assert numba.get_num_threads() == 2 and blas() == before
