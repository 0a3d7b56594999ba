"""Headless Chromium driven over its DevTools protocol, with the standard library only (a small WebSocket client):
for the test of `fastrnn serve`'s page (tests/test_page_browser.py) and the README's screenshot of it
(tools/page_screenshot.py). Chromium talks to 127.0.0.1 only: its DevTools port, and the page's server.

    with Chromium() as browser:
        browser.open("http://127.0.0.1:8000/?prime=The&seed=1")
        browser.wait_for("document.body.dataset.view === 'done'")
        browser.evaluate("document.getElementById('sample').textContent")
        browser.click("#generate"); browser.screenshot("page.png")
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from urllib.parse import urlsplit

BINARY = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--mute-audio", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


class BrowserError(Exception):
    pass


class _WebSocket:
    """A WebSocket client for the DevTools protocol: text frames out (masked), frames in (any length)."""

    def __init__(self, url, timeout=60):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            got = self.sock.recv(4096)
            if not got or len(head) > 65536:
                raise BrowserError("the DevTools WebSocket handshake failed")
            head += got
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise BrowserError(f"the DevTools WebSocket refused: {head.splitlines()[0]!r}")

    def _exact(self, n):
        while len(self.buffer) < n:
            got = self.sock.recv(max(65536, n - len(self.buffer)))
            if not got:
                raise BrowserError("Chromium closed the DevTools connection")
            self.buffer += got
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def send(self, text):
        data = text.encode()
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 8:
                raise BrowserError("Chromium closed the DevTools connection")
            if opcode in (9, 10):  # ping, pong: (Chromium does not ping its clients)
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self):
        self.sock.close()


class Chromium:
    """A headless Chromium with a fresh profile, one page, driven over the DevTools protocol."""

    def __init__(self, binary=BINARY, width=1200, height=1300, timeout=60):
        if not os.path.exists(binary):
            raise BrowserError(f"no Chromium at {binary} (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="fastrnn-chromium-")
        self.timeout = timeout
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = self._devtools_port()
            deadline = time.monotonic() + timeout
            while True:  # the page's target (bounded: Chromium lists it within moments)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                    pages = [t for t in json.load(resp) if t.get("type") == "page"]
                if pages or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if not pages:
                raise BrowserError("Chromium opened no page")
            self.ws = _WebSocket(pages[0]["webSocketDebuggerUrl"], timeout)
            self.next_id = 0
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _devtools_port(self):
        deadline = time.monotonic() + self.timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "DevTools listening on ws://" in line:
                return int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        raise BrowserError("Chromium did not start: " + "".join(lines[-5:]).strip())

    def call(self, method, **params):
        """One DevTools command; its result (events that come meanwhile are skipped)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
        raise BrowserError(f"{method}: no answer in {self.timeout} s")

    def open(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=None):
        """Wait until a JavaScript expression is true in the page; BrowserError after `timeout` seconds."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if self.evaluate(f"!!({expression})"):
                return
            time.sleep(0.1)
        raise BrowserError(f"not true after {timeout or self.timeout} s: {expression}")

    def click(self, selector, dx=None, dy=None):
        """A real mouse click (press and release) on the element, at (dx, dy) from its corner (default: its
        middle)."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            f"e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); "
                            f"return [r.left, r.top, r.width, r.height]; }})()")
        x = box[0] + (box[2] / 2 if dx is None else dx)
        y = box[1] + (box[3] / 2 if dy is None else dy)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path, full_page=True):
        params = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, "
                                          "document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "height": height,
                                                            "scale": 1})
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        with open(path, "wb") as f:
            f.write(data)
        return path

    def close(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
