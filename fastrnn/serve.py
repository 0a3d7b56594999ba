"""`fastrnn serve`: a model loaded once, answering generation requests over HTTP (JSON in, JSON or streamed text out).

    GET  /health     {"status": "ok", "model": {...}, "limits": {...}}
    POST /generate   {"prime": "", "length": 200, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": null,
                      "stream": false}
                     -> {"text": prime + sample, "seed": the seed used, "length": characters generated}
                     or, with "stream": true, the text itself (text/plain, chunked), prime first, as it is generated

Bad requests get a 4xx status and {"error": "..."}: 400 (not JSON, unknown or mistyped fields, values out of
range, characters outside the vocabulary), 404 (path), 405 (method), 411/413 (body missing or over the limit).
Generation runs one request at a time (the model is shared); up to `max_pending` more wait, beyond that 503.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from fastrnn.errors import FastrnnError

FIELDS = {"prime": str, "length": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
          "seed": (int, type(None)), "stream": bool}


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Generator:
    """The loaded model and the request limits."""

    def __init__(self, model_path, backend="numba", max_length=10_000, max_body=65_536, max_pending=4):
        from fastrnn.api import load_model
        from fastrnn.model import get_backend

        self.model, self.vocab, ckpt = load_model(model_path)
        if not np.all(np.isfinite(self.model.flat)):
            raise FastrnnError(f"{ckpt.path} holds non-finite parameters (a diverged run); nothing to serve")
        self.backend = get_backend(backend)
        self.path = ckpt.path
        self.warmup = ckpt.state.get("warmup")  # an unprimed sample starts from a state warmed on real text
        self.max_length, self.max_body = int(max_length), int(max_body)
        self.lock = threading.Lock()  # one generation at a time
        self.slots = threading.BoundedSemaphore(int(max_pending) + 1)  # running + waiting

    def info(self):
        cell, layers, H = self.model.model, self.model.num_layers, self.model.hidden_size
        return {"checkpoint": self.path, "cell": cell, "num_layers": layers, "hidden_size": H,
                "vocab_size": self.vocab.size}

    def parse(self, body):
        """The request's options, checked (BadRequest otherwise)."""
        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(400, "the body is not JSON") from None
        if not isinstance(req, dict):
            raise BadRequest(400, "the body must be a JSON object")
        unknown = sorted(set(req) - set(FIELDS))
        if unknown:
            raise BadRequest(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
        for name, value in req.items():
            if not isinstance(value, FIELDS[name]) or (isinstance(value, bool) and name != "stream"):
                raise BadRequest(400, f"{name} has the wrong type ({type(value).__name__})")
        opts = dict(prime="", length=200, temperature=1.0, top_k=0, top_p=1.0, seed=None, stream=False)
        opts.update(req)
        if not 0 <= opts["length"] <= self.max_length:
            raise BadRequest(400, f"length must be in [0, {self.max_length}], got {opts['length']}")
        if len(opts["prime"]) > self.max_length:
            raise BadRequest(400, f"prime is longer than {self.max_length} characters")
        if not (np.isfinite(opts["temperature"]) and opts["temperature"] > 0):
            raise BadRequest(400, f"temperature must be a positive number, got {opts['temperature']}")
        if opts["top_k"] < 0:
            raise BadRequest(400, f"top_k must be >= 0, got {opts['top_k']}")
        if not (np.isfinite(opts["top_p"]) and 0 < opts["top_p"] <= 1):
            raise BadRequest(400, f"top_p must be in (0, 1], got {opts['top_p']}")
        if opts["seed"] is not None and not 0 <= opts["seed"] < 2**63:
            raise BadRequest(400, f"seed must be in [0, 2^63), got {opts['seed']}")
        if opts["seed"] is None:
            opts["seed"] = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
        try:
            self.vocab.encode(opts["prime"])
        except FastrnnError as exc:
            raise BadRequest(400, f"prime: {exc}") from None
        return opts

    def pieces(self, opts):
        """Text pieces of the sample (not the prime), as they are generated."""
        from fastrnn import sample as gen

        stream = gen.TextStream(self.vocab)
        for block in gen.generate_many(self.backend, self.model.P, self.vocab, count=1, prime=opts["prime"],
                                       length=opts["length"], temperature=float(opts["temperature"]),
                                       top_k=opts["top_k"], top_p=float(opts["top_p"]), seed=opts["seed"],
                                       dtype=self.model.dtype, warmup=self.warmup):
            piece = stream.feed(block[0])
            if piece:
                yield piece
        tail = stream.finish()
        if tail:
            yield tail


def handler_class(generator):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fastrnn"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the CLI prints one line per request itself
            pass

        def _json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status, message):
            self._json(status, {"error": message})

        def do_GET(self):
            if self.path == "/health":
                self._json(200, {"status": "ok", "model": generator.info(),
                                 "limits": {"max_length": generator.max_length, "max_body": generator.max_body}})
            elif self.path == "/generate":
                self._error(405, "use POST for /generate")
            else:
                self._error(404, f"no such path {self.path}; POST /generate or GET /health")

        def do_POST(self):
            if self.path != "/generate":
                self._error(404 if self.path != "/health" else 405, f"no POST at {self.path}; POST /generate")
                return
            length = self.headers.get("Content-Length")
            if length is None:
                self._error(411, "a Content-Length is required")
                return
            try:
                length = int(length)
            except ValueError:
                self._error(400, "Content-Length is not a number")
                return
            if length < 0 or length > generator.max_body:
                self._error(413, f"the body is over {generator.max_body} bytes")
                self.close_connection = True
                return
            body = self.rfile.read(length)
            try:
                opts = generator.parse(body)
            except BadRequest as exc:
                self._error(exc.status, str(exc))
                return
            if not generator.slots.acquire(blocking=False):
                self._error(503, "too many requests at once; try again")
                return
            try:
                with generator.lock:
                    self._generate(opts)
            finally:
                generator.slots.release()

        def _generate(self, opts):
            if not opts["stream"]:
                text = "".join(generator.pieces(opts))
                self._json(200, {"text": opts["prime"] + text, "seed": opts["seed"], "length": opts["length"]})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Seed", str(opts["seed"]))
            self.end_headers()
            try:
                if opts["prime"]:
                    self._chunk(opts["prime"])
                for piece in generator.pieces(opts):
                    self._chunk(piece)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client went away: stop generating for it

        def _chunk(self, text):
            data = text.encode("utf-8")
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


def make_server(generator, host="127.0.0.1", port=8000):
    """A ThreadingHTTPServer for `generator` (port 0: any free port; server.server_address says which)."""
    server = ThreadingHTTPServer((host, port), handler_class(generator))
    server.daemon_threads = True
    return server
