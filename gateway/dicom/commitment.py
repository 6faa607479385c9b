"""Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION handler decodes the request, asks the store which referenced instances are
durably kept (:meth:`store.store.Store.commitment`; :mod:`store.commitment` decides),
answers 0x0000 (request received, J.3.2.1.3) and hands the report to a background thread.

Where the report goes (J.3.3.1.2 and its note 1): the thread waits until the N-ACTION
response is on the wire, then a short grace (:data:`SAME_ASSOCIATION_GRACE`) so that a
requester that releases at once has done so. If the association is still established
the report goes back on it; otherwise (or if that fails) on a new association to the
requester's address under ``[peers]`` in settings.toml, with the gatekeeper proposing
the SCP role for the SOP class (SCP/SCU Role Selection, J.2.1). A requester not listed
there gets a WARNING saying so.

| refusal of the N-ACTION | status |
|---|---|
| Action Type ID other than 1 | 0x0123 No such action type |
| Requested SOP Instance not the well-known 1.2.840.10008.1.20.1.1 | 0x0112 No such SOP Instance |
| no Transaction UID, empty Referenced SOP Sequence, item without UIDs | 0x0115 Invalid argument value |
| anything unexpected | 0x0110 Processing failure |

Failure Reason (0008,1197) per failed instance: 0x0112 never received, 0x0119 received
under another SOP class, 0x0110 known but not durably stored (file missing, study rejected
or purged).
"""

from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from gateway import logs
from gateway.app import App
from gateway.dicom import status as st
from gateway.dicom import syntaxes
from gateway.settings import Peer
from infra.errors import NotFound, NotSupported
from store import commitment
from store.commitment import CommitmentReport, CommitmentRequest, Reference

log = logging.getLogger("gateway.dicom.commitment")

#: Seconds to wait after the N-ACTION response before reusing the association: a
#: requester that does not want the report there releases within milliseconds.
SAME_ASSOCIATION_GRACE = 0.5
#: Seconds to wait for pynetdicom to send the N-ACTION response.
RESPONSE_WAIT = 30.0
#: Action Type ID of "Request Storage Commitment" (PS3.4 Table J.3-1).
REQUEST_COMMITMENT = 1

_FAILURE_REASONS = {
    commitment.NO_SUCH_OBJECT: st.COMMIT_FAILURE_NO_SUCH_OBJECT,
    commitment.CLASS_CONFLICT: st.COMMIT_FAILURE_CLASS_INSTANCE_CONFLICT,
    commitment.NOT_DURABLE: st.COMMIT_FAILURE_PROCESSING,
}


def add_to(ae, app, metrics=None) -> list:
    """Add the Storage Commitment Push Model SOP class (SCP role); return the N-ACTION handler
    (bound to the app and the server's :class:`gateway.metrics.Metrics`, when it has one)."""
    ae.add_supported_context(StorageCommitmentPushModel, syntaxes.NON_STORAGE)
    return [(evt.EVT_N_ACTION, on_n_action, [app, metrics])]


