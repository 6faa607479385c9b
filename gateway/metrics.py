"""The server's Prometheus metrics, in a registry of its own (one :class:`Metrics` per server).

Counted as things happen (the DICOM handlers' and the jobs' summary lines observe them):

- ``gatekeeper_associations_refused_total{rule}``: A-ASSOCIATE-RJ by the setting that
  refused (``server.max_associations``, ``server.max_associations_per_address``, and the
  access rules ``server.ae_title``, ``server.unknown_aets``, ``modalities.host``,
  ``modalities.services``);
- ``gatekeeper_access_refused_total{rule,service}``: associations (service ``-``) and
  operations refused by an access rule, and
  ``gatekeeper_access_refusals_not_audited_total{rule}``: those left out of the audit log;
- ``gatekeeper_dicom_operation_duration_seconds{operation,status}``: a histogram of
  C-FIND, C-STORE, N-CREATE, N-SET (MPPS) and N-ACTION (storage commitment) by final
  status (``0x0000``); its ``_count`` is the number of operations;
- ``gatekeeper_job_runs_total{job}``, ``gatekeeper_job_failures_total{job}``,
  ``gatekeeper_job_last_success_timestamp_seconds{job}``.

Read at scrape time:

- ``gatekeeper_associations_open``: established associations of the DICOM listeners (with
  workers: the association slots every process holds);
- ``gatekeeper_orders_today{decision}``, ``gatekeeper_orders_served_today{basis}``,
  ``gatekeeper_orders_withheld_today{reason}``: the gate's decisions for today's orders
  (:meth:`worklist.gate.Gate.day`), each reason code of a withheld order counted;
- ``gatekeeper_held_studies``, ``gatekeeper_held_studies_by_reason{reason}``,
  ``gatekeeper_held_oldest_seconds``: the held studies (:meth:`store.store.Store.held_studies`);
- ``gatekeeper_forward_backlog{destination}``, ``gatekeeper_forward_failed{destination}``,
  ``gatekeeper_forward_oldest_pending_seconds``: the forwarding queue
  (:meth:`store.outbox.Outbox.figures`), with ``[forward]`` destinations only;
- ``gatekeeper_collector_up{collector}``: 1 when the figures above could be read, 0 when
  the database failed them (the failure is logged).

Every reason code and refusal rule is exported, 0 when unused, so a rate or an alert
never meets a missing series. Labels carry codes, statuses and setting names only: never
a patient, an accession number or a UID.

With receiving workers (``server.workers`` > 1) the main process still serves
``/metrics`` for all of them: each worker counts through a :class:`MetricsRelay`, one line
per event on a pipe to the main process, where :meth:`Metrics.follow` applies it to the
same counters; ``gatekeeper_associations_open`` then counts the association slots held by
every process (:meth:`Metrics.watch_slots`). What a worker counted stays counted when the
worker dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from store.reconcile import CODES as FINDING_CODES
from worklist.gating import BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE, REASON_CODES

log = logging.getLogger("gateway.metrics")

# No ``*_created`` series: in the text format each is one more series per counter and
# histogram that Prometheus stores and nobody reads. (A switch of the library, for the process.)
disable_created_metrics()

#: The refusal rules: the settings whose limits refuse an association.
REFUSAL_RULES = ("server.max_associations", "server.max_associations_per_address", "server.ae_title",
                 "server.unknown_aets", "modalities.host", "modalities.services")
#: The access rules that refuse an association or an operation (gateway.dicom.access, and MPPS).
ACCESS_RULES = ("server.ae_title", "server.unknown_aets", "modalities.host", "modalities.services", "service",
                "mpps.any_station_aets", "server.tls_ca", "server.tls_cert")
_RULE = re.compile(r"(?:server|modalities)\.[a-z_]+")

#: Histogram buckets (seconds): a worklist query takes milliseconds, a large C-STORE minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

#: The longest line a relay writes: below PIPE_BUF (4096 on Linux, 512 by POSIX), so the
#: kernel writes each line whole, never interleaved with another thread's.
MAX_RELAY_LINE = 512
#: What a relay line may carry: kind -> the types of its arguments, in order.
RELAYED = {
    "operation": (str, int, (int, float)),
    "refused": (str,),
    "access_refused": (str, str),
    "refusal_not_audited": (str,),
}
#: The longest label value a relayed line may set (codes and setting names are short).
MAX_LABEL = 64

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsRelay", "connected"]


def refusal_rule(why: str) -> str:
    """The refusal rule a refusal's text names (the last one it names), or "other"."""
    found = [rule for rule in _RULE.findall(why or "") if rule in REFUSAL_RULES]
    return found[-1] if found else "other"


