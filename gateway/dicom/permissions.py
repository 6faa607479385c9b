"""The one place where the access rules (:mod:`.access`) meet the DICOM wiring.

- :meth:`Permissions.admission` is what the admission guard (:mod:`.guard`) asks at each
  A-ASSOCIATE-RQ: None to go on, or the A-ASSOCIATE-RJ (result, source, reason) and the rule.
- :meth:`Permissions.guarded` wraps every service handler the server binds: before the
  handler runs, the service is named from the request's SOP class (:func:`service_of`) and
  :func:`.access.decide` asked; a refused operation gets 0x0124 Refused: not authorized
  (PS3.7 Annex C) in the shape its DIMSE service answers with, and the handler never runs.
  A new service is covered by naming its SOP classes in :func:`service_of`.
- :class:`Refusals` logs each refusal (WARNING, naming the rule), counts it in the metrics
  (``gatekeeper_access_refused_total{rule,service}``) and records it in the audit trail
  (``association.refused`` / ``operation.refused``): at most one audit event per peer
  address and rule per :data:`AUDIT_WINDOW` seconds, the others counted in
  ``gatekeeper_access_refusals_not_audited_total`` so a flood cannot fill the database.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time

from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts, evt

from gateway import logs
from gateway.dicom import access
from gateway.dicom import status as st
from gateway.metrics import connected
from infra import audit

log = logging.getLogger("gateway.dicom.access")

#: Seconds during which one peer address and rule get one audit event; the rest are counted.
AUDIT_WINDOW = 60.0
#: Seconds a host name's addresses are kept before it is looked up again.
RESOLVE_TTL = 60.0

_STORAGE = frozenset(str(c.abstract_syntax) for c in AllStoragePresentationContexts)
_BY_UID = {
    "1.2.840.10008.1.1": "echo",  # Verification
    "1.2.840.10008.5.1.4.31": "worklist",  # Modality Worklist Information Model - FIND
    "1.2.840.10008.3.1.2.3.3": "mpps",  # Modality Performed Procedure Step
    "1.2.840.10008.1.20.1": "commitment",  # Storage Commitment Push Model
}
#: Query/Retrieve information models (PS3.4 C.6): FIND, MOVE, GET of Patient Root, Study Root,
#: Patient/Study Only, and the composite instance root / without bulk data GETs.
_QR_PREFIXES = ("1.2.840.10008.5.1.4.1.2.", "1.2.840.10008.5.1.4.20.")


def service_of(sop_class_uid: str | UID | None) -> str | None:
    """The service (``[modalities.AE] services`` name) of a SOP class, None for one no service claims."""
    uid = str(sop_class_uid or "")
    if uid in _BY_UID:
        return _BY_UID[uid]
    if uid in _STORAGE:
        return "store"
    if uid.startswith(_QR_PREFIXES):
        return "qr"
    return None


#: The DIMSE operation of each service event (for the log's ``operation`` field).
_OPERATIONS = {
    evt.EVT_C_ECHO: "C-ECHO", evt.EVT_C_FIND: "C-FIND", evt.EVT_C_STORE: "C-STORE", evt.EVT_C_GET: "C-GET",
    evt.EVT_C_MOVE: "C-MOVE", evt.EVT_N_CREATE: "N-CREATE", evt.EVT_N_SET: "N-SET", evt.EVT_N_ACTION: "N-ACTION",
    evt.EVT_N_GET: "N-GET", evt.EVT_N_DELETE: "N-DELETE", evt.EVT_N_EVENT_REPORT: "N-EVENT-REPORT",
}


def _status(code: int, reason: str):
    reply = st.Dataset()
    reply.Status = code
    reply.ErrorComment = reason[:64]  # LO: 64 characters at most
    return reply


def _refuse(event_type, reason: str):
    """What a handler of ``event_type`` returns (or yields) to refuse with 0x0124."""
    code = st.REFUSED_NOT_AUTHORIZED
    if event_type in (evt.EVT_C_ECHO, evt.EVT_C_STORE):
        return _status(code, reason)
    if event_type == evt.EVT_C_FIND:
        return iter([(_status(code, reason), None)])
    if event_type == evt.EVT_C_GET:
        return iter([1, (_status(code, reason), None)])  # the final response carries the status

    if event_type == evt.EVT_C_MOVE:
        def refused():  # pynetdicom cannot answer a C-MOVE before its destination: 0xC511 (unable to process)
            raise PermissionError(reason)
            yield  # pragma: no cover
        return refused()
    return _status(code, reason), None  # N-CREATE, N-SET, N-ACTION, N-GET, N-DELETE, N-EVENT-REPORT


class Resolver:
    """Host name -> addresses, looked up with the system resolver and kept :data:`RESOLVE_TTL` s."""

    def __init__(self, ttl: float = RESOLVE_TTL) -> None:
        self.ttl = ttl
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str) -> tuple[str, ...]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(host)
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        try:
            addresses = tuple(sorted({info[4][0] for info in socket.getaddrinfo(host, None)}))
        except OSError as exc:
            log.warning("host name %r of [modalities] does not resolve (%s); associations claiming it are refused",
                        host, exc)
            addresses = ()
        with self._lock:
            self._cache[host] = (now, addresses)
        return addresses


class Refusals:
    """Logs, counts and audits each refusal; audit events bounded per address and rule."""

    def __init__(self, db, clock, metrics=None, window: float = AUDIT_WINDOW, monotonic=time.monotonic) -> None:
        self.db, self.clock, self.metrics = db, clock, metrics
        self.window = window
        self._monotonic = monotonic
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def record(self, assoc, action: str, decision: access.Decision, service: str | None, operation: str,
               calling: str | None = None) -> None:
        """``calling``: the calling AE title when the association has none yet ("" before an A-ASSOCIATE-RQ)."""
        requestor = assoc.requestor
        calling, address = (requestor.ae_title if calling is None else calling), requestor.address
        called = getattr(requestor, "gk_called_ae", None) or ("" if calling == "" else assoc.acceptor.ae_title)
        if action == "operation.refused":  # a rejected association gets the server's one line (EVT_REJECTED)
            log.warning("%s refused (0x0124): calling %r from %s, service %s: refused by %s: %s", operation, calling,
                        address, service or "-", decision.rule, decision.reason,
                        extra=logs.operation(assoc, operation, st.REFUSED_NOT_AUTHORIZED))
        if self.metrics is not None:
            self.metrics.access_refused(decision.rule, service or "-")
        if not self._take_audit_slot(address, decision.rule):
            if self.metrics is not None:
                self.metrics.refusal_not_audited(decision.rule)
            return
        try:
            with connected(self.db), self.db.atomic():
                audit.record(self.clock(), user=calling or "-", action=action, subject=calling or address,
                             reason=decision.reason,
                             rule=decision.rule, address=address, called_ae=called, service=service or "")
        except Exception:  # a refusal is answered even when the audit trail cannot be written
            log.exception("could not record the refusal of %r from %s in the audit log", calling, address)

    def _take_audit_slot(self, address: str, rule: str) -> bool:
        now = self._monotonic()
        with self._lock:
            if len(self._last) > 10_000:  # many addresses: forget the expired ones
                self._last = {k: t for k, t in self._last.items() if now - t < self.window}
            last = self._last.get((address, rule))
            if last is not None and now - last < self.window:
                return False
            self._last[(address, rule)] = now
            return True


class Permissions:
    """The access rules of one server: the admission question and the guarded handlers."""

    def __init__(self, settings, refusals: Refusals, resolve=None) -> None:
        self.settings = settings
        self.refusals = refusals
        self.resolve = resolve or Resolver()

    def admission(self, assoc) -> tuple[tuple[int, int, int], str] | None:
        """For the guard at A-ASSOCIATE-RQ: None, or the A-ASSOCIATE-RJ and the rule that refused."""
        requestor = assoc.requestor
        primitive = requestor.primitive  # the A-ASSOCIATE-RQ; pynetdicom reads its titles after this event
        calling, called = str(primitive.calling_ae_title).strip(), str(primitive.called_ae_title).strip()
        try:
            requestor.ae_title = calling  # for the log lines of a rejection
        except (TypeError, ValueError):
            pass
        requestor.gk_called_ae = called  # type: ignore[attr-defined]
        decision = access.admit(calling, called, requestor.address, self.settings, self.resolve)
        if decision:
            return None
        self.refusals.record(assoc, "association.refused", decision, None, "A-ASSOCIATE-RJ")
        return decision.rejection, f"{decision.reason} ({decision.rule})"

    def guarded(self, handlers: list) -> list:
        """``handlers`` with every service event's handler behind the access decision."""
        out = []
        for entry in handlers:
            event_type, handler, *args = entry
            if event_type in _OPERATIONS:
                handler = self._guard(event_type, handler)
            out.append((event_type, handler, *args))
        return out

    def _guard(self, event_type, handler):
        operation = _OPERATIONS[event_type]

        @functools.wraps(handler)
        def checked(event, *args):
            service = service_of(_sop_class(event))
            requestor = event.assoc.requestor
            decision = access.decide(requestor.ae_title, requestor.address, service, self.settings, self.resolve)
            if decision:
                return handler(event, *args)
            self.refusals.record(event.assoc, "operation.refused", decision, service, operation)
            return _refuse(event_type, f"Not authorized: {decision.rule}")

        return checked


def _sop_class(event) -> str:
    try:
        return str(event.context.abstract_syntax)
    except Exception:  # no context (should not happen for a service request)
        return ""
