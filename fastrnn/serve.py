"""`fastrnn serve`: a model loaded once, answering generation requests over HTTP (JSON in, JSON or streamed text out).

    GET  /health     {"status": "ok", "model": {...}, "limits": {...}}
    POST /generate   {"prime": "", "length": 200, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": null,
                      "stream": false}
                     -> {"text": prime + sample, "seed": the seed used, "length": characters generated}
                     or, with "stream": true, the text itself (text/plain, chunked), prime first, as it is generated

Bad requests get a 4xx status and {"error": "..."}: 400 (not JSON, unknown or mistyped fields, values out of
range, characters outside the vocabulary), 404 (path), 405 (method), 411/413 (body missing or over the limit).
Requests that generate at the same time are drawn together, as `fastrnn sample --num-samples K` draws K samples:
every weight is read once per character for all of them. One thread runs the batch, 64 characters at a time
(they go out to each client as they come); between runs, requests that are done or whose client went away leave
it, and waiting ones join, first come first served, whatever their temperature, top_k and top_p (each stream
samples with its own). Each request's text is the one it would get alone, given its seed. Up to
`max_batch` requests generate at once and `max_pending` more wait; beyond that, 503.
"""

import collections
import contextlib
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from fastrnn.errors import FastrnnError

CHUNK = 64  # characters per run of the batch: what a streamed response gets at a time, and when requests join

FIELDS = {"prime": str, "length": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
          "seed": (int, type(None)), "stream": bool}


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Generator:
    """The loaded model and the request limits."""

    def __init__(self, model_path, backend="numba", max_length=10_000, max_body=65_536, max_pending=4,
                 max_batch=32):
        from fastrnn.api import load_model
        from fastrnn.model import get_backend

        self.model, self.vocab, ckpt = load_model(model_path)
        if not np.all(np.isfinite(self.model.flat)):
            raise FastrnnError(f"{ckpt.path} holds non-finite parameters (a diverged run); nothing to serve")
        self.backend = get_backend(backend)
        self.path = ckpt.path
        self.warmup = ckpt.state.get("warmup")  # an unprimed sample starts from a state warmed on real text
        self.max_length, self.max_body, self.max_batch = int(max_length), int(max_body), int(max_batch)
        if self.max_batch < 1:
            raise FastrnnError(f"max_batch must be >= 1, got {max_batch}")
        self.slots = threading.BoundedSemaphore(self.max_batch + int(max_pending))  # generating + waiting
        self.waiting = collections.deque()  # requests waiting to join the batch
        self.ready = threading.Condition()
        self.batches = 0  # batches started (from none running) so far, and the most requests one ran at once
        self.widest = 0
        self.weights = self.backend.stream_weights(self.model.P)
        self.threads = None  # numba's thread count is per thread: the generating one takes the caller's
        if backend == "numba":
            import numba

            self.threads = numba.get_num_threads()
        threading.Thread(target=self._run, name="fastrnn-generate", daemon=True).start()

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
        """Text pieces of the sample (not the prime), as they are generated; the request joins the batch.
        Closing the iterator early (the client went away) takes the request out of its batch."""
        return self.text(self.submit(opts))

    def submit(self, opts):
        """Queue a request (checked options) to join the batch; `text` reads what it gets."""
        request = _Request(opts)
        with self.ready:
            self.waiting.append(request)
            self.ready.notify()
        return request

    def text(self, request):
        from fastrnn import sample as gen

        stream = gen.TextStream(self.vocab)
        try:
            while True:
                block = request.blocks.get()
                if block is None:
                    break
                if isinstance(block, BaseException):
                    raise block
                piece = stream.feed(block)
                if piece:
                    yield piece
        finally:
            request.cancelled = True
        tail = stream.finish()
        if tail:
            yield tail

    def _run(self):
        """The generating thread: the batch's streams advance up to 64 characters at a time, each with its own
        sampling options. Between runs, finished and abandoned requests leave the batch and waiting ones join it,
        first come first served, up to max_batch."""
        if self.threads is not None:
            import numba

            numba.set_num_threads(self.threads)
        active, h, logits, rngs = [], None, None, []
        while True:
            with self.ready:
                while not active and not self.waiting:
                    self.ready.wait()
                if not active:
                    self.batches += 1
                joining = []
                while self.waiting and len(active) + len(joining) < self.max_batch:
                    joining.append(self.waiting.popleft())
            try:
                new = [r for r in joining if self._primed(r)]
                if new:
                    h = np.concatenate(([h] if active else []) + [r.start[0] for r in new])  # (B, S)
                    logits = np.concatenate(([logits] if active else []) + [r.start[1] for r in new])  # (B, V)
                    rngs, active = rngs + [np.random.default_rng(r.opts["seed"]) for r in new], active + new
                    self.widest = max(self.widest, len(active))
                if not active:
                    continue
                temperature, top_k, top_p = zip(*(r.sampling for r in active))
                top_k = [min(k, self.vocab.size) for k in top_k]  # (any JSON integer; the kernel takes int64)
                n = min(CHUNK, max(r.opts["length"] - r.done for r in active))
                block = self.backend.advance_streams(self.model.P, h, logits, n, temperature, top_k, top_p, False,
                                                     rngs, self.threads, self.weights)
            except Exception as exc:  # (a bug) told to each client of the batch, and the next batch runs
                for r in active + [r for r in joining if r not in active]:
                    r.blocks.put(FastrnnError(f"generation failed: {exc}"))
                active, rngs = [], []
                continue
            for i, r in enumerate(active):
                take = min(n, r.opts["length"] - r.done)
                r.done += take
                if r.cancelled:
                    continue
                # a streamed response gets each run's characters as they come; a whole one all of them at the end
                # (one wake-up of its thread, not one per run, which the generating thread would wait for)
                r.parts.append(block[i, :take].copy())
                if r.stream or r.done == r.opts["length"]:
                    r.blocks.put(np.concatenate(r.parts) if len(r.parts) > 1 else r.parts[0])
                    r.parts = []
                if r.done == r.opts["length"]:
                    r.blocks.put(None)
            keep = [i for i, r in enumerate(active) if not r.cancelled and r.done < r.opts["length"]]
            if len(keep) < len(active):
                h, logits = h[keep], logits[keep]  # (copies: C-contiguous, as advance_streams updates them)
                active, rngs = [active[i] for i in keep], [rngs[i] for i in keep]

    def _primed(self, request):
        """Warm a joining request's state on its prime (request.start: h, logits); False if it is already done."""
        from fastrnn import sample as gen

        if request.opts["length"] == 0 or request.cancelled:
            request.blocks.put(None)
            return False
        request.start = gen._start(self.backend, self.model.P, self.vocab, request.opts["prime"], self.model.dtype,
                                   self.warmup)
        return True


