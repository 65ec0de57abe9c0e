"""The gunicorn worker ``tilde serve`` uses: gunicorn's threaded worker (``gthread``) with three
changes, each for a failure measured against the stock workers (``benchmarks/service_load.py
--slow-clients``):

* **Read deadlines.** A request's line and headers must arrive within ``header_timeout`` seconds
  and its body within ``body_timeout`` (``TILDE_HEADER_TIMEOUT`` / ``TILDE_BODY_TIMEOUT``); a
  client that trickles bytes slower is answered 408 and disconnected. Together with enough
  threads per worker, slow or idle clients hold a blocked thread for a bounded time and never the
  worker: with the sync workers two clients trickling a body at 1 byte/s stalled every other
  request and got both workers killed at the 30 s timeout.
* **JSON errors from the transport layer.** What gunicorn answers itself (bad request line or
  Content-Length 400, 414, 431, 408, an exception outside the app 500) is the service's
  ``{"error": {"code", "message"}}`` instead of an HTML page.
* **No blocking close in the main loop.** gunicorn closes a finished connection "gracefully"
  (half-close, then read until the client's FIN, up to 2 s) in the worker's main thread, the
  one that accepts and dispatches: a client that keeps sending after its 408 stalled every other
  connection of that worker for 2 s at a time (probe p99 233 ms, max 4 s, with 8 slow clients).
  The threads close their own connections here.
* **Keep-alive without the round trip through the main loop, and without pinning.** A thread that
  answered a kept-alive request waits up to ``HOT_LINGER_S`` for that client's next request and
  serves it itself (unless other connections are waiting for a thread); gthread hands every
  connection back to the main loop's poller and a fresh thread after each response. After
  ``keepalive_requests`` responses a connection is closed (``Connection: close``, as nginx's
  ``keepalive_requests``), so a client reconnects and the connections re-spread over the
  workers: a kept-alive connection otherwise stays with the worker that accepted it forever.
* **Nothing accepted is reset on SIGTERM.** A stopping worker first accepts every connection
  already waiting in the listen backlog and serves it (``Connection: close``) before it closes
  its copy of the listening socket; stock gunicorn closed the socket with them still queued, and
  the kernel reset them (17 of 20 in one run).

Use it directly with ``gunicorn -k service.worker.TildeWorker``.
"""

from __future__ import annotations

import errno
import json
import select
import socket
import time
import uuid
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import STATUS_CODES, ReadTimeout

__all__ = ["DeadlineSocket", "TildeWorker", "error_response"]

_REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long", 417: "Expectation Failed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
            403: "Forbidden"}
_CODES = {**STATUS_CODES, 408: "request_timeout", 414: "uri_too_long", 417: "expectation_failed",
          431: "headers_too_large", 501: "not_implemented", 403: "forbidden"}


def error_response(status: int, message: str, code: str | None = None) -> bytes:
    """A complete HTTP/1.1 response carrying the service's error shape; the connection closes."""
    body = json.dumps({"error": {"code": code or _CODES.get(status, "error"), "message": message}},
                      separators=(",", ":"), ensure_ascii=True).encode()
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nX-Request-Id: {uuid.uuid4().hex}\r\n"
            f"\r\n")
    return head.encode("ascii") + body


