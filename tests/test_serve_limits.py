"""`fastrnn serve` holds up: what a probe of the server found (issue 29), each tried again here over raw sockets on
127.0.0.1 (request smuggling, timeouts, connection limits, inputs that crashed a handler, other methods, clients
that go away, signals)."""

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from fastrnn.cli import main
from fastrnn.serve import Generator, make_server


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("limits") / "run"
    r = run("train", small_corpus, "-o", d, "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4",
            "--max-steps", "20")
    assert r.exit_code == 0, r.output
    return d


def start(generator, **limits):
    srv = make_server(generator, "127.0.0.1", 0, **limits)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def server(trained):
    generator = Generator(str(trained), max_length=500, max_body=200_000, max_pending=2, max_batch=2)
    srv = start(generator, timeout=1.0, max_connections=6)
    yield srv
    srv.shutdown()
    srv.server_close()


def connect(srv):
    return socket.create_connection(srv.server_address[:2], timeout=10)


def exchange(srv, raw, wait=10.0):
    """Send raw bytes, read until the server closes the connection (or `wait` s): (all it sent, closed?)."""
    sock = connect(srv)
    sock.sendall(raw)
    data, closed, deadline = b"", False, time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        except ConnectionResetError:
            closed = True
            break
        if not got:
            closed = True
            break
        data += got
    sock.close()
    return data, closed


def statuses(data):
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


GENERATE = (b'POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n'
            b'{"length": 20}')