class _Request:
    """One /generate request in the generating thread's hands: its options, and the blocks of token ids it gets
    (then None, or the exception that ended it)."""

    def __init__(self, opts):
        self.opts = opts
        self.sampling = (float(opts["temperature"]), int(opts["top_k"]), float(opts["top_p"]))
        self.blocks = queue.SimpleQueue()
        self.cancelled = False  # the client went away
        self.done = 0  # characters generated
        self.stream = bool(opts.get("stream"))  # blocks as they come (else one, at the end)
        self.parts = []  # blocks not yet handed over
        self.start = None  # (h, logits) after the prime


def handler_class(generator):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fastrnn"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the CLI prints one line per request itself
            pass

        headers_sent = False

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
                                 "limits": {"max_length": generator.max_length, "max_body": generator.max_body,
                                            "max_batch": generator.max_batch},
                                 "batches": {"started": generator.batches, "widest": generator.widest}})
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
                self._generate(opts)
            except FastrnnError as exc:  # the generating thread failed (the stream, if started, just ends)
                if self.headers_sent:
                    self.close_connection = True
                else:
                    self._error(500, str(exc))
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
            self.headers_sent = True
            try:
                if opts["prime"]:
                    self._chunk(opts["prime"])
                with contextlib.closing(generator.pieces(opts)) as pieces:
                    for piece in pieces:
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
    server = _Server((host, port), handler_class(generator))
    server.daemon_threads = True
    return server


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # connections the kernel holds before they are accepted (5 would reset a burst)
