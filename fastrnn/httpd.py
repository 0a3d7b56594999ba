"""The HTTP side of `fastrnn serve`: the standard library's threading server, with every thing a client controls
bounded (`http.server` alone has "basic security checks only").

    request line      at most MAX_REQUEST_LINE bytes (else 414); headers at most MAX_HEADERS bytes (else 431)
    body              only with one Content-Length of plain digits, at most the server's max_body bytes (413);
                      a Transfer-Encoding (a chunked body) is refused (411), with the connection closed, as is
                      any request whose body is not read (an error before it, or a GET with a body): what follows
                      on the connection is never taken for another request
    time              a connection has `timeout` seconds to send each request, line, headers and body together
                      (waiting for a kept-alive connection's next request counts too); a write that makes no
                      progress for `timeout` seconds ends the connection (a client that stopped reading)
    connections       at most max_connections at once (one thread each); a new one past the limit takes the place
                      of the longest idle one (a connection waiting for a request), or is answered 503 and closed
    methods           GET and POST; any other (HEAD, PUT, DELETE, ...) gets 405 and a JSON error

Every error is JSON {"error": "..."}. A client that goes away (a reset, a broken pipe, a timeout) ends its
connection quietly; anything else a handler raises is one line on stderr, never a traceback.
"""

import errno
import http.client
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_REQUEST_LINE = 8192  # bytes of "METHOD /path?query HTTP/1.1"
MAX_HEADERS = 16384  # bytes of all the header lines together
DIGITS = re.compile(r"[0-9]{1,18}")
GONE = (ConnectionError, TimeoutError, BrokenPipeError)  # the client went away, or stopped reading or sending


