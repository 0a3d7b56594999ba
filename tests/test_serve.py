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
    generator = Generator(str(trained), max_length=500, max_body=1000, max_pending=2)
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
    ("POST", "/health", b"{}", 405, "POST /generate"),
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
    while generator.slots.acquire(blocking=False):  # one running and max_pending=2 waiting: hold all three
        held += 1
    try:
        assert held == 3
        status, _, body = request(srv, "POST", "/generate", {"length": 5})
        assert status == 503 and "too many" in json.loads(body)["error"]
    finally:
        for _ in range(held):
            generator.slots.release()
    assert request(srv, "POST", "/generate", {"length": 5})[0] == 200


def test_the_command_serves_until_sigterm(trained):
    proc = subprocess.Popen([sys.executable, "-m", "fastrnn", "serve", str(trained), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line
        host, port = line.split("http://")[1].split()[0].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/generate", body=b'{"length": 10, "seed": 2}')
        assert json.loads(conn.getresponse().read())["seed"] == 2
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0 and "Traceback" not in rest


def test_serve_refuses_a_port_in_use_in_one_line(trained, server):
    srv, _ = server
    r = run("serve", trained, "--port", srv.server_address[1])
    assert r.exit_code == 1 and r.stderr.strip().startswith("fastrnn: error: cannot listen")
