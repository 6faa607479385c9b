"""``gatekeeper serve``: one pynetdicom AE carrying every DICOM service, until SIGTERM.

Wiring only. Each service module (:mod:`.worklist`, :mod:`.storage`, :mod:`.mpps`,
:mod:`.commitment`, :mod:`.qr`) adds its presentation contexts to the AE and returns its event
handlers, bound to the use cases of the app; this module adds C-ECHO, association
logging, TCP_NODELAY, who may talk to the gate (:mod:`.permissions`: the access rules of
:mod:`.access` at association time and before every service handler), admission control (:mod:`.guard`: limits
on associations, in all and per address, and on the time to associate), the scheduled jobs,
the server's metrics (:mod:`gateway.metrics`, handed to every service's handlers) with
``/healthz`` and ``/metrics`` (:mod:`gateway.http.health`), the DICOM TLS port
(:mod:`.tls`, same AE and handlers), the HL7 listener of the RIS feed
(:mod:`gateway.hl7.listener`), and a clean shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from gateway import audit_trail, jobs, logs
from gateway.app import App
from gateway.dicom import (access, commitment, forwarder, guard, mpps, permissions, qr, storage, syntaxes, tls,
                           tuning, workers, worklist)
from gateway.dicom.slots import SharedSlots
from gateway.dicom.status import SUCCESS
from gateway.http import desk as http_desk
from gateway.hl7 import listener as hl7_listener
from gateway.http import health
from gateway.metrics import Metrics
from gateway.settings import SettingsError, load, port_unavailable
from infra.db import redacted
from infra.errors import GatekeeperError

log = logging.getLogger("gateway.dicom.server")

#: The services the AE carries, each a module with ``add_to(ae, app, metrics) -> handlers``
#: (qr after storage: it sets the SCP/SCU roles of the storage contexts for C-GET;
#: forwarder: the storage commitment reports of the archive destinations).
SERVICES = (worklist, storage, mpps, commitment, qr, forwarder)

#: Largest P-DATA PDU the gatekeeper accepts (A-ASSOCIATE maximum length, PS3.8 D.1); a
#: longer one is refused with an A-ABORT (tuning.py, change 5).
MAX_PDU_SIZE = 256 * 1024

#: ``ae.maximum_associations``: more than pynetdicom can reach, so its own count never rejects.
UNCOUNTED = 1 << 30

#: Connections the kernel queues for the server to accept (listen(2) backlog).
LISTEN_BACKLOG = 128


def _on_echo(event) -> int:
    return SUCCESS


def _on_conn_open(event) -> None:
    """Nagle off (every response is small) and pynetdicom's silent logging handlers unbound (tuning.py)."""
    tuning.no_delay(event)
    tuning.quiet_logging(event)


def _on_tls_connection(event, refusals: permissions.Refusals, s) -> None:
    """A connection to the TLS port: the handshake, in this connection's thread (:func:`.tls.handshake`).
    One that fails (no or a wrong client certificate, an old protocol, silence) is logged,
    audited as a refused association, and closed."""
    socket_ = getattr(event.assoc.dul.socket, "socket", None)
    why = tls.handshake(socket_, s.associate_timeout)
    if why is None:
        return
    rule = "server.tls_ca" if s.tls_ca else "server.tls_cert"
    requestor = event.assoc.requestor
    log.warning("TLS connection from %s refused (%s): %s", requestor.address, rule, why)
    refusals.record(event.assoc, "association.refused", access.Decision(False, rule, why), None, "A-ASSOCIATE-RJ",
                    calling="")
    event.assoc.dul.socket.close()


def _on_accepted(event) -> None:
    event.assoc.gk_started = time.monotonic()  # type: ignore[attr-defined]
    requestor = event.assoc.requestor
    log.info("association accepted: calling %s from %s:%s", requestor.ae_title, requestor.address, requestor.port,
             extra=logs.operation(event.assoc, "A-ASSOCIATE"))


def _on_ended(kind: str):
    operation = "A-RELEASE" if kind == "released" else "A-ABORT"

    def handler(event) -> None:
        started = getattr(event.assoc, "gk_started", None)
        seconds = time.monotonic() - started if started else None
        took = f" after {seconds:.1f}s" if started else ""
        log.info("association %s: calling %s%s", kind, event.assoc.requestor.ae_title, took,
                 extra=logs.operation(event.assoc, operation, None, seconds))

    return handler


def _on_rejected(event, metrics: Metrics | None = None) -> None:
    requestor = event.assoc.requestor
    why = guard.refusal(event.assoc) or "rejected by pynetdicom during negotiation"
    if metrics is not None:  # every refusal comes here, the guard's (it triggers EVT_REJECTED) and pynetdicom's
        metrics.refused(why)
    log.warning("association rejected: calling %r from %s: %s", requestor.ae_title, requestor.address, why,
                extra=logs.operation(event.assoc, "A-ASSOCIATE-RJ"))


