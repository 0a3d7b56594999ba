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
    model.fit(text=make_text(20_000), run_dir=str(run), max_steps=150)
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


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_temperature_so_small_that_logits_overflow_samples_the_most_probable_text(fitted, backend):
    from fastrnn.model import get_backend

    be = get_backend(backend)

    def draw(**options):
        return list(gen.generate(be, fitted.model.P, fitted.vocab, prime="The ", length=60,
                                 rng=np.random.default_rng(3), dtype=fitted.model.dtype, **options))

    greedy = draw(greedy=True)
    for temperature in (1e-320, 5e-324, 1e-300):  # (subnormal: logits / temperature is inf, or -inf, or both)
        assert draw(temperature=temperature) == greedy
        assert draw(temperature=temperature, top_k=3, top_p=0.5) == greedy
    p = gen.probabilities(np.array([-3.0, 2.0, -1.0]), temperature=1e-320)
    np.testing.assert_array_equal(p, [0, 1, 0])


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
    """--stop-at (TextStream's marker): the text up to and with the marker, whichever blocks it spans."""
    from fastrnn.corpus import Vocab

    def stopped(blocks, marker):
        vocab = Vocab(sorted({ord(c) for c in "".join(blocks) + marker}))
        stream = gen.TextStream(vocab, marker)
        return "".join(stream.feed(vocab.encode(block)) for block in blocks) + stream.finish()

    assert stopped(["ab", "c\n", "de", "\n\nf"], "\n\n") == "abc\nde\n\n"
    assert stopped(list("hello world"), "o w") == "hello w"
    assert stopped(list("abc"), "") == "abc"
    assert stopped(list("abc"), "zz") == "abc"


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


MODELS = [(cell, layers) for cell in ("rnn", "lstm", "gru", "lnlstm") for layers in (1, 2)]
SAMPLING = (dict(), dict(temperature=0.6), dict(top_k=4), dict(top_p=0.7), dict(greedy=True))


def random_model(cell, layers, dtype, V=30, H=30):
    """A small random model whose gates and outputs are far from uniform: Glorot weights (auto init, N(0, 0.3^2)
    for rnn), biases ~ N(0, 0.5^2), output biases ~ N(0, 1). H = 30 is no multiple of 4: matmul_small's tail runs."""
    from fastrnn.model import Model
    from fastrnn.params import layer_names

    model = Model(V, H, dtype, cell, layers).init(np.random.default_rng(0), 0.3)
    rng = np.random.default_rng(1)
    for l in range(layers):
        b = model.P[layer_names(l)[2]]
        b[...] += rng.standard_normal(b.shape) * 0.5
    model.P["by"][...] = rng.standard_normal(V)
    return model


def sample_state(model, h):
    """The carried states h: (B, S) as kernels.sample.sample_streams takes them: a new (B, L, K, H) array,
    [b, l, 0] the h of layer l of stream b and, for an lstm (K = 2), [b, l, 1] its c (advance_streams's view)."""
    return np.array(h).reshape(len(h), model.num_layers, -1, model.hidden_size)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell,layers", MODELS)