@contextlib.contextmanager
def connected(db):
    """A database connection for this thread for the block: opened and closed here when the
    thread had none, the thread's own one left open otherwise (peewee keeps one per thread)."""
    opened = db.is_closed()
    if opened:
        db.connect()
    try:
        yield db
    finally:
        if opened:
            db.close()


class Metrics:
    """One server's metrics: the counters its handlers and jobs feed, and the figures read at scrape time."""

    def __init__(self, app=None, jobs: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.associations_open = Gauge("gatekeeper_associations_open",
                                       "Established DICOM associations.", registry=r)
        self.refusals = Counter("gatekeeper_associations_refused",
                                "Associations refused (A-ASSOCIATE-RJ), by the setting that refused them.",
                                ["rule"], registry=r)
        self.operations = Histogram("gatekeeper_dicom_operation_duration_seconds",
                                    "DICOM operations (C-FIND, C-STORE, N-CREATE, N-SET, N-ACTION) by final "
                                    "status, and how long they took.",
                                    ["operation", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.job_runs = Counter("gatekeeper_job_runs", "Scheduled job runs (failed ones included).", ["job"], registry=r)
        self.job_failures = Counter("gatekeeper_job_failures", "Scheduled job runs that failed.", ["job"], registry=r)
        self.job_last_success = Gauge("gatekeeper_job_last_success_timestamp_seconds",
                                      "When each job last finished without error (Unix time).", ["job"], registry=r)
        self.access_refusals = Counter("gatekeeper_access_refused",
                                       "Associations (service \"-\") and operations refused by an access rule.",
                                       ["rule", "service"], registry=r)
        self.not_audited = Counter("gatekeeper_access_refusals_not_audited",
                                   "Refusals not written to the audit log (at most one per address and rule a "
                                   "minute).", ["rule"], registry=r)
        for rule in REFUSAL_RULES:
            self.refusals.labels(rule)
        for rule in ACCESS_RULES:
            self.not_audited.labels(rule)
        for name in jobs:
            self.job_runs.labels(name)
            self.job_failures.labels(name)
        self.associations_open.set(0)
        if app is not None:
            r.register(_AppFigures(app))

    # -- fed by the server, the handlers and the jobs ---------------------------------------------

    def watch_listener(self, *servers) -> None:
        """Read ``gatekeeper_associations_open`` from the DICOM listeners (plain and TLS) at each scrape."""
        self.associations_open.set_function(
            lambda: sum(1 for server in servers for a in server.active_associations if a.is_established))

    def watch_slots(self, slots) -> None:
        """Read ``gatekeeper_associations_open`` from the association slots every receiving process
        holds (:class:`gateway.dicom.slots.SharedSlots`), at each scrape."""
        self.associations_open.set_function(lambda: len(slots.held()))

    def apply(self, record) -> bool:
        """Count one event a worker's :class:`MetricsRelay` sent (``[kind, *arguments]``).

        False, counting nothing, for a record that is not one of :data:`RELAYED` with arguments
        of the right types (a status in 0..0xFFFF, a duration finite and not negative, labels
        of at most :data:`MAX_LABEL` characters)."""
        if not isinstance(record, list) or not record or record[0] not in RELAYED:
            return False
        kind, args = record[0], record[1:]
        types = RELAYED[kind]
        if len(args) != len(types) or any(isinstance(a, bool) or not isinstance(a, t) for a, t in zip(args, types)):
            return False
        if kind == "operation":
            name, status, seconds = args
            if len(name) > MAX_LABEL or not 0 <= status <= 0xFFFF or not math.isfinite(seconds) or seconds < 0:
                return False
        elif kind != "refused" and any(len(a) > MAX_LABEL for a in args):
            return False
        getattr(self, kind)(*args)
        return True

    def follow(self, fd: int, name: str) -> threading.Thread:
        """Apply every line a worker's relay writes to the pipe ``fd``, in a thread of its own,
        until the worker closes it (it stopped or died); the pipe is closed then."""

        def read() -> None:
            pending = b""
            try:
                while chunk := os.read(fd, 65536):
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        try:
                            record = json.loads(line)
                        except ValueError:
                            record = None
                        if not self.apply(record):
                            log.warning("metrics: %s sent a line that is not a count; ignored: %.80r", name, line)
            except OSError as exc:
                log.warning("metrics: the counts of %s could not be read any more: %s", name, exc)
            finally:
                os.close(fd)

        thread = threading.Thread(target=read, name=f"gatekeeper-metrics-{name}", daemon=True)
        thread.start()
        return thread

    def refused(self, why: str) -> None:
        """Count one refused association; ``why`` names the setting that refused it (as the log line does)."""
        self.refusals.labels(refusal_rule(why)).inc()

    def access_refused(self, rule: str, service: str) -> None:
        """Count one association or operation refused by an access rule (``service`` "-" for an association)."""
        self.access_refusals.labels(rule, service).inc()

    def refusal_not_audited(self, rule: str) -> None:
        """Count one refusal left out of the audit trail (one event per address and rule a minute)."""
        self.not_audited.labels(rule).inc()

    def operation(self, name: str, status: int, seconds: float) -> None:
        """Count one DICOM operation with its final status and duration."""
        self.operations.labels(name, f"0x{status:04X}").observe(max(seconds, 0.0))

    def job(self, name: str, ok: bool) -> None:
        """Count one run of a job."""
        self.job_runs.labels(name).inc()
        if ok:
            self.job_last_success.labels(name).set_to_current_time()
        else:
            self.job_failures.labels(name).inc()

    # -- the exposition -------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)


class MetricsRelay:
    """The counters of a receiving worker (:mod:`gateway.dicom.workers`): what its handlers count
    goes to the main process's :class:`Metrics`, which serves ``/metrics``.

    It has the methods of :class:`Metrics` that the DICOM handlers call. Each event is one JSON
    line written whole to the pipe ``fd`` (shorter than :data:`MAX_RELAY_LINE`). The pipe does
    not block: when the main process does not read (it is stopping, or far behind), the event
    is dropped and counted in :attr:`dropped`, never making an association wait.
    """

    #: Seconds between two warnings about dropped events.
    WARN_EVERY = 60.0

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.dropped = 0
        self._lock = threading.Lock()
        self._warned_at = -math.inf

    def operation(self, name: str, status: int, seconds: float) -> None:
        self._send("operation", name, int(status), round(max(float(seconds), 0.0), 6))

    def refused(self, why: str) -> None:
        self._send("refused", refusal_rule(why))  # the rule only: the text may be long

    def access_refused(self, rule: str, service: str) -> None:
        self._send("access_refused", rule, service)

    def refusal_not_audited(self, rule: str) -> None:
        self._send("refusal_not_audited", rule)

    def _send(self, *record) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            if len(line) > MAX_RELAY_LINE:
                raise ValueError(f"a {len(line)}-byte line")
            os.write(self.fd, line)
        except (OSError, ValueError) as exc:  # a full pipe (BlockingIOError), the main process gone
            with self._lock:
                self.dropped += 1
                now = time.monotonic()
                if now - self._warned_at < self.WARN_EVERY:
                    return
                self._warned_at = now
            log.warning("metrics: %d counts not passed to the main process so far (%s); /metrics misses them",
                        self.dropped, exc)


class _AppFigures(Collector):
    """Today's orders and the held studies, read through the use cases at each scrape."""

    def __init__(self, app) -> None:
        self.app = app

    def describe(self):
        return []  # the families depend on what can be read; no checks at registration

    def collect(self):
        up = GaugeMetricFamily("gatekeeper_collector_up",
                               "1 when the figures of this collector could be read at this scrape, else 0.",
                               labels=["collector"])
        readers = [("orders", self._orders), ("held", self._held)]
        if getattr(self.app.settings, "destinations", ()):
            readers.append(("forward", self._forward))
        for name, read in readers:
            try:
                with connected(self.app.db):
                    families = list(read())
            except Exception as exc:  # the database is down: say so, and still export the rest
                log.warning("metrics: could not read the %s figures: %s", name, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up

    def _orders(self):
        entries = self.app.gate.day(self.app.today())
        decided = GaugeMetricFamily("gatekeeper_orders_today",
                                    "Orders scheduled today, by the gate's decision now.", labels=["decision"])
        basis = GaugeMetricFamily("gatekeeper_orders_served_today",
                                  "Orders scheduled today and served, by basis.", labels=["basis"])
        reasons = GaugeMetricFamily("gatekeeper_orders_withheld_today",
                                    "Orders scheduled today and withheld, by reason code (an order with two "
                                    "reasons counts under both).", labels=["reason"])
        served = [e.decision for e in entries if e.decision.served]
        withheld = [e.decision for e in entries if not e.decision.served]
        decided.add_metric(["served"], len(served))
        decided.add_metric(["withheld"], len(withheld))
        by_basis = {b: 0 for b in (BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE)}
        for d in served:
            by_basis[d.basis or "unknown"] = by_basis.get(d.basis or "unknown", 0) + 1
        for b, n in by_basis.items():
            basis.add_metric([b], n)
        by_reason = {code: 0 for code in REASON_CODES}
        for d in withheld:
            for code in set(d.codes):
                by_reason[code] = by_reason.get(code, 0) + 1
        for code, n in by_reason.items():
            reasons.add_metric([code], n)
        return decided, basis, reasons

    def _held(self):
        held = self.app.store.held_studies()
        count = GaugeMetricFamily("gatekeeper_held_studies", "Studies held for review.")
        count.add_metric([], len(held))
        reasons = GaugeMetricFamily("gatekeeper_held_studies_by_reason",
                                    "Held studies by finding code (a study with two codes counts under both).",
                                    labels=["reason"])
        by_reason = {code: 0 for code in FINDING_CODES}
        for study in held:
            for code in set(study.codes):
                by_reason[code] = by_reason.get(code, 0) + 1
        for code, n in by_reason.items():
            reasons.add_metric([code], n)
        oldest = GaugeMetricFamily("gatekeeper_held_oldest_seconds",
                                   "Age of the oldest hold (0 when none is held).")
        now = self.app.now()
        oldest.add_metric([], max(0.0, max(((now - s.held_since).total_seconds() for s in held), default=0.0)))
        return count, reasons, oldest

    def _forward(self):
        figures = self.app.store.outbox.figures()
        backlog = GaugeMetricFamily("gatekeeper_forward_backlog",
                                    "Instances waiting to be sent, by [forward] destination.", labels=["destination"])
        failed = GaugeMetricFamily("gatekeeper_forward_failed",
                                   "Instances given up (forward retry queues them again), by destination.",
                                   labels=["destination"])
        for name in (d.name for d in self.app.settings.destinations):
            backlog.add_metric([name], figures.backlog.get(name, 0))
            failed.add_metric([name], figures.by_state.get(name, {}).get("failed", 0))
        oldest = GaugeMetricFamily("gatekeeper_forward_oldest_pending_seconds",
                                   "Age of the oldest instance waiting to be sent (0 when none waits).")
        oldest.add_metric([], figures.oldest_pending_seconds or 0.0)
        return backlog, failed, oldest