def build_ae(app: App, metrics: Metrics | None = None, slots=None) -> tuple[AE, list]:
    """The AE with every service's contexts, and the handlers to start it with (counting in ``metrics``;
    ``slots``: the :class:`.slots.SharedSlots` of several receiving processes, else None)."""
    tuning.apply()
    s = app.settings
    if s.log_level != "DEBUG":
        # pynetdicom logs every pending response at INFO; our handlers log one line per
        # operation instead. Its warnings and errors still come through.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=s.ae_title)
    # pynetdicom counts every connection against this, even one that never sends an
    # A-ASSOCIATE-RQ (and for acse_timeout after its peer left); the guard counts
    # associations instead, against server.max_associations.
    ae.maximum_associations = UNCOUNTED
    # Let peers send large P-DATA PDUs: pynetdicom's default of 16 KiB means 32 PDUs,
    # each read in small pieces, for every 0.5 MB image.
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.network_timeout = s.network_timeout
    ae.acse_timeout = min(s.network_timeout, 30)
    ae.dimse_timeout = s.network_timeout
    ae.add_supported_context(Verification, syntaxes.NON_STORAGE)
    # Who may talk to the gate (gateway.dicom.permissions): asked by the guard at each
    # A-ASSOCIATE-RQ, and in front of every service handler below.
    refusals = permissions.Refusals(app.db, app.clock, metrics)
    rules = permissions.Permissions(s, refusals)
    ae.gk_refusals = refusals  # type: ignore[attr-defined]  # for refusals a service decides (MPPS station)
    admission = guard.Guard(s.max_associations, s.max_associations_per_address, s.associate_timeout,
                            admission=rules.admission, slots=slots)
    handlers = [
        (evt.EVT_CONN_OPEN, _on_tls_connection, [refusals, s]),  # first: nothing else runs on a failed handshake
        *admission.handlers(),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_ACCEPTED, _on_accepted),
        (evt.EVT_RELEASED, _on_ended("released")),
        (evt.EVT_ABORTED, _on_ended("aborted")),
        (evt.EVT_REJECTED, _on_rejected, [metrics]),
    ]
    for service in SERVICES:
        handlers.extend(service.add_to(ae, app, metrics))
    return ae, rules.guarded(_route_finds(handlers))


def _route_finds(handlers: list) -> list:
    """One EVT_C_FIND handler for every service that answers C-FIND.

    pynetdicom binds one handler to an intervention event such as EVT_C_FIND. A handler
    with a ``sop_classes`` attribute (the Q/R models) gets the requests of those SOP
    classes; the one without (the worklist's) gets the rest.
    """
    finds = [h for h in handlers if h[0] is evt.EVT_C_FIND]
    if len(finds) < 2:
        return handlers
    routes = {uid: h for h in finds for uid in getattr(h[1], "sop_classes", ())}
    default = next((h for h in finds if not hasattr(h[1], "sop_classes")), finds[0])

    def on_find(event):
        route = routes.get(str(event.request.AffectedSOPClassUID), default)
        return route[1](event, *(route[2] if len(route) > 2 else ()))

    return [h for h in handlers if h[0] is not evt.EVT_C_FIND] + [(evt.EVT_C_FIND, on_find)]


