"""``gatekeeper serve``: one pynetdicom AE carrying every service, until SIGTERM.

Wiring only. Each capability module (``mwl_scp``, ``store_scp``, ...) adds its
presentation contexts to the AE and returns its event handlers, bound to the app;
this module adds C-ECHO, association logging, TCP_NODELAY, the calling-AE allow
list and a clean shutdown.
"""

from __future__ import annotations

import copy
import logging
import signal
import socket
import threading
import time

from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from gateway import services
from gateway.app import App
from gateway.status import SUCCESS

log = logging.getLogger("gateway.server")

#: Largest P-DATA PDU the gatekeeper accepts (A-ASSOCIATE maximum length, PS3.8 D.1).
MAX_PDU_SIZE = 256 * 1024


def _on_echo(event) -> int:
    return SUCCESS


def _on_conn_open(event) -> None:
    # pynetdicom leaves Nagle's algorithm on, which costs ~40 ms per small exchange.
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _on_accepted(event) -> None:
    event.assoc.gk_started = time.monotonic()  # type: ignore[attr-defined]
    requestor = event.assoc.requestor
    log.info("association accepted: calling %s from %s:%s", requestor.ae_title, requestor.address, requestor.port)


def _on_ended(kind: str):
    def handler(event) -> None:
        started = getattr(event.assoc, "gk_started", None)
        took = f" after {time.monotonic() - started:.1f}s" if started else ""
        log.info("association %s: calling %s%s", kind, event.assoc.requestor.ae_title, took)

    return handler


def _on_rejected(event) -> None:
    requestor = event.assoc.requestor
    log.warning("association rejected: calling %r from %s (not allowed or too many associations)",
                requestor.ae_title, requestor.address)


def build_ae(app: App) -> tuple[AE, list]:
    """The AE with every service's contexts, and the handlers to start it with."""
    # pynetdicom formats every request and response identifier for its debug log by
    # default: patient data in the log, and about a millisecond per worklist item.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom deep-copies the supported contexts for every association: with every
    # storage class and its transfer syntaxes that is ~6,000 UIDs, each rebuilt and
    # re-validated, about 90 ms before a console's query or a modality's first image.
    # UIDs are immutable strings, so a copy can share them (about 7 ms).
    copy._deepcopy_dispatch.setdefault(UID, lambda uid, memo: uid)
    s = app.settings
    if s.log_level != "DEBUG":
        # pynetdicom logs every pending response at INFO; our handlers log one line per
        # operation instead. Its warnings and errors still come through.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=s.ae_title)
    ae.maximum_associations = s.max_associations
    # Let peers send large P-DATA PDUs: pynetdicom's default of 16 KiB means 32 PDUs,
    # each read in small pieces, for every 0.5 MB image.
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.network_timeout = s.network_timeout
    ae.acse_timeout = min(s.network_timeout, 30)
    ae.dimse_timeout = s.network_timeout
    if s.allowed_calling_aets:
        ae.require_calling_aet = list(s.allowed_calling_aets)
    ae.add_supported_context(Verification)
    handlers = [
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_RELEASED, _on_ended("released")),
        (evt.EVT_ABORTED, _on_ended("aborted")),
        (evt.EVT_REJECTED, _on_rejected),
    ]
    for service in services.ALL:
        handlers.extend(service.add_to(ae, app))
    return ae, handlers


def serve(app: App, ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set, for in-process use)."""
    s = app.settings
    for service in services.ALL:
        service.on_start(app)
    ae, handlers = build_ae(app)
    server = ae.start_server((s.bind_address, s.port), block=False, evt_handlers=handlers)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    scheduler = services.start_jobs(app)
    log.info("listening as %s on %s:%s (database %s, store %s)", s.ae_title, s.bind_address, s.port,
             _safe_url(s.database_url), s.storage_root)
    if ready is not None:
        ready.set()
    try:
        stop.wait()
    finally:
        log.info("shutting down: finishing open associations")
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        server.shutdown()
        log.info("stopped")
    return 0


def _safe_url(url: str) -> str:
    """The database URL without a password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return url
