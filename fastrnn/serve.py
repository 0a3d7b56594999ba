"""`fastrnn serve`: a model loaded once, answering generation requests over HTTP (JSON in, JSON or streamed text out),
and a page to look at what the network learned.

    GET  /           the page (fastrnn/web/index.html): samples as they are generated, neurons over text
    GET  /health     {"status": "ok", "model": {...}, "limits": {...}}
    GET  /model      the model's description: cell, layers, size, vocabulary, the run it came from, its val loss
    POST /generate   {"prime": "", "length": 200, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": null,
                      "stream": false}
                     -> {"text": prime + sample, "seed": the seed used, "length": characters generated}
                     or, with "stream": true, the text itself (text/plain, chunked), prime first, as it is generated
    POST /activations, POST /ranking: hidden units over a text (fastrnn.neurons)

Bad requests get a 4xx status and {"error": "..."}: 400 (not JSON, unknown or mistyped fields, values out of
range, characters outside the vocabulary), 404 (path), 405 (method), 411/413 (body missing or over the limit);
fastrnn.httpd bounds the rest (headers, time, connections).
Requests that generate at the same time are drawn together, as `fastrnn sample --num-samples K` draws K samples:
every weight is read once per character for all of them. One thread runs the batch, 64 characters at a time
(they go out to each client as they come); between runs, requests that are done or whose client went away leave
it, and waiting ones join, first come first served, whatever their temperature, top_k and top_p (each stream
samples with its own). Each request's text is the one it would get alone, given its seed. Up to
`max_batch` requests generate at once and `max_pending` more wait; beyond that, 503. The generating thread never
writes to a client: one that stops reading holds only its own connection (until the write timeout ends it).
"""

import collections
import contextlib
import json
import queue
import threading
import math
import os

import numpy as np

from fastrnn.errors import ConfigError, FastrnnError
from fastrnn.httpd import BadRequest, JSONHandler, Server  # noqa: F401 (BadRequest: part of this module's API)
from fastrnn.options import SAMPLING, check_sampling

CHUNK = 64  # characters per run of the batch: what a streamed response gets at a time, and when requests join

SAMPLED = ("length", "temperature", "top_k", "top_p", "seed")  # the sampling options a request may set


def _json_types(opt):
    """The JSON values an option takes: an integer, a number (integer or not), true/false; null if it may be None."""
    kinds = {int: (int,), float: (int, float), bool: (bool,)}[opt.type]
    return kinds + ((type(None),) if opt.nullable else ())


FIELDS = {"prime": (str,), **{name: _json_types(SAMPLING[name]) for name in SAMPLED}, "stream": (bool,)}