def serve(app: App, ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set, for in-process use); SIGHUP reloads the settings."""
    s = app.settings
    storage.on_start(app)
    metrics = Metrics(app, jobs=jobs.JOBS)  # per server: tests run several in one process
    # server.workers > 1: worker processes receive on server.port (gateway.dicom.workers) and
    # every process counts its associations in the shared slots.
    several = workers.count_of(s) > 1
    slots = SharedSlots.of(s.storage_root, s.max_associations) if several else None
    ae, handlers = build_ae(app, metrics, slots)
    context = _tls_context(s)  # before any port listens: bad TLS files stop the start
    stop = stop or threading.Event()
    receivers = None  # the workers, once started: SIGHUP is passed on to them
    if threading.current_thread() is threading.main_thread():
        # Before any port listens: a SIGHUP or SIGTERM sent as soon as the server answers
        # (a reload by the service manager, a test) must not find Python's default, which ends
        # the process. As for SIGHUP: the handler only puts on a queue; a thread sets the event,
        # since Event.set in a handler could deadlock on the lock the main thread holds.
        stops: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=lambda: (stops.get(), stop.set()), name="gatekeeper-stop", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stops.put(True))
        reloads = _reloader(app)
        signal.signal(signal.SIGHUP, lambda *_: (reloads.put(True), receivers and receivers.hangup()))
    with contextlib.ExitStack() as running:  # each part started pushes its stop; unwound in reverse
        running.callback(lambda: log.info("stopped"))
        if several:
            server = receivers = workers.start(app, metrics)  # the workers listen on server.port
            running.callback(receivers.stop)
        else:
            server = _start_plain(ae, handlers, s)
            # Listeners shut down last: open associations finish after the other parts stopped.
            running.callback(server.shutdown)
        secure = _start_tls(ae, handlers, s, context)  # the same AE, handlers and rules on server.tls_port
        if secure is not None:
            running.callback(secure.shutdown)
        if several:  # every process's associations, the TLS port's included
            metrics.watch_slots(slots)
        else:
            metrics.watch_listener(*[listener for listener in (server, secure) if listener is not None])
        for part in (health.start(app, metrics, server),  # /healthz and /metrics; None when metrics.port = 0
                     hl7_listener.start(app),  # the RIS feed (MLLP); None when hl7.port = 0
                     http_desk.start(app)):  # the review desk and /api/ on http.port; None when it is 0
            if part is not None:
                running.callback(part.stop)
        scheduler = jobs.start(app, metrics=metrics)
        if scheduler is not None:
            running.callback(scheduler.shutdown, wait=False)
        running.callback(audit_trail.start(app).stop)  # [audit.syslog]: the audit log to a syslog collector
        sender = forwarder.start(app)  # [forward.NAME]: archived studies to the archive; None when none is set
        if sender is not None:
            running.callback(sender.stop)
        log.info("listening as %s on %s:%s%s%s (database %s, store %s)", s.ae_title, s.bind_address, s.port,
                 f" in {receivers.count} receiving processes" if receivers is not None else "",
                 f" and TLS on {s.tls_port}" if secure is not None else "", redacted(s.database_url), s.storage_root)
        if ready is not None:
            ready.set()
        try:
            stop.wait()
        finally:
            log.info("shutting down: finishing open associations")
    return 0


def _start_plain(ae: AE, handlers: list, s):
    """The listener on ``server.port`` in this process (``server.workers`` = 1)."""
    try:
        server = ae.start_server((s.bind_address, s.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise GatekeeperError(port_unavailable(exc, setting="server.port", address_setting="server.bind_address",
                                               address=s.bind_address, port=s.port, source=s.source)) from None
    # socketserver listens with a backlog of 5: a burst of connections (a scan, a script) had
    # the kernel drop the connections after it, a console's among them, for a second or more.
    server.socket.listen(LISTEN_BACKLOG)
    return server


def _tls_context(s):
    """The TLS port's context when ``server.tls_cert`` is set, else None; files that do not load stop the start."""
    if not tls.enabled(s):
        return None
    try:
        return tls.server_context(s)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise GatekeeperError(f"cannot use the TLS files (server.tls_cert {s.tls_cert}, server.tls_key {s.tls_key}"
                              + (f", server.tls_ca {s.tls_ca}" if s.tls_ca else "") + f" in {s.source}): {exc}. "
                              f"Run `gatekeeper check` for which one, or empty server.tls_cert and tls_key to run "
                              f"without TLS.") from None


def _start_tls(ae: AE, handlers: list, s, context):
    """The TLS listener on ``server.tls_port`` (with ``context``), or None without one."""
    if context is None:
        return None
    try:
        secure = ae.start_server((s.bind_address, s.tls_port), block=False, evt_handlers=handlers,
                                 ssl_context=context)
    except OSError as exc:
        raise GatekeeperError(port_unavailable(exc, setting="server.tls_port", address_setting="server.bind_address",
                                               address=s.bind_address, port=s.tls_port, source=s.source,
                                               serves=" for DICOM TLS",
                                               off=", or empty server.tls_cert and tls_key")) from None
    secure.socket.listen(LISTEN_BACKLOG)
    return secure


def _reloader(app: App) -> queue.SimpleQueue:
    """A thread that reloads the settings once for each item put on the queue returned (SIGHUP).

    The signal handler only puts on the queue: ``SimpleQueue.put`` is reentrant, so it cannot
    deadlock whatever the main thread holds when the signal arrives (``Event.set`` or a log
    call could, on their own locks). Reading the file, logging and applying happen here.
    """
    requests: queue.SimpleQueue = queue.SimpleQueue()

    def run() -> None:
        while requests.get() is not None:
            try:
                reload_settings(app)
            except Exception:  # never let a reload take the reloader down
                log.exception("settings reload failed; running settings kept")

    threading.Thread(target=run, name="gatekeeper-reload", daemon=True).start()
    return requests


def reload_settings(app: App) -> list[str]:
    """Re-read the settings file and apply what a running server takes (``App.RELOADABLE``).

    Changed settings that need a restart are named in a WARNING and not applied; a file
    that does not load is logged (ERROR, naming file and key) and the running settings stay.
    """
    path = app.settings.source
    try:
        new = load(path)
    except (SettingsError, OSError) as exc:
        log.error("settings reload failed, running settings kept: %s", exc)
        return []
    restart = app.needs_restart(new)
    if restart:
        log.warning("settings reload: changed in %s but not applied until a restart: %s", path, ", ".join(restart))
    applied = app.reload(new)
    log.info("settings reloaded from %s: %s", path, f"applied {', '.join(applied)}" if applied else "nothing to apply")
    return applied
