"""A small HTTP server for the download tests, on 127.0.0.1 with a port the OS picks.

It serves the files of a directory as /<size>/<file> (read anew for every request, so a test can
change them), speaking just the HTTP the downloader relies on: GET and HEAD, `Range: bytes=N-`
(206 with Content-Range, or 416 past the end), `If-Range` with the ETag (a mismatch sends the whole
file), Content-Length, ETag, and Content-MD5 (base64 of the whole file's MD5, on full 200 responses
only, as Azure does). It records every request, and misbehaves on demand, per file path:

    server.drop_after[path] = n      reset the connection after n body bytes, once
    server.drop_every[path] = n      reset the connection after n body bytes, on every GET
    server.truncate_after[path] = n  announce the full length, send n bytes, close cleanly, once
    server.stall_after[path] = n     send n body bytes, then nothing for server.stall_seconds, then close, once
    server.fail_with[path] = [503]   answer the next GETs of path with these error statuses, one each
    server.wrong_content_range = True  answer a Range request with 206 and the whole file, from byte 0
    server.not_found.add(path)       answer 404
    server.wrong_md5.add(path)       send a Content-MD5 that does not match
    server.ignore_range = True       answer every GET with the whole file (200)
    server.head_status = 405         answer every HEAD with this error status (403, 405, 501, ...)
    server.send_md5 = False          send no Content-MD5 at all
    server.chunk_delay = 0.05        sleep this long after each 16 KiB of a body, so a download stays in flight
    server.partial_plain_get = True  answer a GET without Range with 206 and the first half of the file
    server.extra_headers[path] = {...}  add (or replace) these headers on every response for path
    server.redirect[path] = url      answer every GET of path with 302 to this URL
    server.gzip = "when asked"       gzip whole-file bodies (Content-Encoding: gzip) for clients accepting it,
                                     as a web server compressing JSON and text does; "always": even if not
"""
import base64
import dataclasses
import gzip
import hashlib
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclasses.dataclass
class Request:
    method: str
    path: str
    range: str | None  # the Range header, if any
    sent: int = 0  # body bytes written to the socket
    if_range: str | None = None  # the If-Range header, if any
    accept_encoding: str | None = None  # the Accept-Encoding header, if any


class FixtureServer:
    def __init__(self, root):
        self.root = Path(root)
        self.requests = []  # every Request, in arrival order
        self.drop_after = {}
        self.drop_every = {}
        self.truncate_after = {}
        self.stall_after = {}
        self.stall_seconds = 1.0
        self.fail_with = {}
        self.wrong_content_range = False
        self.not_found = set()
        self.wrong_md5 = set()
        self.ignore_range = False
        self.head_status = None
        self.send_md5 = True
        self.chunk_delay = 0.0
        self.gzip = None
        self.partial_plain_get = False
        self.extra_headers = {}
        self.redirect = {}
        self.lock = threading.Lock()  # handlers run in their own threads
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fixture = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self):
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._httpd.shutdown()  # returns once serve_forever has left its loop
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def gets(self, path):
        """The GET requests for `path`, in order."""
        return [r for r in self.requests if r.method == "GET" and r.path == path]

    def content(self, path):
        """The bytes served at /<size>/<file>, or None (also for anything like /../x)."""
        parts = path.split("/")
        if len(parts) != 3 or parts[0] or any(p in ("", ".", "..") for p in parts[1:]):
            return None
        file = self.root / parts[1] / parts[2]
        return file.read_bytes() if file.is_file() else None

    def range_start(self, header, if_range, etag):
        """N from `Range: bytes=N-`, or None to send the whole file (also when If-Range names another version)."""
        match = re.fullmatch(r"bytes=(\d+)-", (header or "").strip())
        if not match or self.ignore_range or (if_range is not None and if_range != etag):
            return None
        return int(match[1])

    def content_md5(self, path, data):
        digest = hashlib.md5(data).digest()
        if path in self.wrong_md5:
            digest = bytes(16)
        return base64.b64encode(digest).decode("ascii")

    def take_fault(self, path):
        """(kind, n) of the fault armed on `path`, disarming a one-time one; (None, None) if none."""
        with self.lock:
            if path in self.drop_every:
                return "drop", self.drop_every[path]
            for kind, faults in (("drop", self.drop_after), ("truncate", self.truncate_after),
                                 ("stall", self.stall_after)):
                if path in faults:
                    return kind, faults.pop(path)
        return None, None


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler never keeps the test process alive

    def handle_error(self, request, client_address):
        # A client giving up mid-response (as the tests make it do) is not a server bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # The default protocol, HTTP/1.0, closes the connection after each response: one request per
    # connection keeps every handler's loop bounded.
    timeout = 5  # seconds a silent client may hold a handler thread

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def log_message(self, format, *args):
        pass  # keep test output quiet

    def _serve(self, send_body):
        fixture = self.server.fixture
        request = Request(self.command, self.path, self.headers.get("Range"), if_range=self.headers.get("If-Range"),
                          accept_encoding=self.headers.get("Accept-Encoding"))
        with fixture.lock:
            fixture.requests.append(request)
        if self.path in fixture.redirect:
            self.send_response(302)
            self.send_header("Location", fixture.redirect[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not send_body and fixture.head_status:
            self.send_error(fixture.head_status)
            return
        data = fixture.content(self.path)
        if data is None or self.path in fixture.not_found:
            self.send_error(404)
            return
        with fixture.lock:
            failures = fixture.fail_with.get(self.path) if send_body else None
            failure = failures.pop(0) if failures else None
        if failure:
            self.send_response(failure)
            for name, value in fixture.extra_headers.get(self.path, {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        start = fixture.range_start(request.range, request.if_range, etag)
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is None and fixture.partial_plain_get:
            self.send_response(206)
            body = data[: len(data) // 2]
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(data)}")
        elif start is None:
            self.send_response(200)
            body = data
            if fixture.gzip == "always" or (fixture.gzip and "gzip" in (request.accept_encoding or "")):
                self.send_header("Content-Encoding", "gzip")
                body = gzip.compress(data, mtime=0)
            if fixture.send_md5:  # of the body as sent, compressed or not (RFC 2616, 14.15)
                self.send_header("Content-MD5", fixture.content_md5(self.path, body))
        elif fixture.wrong_content_range:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            body = data
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        headers = {"Content-Length": str(len(body)), "ETag": etag, **fixture.extra_headers.get(self.path, {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self._send_body(fixture, request, body)

    def _send_body(self, fixture, request, body):
        fault, n = fixture.take_fault(self.path)
        if fault:
            body = body[:n]
        step = 16 * 1024 if fixture.chunk_delay else len(body) or 1
        for start in range(0, len(body), step):
            self.wfile.write(body[start : start + step])
            request.sent += len(body[start : start + step])
            if fixture.chunk_delay:
                self.wfile.flush()
                time.sleep(fixture.chunk_delay)
        if fault == "stall":
            self.wfile.flush()
            time.sleep(fixture.stall_seconds)  # the client's read timeout should give up first
        if fault == "drop":
            # Give the client a moment to read what was sent, then close with SO_LINGER set to 0:
            # the kernel sends a TCP RST, so the client sees "connection reset by peer".
            time.sleep(0.2)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        # "truncate" needs nothing more: HTTP/1.0 closes the connection cleanly after the response.