class Generator:
    """The loaded model and the request limits."""

    def __init__(self, model_path, backend="numba", max_length=10_000, max_body=65_536, max_pending=4,
                 max_batch=32):
        from fastrnn.api import load_model
        from fastrnn.model import get_backend

        self.model, self.vocab, ckpt = load_model(model_path)
        self.ckpt = ckpt
        if not np.all(np.isfinite(self.model.flat)):
            raise FastrnnError(f"{ckpt.path} holds non-finite parameters (a diverged run); nothing to serve")
        self.backend = get_backend(backend)
        self.path = ckpt.path
        self.warmup = ckpt.state.warmup  # an unprimed sample starts from a state warmed on real text
        self.max_length, self.max_body, self.max_batch = int(max_length), int(max_body), int(max_batch)
        if self.max_batch < 1:
            raise FastrnnError(f"max_batch must be >= 1, got {max_batch}")
        self.slots = threading.BoundedSemaphore(self.max_batch + int(max_pending))  # generating + waiting
        self.waiting = collections.deque()  # requests waiting to join the batch
        self.ready = threading.Condition()
        self.batches = 0  # batches started (from none running) so far, and the most requests one ran at once
        self.widest = 0
        self.weights = self.backend.stream_weights(self.model.P)
        # the kernels' thread count is per thread: the generating one takes the caller's (None: the backend has none)
        self.threads = self.backend.thread_count()
        threads_there = self.backend.threads(self.threads, blas=False)
        threading.Thread(target=self._run, args=(threads_there,), name="fastrnn-generate", daemon=True).start()

    def info(self):
        cell, layers, H = self.model.model, self.model.num_layers, self.model.hidden_size
        return {"checkpoint": self.path, "cell": cell, "num_layers": layers, "hidden_size": H,
                "vocab_size": self.vocab.size}

    def describe(self):
        """The model's description for GET /model: info(), the vocabulary, the run it came from and its val loss."""
        state, path = self.ckpt.state, os.path.abspath(self.path)
        best = state.best_val
        corpus = state.corpus or None
        return dict(self.info(), vocab=self.vocab.symbols, level=self.vocab.level, parameters=int(self.model.flat.size),
                    run=os.path.basename(os.path.dirname(path)), file=os.path.basename(path),
                    step=state.step, val_loss=best if isinstance(best, (int, float)) and math.isfinite(best)
                    else None, corpus=os.path.basename(corpus) if corpus else None,
                    states=list(self.model.cell.state))

    def parse(self, body):
        """The request's options, checked (BadRequest otherwise)."""
        req = parse_json(body)
        if not isinstance(req, dict):
            raise BadRequest(400, "the body must be a JSON object")
        unknown = sorted(set(req) - set(FIELDS))
        if unknown:
            raise BadRequest(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
        for name, value in req.items():
            if not isinstance(value, FIELDS[name]) or (isinstance(value, bool) and bool not in FIELDS[name]):
                raise BadRequest(400, f"{name} has the wrong type ({type(value).__name__})")
        opts = dict(prime="", **{name: SAMPLING[name].default for name in SAMPLED}, stream=False)
        opts.update(req)
        try:  # the checks of `fastrnn sample` and CharRNN.generate, the fields named as in the request
            opts.update(check_sampling({name: opts[name] for name in SAMPLED}, label=str))
        except ConfigError as exc:
            raise BadRequest(400, str(exc)) from None
        opts["temperature"], opts["top_p"] = float(opts["temperature"]), float(opts["top_p"])
        # the server's own limits
        if opts["length"] > self.max_length:
            raise BadRequest(400, f"length must be in [0, {self.max_length}], got {opts['length']}")
        if len(opts["prime"]) > self.max_length:
            raise BadRequest(400, f"prime is longer than {self.max_length} characters")
        if opts["seed"] is not None and opts["seed"] >= 2**63:
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

    def _run(self, threads):
        """The generating thread, on the `threads` context of the backend's made for it: the batch's streams
        advance up to 64 characters at a time, each with its own sampling options. Between runs, finished and
        abandoned requests leave the batch and waiting ones join it, first come first served, up to max_batch."""
        threads.__enter__()  # for the thread's life (a daemon: it never returns)
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


def parse_json(body):
    """A request's JSON body (BadRequest 400 if it is not JSON, or nested too deep to read)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):  # (ValueError: also an integer of over 4300 digits)
        raise BadRequest(400, "the body is not JSON") from None
    except RecursionError:
        raise BadRequest(400, "the body's JSON is nested too deep") from None


class Handler(JSONHandler):
    """The requests `fastrnn serve` answers: the page at /, /health and /model, POST /generate (`generator`), POST
    /activations and /ranking (`inspector`, at most `busy`'s count at once). handler_class makes one with them."""

    generator = inspector = busy = page = None  # (set by handler_class)

    def routes(self):
        return {("GET", "/"): self._page, ("GET", "/health"): self._health, ("GET", "/model"): self._model,
                ("POST", "/generate"): self._post_generate, ("POST", "/activations"): self._activations,
                ("POST", "/ranking"): self._ranking}

    def index(self):
        return "GET / (the page), GET /health, GET /model, POST /generate, /activations or /ranking"

    def _page(self):
        self.send_bytes(200, self.page, "text/html; charset=utf-8",
                        [("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                         ("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                     "script-src 'self' 'unsafe-inline'; img-src 'self' data:")])

    def _health(self):
        generator, inspector = self.generator, self.inspector
        self.send_json(200, {"status": "ok", "model": generator.info(),
                             "limits": {"max_length": generator.max_length, "max_body": generator.max_body,
                                        "max_batch": generator.max_batch, "max_text": inspector.max_text,
                                        "max_values": inspector.max_values,
                                        "max_connections": self.server.max_connections,
                                        "timeout": self.server.timeout_s},
                             "batches": {"started": generator.batches, "widest": generator.widest}})

    def _model(self):
        self.send_json(200, dict(self.generator.describe(), max_length=self.generator.max_length,
                                 max_text=self.inspector.max_text, max_values=self.inspector.max_values))

    def _inspect(self, what):
        req = parse_json(self.read_body())
        if not self.busy.acquire(blocking=False):
            raise BadRequest(503, "too many requests at once; try again")
        try:
            answer = what(req)
        finally:
            self.busy.release()
        self.send_json(200, answer)

    def _activations(self):
        self._inspect(self.inspector.activations)

    def _ranking(self):
        self._inspect(self.inspector.ranking)

    def _post_generate(self):
        generator = self.generator
        opts = generator.parse(self.read_body())
        if not generator.slots.acquire(blocking=False):
            raise BadRequest(503, "too many requests at once; try again")
        try:
            self._generate(opts)
        except FastrnnError as exc:  # the generating thread failed (the stream, if started, just ends)
            if self.headers_sent:
                self.close_connection = True
            else:
                self.send_error(500, str(exc))
        finally:
            generator.slots.release()

    def _generate(self, opts):
        if not opts["stream"]:
            text = "".join(self.generator.pieces(opts))
            self.send_json(200, {"text": opts["prime"] + text, "seed": opts["seed"], "length": opts["length"]})
            return
        self.start_chunks("text/plain; charset=utf-8", [("X-Seed", str(opts["seed"])),
                                                         ("Cache-Control", "no-cache")])
        try:
            if opts["prime"]:
                self.chunk(opts["prime"])
            with contextlib.closing(self.generator.pieces(opts)) as pieces:
                for piece in pieces:
                    self.chunk(piece)
            self.end_chunks()
        except OSError:  # the client went away or stopped reading: stop generating for it
            self.close_connection = True


def handler_class(generator, inspector=None, page=None):
    """The request handler (a Handler): generator answers /generate and /health; inspector (a
    fastrnn.neurons.Inspector) /activations and /ranking, at most `inspector.slots` at once; page: the bytes of the
    page at /."""
    from fastrnn.neurons import Inspector

    inspector = inspector or Inspector(generator.model, generator.vocab, generator.ckpt)
    busy = threading.BoundedSemaphore(getattr(inspector, "slots", 2))  # hidden states computed at once
    if page is None:
        from importlib import resources

        page = resources.files("fastrnn").joinpath("web/index.html").read_bytes()
    return type("Handler", (Handler,), {"generator": generator, "inspector": inspector, "busy": busy, "page": page})


def make_server(generator, host="127.0.0.1", port=8000, timeout=30.0, max_connections=64, inspector=None):
    """A threading HTTP server for `generator` (port 0: any free port; server.server_address says which), with
    the limits of fastrnn.httpd."""
    return Server((host, port), handler_class(generator, inspector), timeout=timeout, max_body=generator.max_body,
                  max_connections=max_connections)
