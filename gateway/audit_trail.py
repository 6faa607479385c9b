"""The audit trail for other systems: ``gatekeeper serve`` sends the audit log to ``[audit.syslog]``.

Wiring only: :func:`start` builds the transport (:mod:`infra.syslog`) and the outbox
(:mod:`infra.audit_outbox`) from the settings and runs it in a thread; each audit event
becomes a DICOM Audit Message (:mod:`infra.audit_message`) in an RFC 5424 message.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass

from gateway.app import App
from gateway.settings import AuditSyslog
from infra import audit_message, syslog
from infra.audit import AuditEvent
from infra.audit_outbox import Outbox, OutboxConfig

log = logging.getLogger("gateway.audit_trail")


def record_of(event: AuditEvent) -> audit_message.EventRecord:
    """The plain record of an audit log row; its local time gets this machine's UTC offset."""
    try:
        detail = json.loads(event.detail or "{}")
    except ValueError:
        detail = {}
    return audit_message.EventRecord(
        id=event.id, at=event.at.astimezone() if event.at.tzinfo is None else event.at, user=event.user,
        action=event.action, subject=event.subject, reason=event.reason or "",
        detail=detail if isinstance(detail, dict) else {},
    )


@dataclass(frozen=True)
class Formatter:
    """Audit event -> RFC 5424 message carrying its DICOM Audit Message."""

    config: AuditSyslog
    source: audit_message.Source
    hostname: str
    procid: str

    def __call__(self, event: AuditEvent) -> bytes:
        record = record_of(event)
        kind = audit_message.kind_of(record.action)
        severity = syslog.NOTICE if kind.outcome == audit_message.SUCCESS else syslog.WARNING
        return syslog.rfc5424(facility=self.config.facility, severity=severity, at=record.at,
                              hostname=self.hostname, app_name=self.config.app_name, procid=self.procid,
                              msgid=syslog.DICOM_MSGID, message=audit_message.audit_message(record, self.source),
                              sequence_id=record.id if 1 <= record.id <= 2147483647 else None)


def formatter_of(app: App, config: AuditSyslog) -> Formatter:
    host = socket.getfqdn() or socket.gethostname()
    return Formatter(config, audit_message.Source(app.settings.ae_title, host, config.site), host, str(os.getpid()))


def sender_of(config: AuditSyslog) -> syslog.Sender:
    if config.transport == "tls":
        files = syslog.TlsFiles(*(str(p) if p else "" for p in (config.ca, config.cert, config.key)))
        return syslog.TlsSender(config.host, config.port, files)
    return syslog.UdpSender(config.host, config.port)


class Trail:
    """The running trail (or nothing, when ``[audit.syslog]`` has no host); :meth:`stop` ends it."""

    def __init__(self, thread: threading.Thread | None = None, stopping: threading.Event | None = None,
                 sender: syslog.Sender | None = None) -> None:
        self.thread, self.stopping, self.sender = thread, stopping, sender

    def stop(self, timeout: float = 5.0) -> None:
        if self.thread is None:
            return
        self.stopping.set()
        self.thread.join(timeout)
        self.sender.close()


def start(app: App) -> Trail:
    """Start sending the audit log in a thread of ``serve``; a no-op :class:`Trail` when it is off."""
    config = app.settings.audit_syslog
    if config is None:
        return Trail()
    try:
        sender = sender_of(config)
    except (ssl.SSLError, OSError) as exc:  # the files exist (settings checked) but do not load
        log.error("audit trail NOT sent: the TLS files of [audit.syslog] do not load (%s); fix audit.syslog.ca, "
                  "cert and key in %s and restart. Events stay in the audit log and are sent then.",
                  exc, app.settings.source)
        return Trail()
    fmt = formatter_of(app, config)
    outbox = Outbox(app.db, lambda event: sender.send([fmt(event)]), OutboxConfig(
        poll_seconds=config.poll_seconds, retry_max_seconds=config.retry_max_seconds))
    where = f"the syslog collector {config.host}:{config.port} ({config.transport})"
    stopping = threading.Event()
    thread = threading.Thread(target=outbox.run, args=(stopping, where), name="gatekeeper-audit-trail", daemon=True)
    thread.start()
    log.info("audit trail: sending audit events to %s", where)
    return Trail(thread, stopping, sender)