class DeadlineSocket:
    """A client socket whose reads fail with :class:`ReadTimeout` once ``deadline``
    (``time.monotonic()``) has passed, however the bytes trickle in, and which sends a response's
    headers together with its body: with ``hold`` set, the first ``sendall`` (gunicorn writes the
    headers alone) is kept and goes out with the next one, or at :meth:`flush`. One system call
    and one segment less per response, and the client is woken once. Everything else is the
    socket's own (the poller registers it by ``fileno()``)."""

    __slots__ = ("deadline", "hold", "limit", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None
        self.limit = ""  # what the deadline is, for the error message
        self.hold = False
        self.pending = b""

    def sendall(self, data: bytes, flags: int = 0) -> None:
        if self.hold:
            self.hold = False
            self.pending = bytes(data)
            return
        if self.pending:
            data, self.pending = self.pending + bytes(data), b""
        self.sock.sendall(data, flags)

    def flush(self) -> None:
        """Send what :meth:`sendall` held (a response with no body after its headers)."""
        self.hold = False
        if self.pending:
            data, self.pending = self.pending, b""
            self.sock.sendall(data)

    def discard(self) -> None:
        """Drop held bytes (a response that failed before its body: an error answer follows)."""
        self.hold = False
        self.pending = b""

    def recv(self, size: int, flags: int = 0) -> bytes:
        deadline = self.deadline
        if deadline is None:
            return self.sock.recv(size, flags)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadTimeout(self.limit)
        self.sock.settimeout(left)
        try:
            return self.sock.recv(size, flags)
        except TimeoutError:
            raise ReadTimeout(self.limit) from None
        finally:
            self.sock.settimeout(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


# Seconds a thread that answered a kept-alive request waits for the client's next one before it
# hands the connection back to the main loop's poller (which costs two thread switches and four
# system calls a request, and makes the next request wait for the main thread).
HOT_LINGER_S = 0.005


class _Conn(TConn):
    """A connection whose lingering close may already have been done by its thread, counting the
    requests it has carried."""

    closed = False
    requests = 0

    def close(self, graceful: bool = False) -> None:
        if self.closed:
            return
        super().close(graceful)


class TildeWorker(ThreadWorker):
    """gthread with read deadlines, JSON errors and a backlog drain on SIGTERM (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from .config import ServerConfig, from_env

        server = from_env(ServerConfig)
        self.header_timeout = server.header_timeout
        self.body_timeout = server.body_timeout
        self.keepalive_requests = server.keepalive_requests

    # -- connections get a deadline-aware socket ---------------------------------------------

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = _Conn(self.cfg, DeadlineSocket(client_sock), client_addr, listener.getsockname())
        self.enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        """Serve the connection's request, then, while it stays alive, the requests that follow
        within :data:`HOT_LINGER_S` (see the module); True hands it back to the poller."""
        while True:
            result = self._handle_one(conn)
            if result is not True or not self.alive:
                return result
            if conn.parser.unreader.buf.getvalue():
                continue  # the next request is already read (pipelined)
            waiting = getattr(self.tpool, "_work_queue", None)  # ThreadPoolExecutor's queue of work
            if waiting is not None and not waiting.empty():
                return True  # other connections wait for a thread: this one goes back to the poller
            try:  # poll, not select: a worker's descriptors may number past select's 1,024
                poller = select.poll()
                poller.register(conn.sock.fileno(), select.POLLIN)
                readable = poller.poll(HOT_LINGER_S * 1e3)
            except (OSError, ValueError):
                return False
            if not readable:
                return True

    def _handle_one(self, conn: Any) -> Any:
        sock = conn.sock
        if isinstance(sock, DeadlineSocket):
            sock.deadline = time.monotonic() + self.header_timeout
            sock.limit = f"request headers not received within {self.header_timeout:g} s (header_timeout)"
        try:
            result = super().handle(conn)
        finally:
            if isinstance(sock, DeadlineSocket):
                sock.deadline = None
        if result is False and isinstance(conn, _Conn):
            # the connection closes: linger here, in this thread, not in the main loop
            try:
                conn.sock.setblocking(True)
                util.close_graceful(conn.sock)
            except OSError:
                util.close(conn.sock)
            conn.closed = True
        return result

    def handle_request(self, req: Any, conn: Any) -> Any:
        if isinstance(conn, _Conn):
            conn.requests += 1
            if self.keepalive_requests and conn.requests >= self.keepalive_requests:
                req.must_close = True  # answered with "Connection: close": the client reconnects
        sock = conn.sock
        if not isinstance(sock, DeadlineSocket):
            return super().handle_request(req, conn)
        sock.deadline = time.monotonic() + self.body_timeout
        sock.limit = f"request body not received within {self.body_timeout:g} s (body_timeout)"
        sock.hold = True  # the headers wait for the body (sendfile is off: see service.gunicorn_conf)
        try:
            result = super().handle_request(req, conn)
        except BaseException:
            sock.discard()
            raise
        sock.flush()
        return result

    # -- errors gunicorn answers itself --------------------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        e = http_errors
        status, message = 400, str(exc)
        if isinstance(exc, ReadTimeout):
            status = 408
            self.log.info("closing a slow client %s: %s", (addr or ("", -1))[0], exc)
        elif isinstance(exc, e.LimitRequestLine):
            status = 414
        elif isinstance(exc, e.LimitRequestHeaders):
            status = 431
        elif isinstance(exc, e.UnsupportedTransferCoding):
            status = 501
        elif isinstance(exc, e.ExpectationFailed):
            status = 417
        elif isinstance(exc, e.ForbiddenProxyRequest):
            status, message = 403, "request forbidden"
        elif not isinstance(exc, (e.ParseException, e.NoMoreData)) or isinstance(
                exc, (e.InvalidResponseHeader, e.InvalidResponseHeaderName, e.ConfigurationProblem)):
            status, message = 500, "internal error; see the server log"
            self.log.exception("error handling a request outside the app")
        if status != 500 and not isinstance(exc, ReadTimeout):
            self.log.warning("invalid request from %s: %s", (addr or ("", -1))[0], exc)
        if status == 400 and isinstance(exc, e.InvalidHeader) and "content-length" in message.lower():
            message = f"bad or conflicting Content-Length: {message}"
        try:
            client.setblocking(False)
            client.send(error_response(status, message[:300]))
        except OSError:
            self.log.debug("failed to send an error response")

    # -- graceful stop: serve what is already in the backlog -----------------------------------

    def _drain_backlog(self) -> int:
        """Accept every connection already queued on the listening sockets (non-blocking)."""
        n = 0
        for listener in self.sockets:
            try:
                listener.setblocking(False)
            except OSError:
                continue
            for _ in range(100_000):  # bounded: the backlog setting caps the queue anyway
                try:
                    client_sock, client_addr = listener.accept()
                except OSError:
                    break
                self.nr_conns += 1
                client_sock.setblocking(True)
                self.enqueue_req(_Conn(self.cfg, DeadlineSocket(client_sock), client_addr, listener.getsockname()))
                n += 1
        return n

    def set_accept_enabled(self, enabled: bool) -> None:
        if not enabled and not self.alive and self._accepting:
            drained = self._drain_backlog()
            if drained:
                self.log.info("stopping: serving %d connection(s) already in the backlog", drained)
        super().set_accept_enabled(enabled)

    def murder_pending(self) -> None:
        super().murder_pending()
        # While a stopping worker waits for its in-flight requests, connections may still reach
        # the backlog (the socket stays open until the last worker closes it): serve them too
        # rather than let the kernel reset them when the socket closes.
        if not self.alive and self.sockets:
            self._drain_backlog()
