"""``GET /healthz`` and ``GET /metrics`` over HTTP, for a service manager and a Prometheus server.

- ``/healthz``: 200 ``{"status": "ok", "checks": {...}}`` when every part is fine, else 503
  ``{"status": "failing", "failing": [...], "checks": {...}}`` naming the failing parts.
  The parts: ``database`` (a trivial read on a connection of the request's own),
  ``storage`` (the storage volume keeps its ``storage.min_free_mb`` reserve: below it
  C-STORE is refused), ``dicom`` (the DICOM listener's socket is open and listening and
  its accept loop runs). Each check says ``"ok"`` or what is wrong.
- ``/metrics``: :mod:`gateway.metrics` in the Prometheus text format.

Errors of the checks become their answer here and nowhere else: a check that raises
fails its part (:class:`~infra.errors.OutOfResources` from the storage reserve, anything
from the database or the listener) and never the endpoint.

The server is a :class:`~http.server.ThreadingHTTPServer` on a daemon thread: one short
thread per request, a request that stalls for :data:`REQUEST_TIMEOUT` seconds is dropped.
It listens on ``metrics.bind_address`` (loopback by default): it has no authentication,
and says nothing about patients.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.metrics import CONTENT_TYPE_LATEST, Metrics, connected
from gateway.settings import port_unavailable
from infra.errors import GatekeeperError

log = logging.getLogger("gateway.http.health")

#: Seconds a client has to send its request before the connection is dropped.
REQUEST_TIMEOUT = 10
OK = "ok"


class Health:
    """The checks behind ``/healthz``, over the app and the running DICOM listener."""

    def __init__(self, app, listener=None) -> None:
        self.app = app
        self.listener = listener

    def checks(self) -> dict[str, str]:
        """Each part: ``"ok"`` or what is wrong with it."""
        return {"database": self._run(self._database), "storage": self._run(self._storage),
                "dicom": self._run(self._dicom)}

    def report(self) -> tuple[int, dict]:
        """The HTTP status and the JSON body of ``/healthz``."""
        checks = self.checks()
        failing = [part for part, result in checks.items() if result != OK]
        if failing:
            return 503, {"status": "failing", "failing": failing, "checks": checks}
        return 200, {"status": "ok", "checks": checks}

    @staticmethod
    def _run(check) -> str:
        try:
            return check() or OK
        except GatekeeperError as exc:  # OutOfResources below the storage reserve, a busy database
            return str(exc)
        except Exception as exc:  # a driver's error, a closed socket: the part fails, the endpoint answers
            return f"{type(exc).__name__}: {exc}".strip()

    def _database(self) -> str | None:
        db = self.app.db
        with connected(db):
            db.get_tables()  # one trivial read (the catalogue), on this thread's connection
        return None

    def _storage(self) -> str | None:
        self.app.store.archive.check_room(self.app.settings.min_free_mb)
        return None

    def _dicom(self) -> str | None:
        server = self.listener
        if server is None:
            return "the DICOM listener is not running"
        if hasattr(server, "problem"):  # receiving worker processes (server.workers > 1)
            return server.problem()
        sock = server.socket
        if sock.fileno() == -1:
            return "the DICOM listener's socket is closed"
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return "the DICOM listener's socket is not listening"
        # socketserver sets this event when serve_forever() has returned (shut down or crashed).
        stopped = getattr(server, "_BaseServer__is_shut_down", None)
        if stopped is not None and stopped.is_set():
            return "the DICOM listener's accept loop has stopped"
        return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "gatekeeper"
    timeout = REQUEST_TIMEOUT
    server: "HealthServer"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            status, report = self.server.health.report()
            self._send(status, "application/json", (json.dumps(report) + "\n").encode(), body)
        elif path == "/metrics":
            try:
                payload = self.server.metrics.exposition()
            except Exception:
                log.exception("metrics: the exposition failed")
                self._send(500, "text/plain; charset=utf-8", b"metrics failed; see the server's log\n", body)
                return
            self._send(200, CONTENT_TYPE_LATEST, payload, body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n", body)

    def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)


class HealthServer(ThreadingHTTPServer):
    """The HTTP server of ``/healthz`` and ``/metrics``; :meth:`stop` ends it."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], health: Health, metrics: Metrics) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.health = health
        self.metrics = metrics
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> "HealthServer":
        self._thread = threading.Thread(target=self.serve_forever, name="gatekeeper-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)


def start(app, metrics: Metrics, listener=None) -> HealthServer | None:
    """Serve ``/healthz`` and ``/metrics`` on ``metrics.port`` (None when it is 0: off).

    Raises :class:`~infra.errors.GatekeeperError` naming the setting when the port cannot
    be had.
    """
    s = app.settings
    if not s.metrics_port:
        return None
    try:
        server = HealthServer((s.metrics_bind_address, s.metrics_port), Health(app, listener), metrics)
    except OSError as exc:
        raise GatekeeperError(port_unavailable(
            exc, setting="metrics.port", address_setting="metrics.bind_address", address=s.metrics_bind_address,
            port=s.metrics_port, source=s.source, serves=" for /healthz and /metrics", off=" (0 turns them off)")) from None
    server.start()
    log.info("health and metrics on http://%s:%s/healthz and /metrics", s.metrics_bind_address, server.port)
    return server
