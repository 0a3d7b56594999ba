"""`fastrnn serve`: real HTTP requests to a server started here."""

import http.client
import json
import signal
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from fastrnn.cli import main
from fastrnn.serve import Generator, make_server


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve") / "run"
    r = run("train", small_corpus, "-o", d, "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4",
            "--max-steps", "20")
    assert r.exit_code == 0, r.output
    return d


@pytest.fixture(scope="module")
def server(trained):
    generator = Generator(str(trained), max_length=500, max_body=1000, max_pending=2, max_batch=2)
    srv = make_server(generator, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, generator
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def test_generate_equals_fastrnn_sample_with_the_same_seed(server, trained):
    srv, _ = server
    status, headers, body = request(srv, "POST", "/generate", {"prime": "The ", "length": 60, "seed": 4})
    assert status == 200 and headers["Content-Type"] == "application/json"
    got = json.loads(body)
    cli = run("sample", trained, "--prime", "The ", "--length", "60", "--seed", "4")
    assert got["text"] + "\n" == cli.stdout and got["seed"] == 4
    other = json.loads(request(srv, "POST", "/generate", {"prime": "The ", "length": 60, "seed": 5})[2])
    assert other["text"] != got["text"]
    drawn = json.loads(request(srv, "POST", "/generate", {"length": 20})[2])  # no seed: a fresh one, reported
    assert isinstance(drawn["seed"], int) and len(drawn["text"]) == 20


def test_streaming_sends_the_text_in_chunks_as_it_is_generated(server):
    srv, _ = server
    status, headers, body = request(srv, "POST", "/generate", {"prime": "The ", "length": 300, "seed": 4,
                                                                "stream": True})
    assert status == 200 and headers["Transfer-Encoding"] == "chunked" and headers["X-Seed"] == "4"
    whole = json.loads(request(srv, "POST", "/generate", {"prime": "The ", "length": 300, "seed": 4})[2])["text"]
    assert body.decode() == whole
    # the chunks arrive one by one: read the raw stream
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    conn.request("POST", "/generate", body=json.dumps({"length": 300, "seed": 1, "stream": True}).encode())
    resp = conn.getresponse()
    first = resp.read1(65536)
    rest = resp.read()
    conn.close()
    assert first and rest and len(first.decode()) < 300


@pytest.mark.parametrize("method,path,body,status,fragment", [
    ("POST", "/generate", b"not json", 400, "not JSON"),
    ("POST", "/generate", b"[1, 2]", 400, "JSON object"),
    ("POST", "/generate", {"lenght": 5}, 400, "unknown field 'lenght'"),
    ("POST", "/generate", {"length": "5"}, 400, "wrong type"),
    ("POST", "/generate", {"length": True}, 400, "wrong type"),
    ("POST", "/generate", {"length": -1}, 400, "length"),
    ("POST", "/generate", {"length": 501}, 400, "length"),
    ("POST", "/generate", {"temperature": 0}, 400, "temperature"),
    ("POST", "/generate", {"top_p": 1.5}, 400, "top_p"),
    ("POST", "/generate", {"top_k": -2}, 400, "top_k"),
    ("POST", "/generate", {"seed": -1}, 400, "seed"),
    ("POST", "/generate", {"prime": "Zebra\u2603"}, 400, "vocabulary"),
    ("POST", "/generate", {"prime": "x" * 600}, 400, "prime"),
    ("POST", "/generate", b"{" + b" " * 2000 + b"}", 413, "over 1000 bytes"),
    ("GET", "/generate", None, 405, "POST"),
    ("POST", "/health", b"{}", 405, "use GET for /health"),
    ("GET", "/nowhere", None, 404, "no such path"),
])
def test_bad_requests_get_a_4xx_and_a_reason(server, method, path, body, status, fragment):
    srv, _ = server
    got, headers, data = request(srv, method, path, body)
    assert got == status, data
    assert fragment in json.loads(data)["error"]


def test_busy_server_answers_503_and_health_reports_the_model(server):
    srv, generator = server
    status, _, body = request(srv, "GET", "/health")
    info = json.loads(body)
    assert status == 200 and info["model"]["hidden_size"] == 16 and info["limits"]["max_length"] == 500
    held = 0
    while generator.slots.acquire(blocking=False):  # max_batch=2 generating and max_pending=2 waiting: all four
        held += 1
    try:
        assert held == 4
        status, _, body = request(srv, "POST", "/generate", {"length": 5})
        assert status == 503 and "too many" in json.loads(body)["error"]
    finally:
        for _ in range(held):
            generator.slots.release()
    assert request(srv, "POST", "/generate", {"length": 5})[0] == 200


def alone(trained, prime, length, seed, temperature=1.0, top_k=0, top_p=1.0):
    r = run("sample", trained, "--prime", prime, "--length", length, "--seed", seed, "--temperature", temperature,
            "--top-k", top_k, "--top-p", top_p)
    assert r.exit_code == 0, r.output
    return r.stdout[:-1]  # (its newline)


def test_requests_waiting_together_are_generated_in_one_batch_each_as_drawn_alone(trained):
    generator = Generator(str(trained), max_length=500, max_batch=8)
    opts = [dict(prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
            for prime, length, temperature, top_k, top_p, seed in [
                ("The ", 150, 1.0, 0, 1.0, 1), ("", 70, 1.0, 0, 1.0, 2), ("And", 0, 1.0, 0, 1.0, 3),
                ("The ", 150, 1.0, 0, 1.0, 4), ("Th", 90, 0.5, 0, 1.0, 5), ("A", 80, 1.2, 5, 1.0, 6),
                ("A", 80, 0.9, 0, 0.7, 7), ("A", 60, 1.0, 1000, 1.0, 8)]]
    with generator.ready:  # the generating thread waits: all of them are queued before a batch starts
        requests = [generator.submit(o) for o in opts]
    texts = ["".join(generator.text(r)) for r in requests]
    assert (generator.batches, generator.widest) == (1, 7)  # each with its own sampling options, in one batch;
    # the length-0 request is done without a stream
    for o, text in zip(opts, texts):
        assert len(text) == o["length"]
        assert o["prime"] + text == alone(trained, o["prime"], o["length"], o["seed"], o["temperature"], o["top_k"],
                                          o["top_p"])
    assert texts[0] != texts[3]  # the same prime, another seed


def test_a_request_joins_the_batch_that_is_running(trained, monkeypatch):
    generator = Generator(str(trained), max_length=500, max_batch=8)
    real, ran, go = generator.backend, threading.Event(), threading.Event()

    class Held:  # the batch's first run done, it waits until the second request is queued
        step = staticmethod(real.step)

        def advance_streams(self, *args):
            block = real.advance_streams(*args)
            if not ran.is_set():
                ran.set()
                go.wait(30)
            return block

    monkeypatch.setattr(generator, "backend", Held())
    first = generator.submit(dict(prime="The ", length=300, temperature=1.0, top_k=0, top_p=1.0, seed=1))
    assert ran.wait(30)
    second = generator.submit(dict(prime="", length=100, temperature=0.8, top_k=10, top_p=0.9, seed=2))
    go.set()
    assert "".join(generator.text(second)) == alone(trained, "", 100, 2, 0.8, 10, 0.9)
    assert "The " + "".join(generator.text(first)) == alone(trained, "The ", 300, 1)
    assert (generator.batches, generator.widest) == (1, 2)  # it joined the running batch (other options too)


def test_a_client_that_goes_away_leaves_its_batch_and_the_others_get_their_text(trained):
    generator = Generator(str(trained), max_length=500, max_batch=8)
    opts = [dict(prime="", length=length, temperature=1.0, top_k=0, top_p=1.0, seed=seed)
            for length, seed in ((500, 1), (130, 2))]
    with generator.ready:
        gone, stays = (generator.submit(o) for o in opts)
    pieces = generator.text(gone)
    assert next(pieces)
    pieces.close()  # as the handler does when the client's connection breaks
    assert gone.cancelled
    assert "".join(generator.text(stays)) == alone(trained, "", 130, 2)
    assert "".join(generator.pieces(dict(opts[0], length=40, seed=3))) == alone(trained, "", 40, 3)


def test_a_failed_generation_is_a_500_and_the_next_request_is_served(trained, monkeypatch):
    generator = Generator(str(trained), max_length=500)
    srv = make_server(generator, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        real = generator.backend

        class Broken:
            step = staticmethod(real.step)

            def advance_streams(self, *args):
                raise RuntimeError("the kernel broke")

        monkeypatch.setattr(generator, "backend", Broken())
        status, _, body = request(srv, "POST", "/generate", {"length": 5})
        assert status == 500 and "generation failed: the kernel broke" in json.loads(body)["error"]
        monkeypatch.setattr(generator, "backend", real)
        assert request(srv, "POST", "/generate", {"length": 5})[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_concurrent_http_requests_each_get_their_own_sample(server, trained):
    srv, _ = server
    results = {}

    def client(seed):
        body = {"prime": "The ", "length": 120, "seed": seed, "stream": seed % 2 == 0}
        status, _, data = request(srv, "POST", "/generate", body)
        results[seed] = (status, data.decode() if body["stream"] else json.loads(data)["text"])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(10, 14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for seed in range(10, 14):
        assert results[seed] == (200, alone(trained, "The ", 120, seed)), seed


def test_the_command_serves_until_sigterm(trained):
    proc = subprocess.Popen([sys.executable, "-m", "fastrnn", "serve", str(trained), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line
        host, port = line.split("http://")[1].split()[0].rstrip("/").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/generate", body=b'{"length": 10, "seed": 2}')
        assert json.loads(conn.getresponse().read())["seed"] == 2
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 143 and "Traceback" not in rest  # 128 + SIGTERM, as every command
    assert rest.strip().splitlines()[-1] == "fastrnn: interrupted"


def test_serve_refuses_a_port_in_use_in_one_line(trained, server):
    srv, _ = server
    r = run("serve", trained, "--port", srv.server_address[1])
    assert r.exit_code == 1 and r.stderr.strip().startswith("fastrnn: error: cannot listen")


def test_an_lnlstm_is_served_each_request_as_drawn_alone(small_corpus, tmp_path):
    """A stacked lnlstm (h and c per layer): requests generated together in one batch are each `fastrnn sample`'s
    text with the same seed, and its description offers both states."""
    d = tmp_path / "run"
    r = run("train", small_corpus, "-o", d, "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4",
            "--model", "lnlstm", "--num-layers", "2", "--max-steps", "20")
    assert r.exit_code == 0, r.output
    generator = Generator(str(d), max_length=500, max_batch=4)
    assert generator.describe()["states"] == ["h", "c"] and generator.info()["cell"] == "lnlstm"
    opts = [dict(prime=prime, length=60, temperature=1.0, top_k=0, top_p=1.0, seed=seed)
            for prime, seed in (("The ", 1), ("", 2), ("A", 3))]
    with generator.ready:  # the generating thread waits: all of them are queued before a batch starts
        requests = [generator.submit(o) for o in opts]
    texts = ["".join(generator.text(r)) for r in requests]
    assert generator.widest == 3
    for o, text in zip(opts, texts):
        assert o["prime"] + text == alone(d, o["prime"], 60, o["seed"])