def test_numba_generation_equals_the_numpy_path(cell, layers, dtype):
    """Same seed, same text: every id over 200 characters in float64; in float32 (the kernels' tanh is within a
    few ulp of NumPy's) the first 50, which a wrong gate or layer would already change."""
    from fastrnn import kernels, reference
    from fastrnn.corpus import Vocab

    model = random_model(cell, layers, dtype)
    vocab = Vocab(range(60, 60 + model.vocab_size))
    n = 200 if dtype == np.float64 else 50
    for opts in SAMPLING:
        ids = [list(gen.generate(be, model.P, vocab, prime="ABC", length=n, rng=np.random.default_rng(3),
                                 dtype=dtype, **opts)) for be in (reference, kernels)]
        assert len(ids[1]) == n and ids[0] == ids[1], opts
        if not opts.get("greedy"):  # the draws do matter: the text is not stuck on a few symbols
            assert len(set(ids[0])) >= (3 if "top_k" in opts else 6), opts


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell,layers", MODELS)
def test_sample_streams_state_and_logits_match_reference_steps(cell, layers, dtype):
    """kernels.sample.sample_streams from random states of 6 streams: each token is the draw of fastrnn.sample
    from the reference's logits with the same uniform number, and every stream's state and logits after 60
    characters equal the reference's stepped on the same tokens (float64 1e-10, float32 1e-4); every stream has its
    own temperature, top-k and top-p."""
    from fastrnn.kernels import backend
    from fastrnn.kernels.sample import sample_streams

    model = random_model(cell, layers, dtype)
    P, rng, B, n = model.P, np.random.default_rng(5), 6, 60
    h = (rng.standard_normal((B, model.state_size)) * 0.5).astype(dtype)  # (B, S), c nonzero for an lstm
    first = np.arange(B, dtype=np.int32) + 3
    _, logits = ref.step(P, h, first)
    h = ref.step(P, h, first)[0]  # the states that give `logits`
    uniforms = rng.random((B, n))  # (B, n)
    state, numba_logits = sample_state(model, h), logits.copy()
    out = np.empty((B, n), dtype=np.int32)  # (B, n)
    temperature, top_k, top_p = np.array([0.8, 1.3, 0.6, 1.0, 0.8, 2.0]), np.array([0, 0, 5, 12, 0, 3]), \
        np.array([0.9, 1.0, 1.0, 0.8, 0.5, 1.0])  # each stream its own options
    sample_streams(out, state, numba_logits, uniforms, *backend.sample_params(P), temperature, top_k, top_p, False,
                   2)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for i in range(n):
        for b in range(B):
            p = gen.probabilities(logits[b], temperature[b], top_k[b], top_p[b])
            expect = int(min(np.searchsorted(np.cumsum(p), uniforms[b, i] * p.sum(), side="right"), len(p) - 1))
            if dtype == np.float64:
                assert out[b, i] == expect, (b, i)
        h, logits = ref.step(P, h, out[:, i])
    assert all(len(set(row.tolist())) > (1 if top_k[b] or top_p[b] < 0.9 else 5) for b, row in enumerate(out))
    np.testing.assert_allclose(state.reshape(B, -1), h, rtol=tol, atol=tol)
    np.testing.assert_allclose(numba_logits, logits, rtol=tol, atol=tol)


def options(B):
    """sample_streams's per-stream temperature, top_k, top_p: plain sampling for B streams."""
    return np.ones(B), np.zeros(B, np.int64), np.ones(B)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,layers", MODELS)
def test_a_stream_among_many_has_the_bits_it_has_alone(cell, layers, dtype):
    """The state and logits of each of 9 streams generated together (on 1 and on 2 threads; 9 = two blocks of
    four rows and one row alone) are bit for bit those of the same stream generated alone."""
    from fastrnn.kernels import backend
    from fastrnn.kernels.sample import sample_streams

    model = random_model(cell, layers, dtype, H=33)
    P, rng, B, n = model.P, np.random.default_rng(6), 9, 40
    h = (rng.standard_normal((B, model.state_size)) * 0.5).astype(dtype)
    logits = rng.standard_normal((B, model.vocab_size)).astype(dtype)
    uniforms = rng.random((B, n))
    results = []
    for groups in (1, 2):
        state, lg, out = sample_state(model, h), logits.copy(), np.empty((B, n), np.int32)
        sample_streams(out, state, lg, uniforms, *backend.sample_params(P), *options(B), False, groups)
        results.append((state, lg, out))
    for b in range(B):
        state, lg, out = sample_state(model, h[b:b + 1]), logits[b:b + 1].copy(), np.empty((1, n), np.int32)
        sample_streams(out, state, lg, uniforms[b:b + 1], *backend.sample_params(P), *options(1), False, 1)
        for together in results:
            assert (together[2][b] == out[0]).all()
            assert together[0][b].tobytes() == state[0].tobytes(), b
            assert together[1][b].tobytes() == lg[0].tobytes(), b