def on_n_action(event, app: App, metrics=None):
    """EVT_N_ACTION: a Storage Commitment Request (PS3.4 J.3.2.1)."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    transaction, summary = "-", ""
    try:
        request = decode(event)
        transaction = request.transaction_uid
        report = app.store.commitment(request)
        summary = f", {len(report.committed)} committed, {len(report.failed)} failed"
        report_later(app, event.assoc, calling, report)
        status = st.SUCCESS
    except Exception as exc:  # the one outer guard
        status = st.failure(st.N_ACTION, exc, log, f"storage commitment N-ACTION from {calling}")
    code = status.Status if isinstance(status, Dataset) else status
    took = time.monotonic() - started
    if metrics is not None:
        metrics.operation("N-ACTION", code, took)
    log.info("storage commitment N-ACTION from %s: transaction %s%s, status 0x%04X", calling, transaction, summary, code,
             extra=logs.operation(event.assoc, "N-ACTION", code, took))
    return status, None


def decode(event) -> CommitmentRequest:
    """The request from the N-ACTION; :class:`~infra.errors.NotSupported` (0x0123),
    :class:`~infra.errors.NotFound` (0x0112) or a
    :class:`~store.commitment.CommitmentRequestError` (0x0115) otherwise."""
    req = event.request
    if req.ActionTypeID != REQUEST_COMMITMENT:
        raise NotSupported(f"action type {req.ActionTypeID} unknown; use 1")
    if str(req.RequestedSOPInstanceUID) != StorageCommitmentPushModelInstance:
        raise NotFound(f"use SOP Instance {StorageCommitmentPushModelInstance}")
    info = event.action_information
    items = info.get("ReferencedSOPSequence", [])
    return commitment.request_from(
        info.get("TransactionUID"),
        [(i.get("ReferencedSOPClassUID"), i.get("ReferencedSOPInstanceUID")) for i in items],
    )


def event_information(report: CommitmentReport) -> tuple[int, Dataset]:
    """Event Type ID and Event Information of the Storage Commitment Result (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.ReferencedSOPSequence = [_item(ref) for ref in report.committed]
    if report.failed:
        failed = []
        for failure in report.failed:
            item = _item(failure.reference)
            item.FailureReason = _FAILURE_REASONS[failure.reason]
            failed.append(item)
        ds.FailedSOPSequence = failed
    event_type = st.COMMIT_EVENT_ALL_COMMITTED if report.all_committed else st.COMMIT_EVENT_FAILURES_EXIST
    return event_type, ds


def report_later(app: App, assoc, requester: str, report: CommitmentReport) -> threading.Thread:
    """Send the report once the N-ACTION response has gone out (see the module docstring)."""
    response_sent = threading.Event()

    def on_sent(event) -> None:
        if isinstance(event.message, N_ACTION_RSP):
            response_sent.set()

    assoc.bind(evt.EVT_DIMSE_SENT, on_sent)
    thread = threading.Thread(
        target=_deliver, args=(app, assoc, requester, report, response_sent, on_sent),
        name=f"commit-report-{report.transaction_uid[-12:]}", daemon=True,
    )
    thread.start()
    return thread


def _deliver(app: App, assoc, requester: str, report: CommitmentReport, response_sent: threading.Event, on_sent) -> None:
    try:
        response_sent.wait(RESPONSE_WAIT)
        assoc.unbind(evt.EVT_DIMSE_SENT, on_sent)
        time.sleep(SAME_ASSOCIATION_GRACE)
        event_type, info = event_information(report)
        where = "the same association"
        if assoc.is_established:
            answered = _send(assoc, event_type, info)
            if answered is not None:
                _log_sent(report, event_type, requester, where, answered)
                return
            log.warning("storage commitment report for transaction %s: the requester %s did not answer on the "
                        "same association; trying a new association", report.transaction_uid, requester)
        peer = app.settings.peers.get(requester)
        if peer is None:
            log.warning("storage commitment report for transaction %s not sent: %s closed its association and "
                        "is not under [peers] in %s; add [peers.%s] with its host and port so reports can reach it",
                        report.transaction_uid, requester, app.settings.source, requester)
            return
        answered = _send_on_new_association(app, peer, event_type, info)
        if answered is not None:
            _log_sent(report, event_type, requester, f"a new association to {peer.host}:{peer.port}", answered)
    except Exception:
        log.exception("storage commitment report for transaction %s to %s failed", report.transaction_uid, requester)


def _send(assoc, event_type: int, info: Dataset) -> int | None:
    """Send the N-EVENT-REPORT; the peer's status, or None when it did not answer."""
    try:
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
    except (RuntimeError, ValueError) as exc:  # released meanwhile, or no usable context
        log.debug("N-EVENT-REPORT not sent: %s", exc)
        return None
    return status.Status if "Status" in status else None


def _send_on_new_association(app: App, peer: Peer, event_type: int, info: Dataset) -> int | None:
    """Associate to the requester as Storage Commitment SCP (role selection, PS3.4 J.3.3.1.2 note 1)."""
    s = app.settings
    ae = AE(ae_title=s.ae_title)  # the same AE title as on the original association (note 2)
    ae.acse_timeout = min(s.network_timeout, 30)
    ae.dimse_timeout = s.network_timeout
    ae.network_timeout = s.network_timeout
    ae.add_requested_context(StorageCommitmentPushModel, syntaxes.NON_STORAGE)
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
    if not assoc.is_established:
        log.error("storage commitment report not sent: %s at %s:%s refused or did not answer the association; "
                  "check [peers.%s] in %s and that it accepts Storage Commitment as SCU",
                  peer.ae_title, peer.host, peer.port, peer.ae_title, s.source)
        return None
    try:
        return _send(assoc, event_type, info)
    finally:
        if assoc.is_established:
            assoc.release()


def _log_sent(report: CommitmentReport, event_type: int, requester: str, where: str, answered: int) -> None:
    log.info("storage commitment report for transaction %s (event type %d, %d committed, %d failed) sent to %s "
             "on %s, status 0x%04X", report.transaction_uid, event_type, len(report.committed), len(report.failed),
             requester, where, answered)


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item
