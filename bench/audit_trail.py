"""Audit trail throughput: N audit events sent from a fresh SQLite audit log to a real rsyslogd.

    python bench/audit_trail.py [N ...]        (default 2000)

For UDP and for TLS (a test CA and client certificate made with openssl): seconds from
the outbox's start until rsyslogd has written all N messages, events per second, the
mean message size, and the time to build one message (XML and RFC 5424 header) alone.
Needs rsyslogd (Debian rsyslog, rsyslog-gnutls) and openssl.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import MODELS  # noqa: E402
from gateway.audit_trail import Formatter  # noqa: E402
from gateway.settings import AuditSyslog  # noqa: E402
from infra import audit, audit_message, schema, syslog  # noqa: E402
from infra.audit_outbox import Outbox, OutboxConfig  # noqa: E402
from infra.db import bind, open_database  # noqa: E402
from tests.certs import make_pki  # noqa: E402
from tests.rsyslog import Rsyslog  # noqa: E402

ACTIONS = ["study.released", "order.override", "mpps.complete", "association.refused", "orders.import"]


def fill(folder: Path, count: int):
    db = open_database(f"sqlite:///{folder}/bench.db")
    bind(db, MODELS)
    schema.upgrade(db, MODELS)
    at = dt.datetime(2026, 12, 1, 9, 0)
    with db.atomic():
        for i in range(count):
            audit.record(at, "tech1", ACTIONS[i % len(ACTIONS)], f"1.2.826.0.1.3680043.8.498.{i}", "bench reason",
                         accession_number=f"ACC{i:06d}", address="10.1.2.3", called_ae="GATEKEEPER", service="store")
    return db


def run(count: int, transport: str, folder: Path, pki) -> None:
    (folder / transport).mkdir()
    db = fill(folder / transport, count)
    collector = Rsyslog(folder / transport / "rsyslog", pki=pki if transport == "tls" else None).start()
    config = AuditSyslog(host="127.0.0.1", port=collector.port, transport=transport, ca=None, cert=None, key=None,
                         app_name="gatekeeper", facility=10, site="", poll_seconds=0.1, retry_max_seconds=1)
    fmt = Formatter(config, audit_message.Source("GATEKEEPER", "bench.local"), "bench.local", "1")
    sender = (syslog.TlsSender("127.0.0.1", collector.port,
                               syslog.TlsFiles(str(pki.ca_cert), str(pki.client_cert), str(pki.client_key)))
              if transport == "tls" else syslog.UdpSender("127.0.0.1", collector.port))
    outbox = Outbox(db, lambda event: sender.send([fmt(event)]), OutboxConfig(poll_seconds=0.1, batch=500))
    stop = threading.Event()
    thread = threading.Thread(target=outbox.run, args=(stop,), daemon=True)
    thread.start()
    try:
        got, seconds = settled(collector, count)
    finally:
        stop.set()
        thread.join(10)
        sender.close()
        collector.stop()
    size = sum(len(m.msg.encode()) for m in got) / max(len(got), 1)
    print(f"{transport:>4} {count:>6} events: {seconds:6.2f}s  {len(got) / seconds:8.0f} events/s  "
          f"mean XML {size:5.0f} bytes  written {len(got)}  lost {count - len(got)}")


def settled(collector: Rsyslog, count: int, quiet: float = 3.0):
    """(messages written, seconds until the last one) once all ``count`` are in, or none came for ``quiet`` s
    (UDP drops what a busy collector cannot take)."""
    t0 = time.perf_counter()
    last, last_at = -1, t0
    while True:
        got = collector.received()
        now = time.perf_counter()
        if len(got) != last:
            last, last_at = len(got), now
        if len(got) >= count or now - last_at > quiet:
            return got, last_at - t0
        time.sleep(0.05)


def build_cost(repeat: int = 5000) -> None:
    config = AuditSyslog(host="x", port=514, transport="udp", ca=None, cert=None, key=None, app_name="gatekeeper",
                         facility=10, site="", poll_seconds=1, retry_max_seconds=1)
    fmt = Formatter(config, audit_message.Source("GATEKEEPER", "bench.local"), "bench.local", "1")
    event = audit.AuditEvent(id=1, at=dt.datetime(2026, 12, 1, 9, 0), user="tech1", action="study.corrected",
                             subject="1.2.3", reason="r", detail='{"accession_number": "ACC1"}')
    t0 = time.perf_counter()
    for _ in range(repeat):
        fmt(event)
    print(f"building one message (XML + RFC 5424): {(time.perf_counter() - t0) / repeat * 1e6:.0f} us")


def main(argv: list[str]) -> None:
    counts = [int(a) for a in argv] or [2000]
    build_cost()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        pki = make_pki(folder / "pki")
        for count in counts:
            for transport in ("udp", "tls"):
                sub = folder / str(count)
                sub.mkdir(exist_ok=True)
                run(count, transport, sub, pki)


if __name__ == "__main__":
    main(sys.argv[1:])