@pytest.mark.parametrize("cell", ["rnn", "lstm", "lnlstm"])
def test_advance_streams_with_options_per_stream(cell):
    """advance_streams with one temperature, top-k and top-p per stream: each of 5 streams advanced together (in
    two calls) gives the tokens it gives alone with its own options, on both backends, and the numba tokens are
    the reference's (float64); a list of the wrong length is an error."""
    from fastrnn.kernels import backend as numba_backend

    model = random_model(cell, 2, np.float64)
    P, rng, B = model.P, np.random.default_rng(8), 5
    h = (rng.standard_normal((B, model.state_size)) * 0.5)  # (B, S)
    logits = rng.standard_normal((B, model.vocab_size))  # (B, V)
    temperature, top_k, top_p = [0.7, 1.0, 1.5, 0.9, 1.0], [0, 4, 0, 2, 99], [1.0, 1.0, 0.6, 1.0, 0.8]
    got = {}
    for name, be in (("numpy", ref), ("numba", numba_backend)):
        hh, lg, rngs = h.copy(), logits.copy(), [np.random.default_rng(b) for b in range(B)]
        together = np.concatenate([be.advance_streams(P, hh, lg, n, temperature, top_k, top_p, False, rngs)
                                   for n in (17, 23)], axis=1)
        for b in range(B):
            alone = be.advance_streams(P, h[b:b + 1].copy(), logits[b:b + 1].copy(), 40, temperature[b], top_k[b],
                                       top_p[b], False, [np.random.default_rng(b)])
            assert (alone[0] == together[b]).all(), (name, b)
        got[name] = together
        with pytest.raises(ValueError, match="temperature"):
            be.advance_streams(P, h.copy(), logits.copy(), 3, [1.0, 1.0], 0, 1.0, False, None)
    assert (got["numpy"] == got["numba"]).all()
    assert len(set(got["numba"][2].tolist())) > len(set(got["numba"][3].tolist()))  # top-k 2 keeps 2 symbols


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_generate_many_equals_samples_drawn_alone(backend_name):
    """generate_many: sample i of 5 drawn together is generate() with seed + i, token for token; the numba
    samples equal the reference's (float64)."""
    from fastrnn.corpus import Vocab
    from fastrnn.model import get_backend

    model = random_model("lstm", 2, np.float64)
    vocab = Vocab(range(60, 60 + model.vocab_size))
    be = get_backend(backend_name)
    opts = dict(prime="ABC", length=70, temperature=0.9, top_p=0.95, dtype=np.float64)
    blocks = list(gen.generate_many(be, model.P, vocab, count=5, seed=11, chunk=32, **opts))
    assert [blk.shape for blk in blocks] == [(5, 32), (5, 32), (5, 6)]
    together = np.concatenate(blocks, axis=1)
    for i in range(5):
        alone = list(gen.generate(be, model.P, vocab, rng=np.random.default_rng(11 + i), **opts))
        assert together[i].tolist() == alone, i
    assert len({tuple(row) for row in together.tolist()}) == 5
    if backend_name == "numba":
        expect = np.concatenate(list(gen.generate_many(ref, model.P, vocab, count=5, seed=11, **opts)), axis=1)
        assert (together == expect).all()
    with pytest.raises(ConfigError):
        next(gen.generate_many(be, model.P, vocab, count=0))


def test_api_next_probs(fitted):
    probs = fitted.next_probs("The ", k=3)
    assert len(probs) == 3 and probs[0][1] >= probs[1][1] >= probs[2][1]
    everything = fitted.next_probs("The ")
    assert len(everything) == fitted.vocab.size and abs(sum(p for _, p in everything) - 1) < 1e-9
    assert everything[:3] == probs


def test_api_generate_many(fitted):
    texts = fitted.generate_many(3, "The ", 40, seed=4)
    assert texts == [fitted.generate("The ", 40, seed=4 + i) for i in range(3)]


def test_text_stream_decodes_blocks_and_stops():
    """TextStream: bytes of a UTF-8 character split over two blocks come out whole; the text stops after the
    marker, even when the marker spans blocks."""
    from fastrnn.corpus import Vocab

    vocab = Vocab(range(256), level="byte")
    data = np.frombuffer("héllo wörld".encode(), dtype=np.uint8).astype(np.int32)
    stream = gen.TextStream(vocab)
    assert stream.feed(data[:2]) + stream.feed(data[2:]) + stream.finish() == "héllo wörld"
    chars = Vocab([ord(c) for c in "abcdefgh "])
    stream = gen.TextStream(chars, stop_at="cd")
    ids = chars.encode("abc dabcdefg")
    pieces = [stream.feed(ids[i:i + 3]) for i in range(0, len(ids), 3)]
    assert "".join(pieces) == "abc dabcd" and stream.done


def test_the_api_refuses_sampling_options_beside_a_beam_as_the_cli_does(tmp_path):
    model = CharRNN(hidden_size=16, seq_len=10, batch_size=4, backend="numpy", eval_every=0, max_steps=2)
    model.fit(text=make_text(2000))
    with pytest.raises(ConfigError, match="--greedy has no effect with --beam-width"):
        model.generate("a", 5, greedy=True, beam_width=3)
    with pytest.raises(ConfigError, match="--top-k, --temperature have no effect with --beam-width"):
        model.generate("a", 5, top_k=3, temperature=0.5, beam_width=3)
    assert model.generate("a", 5, beam_width=3).startswith("a")
