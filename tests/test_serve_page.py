"""`fastrnn serve`'s page and the endpoints it uses: GET /, GET /model, POST /activations, POST /ranking."""

import http.client
import json
import re
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from fastrnn.api import load_model
from fastrnn.cli import main
from fastrnn.neurons import Inspector, correlations, feature_values, hidden_states
from fastrnn.plots import hidden_activations
from fastrnn.serve import Generator, make_server

from conftest import make_text


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def quoted_corpus(tmp_path_factory):
    """Simple text with quotes and brackets (for the ranking's features), prepared."""
    d = tmp_path_factory.mktemp("quoted")
    lines = make_text(30_000).splitlines()
    marked = [f'"{line}"' if i % 3 == 0 else f"{line} ({line[:10]})" if i % 3 == 1 else line
              for i, line in enumerate(lines)]
    (d / "quoted.txt").write_text("\n".join(marked) + "\n")
    r = run("prepare", d / "quoted.txt", "--output", d / "quoted.h5")
    assert r.exit_code == 0, r.output
    return d / "quoted.h5"


@pytest.fixture(scope="module")
def lstm_run(quoted_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("page") / "run"
    r = run("train", quoted_corpus, "-o", d, "--model", "lstm", "--num-layers", "2", "--hidden-size", "12",
            "--seq-len", "10", "--batch-size", "4", "--max-steps", "20", "--eval-every", "10")
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture(scope="module")
def server(lstm_run):
    generator = Generator(str(lstm_run), max_length=500, max_body=100_000)
    inspector = Inspector(generator.model, generator.vocab, generator.ckpt, max_values=20_000)
    srv = make_server(generator, "127.0.0.1", 0, timeout=10, inspector=inspector)
    srv.inspector = inspector
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def call(srv, method, path, body=None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    conn.request(method, path, body=None if body is None else json.dumps(body).encode())
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), data


def test_the_page_is_served_whole_and_needs_nothing_from_elsewhere(server):
    status, kind, page = call(server, "GET", "/?prime=The&seed=1&unit=3")
    assert status == 200 and kind == "text/html; charset=utf-8"
    html = page.decode()
    for endpoint in ("/model", "/generate", "/activations", "/ranking"):
        assert f'"{endpoint}"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no CDN, no other site
    assert not re.search(r"https?://", html.split("<script>", 1)[1])


def test_model_describes_the_model_and_its_run(server, lstm_run):
    status, _, data = call(server, "GET", "/model")
    d = json.loads(data)
    _, vocab, ckpt = load_model(str(lstm_run))
    assert status == 200
    assert (d["cell"], d["num_layers"], d["hidden_size"], d["vocab_size"]) == ("lstm", 2, 12, vocab.size)
    assert d["vocab"] == vocab.symbols and d["states"] == ["h", "c"] and d["run"] == "run"
    assert d["step"] == 20 and d["val_loss"] == pytest.approx(ckpt.state["best_val"]) and d["corpus"] == "quoted.h5"


def test_activations_are_the_hidden_states_of_the_text(server, lstm_run):
    model, vocab, _ = load_model(str(lstm_run))
    text = 'The cat "sat" (on) the mat.\nA dog'
    status, _, data = call(server, "POST", "/activations", {"text": text, "layer": 0, "units": [3, 0, 11]})
    got = json.loads(data)
    assert status == 200 and got["tokens"] == list(text) and got["units"] == [3, 0, 11] and got["state"] == "h"
    want = hidden_activations(model.P, vocab, text, layer=0)[:, [3, 0, 11]].T
    np.testing.assert_allclose(got["activations"], want, atol=6e-4)
    everything = json.loads(call(server, "POST", "/activations", {"text": text, "state": "c"})[2])
    assert everything["layer"] == 1 and everything["units"] == list(range(12))
    cells = hidden_states(model.P, vocab.encode(text), layer=1, state="c")
    np.testing.assert_allclose(everything["activations"], cells.T, atol=6e-4)
    assert not np.allclose(cells, hidden_states(model.P, vocab.encode(text), layer=1, state="h"))


@pytest.mark.parametrize("body,fragment", [
    ({"text": "x" * 2001}, "longer than 2000"),
    ({"text": "The cat" * 280, "units": None}, "ask for fewer units"),  # (12 x 1960 over max_values)
    ({"text": "The", "units": [12]}, "unit 12 does not exist"),
    ({"text": "The", "units": [True]}, "units must be"),
    ({"text": "The", "units": []}, "units is empty"),
    ({"text": "The", "layer": 2}, "layer must be"),
    ({"text": "The", "state": "g"}, "state must be"),
    ({"text": "Zebra\u2603"}, "vocabulary"),
    ({"text": ""}, "text is empty"),
    ({"text": "The", "colour": 1}, "unknown field 'colour'"),
    ([1], "JSON object"),
])
def test_bad_activation_requests_get_a_400(server, body, fragment):
    status, _, data = call(server, "POST", "/activations", body)
    assert status == 400 and fragment in json.loads(data)["error"], data


def test_ranking_finds_the_units_that_track_a_property_of_the_text(server, lstm_run):
    model, vocab, _ = load_model(str(lstm_run))
    text = 'The cat "sat on" the mat. A dog (ran to it) and "it was so big".\nThe dog sat.\n' * 4
    status, _, data = call(server, "POST", "/ranking", {"text": text, "top": 3})
    got = json.loads(data)
    assert status == 200 and got["source"] == "the text given" and got["chars"] == len(text)
    names = [f["name"] for f in got["features"]]
    assert names[:3] == ["quote", "bracket", "line_position"]
    acts = hidden_states(model.P, vocab.encode(text), layer=1)
    for feature in got["features"]:
        r = correlations(acts, feature_values(text, feature["name"]))
        best = np.argsort(-np.abs(r), kind="stable")[:3]
        assert [u for u, _ in feature["units"]] == best.tolist()
        np.testing.assert_allclose([c for _, c in feature["units"]], r[best], atol=1e-4)
    assert feature_values('a "b" (c [d]) e', "bracket").tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]


def test_ranking_without_a_text_reads_the_training_corpus_or_says_why_it_cannot(server, lstm_run, tmp_path):
    status, _, data = call(server, "POST", "/ranking", {"state": "c"})
    got = json.loads(data)
    assert status == 200 and "val split of quoted.h5" in got["source"] and got["chars"] > 1000
    moved = tmp_path / "moved"
    shutil.copytree(lstm_run, moved)
    generator = Generator(str(moved))
    generator.ckpt.state["corpus"] = str(tmp_path / "gone.h5")  # the corpus is no longer where the run says
    srv = make_server(generator, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        status, _, data = call(srv, "POST", "/ranking", {})
        assert status == 400 and "give a text" in json.loads(data)["error"]
        status, _, data = call(srv, "POST", "/ranking", {"text": "ab", "top": 0})
        assert status == 400 and "top must be" in json.loads(data)["error"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_handler_that_fails_answers_500_and_says_so_in_one_line(server, monkeypatch, capfd):
    def broken(req):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.inspector, "activations", broken)
    status, _, data = call(server, "POST", "/activations", {"text": "The"})
    assert status == 500 and "RuntimeError" in json.loads(data)["error"]
    err = capfd.readouterr().err
    assert err.strip().splitlines() == ["fastrnn: serve: a request from 127.0.0.1 failed: RuntimeError: a bug"]
    monkeypatch.undo()
    assert call(server, "POST", "/activations", {"text": "The"})[0] == 200  # and the server goes on