class BadRequest(Exception):
    """A request answered with `status` and {"error": message}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class _HeaderBudget:
    """The connection's reader while the headers are parsed: past MAX_HEADERS bytes in all, http.client's
    LineTooLong (which parse_request answers 431)."""

    def __init__(self, raw, budget):
        self.raw, self.left = raw, budget

    def readline(self, limit=-1):
        limit = self.left + 1 if limit is None or limit < 0 else min(limit, self.left + 1)
        line = self.raw.readline(limit)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong("the request's headers together")
        return line

    def __getattr__(self, name):
        return getattr(self.raw, name)


class JSONHandler(BaseHTTPRequestHandler):
    """A request handler answering JSON, with the limits above. Subclasses define routes(): {(method, path): the
    bound method handling it}, and read bodies with read_body()."""

    server_version = "fastrnn"
    protocol_version = "HTTP/1.1"
    METHODS = ("GET", "POST")

    def log_message(self, fmt, *args):  # quiet: errors reach the client as JSON
        pass

    def setup(self):
        self.timeout = self.server.timeout_s  # every read and write of the connection (StreamRequestHandler)
        super().setup()

    def routes(self):
        return {}

    # -- one request --------------------------------------------------------------------------------------------

    def handle_one_request(self):
        self.body_pending = False  # a body that was announced and is not read: the connection closes
        self.headers_sent = False
        self.command, self.request_version, self.requestline = "", "", ""  # (until they are read)
        server = self.server
        server.watch(self.request, idle=True)
        try:
            line = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if not line:
                self.close_connection = True
                return
            server.watch(self.request, idle=False)
            if len(line) > MAX_REQUEST_LINE:
                self.send_error(414, f"the request line is over {MAX_REQUEST_LINE} bytes")
                return
            self.raw_requestline = line
            raw, self.rfile = self.rfile, _HeaderBudget(self.rfile, MAX_HEADERS)
            try:
                if not self.parse_request():  # (an error was sent)
                    return
            finally:
                self.rfile = raw
            self._framing()
            if not self.body_pending:
                server.watch(self.request, None)  # received: no more deadline for it
            if self.command not in self.METHODS:
                self.send_error(405, f"{self.command} is not allowed; use {' or '.join(self.METHODS)}")
                return
            path = self.path.split("?", 1)[0]
            handler = self.routes().get((self.command, path))
            if handler is None:
                other = [m for m in self.METHODS if (m, path) in self.routes()]
                if other:
                    self.send_error(405, f"use {' or '.join(other)} for {path}")
                else:
                    self.send_error(404, f"no such path {path}; {self.index()}")
                return
            try:
                handler()
            except BadRequest as exc:
                self.send_error(exc.status, str(exc))
            except MemoryError:
                self.send_error(503, "not enough memory for this request now; try a smaller one")
            except Exception as exc:
                if isinstance(exc, OSError):  # (the connection's: below)
                    raise
                self.server.report(self.client_address, exc)  # (a bug: one line, and the client told)
                self.send_error(500, f"the server failed ({type(exc).__name__}); see its log")
            self.wfile.flush()
        except BadRequest as exc:  # the framing
            self.send_error(exc.status, str(exc))
        except GONE:
            self.close_connection = True
        except OSError:  # the socket was shut down (a timeout, or a connection that made room for another)
            self.close_connection = True
        finally:
            server.watch(self.request, None)
            if self.body_pending:
                self.close_connection = True

    def index(self):
        """What a 404 suggests instead."""
        return "see GET /"

    def _framing(self):
        """How the request says its body is sent: one Content-Length of digits, or none; no Transfer-Encoding."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get_all("Transfer-Encoding"):
            self.body_pending = True
            if lengths:
                raise BadRequest(400, "a request may not have both a Transfer-Encoding and a Content-Length")
            raise BadRequest(411, "a Content-Length is required (chunked request bodies are not accepted)")
        if len(lengths) > 1:
            self.body_pending = True
            raise BadRequest(400, "more than one Content-Length")
        if lengths:
            value = lengths[0].strip()
            if not DIGITS.fullmatch(value):
                self.body_pending = True
                raise BadRequest(400, f"Content-Length is not a number: {value[:40]!r}")
            self.body_length = int(value)
            self.body_pending = self.body_length > 0
        else:
            self.body_length = None

    def read_body(self):
        """The request's body (bytes), once; BadRequest 411 without a Content-Length, 413 over max_body."""
        if self.body_length is None:
            raise BadRequest(411, "a Content-Length is required")
        if self.body_length > self.server.max_body:
            raise BadRequest(413, f"the body is over {self.server.max_body} bytes")
        body = self.rfile.read(self.body_length)
        if len(body) < self.body_length:
            raise ConnectionResetError("the client sent less than its Content-Length")
        self.body_pending = False
        self.server.watch(self.request, None)  # received: no more deadline for it
        return body

    # -- answers ------------------------------------------------------------------------------------------------

    def send_error(self, code, message=None, explain=None):
        """An error as JSON (http.server's own too: 400, 414, 431, ...). An unread body closes the connection."""
        if self.headers_sent:  # (a response already started: all that is left is to end the connection)
            self.close_connection = True
            return
        if not self.command or code in (408, 411, 413, 414, 431):  # (the request itself is not understood)
            self.close_connection = True
        self.send_json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def send_json(self, status, obj, headers=()):
        self.send_bytes(status, json.dumps(obj).encode(), "application/json", headers)

    def send_bytes(self, status, body, content_type, headers=()):
        close = self.body_pending or self.close_connection
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == 405:
            self.send_header("Allow", ", ".join(self.METHODS))
        for name, value in headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def start_chunks(self, content_type, headers=()):
        """Start a chunked response (then chunk(text) and end_chunks())."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.headers_sent = True

    def chunk(self, text):
        data = text.encode("utf-8")
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer with the limits of this module. timeout_s, max_body, max_connections: see above."""

    daemon_threads = True
    request_queue_size = 128  # connections the kernel holds before they are accepted (5 would reset a burst)

    def __init__(self, address, handler, timeout=30.0, max_body=65_536, max_connections=64):
        self.timeout_s, self.max_body = float(timeout), int(max_body)
        self.max_connections = int(max_connections)
        self.lock = threading.Lock()
        self.connections = {}  # socket -> [deadline of the request it is receiving or None, idle since or None]
        self.evicted = self.refused = 0
        self.closed = threading.Event()
        super().__init__(address, handler)
        threading.Thread(target=self._reap, name="fastrnn-http-deadlines", daemon=True).start()

    def watch(self, sock, idle=None):
        """A connection starts waiting for a request (idle=True: nothing of it received yet; a deadline from now),
        is receiving one (idle=False: the deadline kept), or is done receiving (None: no deadline)."""
        with self.lock:
            entry = self.connections.get(sock)
            if entry is None:
                return
            now = time.monotonic()
            if idle is None:
                entry[:] = [None, None]
            elif idle:
                entry[:] = [now + self.timeout_s, now]
            else:
                entry[1] = None
                if entry[0] is None:
                    entry[0] = now + self.timeout_s

    def _reap(self):
        """Shut down connections past their deadline (a blocked read then returns)."""
        while not self.closed.wait(0.2):
            now = time.monotonic()
            with self.lock:
                late = [s for s, (deadline, _) in self.connections.items() if deadline is not None and now > deadline]
                for s in late:
                    self.connections[s][0] = None
            for s in late:
                _shutdown(s)

    def process_request(self, request, client_address):
        with self.lock:
            if len(self.connections) >= self.max_connections:
                idle = [(since, s) for s, (_, since) in self.connections.items() if since is not None]
                if not idle:
                    self.refused += 1
                    victim = None
                else:
                    victim = min(idle, key=lambda pair: pair[0])[1]
                    self.connections.pop(victim)  # (its thread ends on its own; its place is taken now)
                    self.evicted += 1
            else:
                victim = False
            if victim is not None:
                self.connections[request] = [time.monotonic() + self.timeout_s, time.monotonic()]
        if victim is None:
            _refuse(request)
            self.shutdown_request(request)
            return
        if victim:
            _shutdown(victim)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:  # out of file descriptors: wait a little, not spin on the listening socket
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
            raise

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if not isinstance(exc, GONE):
            self.report(client_address, exc)

    def report(self, client_address, exc):
        """A request that failed (not by its client going away): one line on stderr, never a traceback."""
        sys.stderr.write(f"fastrnn: serve: a request from {client_address[0]} failed: {type(exc).__name__}: "
                         f"{exc}\n")
        sys.stderr.flush()

    def server_close(self):
        self.closed.set()
        super().server_close()


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_BUSY = json.dumps({"error": "too many connections at once; try again"}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


def _refuse(sock):
    """503 to a connection past the limit, if its send buffer takes it at once (never waiting for the client)."""
    try:
        sock.setblocking(False)
        sock.send(_BUSY)
    except OSError:
        pass


def connection_limit(wanted, reserve=32):
    """max_connections that fits the process's open-file limit (one descriptor per connection, `reserve` for the
    rest of the process)."""
    try:
        import os
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        used = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 16
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - used - reserve))
