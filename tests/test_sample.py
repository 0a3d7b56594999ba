"""Generation strategies and the Python API."""

import numpy as np
import pytest

from fastrnn import reference as ref
from fastrnn import sample as gen
from fastrnn.api import CharRNN
from fastrnn.errors import ConfigError, VocabError

from conftest import make_text


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    run = tmp_path_factory.mktemp("api") / "run"
    model = CharRNN(hidden_size=32, seq_len=20, batch_size=8, backend="numpy", eval_every=0, log_every=10)
    model.fit(make_text(20_000), run_dir=str(run), max_steps=150)
    return model


def test_probabilities_top_k_and_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    np.testing.assert_allclose(gen.probabilities(logits), [0.5, 0.3, 0.15, 0.05])
    p = gen.probabilities(logits, top_k=2)
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = gen.probabilities(logits, top_p=0.8)
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])
    p = gen.probabilities(logits, top_p=0.81)
    assert np.count_nonzero(p) == 3
    cold = gen.probabilities(logits, temperature=0.01)
    assert cold[0] > 0.999999


def test_top_k_restricts_support(fitted):
    counts = set()
    for seed in range(5):
        ids = list(gen.generate(ref, fitted.model.P, fitted.vocab, prime="The ", length=200, top_k=1,
                                rng=np.random.default_rng(seed), dtype=fitted.model.dtype))
        counts.add(tuple(ids))
    assert len(counts) == 1  # top-1 leaves a single choice: sampling is deterministic whatever the seed
    ids = list(gen.generate(ref, fitted.model.P, fitted.vocab, prime="The ", length=300, top_k=3,
                            rng=np.random.default_rng(0), dtype=fitted.model.dtype))
    # every chosen symbol was among the 3 most probable at its step
    h, logits = gen._start(ref, fitted.model.P, fitted.vocab, "The ", fitted.model.dtype)
    for t in ids:
        assert t in np.argsort(-logits[0])[:3]
        h, logits = ref.step(fitted.model.P, h, np.array([t], dtype=np.int32))


def test_sampling_is_deterministic_by_seed(fitted):
    a = fitted.generate("The ", 100, seed=7)
    b = fitted.generate("The ", 100, seed=7)
    c = fitted.generate("The ", 100, seed=8)
    assert a == b and a != c and a.startswith("The ") and len(a) == 104


def test_low_temperature_equals_greedy(fitted):
    greedy = fitted.generate("The ", 80, greedy=True)
    cold = fitted.generate("The ", 80, temperature=1e-4, seed=3)
    assert cold == greedy


def test_beam_search_is_at_least_as_probable_as_greedy(fitted):
    prime, n = "The cat ", 30
    greedy = fitted.generate(prime, n, greedy=True)
    beam = fitted.generate(prime, n, beam_width=8)
    assert len(beam) == len(greedy)

    def continuation_logprob(text):
        # total log-probability of the n generated chars given the prime, via evaluate on prefixes
        full = fitted.evaluate(text)["loss"] * (len(text) - 1)
        head = fitted.evaluate(prime)["loss"] * (len(prime) - 1)
        return -(full - head)

    assert continuation_logprob(beam) >= continuation_logprob(greedy) - 1e-6


def test_stop_at():
    pieces = iter(["ab", "c\n", "de", "\n\nf"])
    assert "".join(gen.stop_at(pieces, "\n\n")) == "abc\nde\n\n"
    assert "".join(gen.stop_at(iter("hello world"), "o w")) == "hello w"
    assert "".join(gen.stop_at(iter("abc"), "")) == "abc"
    assert "".join(gen.stop_at(iter("abc"), "zz")) == "abc"


def test_learned_something(fitted):
    r = fitted.evaluate(make_text(3000, seed=99))
    assert r["loss"] < 0.75 * np.log(fitted.vocab.size)
    assert r["bpc"] == pytest.approx(r["loss"] / np.log(2))
    assert len(fitted.history) > 0


def test_api_round_trip(fitted, tmp_path):
    path = tmp_path / "m.h5"
    fitted.save(path)
    loaded = CharRNN.load(path)
    assert loaded.generate("The ", 60, seed=5) == fitted.generate("The ", 60, seed=5)
    assert loaded.evaluate("The cat sat.")["loss"] == fitted.evaluate("The cat sat.")["loss"]


def test_api_errors(fitted):
    with pytest.raises(VocabError, match="Z"):
        fitted.generate("Zebra", 10)
    with pytest.raises(ConfigError, match="temperature"):
        fitted.generate("The", 10, temperature=0)
    with pytest.raises(ConfigError, match="not trained"):
        CharRNN().generate("a", 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_generation_equals_the_numpy_path(dtype):
    from fastrnn import kernels, reference
    from fastrnn.corpus import Vocab
    from fastrnn.params import Layout, rnn_shapes

    V, H = 40, 96
    layout = Layout(rnn_shapes(V, H))
    P = layout.views(layout.init(np.random.default_rng(0), dtype, 0.05))
    P["bh"][:] = np.random.default_rng(1).standard_normal(H) * 0.1
    vocab = Vocab(range(60, 60 + V))
    for opts in (dict(), dict(temperature=0.6), dict(top_k=4), dict(top_p=0.7), dict(greedy=True)):
        ids = [list(gen.generate(be, P, vocab, prime="ABC", length=150, rng=np.random.default_rng(3), dtype=dtype,
                                 **opts)) for be in (reference, kernels)]
        assert ids[0] == ids[1], opts
