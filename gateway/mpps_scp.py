"""Modality Performed Procedure Step SCP (PS3.4 F.7): N-CREATE and N-SET.

Thin handlers: decode the request into a :class:`~worklist.mpps.StepReport`, make one
call into :mod:`worklist.mpps_service`, answer with a status. A refused request gets
the standard failure status (below); anything unexpected is logged and answered with
0x0110 Processing failure, never a dropped association.

| refusal | status |
|---|---|
| N-CREATE without Performed Procedure Step Status | 0x0120 Missing attribute |
| N-CREATE not IN PROGRESS, unknown status value | 0x0106 Invalid attribute value (F.7.2.1.3) |
| N-CREATE with an existing SOP Instance UID | 0x0111 Duplicate SOP Instance |
| N-SET on an unknown SOP Instance | 0x0112 No such SOP Instance |
| N-SET on a COMPLETED or DISCONTINUED step | 0x0110 with Error ID A710 (F.7.2.2.3, Table F.7.2-2) |
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from gateway import status as st
from worklist import mpps, mpps_service
from worklist.mpps import PerformedSeries, StepReport

log = logging.getLogger("gateway.mpps")

#: Each refusal of the state machine and its DICOM status.
_REFUSALS = {
    mpps.MissingStatus: st.MISSING_ATTRIBUTE,
    mpps.InvalidStatus: st.INVALID_ATTRIBUTE_VALUE,
    mpps.DuplicateStep: st.DUPLICATE_SOP_INSTANCE,
    mpps.NoSuchStep: st.NO_SUCH_SOP_INSTANCE,
    mpps.StepFinal: st.MPPS_MAY_NO_LONGER_BE_UPDATED,
}


def add_to(ae, app) -> list:
    """Add the MPPS SOP class (SCP role); return the N-CREATE and N-SET handlers."""
    ae.add_supported_context(ModalityPerformedProcedureStep)
    return [(evt.EVT_N_CREATE, on_n_create, [app]), (evt.EVT_N_SET, on_n_set, [app])]


def on_start(app) -> None:
    """Nothing to prepare: steps live in the database."""


def on_n_create(event, app):
    """EVT_N_CREATE: a modality started a step (PS3.4 F.7.2.1)."""
    calling = event.assoc.requestor.ae_title
    uid = event.request.AffectedSOPInstanceUID
    accession = None
    try:
        attrs = event.attribute_list
        report = step_report(str(uid) if uid else generate_uid(), attrs, scheduled=True)
        uid, accession = report.sop_instance_uid, report.accession_number
        mpps_service.create_step(report, calling, app.now(), app.settings.policy)
        status, reply = st.SUCCESS, _created(attrs, uid, assigned=event.request.AffectedSOPInstanceUID is None)
    except Exception as exc:  # the one outer guard
        status, reply = _refusal(exc, "N-CREATE", uid), None
    _log(calling, "N-CREATE", uid, accession, status)
    return status, reply


def on_n_set(event, app):
    """EVT_N_SET: a modality updated, completed or discontinued a step (PS3.4 F.7.2.2)."""
    calling = event.assoc.requestor.ae_title
    uid = str(event.request.RequestedSOPInstanceUID or "")
    accession = None
    try:
        changes = event.modification_list
        report = step_report(uid, changes, scheduled=False)
        outcome = mpps_service.set_step(report, calling, app.now(), app.settings.policy)
        accession = outcome.accession_number
        status, reply = st.SUCCESS, changes
    except Exception as exc:  # the one outer guard
        status, reply = _refusal(exc, "N-SET", uid), None
    _log(calling, "N-SET", uid, accession, status)
    return status, reply


def step_report(uid: str, ds: Dataset, *, scheduled: bool) -> StepReport:
    """Decode an N-CREATE Attribute List or N-SET Modification List (PS3.4 Table F.7.2-1).

    The accession number comes from Scheduled Step Attributes Sequence (0040,0270), which
    only N-CREATE may carry; the first item naming one wins.
    """
    accession = None
    if scheduled:
        accessions = [str(i.get("AccessionNumber", "") or "").strip() for i in ds.get("ScheduledStepAttributesSequence", [])]
        accessions = [a for a in accessions if a]
        accession = accessions[0] if accessions else None
        if len(set(accessions)) > 1:
            log.warning("MPPS %s groups accessions %s; only %s is tracked", uid, ", ".join(accessions), accession)
    status = ds.get("PerformedProcedureStepStatus")
    series = None
    if "PerformedSeriesSequence" in ds:
        series = tuple(_series(item) for item in ds.PerformedSeriesSequence)
    reason = ""
    for code in ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence", [])[:1]:
        reason = str(code.get("CodeMeaning", "") or code.get("CodeValue", "") or "")
    return StepReport(
        sop_instance_uid=uid,
        status=str(status) if status is not None else None,
        accession_number=accession,
        performed_series=series,
        discontinuation_reason=reason,
    )


def _series(item: Dataset) -> PerformedSeries:
    refs = [*item.get("ReferencedImageSequence", []),
            *item.get("ReferencedNonImageCompositeSOPInstanceSequence", [])]
    return PerformedSeries(
        series_instance_uid=str(item.get("SeriesInstanceUID", "") or ""),
        instance_uids=tuple(str(r.ReferencedSOPInstanceUID) for r in refs if r.get("ReferencedSOPInstanceUID")),
    )


def _created(attrs: Dataset, uid: str, assigned: bool) -> Dataset:
    """The N-CREATE Attribute List: the attributes as created (PS3.7 10.1.5.1.6)."""
    reply = Dataset()
    reply.update(attrs)
    if assigned:
        # The SCU sent no UID: pynetdicom moves this into the response's Affected SOP Instance UID.
        reply.AffectedSOPInstanceUID = uid
    return reply


def _refusal(exc: Exception, operation: str, uid) -> Dataset:
    """The status dataset for a refused request; unexpected errors are logged in full."""
    code = next((c for kind, c in _REFUSALS.items() if isinstance(exc, kind)), None)
    if code is None:
        log.exception("MPPS %s of %s failed; answered 0x%04X processing failure", operation, uid, st.PROCESSING_FAILURE)
        code = st.PROCESSING_FAILURE
    reply = Dataset()
    reply.Status = code
    if isinstance(exc, mpps.StepFinal):
        reply.ErrorComment = st.MPPS_MAY_NO_LONGER_BE_UPDATED_COMMENT
        reply.ErrorID = st.MPPS_MAY_NO_LONGER_BE_UPDATED_ERROR_ID
    elif isinstance(exc, mpps.MppsError):
        reply.ErrorComment = str(exc)[:64]  # LO: 64 characters at most
    return reply


def _log(calling: str, operation: str, uid, accession: str | None, status) -> None:
    code = status.Status if isinstance(status, Dataset) else status
    log.info("MPPS %s from %s: instance %s, accession %s, status 0x%04X",
             operation, calling, uid or "-", accession or "-", code)