def test_a_body_the_server_does_not_read_is_never_run_as_the_next_request(server):
    # 404 and 405 paths, with a complete /generate request as their body
    for head in (b"POST /nosuch HTTP/1.1\r\nHost: x\r\n", b"POST /health HTTP/1.1\r\nHost: x\r\n",
                 b"GET /health HTTP/1.1\r\nHost: x\r\n"):
        data, closed = exchange(server, head + b"Content-Length: %d\r\n\r\n" % len(GENERATE) + GENERATE)
        assert len(statuses(data)) == 1 and closed, data
        assert statuses(data)[0] in (200, 404, 405) and b'"text"' not in data
    # a chunked body (refused: 411) whose chunk is a request
    chunk = b"%X\r\n" % len(GENERATE) + GENERATE + b"\r\n0\r\n\r\n"
    data, closed = exchange(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + chunk)
    assert statuses(data) == [411] and closed and b"chunked" in data
    # a Content-Length and a Transfer-Encoding; two Content-Lengths; one that is not plain digits
    for headers in (b"Transfer-Encoding: chunked\r\nContent-Length: 14\r\n",
                    b"Content-Length: 14\r\nContent-Length: 0\r\n", b"Content-Length: +14\r\n",
                    b"Content-Length: 1_4\r\n", b"Content-Length: 14, 14\r\n"):
        data, closed = exchange(server, b"POST /generate HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
                                + b'{"length": 20}' + GENERATE)
        assert statuses(data) == [400] and closed, (headers, data)
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    # a body over the limit
    data, closed = exchange(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n" + GENERATE)
    assert statuses(data) == [413] and closed
    # a bad request whose body was read keeps the connection: the next request on it is answered
    bad = b'{"length": -1}'
    data, _ = exchange(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(bad) + bad
                       + GENERATE, wait=3)
    assert statuses(data) == [400, 200]


def test_a_client_has_a_bounded_time_to_send_its_request(server):
    def closed_after(raw, trickle=None):
        sock = connect(server)
        t0 = time.monotonic()
        sock.sendall(raw)
        sock.settimeout(0.2)
        while time.monotonic() - t0 < 8:
            if trickle:  # a byte every 0.2 s: each read makes progress, the request never ends
                try:
                    sock.sendall(trickle)
                except OSError:
                    break
            try:
                if sock.recv(1024) == b"":
                    break
            except (TimeoutError, socket.timeout):
                continue
            except ConnectionResetError:
                break
        sock.close()
        return time.monotonic() - t0

    assert closed_after(b"") < 3  # idle (the server's timeout is 1 s)
    assert closed_after(b"POST /generate HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"len") < 3  # a short body
    assert closed_after(b"GET /health HTTP/1.1\r\n", trickle=b"X") < 3  # headers sent a byte at a time
    assert http.client.HTTPConnection(*server.server_address[:2], timeout=10).request("GET", "/health") is None


def test_past_the_connection_limit_idle_connections_make_room_and_busy_ones_get_503(trained):
    srv = start(Generator(str(trained), max_length=100), timeout=20.0, max_connections=6)  # (no deadline comes)
    try:
        idle = [connect(srv) for _ in range(6)]  # the limit, each waiting
        time.sleep(0.2)
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200  # in the place of the longest idle one
        conn.close()
        busy = []
        for _ in range(6):  # connections in the middle of a request are not idle: each takes an idle one's place
            s = connect(srv)
            s.sendall(b"GET /health HTTP/1.1\r\n")
            busy.append(s)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and sum(since is None for _, since in srv.connections.values()) \
                    < len(busy):
                time.sleep(0.02)
        data, closed = exchange(srv, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait=5)
        assert statuses(data) == [503] and closed and b"too many connections" in data
        assert srv.evicted >= 2 and srv.refused == 1
        for s in idle + busy:
            s.close()
        deadline = time.monotonic() + 10
        while srv.connections and time.monotonic() < deadline:  # (their threads end; every place is free again)
            time.sleep(0.05)
        assert not srv.connections
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("body,fragment", [
    (b'{"temperature": 1' + b"0" * 400 + b"}", "temperature is out of range"),
    (b'{"top_p": 1' + b"0" * 400 + b"}", "top_p is out of range"),
    (b'{"top_k": 1' + b"0" * 400 + b', "length": 3}', None),  # (any k at least the vocabulary: all of it)
    (b'{"seed": 1' + b"0" * 400 + b"}", "seed must be in"),
    (b'{"length": 1' + b"0" * 4400 + b"}", "not JSON"),  # (past Python's 4300 digits)
    (b"[" * 50_000 + b"]" * 50_000, "nested too deep"),
    (b'{"prime": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deep"),
])
def test_inputs_that_crashed_a_handler_get_a_400(server, body, fragment):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request("POST", "/generate", body=body)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    if fragment is None:
        assert resp.status == 200 and len(data["text"]) == 3
    else:
        assert resp.status == 400 and fragment in data["error"], data


def test_a_tiny_temperature_gives_the_most_probable_text(server, trained):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    conn.request("POST", "/generate", body=b'{"prime": "The ", "length": 40, "temperature": 1e-320, "seed": 1}')
    text = json.loads(conn.getresponse().read())["text"]
    conn.close()
    greedy = run("sample", trained, "--prime", "The ", "--length", "40", "--greedy")
    assert text + "\n" == greedy.stdout
    assert run("sample", trained, "--prime", "The ", "--length", "40", "--temperature", "1e-320",
               "--seed", "1").stdout == greedy.stdout


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_get_405_and_a_json_error(server, method):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request(method, "/generate")
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 405 and resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("Allow") == "GET, POST"
    if method == "HEAD":
        assert data == b""
    else:
        assert method in json.loads(data)["error"]


def test_a_request_line_or_headers_over_the_limit_get_a_json_error(server):
    data, closed = exchange(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert statuses(data) == [414] and closed and b'"error"' in data
    data, closed = exchange(server, b"GET /health HTTP/1.1\r\n" + b"X-A: " + b"b" * 900 + b"\r\n" * 1
                            + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 900) for i in range(20)) + b"\r\n")
    assert statuses(data) == [431] and closed and b'"error"' in data


def test_a_client_that_stops_reading_does_not_hold_up_the_others(server):
    quiet = connect(server)
    quiet.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    body = b'{"length": 500, "seed": 1, "stream": true}'
    quiet.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    t0 = time.monotonic()
    for seed in range(3):
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        conn.request("POST", "/generate", body=json.dumps({"length": 300, "seed": seed}).encode())
        assert len(json.loads(conn.getresponse().read())["text"]) == 300
        conn.close()
    assert time.monotonic() - t0 < 20
    quiet.close()


def serve_command(trained, *extra):
    proc = subprocess.Popen([sys.executable, "-m", "fastrnn", "serve", str(trained), "--port", "0", *extra],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = proc.stderr.readline()
        lines.append(line)
        if "serving" in line or not line:
            break
    assert "serving" in line, lines
    host, port = line.split("http://")[1].split()[0].rstrip("/").rsplit(":", 1)
    return proc, ("127.0.0.1", int(port)), lines


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_clients_going_away_print_nothing_and_a_signal_ends_the_server_in_one_line(trained, signum, status):
    proc, address, _ = serve_command(trained)
    try:
        for _ in range(3):
            s = socket.create_connection(address, timeout=10)  # streaming, closed after the first chunk
            body = b'{"length": 2000, "stream": true}'
            s.sendall(b"POST /generate HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # a reset
            s.close()
            s = socket.create_connection(address, timeout=10)  # half a request, then gone
            s.sendall(b"POST /generate HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
            s.close()
            s = socket.create_connection(address, timeout=10)  # a whole response never read
            s.sendall(b"POST /generate HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"length\": 900}")
            s.close()
        conn = http.client.HTTPConnection(*address, timeout=30)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
        time.sleep(0.5)
    finally:
        proc.send_signal(signum)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == status
    assert rest.strip().splitlines() == ["fastrnn: interrupted"], rest


def test_listening_beyond_this_machine_is_warned_of(trained):
    proc, address, lines = serve_command(trained, "--host", "0.0.0.0")
    try:
        assert lines[0].startswith("fastrnn: warning: listening on 0.0.0.0") and "no authentication" in lines[0]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    proc, address, lines = serve_command(trained, "--host", "127.0.0.1")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert len(lines) == 1 and "warning" not in lines[0]
